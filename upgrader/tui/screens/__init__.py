"""Screens of the upgrader TUI. They hold no upgrade state and do no I/O: they render the
app's ``RolloutView`` and turn keys into the app's actions (method calls on the handle)."""

from __future__ import annotations

from .help import HelpScreen
from .log import LogScreen
from .main import MainScreen
from .quit import QuitDialog
from .rollback import RollbackDialog

__all__ = ["HelpScreen", "LogScreen", "MainScreen", "QuitDialog", "RollbackDialog"]
