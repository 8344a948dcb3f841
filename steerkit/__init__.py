"""steerkit: find directions in a model's activations, steer with them, share them as PEFT adapters.

The public API is small:

- `Steerer` fits one steering step (record -> extract -> select -> calibrate) and returns a `Plan`;
- `Plan.apply(model)` steers inside a `with` block; `Plan.save` / `Plan.load` persist it;
- `load_recipe` reads a YAML recipe; `Recipe.fit` chains its steps into one plan;
- the component families live in `steerkit.extractors`, `.selectors`, `.scalers`, `.interventions`,
  `.callbacks`; positions in `steerkit.positions`.
"""

import steerkit.adapters  # noqa: F401  (registers the STEER PEFT method with PEFT)
from steerkit.callbacks import Callback, JsonlLogger, ProgressBar
from steerkit.errors import SteerkitError
from steerkit.plan import Plan, SteeringStep
from steerkit.recipes import Recipe, load_recipe
from steerkit.steerer import Steerer

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "JsonlLogger",
    "Plan",
    "ProgressBar",
    "Recipe",
    "Steerer",
    "SteeringStep",
    "SteerkitError",
    "load_recipe",
]
