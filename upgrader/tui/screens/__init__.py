"""Screens of the upgrader TUI. They hold no upgrade state and do no I/O: they render the
app's ``RolloutView`` and turn keys into the app's actions (method calls on the handle). The
flags screen reads and changes the app's flag store, always in a thread."""

from __future__ import annotations

from .flags import FlagChangeDialog, FlagsScreen, PercentDialog
from .help import HelpScreen
from .log import LogScreen
from .main import MainScreen
from .quit import QuitDialog
from .rollback import RollbackDialog
from .window import WindowOverrideDialog

__all__ = ["FlagChangeDialog", "FlagsScreen", "HelpScreen", "LogScreen", "MainScreen",
           "PercentDialog", "QuitDialog", "RollbackDialog", "WindowOverrideDialog"]
