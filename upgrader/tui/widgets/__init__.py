"""Reusable widgets of the upgrader TUI; each renders part of a ``RolloutView``."""

from __future__ import annotations

from .event_log import EventLog
from .fleet_table import FleetTable
from .header import RolloutHeader
from .keybar import KeyBar
from .steps import StepsPanel
from .summary import SummaryPanel
from .traffic import TrafficChart
from .verdict import VerdictPanel
from .window import RollbackWindowLine, WindowLine

__all__ = ["EventLog", "FleetTable", "KeyBar", "RollbackWindowLine", "RolloutHeader",
           "StepsPanel", "SummaryPanel", "TrafficChart", "VerdictPanel", "WindowLine"]
