"""The durable record of every rollout transition (SQLite in WAL mode), and the fleet lock.

The engine writes each transition here BEFORE the action it announces, so a controller that
dies at any point can be resumed (``upgrader resume``) without upgrading a host twice or
skipping one. Writes go through one worker thread so the event loop never blocks on disk.
The lock is an ``flock`` on a file next to the journal: the kernel drops it when the holder
dies, so a crashed controller never leaves a stale lock, while its rollout stays "running"
in the journal until it is resumed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import db
from .errors import JournalError, PolicyRefused
from .redact import redact_data

T = TypeVar("T")

#: a rollout whose roll-back (or shut-down) did not finish: the fleet is half-way, so the
#: rollout stays unfinished and ``upgrader resume`` completes the roll-back
ROLLBACK_INCOMPLETE = "rollback_incomplete"
#: the statuses of a rollout that ``upgrader resume`` picks up
UNFINISHED = ("running", ROLLBACK_INCOMPLETE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    fleet_path TEXT,
    strategy TEXT NOT NULL,
    current TEXT NOT NULL,
    target TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,  -- running | rollback_incomplete (both unfinished) | completed
                           -- | rolled_back | failed | frozen | shut_down
    started REAL NOT NULL,
    finished REAL,
    controller TEXT
);
CREATE INDEX IF NOT EXISTS rollouts_fleet ON rollouts(fleet, status);
CREATE TABLE IF NOT EXISTS fleet_lock_log (
    fleet TEXT NOT NULL,
    ts REAL NOT NULL,
    action TEXT NOT NULL,   -- taken over | unlocked
    reason TEXT NOT NULL,
    holder TEXT,            -- the holder it replaced or removed (JSON)
    by_whom TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    rollout TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (rollout, seq)
);
"""


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    id: str
    fleet: str
    fleet_path: str | None
    strategy: str
    current: str
    target: str
    plan: dict[str, Any]
    status: str
    started: float
    finished: float | None
    controller: str | None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    ts: float
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LockNote:
    """A journaled change of a fleet lock: a dead holder taken over, or an unlock by hand."""

    ts: float
    action: str
    reason: str
    holder: dict[str, Any] | None
    by: str


def lock_by() -> str:
    return f"{current_user()}@{socket.gethostname()} pid {os.getpid()}"


#: the file that marks a state folder upgrader created (and so may keep private)
CREATED_MARK = ".created-by-upgrader"
_warned: set[Path] = set()


def ensure_private_dir(path: Path) -> None:
    """The state folder (journal, lock, control token, controller's log): created 0700 and
    marked as ours. An existing folder upgrader did not create keeps its mode (a warning when
    group or others may read it); one it created goes back to 0700."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:     # another controller made it at the same moment
            pass
        else:
            os.chmod(path, 0o700)   # whatever the umask
            (path / CREATED_MARK).touch(mode=0o600)
            return
    try:
        st = os.stat(path)
    except OSError:
        return
    if not st.st_mode & 0o077:
        return
    if (path / CREATED_MARK).exists() and st.st_uid == os.getuid():
        os.chmod(path, 0o700)
    elif path not in _warned:
        _warned.add(path)
        logging.getLogger("upgrader.state").warning(
            "the state folder %s is open to group or others (mode %o); upgrader leaves a "
            "folder it did not create as it is: `chmod 700 %s` keeps the journal and the "
            "control token private", path, st.st_mode & 0o777, path)


def holder_text(rollout: str | None = None) -> str:
    """Who this process is, for the lock holder line: pid, host, user, since when."""
    text = (f"pid {os.getpid()} on {socket.gethostname()} (user {current_user()}) since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    return text + (f", rollout {rollout}" if rollout else "")


def current_user() -> str:
    try:
        import getpass

        return os.environ.get("USER") or getpass.getuser()
    except Exception:           # no login name (containers without a passwd entry)
        return f"uid {os.getuid()}"


class Journal:
    """A SQLite journal file. Synchronous methods are for front ends (status, resume
    look-ups); the engine uses the ``a*`` coroutines, which run on one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        ensure_private_dir(self.path.parent)
        with db.mapped_errors(JournalError, str(self.path), "create the journal"):
            db.private_file(self.path)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None

    # -- connection (only ever used from the worker thread, or synchronously when idle) --------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = db.connect_sqlite(self.path, error=JournalError, what="the journal",
                                     wal=True, private=True)
            try:
                with db.mapped_errors(JournalError, str(self.path), "set up the journal"):
                    # WAL with synchronous=NORMAL: a committed transition survives a crash of
                    # the controller (not of the machine), at a fraction of FULL's fsyncs
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.executescript(SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        self._executor.shutdown(wait=True)      # pending writes land before the connection goes
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        conn = self._connect()
        with db.mapped_errors(JournalError, str(self.path),
                              "read the journal" if sql.startswith("SELECT")
                              else "write the journal"):
            return conn.execute(sql, params)

    # -- writes ---------------------------------------------------------------------------------

    def begin(self, *, fleet: str, fleet_path: str | None, strategy: str, current: str,
              target: str, plan: dict[str, Any], now: float | None = None) -> str:
        rollout = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._execute(
            "INSERT INTO rollouts (id, fleet, fleet_path, strategy, current, target, plan, status,"
            " started, controller) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (rollout, fleet, fleet_path, strategy, current, target,
             json.dumps(redact_data(plan)), "running",
             now if now is not None else time.time(), f"{socket.gethostname()}:{os.getpid()}"))
        return rollout

    def append(self, rollout: str, seq: int, ts: float, kind: str, data: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO events (rollout, seq, ts, kind, data) VALUES (?,?,?,?,?)",
            (rollout, seq, ts, kind, json.dumps(redact_data(data), default=str)))

    def finish(self, rollout: str, status: str, now: float | None = None) -> None:
        self._execute("UPDATE rollouts SET status=?, finished=? WHERE id=?",
                                (status, now if now is not None else time.time(), rollout))

    def claim(self, rollout: str) -> None:
        """Record that this process now drives ``rollout`` (resume): running again."""
        self._execute("UPDATE rollouts SET controller=?, status='running' WHERE id=?",
                                (f"{socket.gethostname()}:{os.getpid()}", rollout))

    def note_lock(self, fleet: str, action: str, reason: str,
                  holder: dict[str, Any] | None) -> None:
        """Journal a change of the fleet lock made by hand or over a dead holder."""
        self._execute("INSERT INTO fleet_lock_log (fleet, ts, action, reason, holder, by_whom)"
                      " VALUES (?,?,?,?,?,?)",
                      (fleet, time.time(), action, reason,
                       json.dumps(holder) if holder is not None else None, lock_by()))

    def lock_log(self, fleet: str, limit: int = 10) -> list[LockNote]:
        rows = self._execute("SELECT ts, action, reason, holder, by_whom FROM fleet_lock_log "
                             "WHERE fleet=? ORDER BY ts DESC LIMIT ?", (fleet, limit)).fetchall()
        return [LockNote(ts, action, reason, json.loads(h) if h else None, by)
                for ts, action, reason, h, by in rows]

    async def abegin(self, **kwargs: Any) -> str:
        return await self._call(lambda: self.begin(**kwargs))

    async def aappend(self, rollout: str, seq: int, ts: float, kind: str,
                      data: dict[str, Any]) -> None:
        await self._call(self.append, rollout, seq, ts, kind, data)

    async def afinish(self, rollout: str, status: str, now: float | None = None) -> None:
        await self._call(self.finish, rollout, status, now)

    # -- reads ----------------------------------------------------------------------------------

    def _record(self, row: Iterable[Any]) -> RolloutRecord:
        (rid, fleet, fleet_path, strategy, current, target, plan, status, started, finished,
         controller) = row
        return RolloutRecord(rid, fleet, fleet_path, strategy, current, target, json.loads(plan),
                             status, started, finished, controller)

    _COLUMNS = ("id, fleet, fleet_path, strategy, current, target, plan, status, started, "
                "finished, controller")

    def unfinished(self, fleet: str) -> RolloutRecord | None:
        row = self._execute(
            f"SELECT {self._COLUMNS} FROM rollouts WHERE fleet=? AND status IN (?, ?) "
            "ORDER BY started DESC LIMIT 1", (fleet, *UNFINISHED)).fetchone()
        return self._record(row) if row else None

    def latest(self, fleet: str) -> RolloutRecord | None:
        row = self._execute(
            f"SELECT {self._COLUMNS} FROM rollouts WHERE fleet=? ORDER BY started DESC LIMIT 1",
            (fleet,)).fetchone()
        return self._record(row) if row else None

    def completed(self, fleet: str, limit: int = 50) -> list[RolloutRecord]:
        """The fleet's completed rollouts, newest first (the roll-back window reads them)."""
        rows = self._execute(
            f"SELECT {self._COLUMNS} FROM rollouts WHERE fleet=? AND status='completed' "
            "ORDER BY finished DESC LIMIT ?", (fleet, limit)).fetchall()
        return [self._record(row) for row in rows]

    def get(self, rollout: str) -> RolloutRecord | None:
        row = self._execute(f"SELECT {self._COLUMNS} FROM rollouts WHERE id=?",
                                      (rollout,)).fetchone()
        return self._record(row) if row else None

    def entries(self, rollout: str) -> list[JournalEntry]:
        rows = self._execute(
            "SELECT seq, ts, kind, data FROM events WHERE rollout=? ORDER BY seq", (rollout,)
        ).fetchall()
        return [JournalEntry(seq, ts, kind, json.loads(data)) for seq, ts, kind, data in rows]


class FleetLock:
    """One controller per fleet: an exclusive ``flock`` on ``<state_dir>/<fleet>.lock``."""

    def __init__(self, state_dir: str | Path, fleet: str) -> None:
        self.path = Path(state_dir) / f"{fleet}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another controller"
            os.close(fd)
            raise PolicyRefused(
                f"fleet is being driven by {holder}; one rollout per fleet at a time") from None
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.write(fd, holder_text().encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FleetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
