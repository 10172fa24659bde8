"""A lab rollout whose release carries a live schema change (sample_fleets/schema.toml).

The lab's apps record visits in the lab database through the views of the release they run:
1.0.0 writes ``path``, 2.0.0 writes ``url`` (the migration renames the column and adds
``origin``). While the rolling upgrade runs both releases write at once, under live traffic:
not one user request may fail, and after ``complete`` every row is in the new shape. A bad
release is rolled back, and so is its migration: the database's schema is as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port
from upgrader.schema import load_migration, open_backend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "sample_fleets" / "migrations" / "lab"

FLEET = """
[fleet]
name = "lab-schema"
environment = "lab"

[release]
current = "1.0.0"
target = "{target}"
migration = "{migration}"

[lab]
hosts = 4
dir = "{dir}"
base_port = {port}

[verify]
error_rate_max = "1%"
min_requests = 20
interval = "2s"
for = "4s"

[timing]
host_upgrade = "5s"
drain_timeout = "10s"

[strategy]
kind = "rolling"
on_failure = "rollback"
batch = [1, 2]
max_unavailable = "50%"
"""


def upgrader(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("upgrader")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def schema_objects(db: Path) -> list:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                   "WHERE name NOT LIKE '_upgrader_schema_migrations%'"))


def migration_state(db: Path, name: str) -> str | None:
    with open_backend(str(db)) as backend:
        history = backend.status().history
    return ([s for n, _r, s in history if n == name] or [None])[-1]


@pytest.fixture
def lab(tmp_path: Path):
    layout = LabLayout(dir=tmp_path / "lab", hosts=4, base_port=free_base_port())
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=150, users=200,
                       database=load_migration(MIGRATIONS / "0001_visits.toml")))
    try:
        yield lab
    finally:
        asyncio.run(lab.down())


def write_fleet(tmp_path: Path, lab: Lab, target: str, migration: Path) -> Path:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(target=target, migration=migration, dir=lab.dir,
                                  port=lab.layout.base_port), encoding="utf-8")
    return fleet


def test_a_rolling_upgrade_with_a_migration_under_traffic(tmp_path: Path, lab: Lab) -> None:
    db = lab.layout.database_file
    fleet = write_fleet(tmp_path, lab, "2.0.0", MIGRATIONS / "0002_visits_url.toml")
    plan = upgrader("plan", str(fleet))
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout
    assert "start schema change 0002_visits_url" in lines or "schema start" in lines, lines

    before = lab.traffic_stats()
    result = upgrader("run", "--headless", str(fleet), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "schema change 0002_visits_url start: started" in result.stderr
    assert "schema change 0002_visits_url complete: completed" in result.stderr
    after = lab.traffic_stats()
    assert after["failed"] - before["failed"] == 0, after.get("errors")
    assert migration_state(db, "0002_visits_url") == "complete"

    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(visits)")]
        assert "url" in columns and "path" not in columns and "origin" in columns
        assert not [c for c in columns if c.startswith("_upg_")]
        rows = conn.execute("SELECT version, url, origin, host FROM visits").fetchall()
    versions = {r[0] for r in rows}
    assert {"1.0.0", "2.0.0"} <= versions, versions
    assert all(r[1] for r in rows), "a visit lost its url"
    old = [r for r in rows if r[0] == "1.0.0"]
    new = [r for r in rows if r[0] == "2.0.0"]
    assert all(r[2] == f"{r[3]}@1.0.0" for r in old)       # backfilled / old-release writes
    assert all(r[2] == "app" for r in new)                  # the column's default


def test_a_bad_release_rolls_its_migration_back(tmp_path: Path, lab: Lab) -> None:
    db = lab.layout.database_file
    text = (MIGRATIONS / "0002_visits_url.toml").read_text(encoding="utf-8")
    bad = tmp_path / "0002_visits_url_bad.toml"
    bad.write_text(text.replace('release = "2.0.0"', 'release = "2.0.0-bad"')
                   .replace('name = "0002_visits_url"', 'name = "0002_visits_url_bad"'),
                   encoding="utf-8")
    fleet = write_fleet(tmp_path, lab, "2.0.0-bad", bad)
    objects = schema_objects(db)
    with sqlite3.connect(db) as conn:
        rows_before = conn.execute("SELECT count(*) FROM visits").fetchone()[0]

    result = upgrader("run", "--headless", str(fleet), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ROLLED_BACK" in result.stderr
    assert "schema change 0002_visits_url_bad rollback: rolled back" in result.stderr
    assert migration_state(db, "0002_visits_url_bad") == "rolled_back"
    assert schema_objects(db) == objects
    status = asyncio.run(lab.status())
    assert {h["version"] for h in status["hosts"]} == {"1.0.0"}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM visits").fetchone()[0] >= rows_before
        # rows that the bad release wrote while it ran are kept, in the old shape
        assert conn.execute("SELECT count(*) FROM visits WHERE path IS NULL").fetchone()[0] == 0
