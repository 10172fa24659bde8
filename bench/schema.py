"""Live schema changes: backfill rate and a concurrent writer's latency, PostgreSQL and SQLite.

For each database and each of ``--runs`` runs, on a fresh table of ``--rows`` rows
(``items(id bigint primary key, qty integer not null, label text)``):

1. a writer process updates random rows (``UPDATE items SET qty = qty + 1 WHERE id = ?``,
   one statement per transaction, as fast as it can) for ``--seconds``: latency with no
   migration ("idle");
2. migration ``qty integer -> bigint`` (change_type, up ``CAST(qty AS bigint) * 2``, the same SQL on both) is started
   without its backfill (PostgreSQL; SQLite's start includes the backfill);
3. the backfill runs to the end while the writer, on the old release's views, keeps
   updating: rows/s of the backfill and the writer's latency during it.

Medians over the runs. PostgreSQL: a throw-away server (initdb + pg_ctl, as the test suite
does) unless ``--pg URL`` names one (a database per run is created and dropped there).

    .venv/bin/python bench/schema.py [--rows 1000000] [--runs 3] [--batch 1000]
                                     [--seconds 3] [--pg URL] [--skip-sqlite] [--skip-pg]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from upgrader.schema.model import ChangeType, Migration  # noqa: E402


def migration(batch: int) -> Migration:
    return Migration(name="qty-bigint", release="v2", previous="v1", batch_size=batch,
                     operations=(ChangeType("items", "qty", "bigint", up="CAST(qty AS bigint) * 2",
                                            down="CAST(qty / 2 AS integer)"),))


# --------------------------------------------------------------------------------------------
# The writer: a process of its own, so that its latency is the database's, not our GIL's

WRITER = textwrap.dedent("""
    import json, os, random, sys, time
    kind, target, stop, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "pg":
        import psycopg
        conn = psycopg.connect(target, autocommit=True)
        statement = "UPDATE items SET qty = qty + 1 WHERE id = %s"
    else:
        from upgrader.schema import connect
        conn = connect(target, "v1", isolation_level=None) if sys.argv[5] == "v1" else None
        if conn is None:
            import sqlite3
            conn = sqlite3.connect(target, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
        statement = "UPDATE items SET qty = qty + 1 WHERE id = ?"
    rng = random.Random(1)
    latencies = []
    print("ready", flush=True)
    while not os.path.exists(stop):
        key = rng.randrange(1, rows + 1)
        began = time.perf_counter()
        conn.execute(statement, (key,))
        latencies.append(time.perf_counter() - began)
    print(json.dumps(latencies), flush=True)
""")


class Writer:
    def __init__(self, kind: str, target: str, rows: int, tmp: Path, release: str = "") -> None:
        self.stop_file = tmp / f"stop-{uuid.uuid4().hex}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, kind, target, str(self.stop_file), str(rows),
             release], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"writer did not start: {self.process.stderr.read()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> list[float]:
        self.stop_file.touch()
        out, err = self.process.communicate(timeout=120)
        if self.process.returncode != 0:
            raise RuntimeError(f"writer failed: {err}")
        return json.loads(out.strip().splitlines()[-1])


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


# --------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server on loopback for this run only (like tests/conftest.py)."""
    bindir = pg_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = tempfile.mkdtemp(prefix="upgrader-bench-pg-")
    data = os.path.join(root, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True,
                              timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
        "-E", "UTF8")
    run(f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
              f"-c synchronous_commit=off -c full_page_writes=off", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def pg_run(server: str, rows: int, batch: int, seconds: float, tmp: Path) -> dict[str, Any]:
    import psycopg

    from upgrader.schema.postgres import PostgresBackend, release_url

    name = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, qty integer NOT NULL, "
                         "label text)")
            conn.execute("INSERT INTO items SELECT g, g %% 1000, 'item ' || g "
                         "FROM generate_series(1, %s) g", (rows,))
            conn.execute("VACUUM ANALYZE items")
        writer = Writer("pg", url, rows, tmp)
        time.sleep(seconds)                      # a fixed measuring window, not a wait
        idle = writer.stop()
        with PostgresBackend(url) as db:
            m = migration(batch)
            db.start(m, backfill=False)
            writer = Writer("pg", release_url(url, "upg_v1"), rows, tmp)
            try:
                began = time.perf_counter()
                result = db.backfill(m.name)
                elapsed = time.perf_counter() - began
                during = writer.stop()
            finally:
                writer.kill()
            assert result.done and result.rows <= rows
            db.complete(m.name)
        with psycopg.connect(url) as conn:
            wrong = conn.execute("SELECT count(*) FROM items WHERE qty % 2 <> 0").fetchone()[0]
        assert wrong == 0, f"{wrong} rows not backfilled"
        return {"rate": rows / elapsed, "seconds": elapsed, "idle_p99": p99(idle),
                "during_p99": p99(during), "idle_ops": len(idle) / seconds,
                "during_ops": len(during) / elapsed}
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------
# SQLite


def sqlite_run(rows: int, batch: int, seconds: float, tmp: Path) -> dict[str, Any]:
    import sqlite3

    from upgrader.schema import open_backend

    path = tmp / f"bench-{uuid.uuid4().hex[:8]}.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL, "
                 "label text)")
    conn.execute("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
                 "INSERT INTO items SELECT n, n % 1000, 'item ' || n FROM g", (rows,))
    conn.close()
    try:
        writer = Writer("sqlite", str(path), rows, tmp, "plain")
        time.sleep(seconds)                      # a fixed measuring window, not a wait
        idle = writer.stop()
        writer = Writer("sqlite", str(path), rows, tmp, "v1")
        try:
            with open_backend(str(path)) as db:
                m = migration(batch)
                began = time.perf_counter()
                db.start(m)                      # SQLite's start runs the backfill too
                elapsed = time.perf_counter() - began
                during = writer.stop()
                db.complete(m.name)
        finally:
            writer.kill()
        conn = sqlite3.connect(path)
        wrong = conn.execute("SELECT count(*) FROM items WHERE qty % 2 <> 0").fetchone()[0]
        conn.close()
        assert wrong == 0, f"{wrong} rows not backfilled"
        return {"rate": rows / elapsed, "seconds": elapsed, "idle_p99": p99(idle),
                "during_p99": p99(during), "idle_ops": len(idle) / seconds,
                "during_ops": len(during) / elapsed}
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pg", help="a PostgreSQL server URL (default: start a throw-away one)")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args(argv)

    table: dict[str, list[dict[str, Any]]] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="upgrader-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if not args.skip_pg:
            with (contextlib.nullcontext(args.pg) if args.pg else throwaway_postgres()) as pg:
                import psycopg

                with psycopg.connect(pg) as conn:
                    versions["PostgreSQL"] = conn.execute("SHOW server_version").fetchone()[0]
                for run in range(args.runs):
                    result = pg_run(pg, args.rows, args.batch, args.seconds, tmp)
                    print(f"PostgreSQL run {run + 1}: {json.dumps(result)}", file=sys.stderr)
                    table.setdefault("PostgreSQL", []).append(result)
        if not args.skip_sqlite:
            import sqlite3

            versions["SQLite"] = sqlite3.sqlite_version
            for run in range(args.runs):
                result = sqlite_run(args.rows, args.batch, args.seconds, tmp)
                print(f"SQLite run {run + 1}: {json.dumps(result)}", file=sys.stderr)
                table.setdefault("SQLite", []).append(result)

    print(f"Backfill of {args.rows:,} rows (change_type integer -> bigint, batches of "
          f"{args.batch}), median of {args.runs} runs; {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".\n")
    print("| database | backfill rows/s | backfill s | writer p99 idle (ms) | "
          "writer p99 during backfill (ms) | writer ops/s idle | writer ops/s during |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, results in table.items():
        print(f"| {name} {versions[name]} | {median(results, 'rate'):,.0f} | "
              f"{median(results, 'seconds'):.1f} | {median(results, 'idle_p99'):.2f} | "
              f"{median(results, 'during_p99'):.2f} | {median(results, 'idle_ops'):,.0f} | "
              f"{median(results, 'during_ops'):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
