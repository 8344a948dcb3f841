"""Recipes: YAML files naming the components of each steering step, plus typed sections.

- `load_recipe(name_or_path_or_dict, overrides)` -> `Recipe`; `Recipe.fit(model, tokenizer)` -> `Plan`;
- sections (`model`, `data`, `fit`, `eval`, `output`, and `media` from the MARS wing) are
  dataclasses registered with `recipe_section`; `Recipe.section(key)` reads one.
"""

from steerpeft.recipes.options import DataOptions, EvalOptions, FitOptions, ModelOptions, OutputOptions
from steerpeft.recipes.overrides import apply_override
from steerpeft.recipes.recipe import RECIPES_DIR, Recipe, build, chain_plans, load_recipe, validate
from steerpeft.recipes.sections import SCHEMA, STEP_KEYS, read_section, recipe_section

__all__ = [
    "RECIPES_DIR",
    "SCHEMA",
    "STEP_KEYS",
    "DataOptions",
    "EvalOptions",
    "FitOptions",
    "ModelOptions",
    "OutputOptions",
    "Recipe",
    "apply_override",
    "build",
    "chain_plans",
    "load_recipe",
    "read_section",
    "recipe_section",
    "validate",
]
