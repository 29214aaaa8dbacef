"""Scenario schema and loading."""

from .loader import load_scenario
from .schema import Scenario

__all__ = ["Scenario", "load_scenario"]
