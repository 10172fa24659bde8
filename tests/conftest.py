"""Shared test configuration.

Integration tests skip with a clear reason when a service they need is missing on a laptop;
with ``UPGRADER_REQUIRE_INTEGRATION=1`` (CI, `.ci/run`) such a skip is turned into a failure.
"""

from __future__ import annotations

import glob
import os
import os as _os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

REQUIRE_INTEGRATION = os.environ.get("UPGRADER_REQUIRE_INTEGRATION") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (REQUIRE_INTEGRATION and report.skipped and "integration" in str(item.fspath)
            and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = (f"integration test skipped but UPGRADER_REQUIRE_INTEGRATION=1: "
                           f"{reason}")


# --------------------------------------------------------------------------------------------
# PostgreSQL: a throw-away server per test session, on loopback, started from the machine's
# server binaries (Debian's `postgresql` package; `.ci/run` installs it).


def _pg_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if _os.path.exists(_os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    return _os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """URL of a PostgreSQL server started for this test session (trust auth, loopback)."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    root = tempfile.mkdtemp(prefix="upgrader-pg-")
    data = _os.path.join(root, "data")
    prefix: list[str] = []
    if _os.geteuid() == 0:           # initdb refuses to run as root: run it as `postgres`
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        _os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True,
                              timeout=120)

    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
            "-E", "UTF8")
        run(f"{bindir}/pg_ctl", "-D", data, "-l", _os.path.join(root, "log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  f"-c synchronous_commit=off -c full_page_writes=off", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres_server.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
