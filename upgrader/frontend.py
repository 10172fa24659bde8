"""What the in-process front ends (``upgrader run --headless``, ``upgrader attach``,
``upgrader demo``) share: opening the flag store the TUI's flags screen shows, and turning the
first Ctrl-C / SIGTERM / SIGHUP into an abort with roll-back (a closed terminal too: its
writes then go to /dev/null, so nothing stops the roll-back and the clean-up).

A front end itself: it may import anything below it, and ``cli.py`` and ``demo.py`` both import
it (neither imports the other's private helpers, so the two commands form no import cycle).
Imports what it needs lazily, so ``upgrader --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .flags.store import FlagStore
    from .model import Fleet

__all__ = ["ABORT_SIGNALS", "forward_signals", "open_flag_store", "quiet_print",
           "silence_terminal", "terminal_fds"]


def open_flag_store(spec: str | None, fleet: Fleet | None = None) -> FlagStore | None:
    """The flag store the TUI's flags screen shows, or None when there is none to show:
    ``spec``, else the fleet's ``[flags] store``, else the default store when it exists."""
    from .flags.store import default_store_spec, open_store

    if spec is None and fleet is not None and fleet.flags is not None:
        spec = fleet.flags.store
    if spec is None:
        default = default_store_spec()
        if "://" not in default and not Path(default).exists():
            return None
        spec = default
    store = open_store(spec)
    if fleet is not None and fleet.schema is not None:
        # the fleet's schema database says which schema versions are live: a flag that needs
        # another is not turned on in the fleet's environment (upgrader.flags.schemaguard)
        from .flags.schemaguard import SchemaGuard

        environment = fleet.flags.environment if fleet.flags is not None else fleet.environment
        store.guard = SchemaGuard(fleet.schema.database, environment)
    return store


#: the signals that abort a rollout with roll-back: Ctrl-C, a polite kill, the terminal gone
ABORT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def terminal_fds() -> tuple[int, ...]:
    """Which of stdout and stderr are a terminal now (after a hang-up ``isatty`` says no,
    so ask before)."""
    found = []
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                found.append(fd)
        except OSError:
            pass
    return tuple(found)


def silence_terminal(fds: tuple[int, ...]) -> None:
    """The terminal went away (SIGHUP): point ``fds`` (stdout, stderr that were that
    terminal) at /dev/null, so that writing progress, a summary or a log line can no longer
    fail with EIO or EPIPE and stop the clean-up half-way."""
    if not fds:
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for fd in fds:
            try:
                os.dup2(null, fd)
            except OSError:
                pass
    finally:
        os.close(null)


def quiet_print(text: str, *, file: TextIO | None = None) -> None:
    """``print``, except that a terminal or pipe that is gone (EIO, EPIPE) is not an error:
    the work is done, only its report has nowhere to go."""
    try:
        print(text, file=file if file is not None else sys.stdout, flush=True)
    except OSError:
        pass
    except ValueError:          # the stream was closed
        pass


def forward_signals(rollout: Any, *, on_signal: Callable[[int], None] | None = None) -> None:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed): abort with roll-back. The journal
    keeps the rest safe. On SIGHUP, stdout and stderr that were the terminal go to /dev/null
    first, so the roll-back and the clean-up never stop on a write.

    ``rollout`` is anything with ``abort(rollback: bool)`` (a ``Rollout``, an ``Engine``);
    ``on_signal(signum)`` runs after the abort (a front end's own clean-up). Call from inside
    the running event loop."""
    loop = asyncio.get_running_loop()
    ttys = terminal_fds()

    def handle(signum: int) -> None:
        if signum == signal.SIGHUP:
            silence_terminal(ttys)
        rollout.abort(True)
        if on_signal is not None:
            on_signal(signum)

    for sig in ABORT_SIGNALS:
        try:
            loop.add_signal_handler(sig, handle, sig)
        except (NotImplementedError, RuntimeError):
            pass
