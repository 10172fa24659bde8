"""The one storage layer: where a database is, how upgrader connects to it, how its errors read.

Three subsystems keep data in a database that is either a SQLite file or a PostgreSQL server:
the journal and fleet lock (:mod:`upgrader.journal`, :mod:`upgrader.journal_postgres`), the
flag store (:mod:`upgrader.flags.store`) and the live schema backends
(:mod:`upgrader.schema`). They all go through this module:

- :func:`parse_target` turns what a user wrote (``--state``, ``--store``, ``--db``,
  ``[flags] store``, ``[schema] database``) into a :class:`SQLiteTarget` or a
  :class:`PostgresTarget`: a ``postgresql://`` or ``postgres://`` URL, a file path,
  ``sqlite:///relative/path`` or ``sqlite:////absolute/path``, or ``:memory:``;
- :func:`connect_sqlite` and :func:`connect_postgres` connect with the same options everywhere
  (SQLite: one busy timeout, autocommit, WAL where the caller asks; PostgreSQL: a connect
  timeout, autocommit and an ``application_name`` naming the subsystem);
- :func:`storage_error` and :func:`mapped_errors` turn a ``sqlite3`` / ``psycopg`` error into
  the caller's leaf of :class:`~upgrader.errors.StorageError` (``StoreError``,
  ``JournalError``, ``SchemaError``), whose message names the database with any password in
  its URL masked (``postgresql://user:***@host/db``).

A subsystem-level module: it imports only :mod:`upgrader.errors` and :mod:`upgrader.redact`.
psycopg is imported on first use, so SQLite-only installs never need it.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError, StorageError, StoreError
from .redact import MASK, redact_text, redact_url

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "BUSY_TIMEOUT",
    "CONNECT_TIMEOUT",
    "PostgresTarget",
    "SQLiteTarget",
    "Target",
    "connect_postgres",
    "connect_sqlite",
    "describe",
    "driver_errors",
    "error_text",
    "is_postgres_url",
    "mapped_errors",
    "parse_target",
    "psycopg_module",
    "storage_error",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: ``sqlite:///relative/path``, ``sqlite:////absolute/path`` (the SQLAlchemy convention)
SQLITE_SCHEME = "sqlite:///"
MEMORY = ":memory:"

#: seconds a PostgreSQL connection attempt may take (libpq ``connect_timeout``)
CONNECT_TIMEOUT = 10
#: seconds a SQLite statement waits for another connection's lock before failing
BUSY_TIMEOUT = 30.0

#: ``application_name`` of each subsystem's PostgreSQL sessions (``pg_stat_activity``)
JOURNAL_APPLICATION = "upgrader-journal"
LOCK_APPLICATION = "upgrader-lock"
FLAGS_APPLICATION = "upgrader-flags"
SCHEMA_APPLICATION = "upgrader-schema"

E = TypeVar("E", bound=StorageError)

_INSTALL_PSYCOPG = "pip install 'psycopg[binary]'"


# ---------------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class SQLiteTarget:
    """A SQLite database: ``path`` is a file path or ``:memory:``; ``spec`` as written."""

    path: str
    spec: str

    @property
    def in_memory(self) -> bool:
        return self.path == MEMORY

    def describe(self) -> str:
        return redact_text(self.spec)


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """A PostgreSQL database: a libpq URL (``postgresql://user:password@host/db?...``)."""

    url: str

    @property
    def spec(self) -> str:
        return self.url

    def describe(self) -> str:
        """The URL with its password masked, for every message."""
        return redact_url(self.url)


Target = SQLiteTarget | PostgresTarget


def is_postgres_url(spec: str | os.PathLike[str] | None) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    return spec is not None and os.fspath(spec).startswith(POSTGRES_SCHEMES)


def parse_target(spec: str | os.PathLike[str], *, what: str = "database",
                 key: str | None = None) -> Target:
    """The database ``spec`` names. ConfigError (naming ``key``, e.g. ``--store``) for an
    empty spec or a URL of another kind (``mysql://...``)."""
    text = os.fspath(spec)
    if not text:
        raise ConfigError(f"empty {what}: give a SQLite file path or a postgresql:// URL",
                          key=key)
    if is_postgres_url(text):
        return PostgresTarget(text)
    if text.startswith(SQLITE_SCHEME):
        path = text[len(SQLITE_SCHEME):]
        if not path:
            raise ConfigError(f"{what} {text!r}: no file path after {SQLITE_SCHEME}", key=key)
        return SQLiteTarget(path, text)
    if "://" in text:
        raise ConfigError(f"unknown {what} {redact_url(text)!r}: give a SQLite file path or a "
                          "postgresql:// URL", key=key)
    return SQLiteTarget(text, text)


def describe(spec: Target | str | os.PathLike[str]) -> str:
    """How a database is named in messages: a path as is, a URL without its password."""
    if isinstance(spec, (SQLiteTarget, PostgresTarget)):
        return spec.describe()
    return redact_url(os.fspath(spec))


# ----------------------------------------------------------------------------------- errors


def _password(url: str) -> str | None:
    if "://" not in url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def error_text(exc: BaseException, url: str | None = None) -> str:
    """A driver error's message fit to show: psycopg's primary message when it has one (else
    the first line), with secrets (and the password of ``url``) masked."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    password = _password(url) if url else None
    if password and len(password) >= 3:
        text = text.replace(password, MASK)
    return redact_text(text)


def storage_error(error: type[E], message: str, database: str, **fields: Any) -> E:
    """``error`` (a leaf of StorageError) for ``message`` about ``database`` (already
    redacted): its text always names the database. ``fields``: the leaf's own (a
    SchemaError's ``migration``)."""
    named: dict[str, Any] = ({"store": database} if issubclass(error, StoreError)
                             else {"database": database, **fields})
    exc = error(message, **named)
    if database not in str(exc):       # SchemaError keeps the database out of its text
        exc.args = (f"{database}: {message}",)
    return exc


def driver_errors() -> tuple[type[Exception], ...]:
    """The exception classes of the database drivers upgrader can use (psycopg only when it
    is installed)."""
    errors: list[type[Exception]] = [sqlite3.Error]
    # only once imported: importing psycopg costs a SQLite-only command 50-80 ms, and no
    # psycopg error can be raised before something has imported it
    psycopg = sys.modules.get("psycopg")
    error = getattr(psycopg, "Error", None)
    if isinstance(error, type) and issubclass(error, Exception):
        errors.append(error)
    return tuple(errors)


@contextmanager
def mapped_errors(error: type[StorageError], database: str, what: str,
                  url: str | None = None) -> Iterator[None]:
    """Turn a driver error raised in the block into ``error("cannot <what>: ...")`` naming
    ``database``; so does an OSError (a file that cannot be created). Errors of the tree pass
    through unchanged."""
    try:
        yield
    except Exception as exc:
        # the drivers as they are now: the block may be what imported psycopg
        if not isinstance(exc, (*driver_errors(), OSError)):
            raise
        raise storage_error(error, f"cannot {what}: {error_text(exc, url)}",
                            database) from exc


# ------------------------------------------------------------------------------------ SQLite


#: the first bytes of every SQLite database file
SQLITE_HEADER = b"SQLite format 3\x00"


def private_file(path: str | Path) -> None:
    """Create ``path`` with mode 0600 (in a 0700 folder when that is new), or make an
    existing one 0600: a journal or a flag store is nobody else's business. Only an empty
    file or a SQLite database is made 0600; a folder or any other file is left as it is
    (opening it fails next): ``--store /etc`` or ``--store /etc/passwd`` must never lock it."""
    file = Path(path)
    if file.is_dir():
        return
    if not file.parent.exists():
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not file.exists():
        os.close(os.open(file, os.O_CREAT | os.O_RDWR, 0o600))
    with open(file, "rb") as fh:
        head = fh.read(len(SQLITE_HEADER))
    if head in (b"", SQLITE_HEADER):
        os.chmod(file, 0o600)


def connect_sqlite(target: SQLiteTarget | str | Path, *,
                   error: type[StorageError] = StorageError, what: str = "the database",
                   busy_timeout: float = BUSY_TIMEOUT, wal: bool = False,
                   private: bool = False, **options: Any) -> sqlite3.Connection:
    """A connection to a SQLite file (or ``:memory:``): autocommit (``isolation_level=None``)
    and usable from any thread unless ``options`` say otherwise, waiting up to
    ``busy_timeout`` seconds for another connection's lock; ``wal``: WAL journal mode (not
    for ``:memory:``); ``private``: the file (and its WAL side files) mode 0600.
    ``options`` go to :func:`sqlite3.connect` (``factory=...``). ``error`` (naming the file)
    when it cannot be opened."""
    if not isinstance(target, SQLiteTarget):
        target = SQLiteTarget(str(target), str(target))
    path = target.path
    options = {"isolation_level": None, "check_same_thread": False, **options}
    conn: sqlite3.Connection | None = None
    try:
        if private and not target.in_memory:
            private_file(path)
        conn = sqlite3.connect(path, timeout=busy_timeout, **options)
        # the base class's execute: a factory's own execute may need setting up first
        sqlite3.Connection.execute(conn, f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if wal and not target.in_memory:
            sqlite3.Connection.execute(conn, "PRAGMA journal_mode = WAL")
        if private and not target.in_memory:
            for suffix in ("-wal", "-shm"):
                side = Path(path + suffix)
                if side.exists():
                    os.chmod(side, 0o600)
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise storage_error(error, f"cannot open {what}: {error_text(exc)}",
                            target.describe()) from exc
    return conn


# -------------------------------------------------------------------------------- PostgreSQL


def psycopg_module(error: type[StorageError] = StorageError,
                   database: str = "PostgreSQL") -> ModuleType:
    """The psycopg module, or ``error`` saying how to install it."""
    try:
        import psycopg
    except ImportError as exc:
        raise storage_error(error, f"a PostgreSQL database needs psycopg: {_INSTALL_PSYCOPG}",
                            database) from exc
    return psycopg


def connect_postgres(target: PostgresTarget | str, *, application_name: str,
                     error: type[StorageError] = StorageError, what: str = "the database",
                     **options: Any) -> psycopg.Connection[Any]:
    """A connection to a PostgreSQL database: autocommit, at most :data:`CONNECT_TIMEOUT`
    seconds to connect, ``application_name`` for ``pg_stat_activity``. ``options`` go to
    ``psycopg.connect`` (keepalives, ``prepare_threshold``). ``error`` (naming the URL
    without its password) when it cannot connect."""
    url = target.url if isinstance(target, PostgresTarget) else target
    database = redact_url(url)
    driver = psycopg_module(error, database)
    options = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
               "application_name": application_name, **options}
    try:
        conn: psycopg.Connection[Any] = driver.connect(url, **options)
    except driver.Error as exc:
        raise storage_error(error, f"cannot open {what}: {error_text(exc, url)}",
                            database) from exc
    return conn
