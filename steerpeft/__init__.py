"""steerpeft: find directions in a model's activations, steer with them, share them as PEFT adapters.

The public API is small:

- `Steerer` fits one steering step (record -> extract -> select -> calibrate) and returns a `Plan`;
- `Plan.apply(model)` steers inside a `with` block; `Plan.save` / `Plan.load` persist it;
- `load_recipe` reads a YAML recipe; `Recipe.fit` chains its steps into one plan;
- the component families live in `steerpeft.extractors`, `.selectors`, `.scalers`, `.interventions`,
  `.callbacks`; positions in `steerpeft.positions`; the MARS recipe in `steerpeft.mars`.
"""

import steerpeft.adapters
import steerpeft.mars  # noqa: F401  (the reference recipe registers its scaler, selector and `media` section)
from steerpeft.callbacks import Callback, JsonlLogger, ProgressBar
from steerpeft.errors import SteerpeftError
from steerpeft.plan import Plan, SteeringStep
from steerpeft.recipes import Recipe, load_recipe
from steerpeft.steerer import Steerer

__version__ = "0.2.0"

__all__ = [
    "Callback",
    "JsonlLogger",
    "Plan",
    "ProgressBar",
    "Recipe",
    "Steerer",
    "SteeringStep",
    "SteerpeftError",
    "load_recipe",
]
