"""The SQLite flag store (the embedded default): the store contract of
tests/flagstore_contract.py, plus what only a file can show (mode 0600, WAL, a broken
document that never replaces the last good flag set)."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from flagstore_contract import SAMPLE, StoreContract  # tests/ is on sys.path (conftest.py)

from upgrader.errors import ConfigError, StoreError
from upgrader.flags.loader import load
from upgrader.flags.store import (
    DEFAULT_STORE,
    LiveFlags,
    default_actor,
    default_store_spec,
    open_store,
    redact,
)


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def spec(self, tmp_path):
        return str(tmp_path / "state" / "flags.sqlite")


def test_the_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "new" / "flags.sqlite"
    with open_store(str(path)) as store:
        store.replace(load(SAMPLE))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_specs(tmp_path, monkeypatch):
    with open_store(f"sqlite:///{tmp_path}/a.sqlite") as store:
        store.replace(load(SAMPLE))
    with open_store(str(tmp_path / "a.sqlite")) as store:
        assert store.version() == 1
    with open_store(":memory:") as store:
        assert store.version() == 0
    with pytest.raises(ConfigError, match="unknown flag store"):
        open_store("redis://localhost")
    monkeypatch.delenv("UPGRADER_FLAG_STORE", raising=False)
    assert default_store_spec() == DEFAULT_STORE == ".upgrader/flags.sqlite"
    monkeypatch.setenv("UPGRADER_FLAG_STORE", "postgresql://db/flags")
    assert default_store_spec() == "postgresql://db/flags"


def test_an_unopenable_store_is_a_store_error(tmp_path):
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError):
        open_store(str(tmp_path / "dir.sqlite"))


def test_redact_and_actor(monkeypatch):
    assert redact("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("postgresql://db/x") == "postgresql://db/x"
    assert redact("flags.sqlite") == "flags.sqlite"
    monkeypatch.setenv("USER", "alice")
    assert default_actor().startswith("alice@")


def test_a_broken_document_never_replaces_the_last_good_flag_set(tmp_path):
    spec = str(tmp_path / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(load(SAMPLE))
        live = LiveFlags(store, "production")
        good = live.evaluator
        raw = sqlite3.connect(spec, isolation_level=None)
        raw.execute("UPDATE upgrader_flag_set SET version = 7, document = '{\"flags\": 5}'")
        assert not live.refresh()
        assert isinstance(live.last_error, ConfigError)
        assert live.evaluator is good
        raw.execute("UPDATE upgrader_flag_set SET version = 8, document = 'not json'")
        assert not live.refresh()
        assert isinstance(live.last_error, StoreError)
        # a change on top of a broken document is refused too
        with pytest.raises((ConfigError, StoreError)):
            store.set_enabled("new-checkout", "production", False)
        raw.close()
        assert live.evaluator.evaluate("recommendations", {}).value is True


def test_a_busy_store_waits_for_the_other_writer(tmp_path):
    spec = str(tmp_path / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(load(SAMPLE))
        other = sqlite3.connect(spec, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        import threading

        done = []
        thread = threading.Thread(target=lambda: done.append(
            store.set_enabled("new-checkout", "staging", False)))
        thread.start()
        thread.join(0.5)
        assert not done                        # waiting for the lock, not failing
        other.execute("COMMIT")
        thread.join(30)
        assert done == [2]
        other.close()


def test_the_store_is_created_lazily_on_first_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UPGRADER_FLAG_STORE", raising=False)
    with open_store() as store:
        assert store.version() == 0
    assert os.path.exists(tmp_path / ".upgrader" / "flags.sqlite")
