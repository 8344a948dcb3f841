"""Interventions: what a step does to the residual stream."""

from steerpeft.interventions.ablate import Ablate
from steerpeft.interventions.add import AddDirection
from steerpeft.interventions.base import INTERVENTIONS, Intervention
from steerpeft.interventions.clamp import Clamp

__all__ = ["INTERVENTIONS", "Ablate", "AddDirection", "Clamp", "Intervention"]
