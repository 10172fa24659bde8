"""Where a fleet's journal and lock live: SQLite and ``flock`` in the state folder (the
default), or a PostgreSQL database shared by every controller (``--state postgresql://...``,
or ``$UPGRADER_STATE``). docs/STATE.md describes both.

The state folder is used either way for what is local to one controller: its control socket
and token, and the log of a detached controller.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .db import is_postgres_url
from .errors import ConfigError, PolicyRefused
from .journal import FleetLock, Journal
from .journal_postgres import PostgresFleetLock, PostgresJournal
from .journal_postgres import lock_holder as postgres_lock_holder
from .redact import add_url_secret, redact_url

#: the environment variable that names the shared state when ``--state`` is not given (an
#: environment variable keeps a password out of ``ps``)
STATE_VARIABLE = "UPGRADER_STATE"


def resolve_state(spec: str | None) -> str | None:
    """``spec``, else ``$UPGRADER_STATE``; None means the SQLite journal in the state folder.
    ConfigError for anything but a ``postgresql://`` URL."""
    text = spec if spec else os.environ.get(STATE_VARIABLE) or None
    if text is None:
        return None
    if not is_postgres_url(text):
        raise ConfigError(f"expected a postgresql:// URL, got {redact_url(text)!r} (leave it "
                          "out for the SQLite journal in --state-dir)", key="--state")
    add_url_secret(text)
    return text


def describe_state(state: str | None, state_dir: str | Path) -> str:
    """Where the journal is, for messages (never with a password)."""
    return redact_url(state) if state else str(Path(state_dir) / "journal.sqlite")


def open_journal(state: str | None, state_dir: str | Path) -> Journal | PostgresJournal:
    if state:
        return PostgresJournal(state)
    return Journal(Path(state_dir) / "journal.sqlite")


def journal_exists(state: str | None, state_dir: str | Path) -> bool:
    return bool(state) or (Path(state_dir) / "journal.sqlite").exists()


def fleet_lock(state: str | None, state_dir: str | Path, fleet: str) -> Any:
    """The fleet's lock (not yet acquired): ``acquire()`` raises PolicyRefused naming the
    holder; ``release()``."""
    if state:
        return PostgresFleetLock(state, fleet)
    return FleetLock(state_dir, fleet)


def lock_holder(state: str | None, state_dir: str | Path, fleet: str) -> dict[str, Any] | None:
    """Who holds the fleet's lock now (None: nobody; a controller that died leaves none):
    ``{"text": ..., ...}`` with host, pid, user, since and rollout when the backend knows."""
    if state:
        holder = postgres_lock_holder(state, fleet)
        return None if holder is None else {"text": holder.describe(), **holder.to_json()}
    lock = FleetLock(state_dir, fleet)
    if not lock.path.exists():
        return None
    try:
        lock.acquire()
    except PolicyRefused:
        text = lock.path.read_text(errors="replace").strip() or "another controller"
        return {"text": text}
    lock.release()
    return None
