"""The journal and the fleet lock on PostgreSQL (``--state postgresql://...``), so that several
controllers on several machines share one truth and cannot drive one fleet at once.

Tables live in a schema of their own, ``upgrader_state``: ``rollouts`` and ``events`` (the
same records as the SQLite journal) and ``fleet_locks`` (who holds each fleet's lock, for
messages). The lock itself is a session-level advisory lock,
``pg_try_advisory_lock(fleet_lock_key(fleet))``, held by a connection of its own for the
controller's lifetime: when the controller dies, its session ends and PostgreSQL releases the
lock (a SIGKILLed process at once, a vanished machine when TCP keepalives give up).

Every journal write is fenced: it only lands while the lock session that guards it still
holds the fleet's advisory lock (checked in the same statement, in ``pg_locks``). A controller
whose lock session was lost (a server restart, a network cut) therefore stops at its next
transition instead of racing a controller that took the lock over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from . import db
from .db import is_postgres_url
from .errors import JournalError, PolicyRefused
from .journal import JournalEntry, LockNote, RolloutRecord, current_user, lock_by
from .redact import redact_data, redact_url

__all__ = ["KEEPALIVES", "SCHEMA", "LockHolder", "PostgresFleetLock", "PostgresJournal",
           "ensure_schema", "fleet_lock_key", "is_postgres_url", "lock_holder", "read_holder"]

T = TypeVar("T")

SCHEMA = "upgrader_state"
SCHEMA_VERSION = 1
#: libpq keepalives on the lock connection: a controller whose machine vanished loses its
#: lock after about idle + interval * count seconds
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}

_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.rollouts (
        id text PRIMARY KEY,
        fleet text NOT NULL,
        fleet_path text,
        strategy text NOT NULL,
        current text NOT NULL,
        target text NOT NULL,
        plan text NOT NULL,
        status text NOT NULL,
        started double precision NOT NULL,
        finished double precision,
        controller text)""",
    f"CREATE INDEX IF NOT EXISTS rollouts_fleet ON {SCHEMA}.rollouts (fleet, status, started)",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.events (
        rollout text NOT NULL REFERENCES {SCHEMA}.rollouts (id) ON DELETE CASCADE,
        seq bigint NOT NULL,
        ts double precision NOT NULL,
        kind text NOT NULL,
        data text NOT NULL,
        PRIMARY KEY (rollout, seq))""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_locks (
        fleet text PRIMARY KEY,
        lock_key bigint NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        username text NOT NULL,
        since timestamptz NOT NULL,
        backend_pid integer NOT NULL,
        backend_start timestamptz NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_lock_log (
        fleet text NOT NULL,
        ts double precision NOT NULL,
        action text NOT NULL,
        reason text NOT NULL,
        holder text,
        by_whom text NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (
        key text PRIMARY KEY,
        value text NOT NULL)""",
)
_TABLES = ("rollouts", "events", "fleet_locks", "fleet_lock_log", "meta")
_COLUMNS = ("id, fleet, fleet_path, strategy, current, target, plan, status, started, "
            "finished, controller")

#: true while the session (pid, backend_start) holds the advisory lock with this key
_FENCE = """EXISTS (
    SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = %(classid)s AND l.objid::bigint = %(objid)s
      AND l.pid = %(lock_pid)s AND a.backend_start = %(lock_start)s)"""


def fleet_lock_key(fleet: str) -> int:
    """The advisory lock key of ``fleet``: the first 8 bytes of
    ``sha256(b"upgrader fleet lock\\0" + fleet)`` as a signed big-endian integer (documented
    in docs/STATE.md, so other tools can find the lock)."""
    digest = hashlib.sha256(b"upgrader fleet lock\0" + fleet.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _key_parts(key: int) -> dict[str, int]:
    """How ``pg_locks`` shows a bigint advisory key: high and low 32 bits."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return {"classid": unsigned >> 32, "objid": unsigned & 0xFFFFFFFF}


def _connect(url: str, *, application_name: str = db.JOURNAL_APPLICATION,
             **extra: Any) -> Any:
    return db.connect_postgres(url, application_name=application_name, error=JournalError,
                               what="the state database", **extra)


def _psycopg() -> Any:
    return db.psycopg_module(JournalError)


def ensure_schema(conn: Any) -> None:
    """Create the ``upgrader_state`` tables once per database. Openers serialise on a
    transaction-level advisory lock and look again, so DDL never runs twice at once."""
    def present() -> bool:
        names = [f"{SCHEMA}.{t}" for t in _TABLES]
        row = conn.execute("SELECT " + " AND ".join(["to_regclass(%s) IS NOT NULL"] * len(names)),
                           names).fetchone()
        return bool(row[0])

    if present():
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("upgrader_state_schema",))
        if present():
            return
        for statement in _DDL:
            conn.execute(statement)
        conn.execute(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('schema_version', %s) "
                     "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))


# ---------------------------------------------------------------------------------- the lock


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a fleet's lock: the controller's host, pid, user and since when; the
    rollout it drives (None before it has begun one); its PostgreSQL session."""

    fleet: str
    host: str | None
    pid: int | None
    user: str | None
    since: datetime | None
    rollout: str | None
    backend_pid: int

    def describe(self) -> str:
        if self.host is None:
            text = f"another controller (PostgreSQL session pid {self.backend_pid})"
        else:
            since = self.since.strftime("%Y-%m-%d %H:%M:%S %z") if self.since else "?"
            text = f"pid {self.pid} on {self.host} (user {self.user}) since {since}"
        return text + (f", rollout {self.rollout}" if self.rollout else "")

    def to_json(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "host": self.host, "pid": self.pid, "user": self.user,
                "since": self.since.isoformat() if self.since else None,
                "rollout": self.rollout, "backend_pid": self.backend_pid}


def read_holder(conn: Any, fleet: str) -> LockHolder | None:
    """The holder of ``fleet``'s lock now, or None when nobody holds it. Reads ``pg_locks``
    (never takes the lock, so looking cannot get in a starting controller's way)."""
    parts = _key_parts(fleet_lock_key(fleet))
    row = conn.execute(
        "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.objsubid = 1 AND l.classid::bigint = %(classid)s "
        "AND l.objid::bigint = %(objid)s "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        parts).fetchone()
    if row is None:
        return None
    backend_pid = int(row[0])
    info = conn.execute(
        f"SELECT host, pid, username, since FROM {SCHEMA}.fleet_locks "
        "WHERE fleet = %s AND backend_pid = %s", (fleet, backend_pid)).fetchone()
    rollout = conn.execute(
        f"SELECT id FROM {SCHEMA}.rollouts WHERE fleet = %s AND status = 'running' "
        "ORDER BY started DESC LIMIT 1", (fleet,)).fetchone()
    host, pid, user, since = info if info else (None, None, None, None)
    return LockHolder(fleet, host, pid, user, since, rollout[0] if rollout else None,
                      backend_pid)


def lock_holder(url: str, fleet: str) -> LockHolder | None:
    """:func:`read_holder` on a short-lived connection."""
    conn = _connect(url)
    try:
        ensure_schema(conn)
        return read_holder(conn, fleet)
    finally:
        conn.close()


class PostgresFleetLock:
    """One controller per fleet, across machines: a session-level advisory lock held by a
    dedicated connection from :meth:`acquire` to :meth:`release` (or the process's death)."""

    def __init__(self, url: str, fleet: str) -> None:
        self.url = url
        self.fleet = fleet
        self.key = fleet_lock_key(fleet)
        self._conn: Any = None
        #: (backend pid, backend start) of the session holding the lock, for fencing
        self.session: tuple[int, datetime] | None = None

    def __repr__(self) -> str:
        return f"PostgresFleetLock({redact_url(self.url)!r}, {self.fleet!r})"

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self) -> None:
        psycopg = _psycopg()
        conn = _connect(self.url, application_name=db.LOCK_APPLICATION, **KEEPALIVES)
        try:
            ensure_schema(conn)
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
            if not got:
                holder = read_holder(conn, self.fleet)
                raise PolicyRefused(
                    f"fleet {self.fleet} is being driven by "
                    f"{holder.describe() if holder else 'another controller'}; "
                    "one controller per fleet at a time")
            backend_pid, backend_start = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            conn.execute(
                f"INSERT INTO {SCHEMA}.fleet_locks (fleet, lock_key, host, pid, username, since,"
                " backend_pid, backend_start) VALUES (%s, %s, %s, %s, %s, now(), %s, %s) "
                "ON CONFLICT (fleet) DO UPDATE SET lock_key = EXCLUDED.lock_key, "
                "host = EXCLUDED.host, pid = EXCLUDED.pid, username = EXCLUDED.username, "
                "since = EXCLUDED.since, backend_pid = EXCLUDED.backend_pid, "
                "backend_start = EXCLUDED.backend_start",
                (self.fleet, self.key, socket.gethostname(), os.getpid(), current_user(),
                 backend_pid, backend_start))
        except psycopg.Error as exc:
            conn.close()
            raise db.storage_error(
                JournalError, f"cannot take the fleet lock of {self.fleet}: "
                f"{db.error_text(exc, self.url)}", redact_url(self.url)) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.session = (int(backend_pid), backend_start)

    def fence(self) -> dict[str, Any]:
        """Parameters of the fencing check (see ``_FENCE``) for this lock's session."""
        if self.session is None:
            raise JournalError(f"the fleet lock of {self.fleet} is not held: the journal "
                               "cannot be fenced with it", database=redact_url(self.url))
        return {**_key_parts(self.key), "lock_pid": self.session[0],
                "lock_start": self.session[1]}

    def release(self) -> None:
        conn, self._conn = self._conn, None
        self.session = None
        if conn is None:
            return
        try:
            if not conn.closed and not conn.broken:
                conn.execute(f"DELETE FROM {SCHEMA}.fleet_locks WHERE fleet = %s "
                             "AND backend_pid = pg_backend_pid()", (self.fleet,))
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except Exception:        # the session is going anyway: closing it frees the lock
            pass
        finally:
            conn.close()

    def __enter__(self) -> PostgresFleetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------- the journal


class PostgresJournal:
    """The journal in ``upgrader_state.rollouts`` / ``upgrader_state.events``. The same API as
    :class:`upgrader.journal.Journal`: synchronous methods for front ends, ``a*`` coroutines
    for the engine (one worker thread, so writes stay in order)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                thread_name_prefix="journal")
        self._conn: Any = None
        self._fence: dict[str, Any] | None = None
        self._connect()

    def __repr__(self) -> str:
        return f"PostgresJournal({redact_url(self.url)!r})"

    def fence_with(self, lock: PostgresFleetLock) -> None:
        """From now on every write lands only while ``lock`` is still held."""
        self._fence = lock.fence()

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = _connect(self.url)
            try:
                ensure_schema(self._conn)
            except Exception:
                self._conn.close()
                self._conn = None
                raise
        return self._conn

    def _run(self, what: str, work: Callable[[Any], Any]) -> Any:
        """``work(conn)``; once more on a new connection if the first one was lost (every
        write is idempotent: inserts ignore a row that is already there)."""
        psycopg = _psycopg()
        try:
            return work(self._connect())
        except psycopg.OperationalError:
            pass
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc
        try:
            self._conn.close()
        except psycopg.Error:
            pass
        try:
            return work(self._connect())
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: Exception) -> JournalError:
        return db.storage_error(JournalError, f"cannot {what} the journal: "
                                f"{db.error_text(exc, self.url)}", redact_url(self.url))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- writes -----------------------------------------------------------------------------

    def _fenced(self, conn: Any, sql: str, params: dict[str, Any]) -> None:
        """Run a write whose SQL ends in ``WHERE {fence}``; PolicyRefused if the lock was lost
        (a write that only met an existing row, after a reconnect, is fine)."""
        if self._fence is None:
            conn.execute(sql.replace("{fence}", "TRUE"), params)
            return
        cursor = conn.execute(sql.replace("{fence}", _FENCE), {**params, **self._fence})
        if cursor.rowcount:
            return
        if not conn.execute("SELECT " + _FENCE, self._fence).fetchone()[0]:
            raise PolicyRefused("this controller lost the fleet lock (its PostgreSQL session "
                                "ended); it stops here so that no two controllers drive the "
                                "fleet: `upgrader status FLEET` shows who holds it now")

    def begin(self, *, fleet: str, fleet_path: str | None, strategy: str, current: str,
              target: str, plan: dict[str, Any], now: float | None = None) -> str:
        rollout = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        params = {"id": rollout, "fleet": fleet, "fleet_path": fleet_path,
                  "strategy": strategy, "current": current, "target": target,
                  "plan": json.dumps(redact_data(plan)),
                  "started": now if now is not None else time.time(),
                  "controller": f"{socket.gethostname()}:{os.getpid()}"}
        self._run("write", lambda conn: self._fenced(conn, (
            f"INSERT INTO {SCHEMA}.rollouts (id, fleet, fleet_path, strategy, current, target, "
            "plan, status, started, controller) SELECT %(id)s, %(fleet)s, %(fleet_path)s, "
            "%(strategy)s, %(current)s, %(target)s, %(plan)s, 'running', %(started)s, "
            "%(controller)s WHERE {fence} ON CONFLICT (id) DO NOTHING"), params))
        return rollout

    def append(self, rollout: str, seq: int, ts: float, kind: str, data: dict[str, Any]) -> None:
        params = {"rollout": rollout, "seq": seq, "ts": ts, "kind": kind,
                  "data": json.dumps(redact_data(data), default=str)}
        self._run("write", lambda conn: self._fenced(conn, (
            f"INSERT INTO {SCHEMA}.events (rollout, seq, ts, kind, data) SELECT %(rollout)s, "
            "%(seq)s, %(ts)s, %(kind)s, %(data)s WHERE {fence} "
            "ON CONFLICT (rollout, seq) DO NOTHING"), params))

    def finish(self, rollout: str, status: str, now: float | None = None) -> None:
        params = {"id": rollout, "status": status,
                  "finished": now if now is not None else time.time()}
        self._run("write", lambda conn: self._fenced(conn, (
            f"UPDATE {SCHEMA}.rollouts SET status = %(status)s, finished = %(finished)s "
            "WHERE id = %(id)s AND {fence}"), params))

    def claim(self, rollout: str) -> None:
        """Record that this process now drives ``rollout`` (resume)."""
        params = {"id": rollout, "controller": f"{socket.gethostname()}:{os.getpid()}"}
        self._run("write", lambda conn: self._fenced(conn, (
            f"UPDATE {SCHEMA}.rollouts SET controller = %(controller)s, status = 'running' "
            "WHERE id = %(id)s AND {fence}"), params))

    def note_lock(self, fleet: str, action: str, reason: str,
                  holder: dict[str, Any] | None) -> None:
        """Journal a change of the fleet lock made by hand or over a dead holder (not fenced:
        ``upgrader unlock`` holds no lock)."""
        params = (fleet, time.time(), action, reason,
                  json.dumps(holder) if holder is not None else None, lock_by())
        self._run("write", lambda conn: conn.execute(
            f"INSERT INTO {SCHEMA}.fleet_lock_log (fleet, ts, action, reason, holder, by_whom) "
            "VALUES (%s, %s, %s, %s, %s, %s)", params))

    def lock_log(self, fleet: str, limit: int = 10) -> list[LockNote]:
        rows = self._run("read", lambda conn: conn.execute(
            f"SELECT ts, action, reason, holder, by_whom FROM {SCHEMA}.fleet_lock_log "
            "WHERE fleet = %s ORDER BY ts DESC LIMIT %s", (fleet, limit)).fetchall())
        return [LockNote(ts, action, reason, json.loads(h) if h else None, by)
                for ts, action, reason, h, by in rows]

    async def abegin(self, **kwargs: Any) -> str:
        return await self._call(lambda: self.begin(**kwargs))

    async def aappend(self, rollout: str, seq: int, ts: float, kind: str,
                      data: dict[str, Any]) -> None:
        await self._call(self.append, rollout, seq, ts, kind, data)

    async def afinish(self, rollout: str, status: str, now: float | None = None) -> None:
        await self._call(self.finish, rollout, status, now)

    # -- reads ------------------------------------------------------------------------------

    @staticmethod
    def _record(row: Any) -> RolloutRecord:
        (rid, fleet, fleet_path, strategy, current, target, plan, status, started, finished,
         controller) = row
        return RolloutRecord(rid, fleet, fleet_path, strategy, current, target, json.loads(plan),
                             status, started, finished, controller)

    def _one(self, sql: str, params: tuple[Any, ...]) -> RolloutRecord | None:
        row = self._run("read", lambda conn: conn.execute(sql, params).fetchone())
        return self._record(row) if row else None

    def unfinished(self, fleet: str) -> RolloutRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM {SCHEMA}.rollouts WHERE fleet = %s AND "
                         "status IN ('running', 'rollback_incomplete') "
                         "ORDER BY started DESC LIMIT 1", (fleet,))

    def latest(self, fleet: str) -> RolloutRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM {SCHEMA}.rollouts WHERE fleet = %s "
                         "ORDER BY started DESC LIMIT 1", (fleet,))

    def completed(self, fleet: str, limit: int = 50) -> list[RolloutRecord]:
        """The fleet's completed rollouts, newest first (the roll-back window reads them)."""
        rows = self._run("read", lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM {SCHEMA}.rollouts WHERE fleet = %s AND "
            "status = 'completed' ORDER BY finished DESC LIMIT %s", (fleet, limit)).fetchall())
        return [self._record(row) for row in rows]

    def get(self, rollout: str) -> RolloutRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM {SCHEMA}.rollouts WHERE id = %s", (rollout,))

    def entries(self, rollout: str) -> list[JournalEntry]:
        rows = self._run("read", lambda conn: conn.execute(
            f"SELECT seq, ts, kind, data FROM {SCHEMA}.events WHERE rollout = %s ORDER BY seq",
            (rollout,)).fetchall())
        return [JournalEntry(int(seq), ts, kind, json.loads(data)) for seq, ts, kind, data in rows]
