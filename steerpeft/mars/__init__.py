"""MARS, the reference recipe (arXiv 2606.31876; the algorithm is written out in MARS.md).

A refusal direction from text-only prompts protects image and video inputs: re-centering with
neutral media, a ReLU-gated trust-region strength, the best layer, at the first generated token.
The whole recipe lives here and registers itself on import (`import steerpeft` imports it):

- `settings`: the recipe's `media` section (`MediaOptions`);
- `calibration`: `LayerRegion`, neutral-media statistics, gate values t;
- `scaler`: `TrustRegionScaler` (registry name `trust_region`);
- `selector`: `MarsSelector` (registry name `mars`);
- `evaluation`: prompt sets per modality, ablation conditions, gate values of a fitted plan.
"""

from steerpeft.mars.calibration import LayerRegion, NeutralStatistics
from steerpeft.mars.scaler import TrustRegionScaler
from steerpeft.mars.selector import MarsSelector
from steerpeft.mars.settings import MediaOptions

__all__ = ["LayerRegion", "MarsSelector", "MediaOptions", "NeutralStatistics", "TrustRegionScaler"]
