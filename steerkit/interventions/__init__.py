"""Interventions: what a step does to the residual stream."""

from steerkit.interventions.ablate import Ablate
from steerkit.interventions.add import AddDirection
from steerkit.interventions.base import INTERVENTIONS, Intervention
from steerkit.interventions.clamp import Clamp

__all__ = ["INTERVENTIONS", "Ablate", "AddDirection", "Clamp", "Intervention"]
