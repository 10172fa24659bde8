"""The storage layer (upgrader.db): what a database spec means, how a connection fails, and
that no message shows a password. Real sqlite3 files; PostgreSQL only as a closed loopback
port (nothing listens, so every connection is refused at once)."""

from __future__ import annotations

import inspect
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader import db
from upgrader.errors import (
    ConfigError,
    JournalError,
    SchemaError,
    StorageError,
    StoreError,
)

PASSWORD = "s3cret-Pw9"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unreachable() -> str:
    return f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/app?sslmode=disable"


# -------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("spec", "path"), [
    ("flags.sqlite", "flags.sqlite"),
    ("/var/lib/upgrader/state.sqlite", "/var/lib/upgrader/state.sqlite"),
    ("sqlite:///relative/app.sqlite", "relative/app.sqlite"),
    ("sqlite:////absolute/app.sqlite", "/absolute/app.sqlite"),
    (":memory:", ":memory:"),
])
def test_a_path_or_a_sqlite_url_is_a_sqlite_file(spec, path):
    target = db.parse_target(spec)
    assert target == db.SQLiteTarget(path, spec)
    assert target.in_memory == (path == ":memory:")
    assert target.describe() == spec


def test_a_pathlike_is_a_sqlite_file(tmp_path):
    target = db.parse_target(tmp_path / "x.sqlite")
    assert isinstance(target, db.SQLiteTarget) and target.path == str(tmp_path / "x.sqlite")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_both_postgres_schemes_are_postgres(scheme):
    url = f"{scheme}://app:{PASSWORD}@db.example:5433/app?application_name=x"
    target = db.parse_target(url)
    assert target == db.PostgresTarget(url)
    assert db.is_postgres_url(url)
    assert target.describe() == f"{scheme}://app:***@db.example:5433/app?application_name=x"
    assert db.describe(url) == target.describe()


def test_other_urls_and_empty_specs_are_bad_input_without_the_password():
    with pytest.raises(ConfigError, match=r"unknown flag store 'mysql://app:\*\*\*@h/app'") \
            as caught:
        db.parse_target(f"mysql://app:{PASSWORD}@h/app", what="flag store", key="--store")
    assert PASSWORD not in str(caught.value) and caught.value.key == "--store"
    with pytest.raises(ConfigError, match="empty database"):
        db.parse_target("")
    with pytest.raises(ConfigError, match="no file path"):
        db.parse_target("sqlite:///")


def test_is_postgres_url_takes_none_and_paths():
    assert not db.is_postgres_url(None)
    assert not db.is_postgres_url(Path("postgresql"))
    assert not db.is_postgres_url("sqlite:///x")


# ------------------------------------------------------------------------- SQLite errors


def test_a_sqlite_file_that_cannot_be_opened_is_the_callers_leaf_naming_it(tmp_path):
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    for leaf in (JournalError, StoreError, SchemaError):
        with pytest.raises(leaf) as caught:
            db.connect_sqlite(folder, error=leaf, what="the test database")
        assert isinstance(caught.value, StorageError)
        assert str(folder) in str(caught.value)
        assert "cannot open the test database" in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_a_file_that_is_not_a_database_fails_on_open_not_later(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a SQLite database, not even close" * 100)
    with pytest.raises(JournalError, match=r"junk\.sqlite: cannot open the journal: file is "
                                           r"not a database"):
        db.connect_sqlite(junk, error=JournalError, what="the journal", wal=True)


def test_each_subsystem_names_its_unopenable_sqlite_file(tmp_path):
    from upgrader.flags.store import open_store
    from upgrader.journal import Journal
    from upgrader.schema import open_backend

    folder = tmp_path / "dir.sqlite"
    folder.mkdir()
    with pytest.raises(StoreError, match=r"dir\.sqlite: cannot open the flag store"):
        open_store(str(folder))
    with pytest.raises(SchemaError, match=r"dir\.sqlite: cannot open the SQLite database"):
        open_backend(str(folder))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite").mkdir()
    journal = Journal(tmp_path / "state" / "journal.sqlite")      # connects on first use
    try:
        with pytest.raises(JournalError, match=r"journal\.sqlite: cannot open the journal"):
            journal.latest("web")
    finally:
        journal.close()


def test_a_folder_given_as_a_private_file_keeps_its_mode(tmp_path):
    # `upgrader flags --store /etc` (or `lab up --flag-store /etc`) once made /etc 0600
    from upgrader.flags.store import open_store

    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    db.private_file(folder)
    assert folder.stat().st_mode & 0o777 == 0o755
    with pytest.raises(StoreError, match=r"etc: cannot open the flag store"):
        open_store(str(folder))
    assert folder.stat().st_mode & 0o777 == 0o755
    # nor a file that is not a SQLite database (`--store /etc/passwd`)
    other = folder / "passwd"
    other.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    other.chmod(0o644)
    with pytest.raises(StoreError, match=r"passwd: cannot open the flag store"):
        open_store(str(other))
    assert other.stat().st_mode & 0o777 == 0o644
    # a SQLite database or an empty file is made private
    empty = folder / "empty.sqlite"
    empty.write_bytes(b"")
    empty.chmod(0o644)
    db.private_file(empty)
    assert empty.stat().st_mode & 0o777 == 0o600
    with open_store(str(empty)):
        pass
    empty.chmod(0o644)
    with open_store(str(empty)):
        pass
    assert empty.stat().st_mode & 0o777 == 0o600


def test_connect_sqlite_sets_the_busy_timeout_wal_and_private_mode(tmp_path):
    path = tmp_path / "new" / "store.sqlite"
    conn = db.connect_sqlite(path, wal=True, private=True, busy_timeout=2.5)
    try:
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.isolation_level is None
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        conn.close()
    memory = db.connect_sqlite(":memory:", wal=True)
    assert memory.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    memory.close()


def test_mapped_errors_turn_driver_errors_into_the_leaf(tmp_path):
    conn = sqlite3.connect(tmp_path / "m.sqlite")
    with pytest.raises(StoreError, match=r"m\.sqlite: cannot read the things: no such table"), \
            db.mapped_errors(StoreError, str(tmp_path / "m.sqlite"), "read the things"):
        conn.execute("SELECT * FROM missing")
    conn.close()
    # errors of the tree pass through
    with pytest.raises(ConfigError), db.mapped_errors(StoreError, "x", "read"):
        raise ConfigError("bad")


def test_storage_error_always_names_the_database():
    for leaf in (StorageError, StoreError, JournalError, SchemaError):
        error = db.storage_error(leaf, "cannot do it", "postgresql://u:***@h/d")
        assert type(error) is leaf
        assert str(error) == "postgresql://u:***@h/d: cannot do it"
    schema = db.storage_error(SchemaError, "x", "d.sqlite", migration="m1")
    assert schema.migration == "m1" and schema.database == "d.sqlite"
    assert db.storage_error(StoreError, "x", "f.sqlite").store == "f.sqlite"


# --------------------------------------------------------------------- PostgreSQL errors


def test_an_unreachable_postgres_is_a_storage_error_with_the_password_masked(unreachable):
    masked = unreachable.replace(PASSWORD, "***")
    for leaf in (StorageError, JournalError, StoreError, SchemaError):
        with pytest.raises(leaf) as caught:
            db.connect_postgres(unreachable, application_name="upgrader-test", error=leaf,
                                what="the test database", connect_timeout=3)
        text = str(caught.value)
        assert PASSWORD not in text and PASSWORD not in repr(caught.value.args)
        assert text.startswith(f"{masked}: cannot open the test database: ")
        assert "127.0.0.1" in text


def test_every_subsystem_masks_the_password_of_an_unreachable_postgres(unreachable):
    from upgrader.flags.store import open_store
    from upgrader.journal_postgres import PostgresFleetLock, PostgresJournal, lock_holder
    from upgrader.schema import open_backend

    attempts = [
        (JournalError, lambda: PostgresJournal(unreachable)),
        (JournalError, lambda: PostgresFleetLock(unreachable, "web").acquire()),
        (JournalError, lambda: lock_holder(unreachable, "web")),
        (StoreError, lambda: open_store(unreachable)),
        (SchemaError, lambda: open_backend(unreachable)),
    ]
    for leaf, attempt in attempts:
        with pytest.raises(leaf) as caught:
            attempt()
        assert PASSWORD not in str(caught.value), (leaf, str(caught.value))
        assert "app:***@127.0.0.1" in str(caught.value), str(caught.value)


def test_error_text_masks_the_urls_password_even_when_the_driver_echoes_it():
    url = f"postgresql://app:{PASSWORD}@h/d"
    error = RuntimeError(f"password authentication failed (tried {PASSWORD!r})\nmore")
    assert db.error_text(error, url) == "password authentication failed (tried '***')"


# ----------------------------------------------------------------- one shape of backend


def test_both_schema_backends_have_the_protocols_methods_with_one_signature():
    from upgrader.schema import SchemaBackend
    from upgrader.schema.postgres import PostgresBackend
    from upgrader.schema.sqlite import SQLiteBackend

    methods = [name for name, value in vars(SchemaBackend).items()
               if callable(value) and (not name.startswith("_") or name in ("__enter__",
                                                                            "__exit__"))]
    assert {"plan", "start", "backfill", "complete", "rollback", "status", "close"} <= \
        set(methods)
    for name in methods:
        expected = list(inspect.signature(getattr(SchemaBackend, name)).parameters)
        for backend in (PostgresBackend, SQLiteBackend):
            got = list(inspect.signature(getattr(backend, name)).parameters)
            assert got == expected, (backend.__name__, name, got, expected)


def test_sqlite_backfill_runs_in_batches_and_resumes(tmp_path):
    from upgrader.schema import open_backend
    from upgrader.schema.loader import loads

    path = str(tmp_path / "b.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
    conn.executemany("INSERT INTO t (who) VALUES (?)", [(f"u{i}",) for i in range(25)])
    conn.commit()
    conn.close()
    migration = loads('name = "m"\nrelease = "2"\nprevious = "1"\nbatch_size = 10\n'
                      '[[operations]]\nop = "add_column"\ntable = "t"\n'
                      'column = {name = "tag", type = "text"}\nup = "who || \'!\'"\n')
    with open_backend(path) as backend:
        assert backend.start(migration, backfill=False) is None
        first = backend.backfill("m", max_batches=1)
        assert (first.rows, first.batches, first.done) == (10, 1, False)
        assert backend.status().backfill == {"t": (10, 25)}
        rest = backend.backfill("m")
        assert (rest.rows, rest.batches, rest.done) == (15, 2, True)
        with pytest.raises(SchemaError, match="not active"):
            backend.backfill("other")
        backend.complete("m")
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM t WHERE tag = who || '!'").fetchone()[0] == 25
    check.close()


def test_an_unknown_plan_phase_is_bad_input_on_sqlite(tmp_path):
    from upgrader.schema import open_backend
    from upgrader.schema.loader import loads

    migration = loads('name = "m"\nrelease = "2"\n[[operations]]\nop = "create_table"\n'
                      'table = "t"\ncolumns = [{name = "id", type = "integer"}]\n')
    with open_backend(str(tmp_path / "p.sqlite")) as backend, \
            pytest.raises(ConfigError, match="unknown phase"):
        backend.plan(migration, "sideways")


def test_a_psycopg_error_is_mapped_though_psycopg_was_imported_inside_the_block(monkeypatch):
    """mapped_errors looks the drivers up when an error arrives (psycopg is only imported
    once something needs it: a SQLite-only command never pays for it)."""
    import psycopg

    monkeypatch.delitem(sys.modules, "psycopg")
    assert db.driver_errors() == (sqlite3.Error,)

    def opens_postgres() -> None:
        monkeypatch.setitem(sys.modules, "psycopg", psycopg)     # the block imports it
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(StoreError, match="cannot open the store: connection refused"), \
            db.mapped_errors(StoreError, "postgresql://h/d", "open the store"):
        opens_postgres()
    # a driver that is not installed (or blocked) is no driver
    monkeypatch.setitem(sys.modules, "psycopg", None)
    assert db.driver_errors() == (sqlite3.Error,)


def test_opening_a_sqlite_journal_does_not_import_psycopg(tmp_path):
    code = ("import sys; from upgrader.journal import Journal; "
            f"j = Journal({str(tmp_path / 'journal.sqlite')!r}); j.latest('f'); j.close(); "
            "print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
