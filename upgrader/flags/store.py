"""Flag stores: the flag set in SQLite (a file, the default) or PostgreSQL, with an audit trail.

``open_store(spec)``: a file path (or ``sqlite:///path``, or ``:memory:``) or a
``postgresql://`` URL. The whole flag set is one JSON document with a version number; every
change is one transaction that locks it (SQLite ``BEGIN IMMEDIATE``, PostgreSQL
``SELECT ... FOR UPDATE``), applies a pure edit (:mod:`upgrader.flags.edit`), checks the
result with the flags file's rules, writes it with the version bumped, and writes one audit
row per changed flag. Two processes changing one store therefore never lose an update, and a
change that would make the flag set invalid is refused (ConfigError) and changes nothing.

The API is synchronous (short transactions); async callers use ``asyncio.to_thread``.
``version()`` is one indexed read: a server polls it (every ~200 ms) and reloads only when
it moved. ``load()`` hands out the same FlagSet object while the version is unchanged, so
``compile_flags(store.load(), env)`` compiles once per version.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .. import db
from ..errors import ConfigError, StoreError
from . import edit
from .evaluate import Evaluator, compile_flags
from .loader import from_data, to_data, validate
from .model import FlagSet

__all__ = ["AuditEntry", "FlagStore", "LiveFlags", "default_actor", "default_store_spec",
           "open_store", "redact"]

#: where `upgrader flags` keeps flags unless --store or $UPGRADER_FLAG_STORE says otherwise
DEFAULT_STORE = ".upgrader/flags.sqlite"
STORE_VARIABLE = "UPGRADER_FLAG_STORE"

SET_TABLE = "upgrader_flag_set"
AUDIT_TABLE = "upgrader_flag_audit"
SCHEMA_VERSION = 1


def default_store_spec() -> str:
    """``$UPGRADER_FLAG_STORE`` or ``.upgrader/flags.sqlite``."""
    return os.environ.get(STORE_VARIABLE) or DEFAULT_STORE


def default_actor() -> str:
    """``$USER@hostname``: who a change is recorded as when the caller does not say."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except Exception:          # no login name (containers without passwd entries)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def redact(spec: str) -> str:
    """The store spec without a password, for messages."""
    return db.describe(spec)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change of one flag (``flag`` is None for a change of environments or tiers).

    ``old`` / ``new``: for ``enable``/``disable`` the enabled state, for ``rollout`` the
    percentage, for ``default`` the variant, for ``import`` and ``change`` the flag's whole
    definition (None when it was added / removed). ``version``: the store version it made.
    """

    id: int
    ts: str
    actor: str
    flag: str | None
    environment: str | None
    action: str
    old: Any
    new: Any
    reason: str
    version: int


@dataclass(frozen=True, slots=True)
class _Row:
    flag: str | None
    environment: str | None
    action: str
    old: Any
    new: Any


class _Transaction(Protocol):
    def read(self) -> tuple[int, str | None]: ...
    def write(self, version: int, document: str, ts: str) -> None: ...
    def audit(self, ts: str, actor: str, row: _Row, reason: str, version: int) -> None: ...


class FlagStore:
    """The flag set of one store. Thread-safe (one connection behind a lock)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._lock = threading.RLock()
        self._cached: FlagSet | None = None
        #: run inside every change, after the edit and its checks and before the write:
        #: ``guard(before, after)`` may raise to refuse the change (nothing is written). The
        #: flag schema check (:class:`upgrader.flags.schemaguard.SchemaGuard`) is one.
        self.guard: Callable[[FlagSet, FlagSet], None] | None = None

    # -- backend primitives (SQLite / PostgreSQL)

    def _read_version(self) -> int:
        raise NotImplementedError

    def _read(self) -> tuple[int, str | None]:
        raise NotImplementedError

    def _locked(self) -> AbstractContextManager[_Transaction]:
        raise NotImplementedError

    def _history(self, key: str | None, limit: int) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> FlagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.spec)}>"

    # -- reading

    def version(self) -> int:
        """The store's change counter (0: never written). Cheap: poll it."""
        with self._lock:
            return self._read_version()

    def load(self) -> FlagSet:
        """The current flag set (the same object while the version does not change)."""
        with self._lock:
            cached = self._cached
            if cached is not None and self._read_version() == cached.version:
                return cached
            version, document = self._read()
            flagset = self._parse(version, document)
            self._cached = flagset
            return flagset

    def evaluator(self, environment: str) -> Evaluator:
        """``compile_flags(self.load(), environment)``: compiled once per version."""
        return compile_flags(self.load(), environment)

    def _parse(self, version: int, document: str | None) -> FlagSet:
        if document is None:
            return FlagSet(version=version)
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise StoreError(f"the stored flag set is not valid JSON: {exc}",
                             store=redact(self.spec)) from exc
        flagset = from_data(data, source=f"{redact(self.spec)} (stored flag set)")
        if flagset.version != version:
            flagset = dataclasses.replace(flagset, version=version)
        return flagset

    def history(self, key: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """Audit entries, newest first (of flag ``key`` only, if given)."""
        with self._lock:
            rows = self._history(key, max(0, int(limit)))
        return [AuditEntry(id=int(r[0]), ts=r[1], actor=r[2], flag=r[3], environment=r[4],
                           action=r[5], old=_loads(r[6]), new=_loads(r[7]), reason=r[8] or "",
                           version=int(r[9]))
                for r in rows]

    # -- changing

    def replace(self, flagset: FlagSet, *, actor: str | None = None, reason: str = "") -> int:
        """Make ``flagset`` the store's flag set (``flags import``); its ``version`` is
        ignored. One audit row (action ``import``) per flag added, removed or changed.
        Returns the store's version afterwards (unchanged when nothing changed)."""
        checked = validate(flagset)
        return self.change(lambda current: checked, action="import", actor=actor,
                           reason=reason)

    def set_enabled(self, key: str, environment: str, on: bool, *, actor: str | None = None,
                    reason: str = "") -> int:
        """Turn a flag on or off in one environment (action ``enable`` / ``disable``)."""
        def describe(old: FlagSet, new: FlagSet) -> list[_Row]:
            return [_Row(key, environment, "enable" if on else "disable",
                         old.flags[key].env(environment).enabled, bool(on))]

        return self._apply(lambda fs: edit.set_enabled(fs, key, environment, on), describe,
                           actor, reason, key, environment)

    def set_rollout(self, key: str, environment: str, percent: float, *,
                    rule: str | None = None, variant: str | None = None,
                    actor: str | None = None, reason: str = "") -> int:
        """Set the flag's roll-out percentage (see :func:`upgrader.flags.edit.set_rollout`)."""
        def describe(old: FlagSet, new: FlagSet) -> list[_Row]:
            return [_Row(key, environment, "rollout",
                         edit.rollout_percent(old.flags[key], environment, rule),
                         edit.rollout_percent(new.flags[key], environment, rule))]

        return self._apply(
            lambda fs: edit.set_rollout(fs, key, environment, percent, rule=rule,
                                        variant=variant),
            describe, actor, reason, key, environment)

    def set_default(self, key: str, environment: str, variant: str, *,
                    actor: str | None = None, reason: str = "") -> int:
        """Serve ``variant`` by default in ``environment`` (action ``default``)."""
        def describe(old: FlagSet, new: FlagSet) -> list[_Row]:
            return [_Row(key, environment, "default", old.flags[key].default_in(environment),
                         variant)]

        return self._apply(lambda fs: edit.set_default(fs, key, environment, variant),
                           describe, actor, reason, key, environment)

    def change(self, edit_function: Callable[[FlagSet], FlagSet], *, action: str = "change",
               actor: str | None = None, reason: str = "") -> int:
        """Apply any pure edit (FlagSet -> FlagSet) in one transaction: several flags at once
        (bisection), or a whole new flag set. Audited per changed flag under ``action``."""
        def describe(old: FlagSet, new: FlagSet) -> list[_Row]:
            return _diff(old, new, action)

        return self._apply(edit_function, describe, actor, reason, None, None)

    def _apply(self, edit_function: Callable[[FlagSet], FlagSet],
               describe: Callable[[FlagSet, FlagSet], list[_Row]], actor: str | None,
               reason: str, key: str | None, environment: str | None) -> int:
        actor = actor or default_actor()
        with self._lock, self._locked() as tx:
            version, document = tx.read()
            current = self._parse(version, document)
            changed = validate(edit_function(current))
            old_data, new_data = to_data(current), to_data(changed)
            del old_data["version"], new_data["version"]
            if old_data == new_data and _same_types(old_data, new_data):
                return version                     # nothing to change, nothing to audit
            if self.guard is not None:
                self.guard(current, changed)
            new_version = version + 1
            new_data = {"version": new_version, **new_data}
            ts = _now()
            tx.write(new_version, json.dumps(new_data, ensure_ascii=False), ts)
            for row in describe(current, changed):
                tx.audit(ts, actor, row, reason, new_version)
        return new_version


def _same_types(a: Any, b: Any) -> bool:
    """Equal data can still differ in type (True == 1): a change of a variant's type counts."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_types(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_types(x, y) for x, y in zip(a, b))
    return True


def _flag_data(flagset: FlagSet, key: str) -> Any:
    data = to_data(dataclasses.replace(flagset, flags={key: flagset.flags[key]}))
    return data["flags"][key]


def _diff(old: FlagSet, new: FlagSet, action: str) -> list[_Row]:
    rows: list[_Row] = []
    if old.environments != new.environments or old.tiers != new.tiers:
        rows.append(_Row(None, None, action,
                         {k: v for k, v in to_data(old).items() if k in ("environments",
                                                                        "tiers")},
                         {k: v for k, v in to_data(new).items() if k in ("environments",
                                                                        "tiers")}))
    for key in list(old.flags) + [k for k in new.flags if k not in old.flags]:
        before = _flag_data(old, key) if key in old.flags else None
        after = _flag_data(new, key) if key in new.flags else None
        if before != after or not _same_types(before, after):
            rows.append(_Row(key, None, action, before, after))
    return rows


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# SQLite


class SQLiteFlagStore(FlagStore):
    """A SQLite file (WAL, mode 0600) or ``:memory:``."""

    def __init__(self, spec: str, path: str) -> None:
        super().__init__(spec)
        self.path = path
        self._conn = db.connect_sqlite(db.SQLiteTarget(path, spec), error=StoreError,
                                       what="the flag store", wal=True, private=True)
        with db.mapped_errors(StoreError, redact(spec), "open the flag store"):
            self._create_schema()

    def _create_schema(self) -> None:
        conn = self._conn
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"""CREATE TABLE IF NOT EXISTS {SET_TABLE} (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL,
                document TEXT,
                updated_at TEXT NOT NULL)""")
            conn.execute(f"""CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ts TEXT NOT NULL,
                actor TEXT NOT NULL,
                flag_key TEXT,
                environment TEXT,
                action TEXT NOT NULL,
                old TEXT,
                new TEXT,
                reason TEXT NOT NULL DEFAULT '',
                version INTEGER NOT NULL)""")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_flag "
                         f"ON {AUDIT_TABLE} (flag_key, id)")
            conn.execute(f"INSERT OR IGNORE INTO {SET_TABLE} (id, version, document, updated_at) "
                         f"VALUES (1, 0, NULL, ?)", (_now(),))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _read_version(self) -> int:
        with db.mapped_errors(StoreError, redact(self.spec), "read the flag store"):
            row = self._conn.execute(f"SELECT version FROM {SET_TABLE} WHERE id = 1").fetchone()
        return int(row[0])

    def _read(self) -> tuple[int, str | None]:
        with db.mapped_errors(StoreError, redact(self.spec), "read the flag store"):
            row = self._conn.execute(
                f"SELECT version, document FROM {SET_TABLE} WHERE id = 1").fetchone()
        return int(row[0]), row[1]

    @contextmanager
    def _locked(self) -> Iterator[_Transaction]:
        conn = self._conn
        with db.mapped_errors(StoreError, redact(self.spec), "lock the flag store"):
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteTransaction(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise db.storage_error(StoreError, f"cannot write the flag store: "
                                   f"{db.error_text(exc)}", redact(self.spec)) from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _history(self, key: str | None, limit: int) -> list[tuple[Any, ...]]:
        columns = "id, ts, actor, flag_key, environment, action, old, new, reason, version"
        rows: list[tuple[Any, ...]]
        with db.mapped_errors(StoreError, redact(self.spec), "read the audit trail"):
            if key is None:
                rows = self._conn.execute(f"SELECT {columns} FROM {AUDIT_TABLE} "
                                          f"ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._conn.execute(f"SELECT {columns} FROM {AUDIT_TABLE} WHERE "
                                          f"flag_key = ? ORDER BY id DESC LIMIT ?",
                                          (key, limit)).fetchall()
        return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _SQLiteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def read(self) -> tuple[int, str | None]:
        row = self.conn.execute(
            f"SELECT version, document FROM {SET_TABLE} WHERE id = 1").fetchone()
        return int(row[0]), row[1]

    def write(self, version: int, document: str, ts: str) -> None:
        self.conn.execute(f"UPDATE {SET_TABLE} SET version = ?, document = ?, updated_at = ? "
                          f"WHERE id = 1", (version, document, ts))

    def audit(self, ts: str, actor: str, row: _Row, reason: str, version: int) -> None:
        self.conn.execute(
            f"INSERT INTO {AUDIT_TABLE} (ts, actor, flag_key, environment, action, old, new, "
            f"reason, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, actor, row.flag, row.environment, row.action, _dumps(row.old), _dumps(row.new),
             reason, version))


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresFlagStore(FlagStore):
    """Tables ``upgrader_flag_set`` and ``upgrader_flag_audit`` in a PostgreSQL database."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self._psycopg = db.psycopg_module(StoreError, redact(spec))
        self._conn: Any = None
        self._connect()

    def _error(self, what: str, exc: Exception) -> StoreError:
        return db.storage_error(StoreError, f"{what}: {db.error_text(exc, self.spec)}",
                                redact(self.spec))

    def _connect(self) -> None:
        psycopg = self._psycopg
        self._conn = db.connect_postgres(self.spec, application_name=db.FLAGS_APPLICATION,
                                         error=StoreError, what="the flag store")
        try:
            if not self._tables_exist():
                self._create_schema()
        except psycopg.Error as exc:
            self._conn.close()
            raise self._error("cannot open the flag store", exc) from exc

    def _tables_exist(self) -> bool:
        return bool(self._conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (SET_TABLE, AUDIT_TABLE)).fetchone()[0])

    def _create_schema(self) -> None:
        """Once per database. DDL (CREATE INDEX locks the table even when the index exists)
        never runs beside writers: openers serialise on an advisory lock and look again."""
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               ("upgrader_flag_schema",))
            if self._tables_exist():
                return
            self._conn.execute(f"""CREATE TABLE IF NOT EXISTS {SET_TABLE} (
                id integer PRIMARY KEY CHECK (id = 1),
                version bigint NOT NULL,
                document text,
                updated_at text NOT NULL)""")
            self._conn.execute(f"""CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
                id bigserial PRIMARY KEY,
                ts text NOT NULL,
                actor text NOT NULL,
                flag_key text,
                environment text,
                action text NOT NULL,
                old text,
                new text,
                reason text NOT NULL DEFAULT '',
                version bigint NOT NULL)""")
            self._conn.execute(f"CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_flag "
                               f"ON {AUDIT_TABLE} (flag_key, id)")
            self._conn.execute(f"INSERT INTO {SET_TABLE} (id, version, document, updated_at) "
                               f"VALUES (1, 0, NULL, %s) ON CONFLICT (id) DO NOTHING", (_now(),))

    def _retry(self, what: str, read: Callable[[], Any]) -> Any:
        """Reads survive one lost connection (a server restart): reconnect and read again."""
        psycopg = self._psycopg
        try:
            return read()
        except psycopg.OperationalError:
            pass
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc
        try:
            self._conn.close()
        except psycopg.Error:
            pass
        self._connect()
        try:
            return read()
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    def _read_version(self) -> int:
        version: int = self._retry("cannot read the flag store", lambda: int(self._conn.execute(
            f"SELECT version FROM {SET_TABLE} WHERE id = 1").fetchone()[0]))
        return version

    def _read(self) -> tuple[int, str | None]:
        row = self._retry("cannot read the flag store", lambda: self._conn.execute(
            f"SELECT version, document FROM {SET_TABLE} WHERE id = 1").fetchone())
        return int(row[0]), row[1]

    @contextmanager
    def _locked(self) -> Iterator[_Transaction]:
        psycopg = self._psycopg
        if self._conn.broken or self._conn.closed:
            self._connect()
        try:
            with self._conn.transaction():
                yield _PostgresTransaction(self._conn)
        except psycopg.Error as exc:
            raise self._error("cannot write the flag store", exc) from exc

    def _history(self, key: str | None, limit: int) -> list[tuple[Any, ...]]:
        columns = "id, ts, actor, flag_key, environment, action, old, new, reason, version"
        rows: list[tuple[Any, ...]]
        if key is None:
            rows = self._retry("cannot read the audit trail", lambda: self._conn.execute(
                f"SELECT {columns} FROM {AUDIT_TABLE} ORDER BY id DESC LIMIT %s",
                (limit,)).fetchall())
        else:
            rows = self._retry("cannot read the audit trail", lambda: self._conn.execute(
                f"SELECT {columns} FROM {AUDIT_TABLE} WHERE flag_key = %s ORDER BY id DESC "
                f"LIMIT %s", (key, limit)).fetchall())
        return rows

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class _PostgresTransaction:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def read(self) -> tuple[int, str | None]:
        row = self.conn.execute(
            f"SELECT version, document FROM {SET_TABLE} WHERE id = 1 FOR UPDATE").fetchone()
        return int(row[0]), row[1]

    def write(self, version: int, document: str, ts: str) -> None:
        self.conn.execute(f"UPDATE {SET_TABLE} SET version = %s, document = %s, "
                          f"updated_at = %s WHERE id = 1", (version, document, ts))

    def audit(self, ts: str, actor: str, row: _Row, reason: str, version: int) -> None:
        self.conn.execute(
            f"INSERT INTO {AUDIT_TABLE} (ts, actor, flag_key, environment, action, old, new, "
            f"reason, version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (ts, actor, row.flag, row.environment, row.action, _dumps(row.old), _dumps(row.new),
             reason, version))


# ---------------------------------------------------------------------------------------------


def open_store(spec: str | os.PathLike[str] | None = None) -> FlagStore:
    """The store ``spec`` names: a ``postgresql://`` (or ``postgres://``) URL, a SQLite file
    path (``sqlite:///path`` too; created with mode 0600), or ``:memory:``. ``None``:
    :func:`default_store_spec`."""
    text = os.fspath(spec) if spec is not None else default_store_spec()
    target = db.parse_target(text, what="flag store", key="--store")
    if isinstance(target, db.PostgresTarget):
        return PostgresFlagStore(target.url)
    return SQLiteFlagStore(target.spec, target.path)


# ---------------------------------------------------------------------------------------------


class LiveFlags:
    """The current evaluator of a store's flags in one environment, for a long-running
    server: ``refresh()`` (call it every ~200 ms, in a thread) checks the version and
    recompiles only when it moved. A flag set that fails to load never replaces the last good
    one (``last_error`` says why); only the first load raises."""

    def __init__(self, store: FlagStore, environment: str) -> None:
        self.store = store
        self.environment = environment
        self.last_error: Exception | None = None
        self._evaluator: Evaluator = store.evaluator(environment)

    @property
    def evaluator(self) -> Evaluator:
        return self._evaluator

    def refresh(self) -> bool:
        """True when a new version was picked up."""
        try:
            if self.store.version() == self._evaluator.version:
                return False
            evaluator = self.store.evaluator(self.environment)
        except (ConfigError, StoreError) as exc:
            self.last_error = exc
            return False
        self.last_error = None
        changed = evaluator is not self._evaluator
        self._evaluator = evaluator
        return changed
