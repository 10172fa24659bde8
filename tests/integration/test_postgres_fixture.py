"""The PostgreSQL server the integration tests share really runs and isolates databases."""

import pytest

pytestmark = pytest.mark.integration


def test_fresh_database_per_test(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("1")


def test_databases_do_not_leak_between_tests(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                              "WHERE table_schema = 'public'").fetchone()[0]
    assert tables == 0
