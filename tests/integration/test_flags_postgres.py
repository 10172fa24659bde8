"""The flag store on PostgreSQL: the store contract of tests/flagstore_contract.py (changes,
audit, version bumps, two processes changing one store), plus PostgreSQL's own cases."""

from __future__ import annotations

import pytest
from flagstore_contract import SAMPLE, StoreContract  # tests/ is on sys.path (conftest.py)

from upgrader.errors import StoreError
from upgrader.flags.cli import run
from upgrader.flags.loader import load
from upgrader.flags.store import PostgresFlagStore, open_store

pytestmark = pytest.mark.integration


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def spec(self, postgres_url):
        return postgres_url


def test_a_postgres_url_opens_a_postgres_store(postgres_url):
    with open_store(postgres_url) as store:
        assert isinstance(store, PostgresFlagStore)
    with open_store(postgres_url.replace("postgresql://", "postgres://", 1)) as store:
        assert isinstance(store, PostgresFlagStore)


def test_tables_are_created_once_by_concurrent_openers(postgres_url):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(postgres_url), range(4)))
    for store in stores:
        assert store.version() == 0
        store.close()


def test_reads_survive_a_lost_connection(postgres_url):
    import psycopg

    with open_store(postgres_url) as store:
        store.replace(load(SAMPLE))
        pid = store._conn.info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert store.version() == 1                       # reconnected
        assert store.set_enabled("new-checkout", "production", False) == 2


def test_an_unreachable_server_is_a_store_error():
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
    assert "secret" not in str(caught.value)


def test_the_cli_on_postgres(postgres_url, capsys):
    assert run(["import", str(SAMPLE), "--store", postgres_url, "--actor", "ci"]) == 0
    assert run(["rollout", "new-checkout", "50", "--store", postgres_url]) == 0
    assert run(["history", "new-checkout", "--store", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "rollout  new-checkout [production]  30 -> 50" in out
    assert run(["rollout", "new-checkout", "500", "--store", postgres_url]) == 2
    with open_store(postgres_url) as store:
        assert store.version() == 2
