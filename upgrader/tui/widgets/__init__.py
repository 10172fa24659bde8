"""Reusable widgets of the upgrader TUI; each renders part of a ``RolloutView``."""

from __future__ import annotations

from .event_log import EventLog
from .fleet_table import FleetTable
from .header import RolloutHeader
from .steps import StepsPanel
from .traffic import TrafficChart
from .verdict import VerdictPanel
from .window import WindowLine

__all__ = ["EventLog", "FleetTable", "RolloutHeader", "StepsPanel", "TrafficChart",
           "VerdictPanel", "WindowLine"]
