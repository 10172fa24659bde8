"""Freeze on the lab (issue 15, point 4): a release whose migration holds an ``irreversible =
true`` sql operation fails verification; the migration cannot be reverted, so instead of
rolling back the rollout freezes: no host, no traffic, no flag and no schema changes; both
releases keep serving (the only failed requests are the bad release's own answers, none from
the freeze: no refused connection, no timeout, no 502/503); ``upgrader status`` says why it
froze and what each choice would do. A real lab (app processes, the built-in balancer, the
traffic generator), a real SQLite schema and a real SQLite flag store."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from test_release_flags_lab import FLAGS, FLEET, events, lab, migration_state, upgrader

from upgrader.flags.loader import loads as loads_flags
from upgrader.flags.store import open_store
from upgrader.lab.layout import LAB_FLAG_STORE
from upgrader.lab.manager import Lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

__all__ = ["lab"]       # the fixture, shared with test_release_flags_lab

TARGET = "2.0.0-bad"
MIGRATION = "0002_visits_audit"
IRREVERSIBLE = f"""
name = "{MIGRATION}"
release = "{TARGET}"
previous = "1.0.0"

[[operations]]
op = "sql"
up = "CREATE TABLE visit_audit (id integer primary key, note text)"
irreversible = true
"""


def traffic(lab: Lab) -> dict:
    return json.loads(lab.layout.traffic_stats_file.read_text())


def wait_for_traffic(lab: Lab, since: dict, requests: int, timeout: float = 30.0) -> dict:
    """The traffic stats once ``requests`` more requests were answered after ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        now = traffic(lab)
        if now["requests"] - since["requests"] >= requests:
            return now
        assert time.monotonic() < deadline, f"no traffic: {now['requests']} requests"
        time.sleep(0.2)


def flag_store_state(store: str) -> tuple[int, list]:
    with open_store(store) as flags:
        state = flags.load()
        return state.version, [(e.flag, e.action, e.new) for e in flags.history(limit=100)]


def test_an_irreversible_migration_freezes_the_rollout_with_both_releases_serving(
        tmp_path: Path, lab: Lab) -> None:
    migration = tmp_path / f"{MIGRATION}.toml"
    migration.write_text(IRREVERSIBLE, encoding="utf-8")
    store = str(Path(lab.dir) / LAB_FLAG_STORE)
    with open_store(store) as flags:
        flags.replace(loads_flags(FLAGS.format(migration=MIGRATION), source="flags.toml"),
                      actor="test", reason="setup")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(target=TARGET, migration=migration, store=store,
                                  dir=lab.dir, port=lab.layout.base_port), encoding="utf-8")
    state = str(tmp_path / "state")
    flags_before = flag_store_state(store)
    before = traffic(lab)

    result = upgrader("run", "--headless", "--json", str(fleet), "--state-dir", state)
    assert result.returncode == 1, result.stderr[-3000:]
    seen = events(result.stdout)
    kinds = [e["kind"] for e in seen]
    finished = [e for e in seen if e["kind"] == "rollout_finished"][-1]
    assert finished["outcome"] == "frozen", finished
    assert "analysis_failed" in kinds                   # a failing verification, not a host
    frozen = next(e for e in seen if e["kind"] == "frozen")
    assert "cannot be reverted" in frozen["reason"]
    assert set(frozen["choices"]) == {"resume", "rollback", "stop"}
    # nothing went back: no roll-back, no flag step, no flag touched, the schema stays
    assert not {"rollback_started", "flags_first", "flag"} & set(kinds)
    assert flag_store_state(store) == flags_before
    assert migration_state(lab.layout.database_file, MIGRATION) == "started"

    # both releases keep serving after the freeze (the controller has gone)
    at_freeze = traffic(lab)
    after = wait_for_traffic(lab, at_freeze, 300)
    served = {v: after["versions"].get(v, 0) - at_freeze["versions"].get(v, 0)
              for v in ("1.0.0", TARGET)}
    assert served["1.0.0"] > 0 and served[TARGET] > 0, served
    hosts = {h["version"] for h in asyncio.run(lab.status())["hosts"]}
    assert hosts == {"1.0.0", TARGET}, hosts
    # the only failed requests are the bad release's own answers (HTTP 500): the upgrade and
    # the freeze refused no connection and timed nothing out
    errors = {k: after["errors"].get(k, 0) - before["errors"].get(k, 0)
              for k in after["errors"]}
    assert {k for k, n in errors.items() if n} <= {"http_500"}, errors

    # status says why it froze and what each choice would do
    out = upgrader("status", str(fleet), "--state-dir", state)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"-> {TARGET}: frozen" in text, text
    assert "frozen: " in text and "cannot be reverted" in text, text
    for choice in ("resume", "rollback", "stop"):
        assert f"\n  {choice}: " in text, text
    data = json.loads(upgrader("status", str(fleet), "--state-dir", state, "--json").stdout)
    assert data["status"] == "frozen" and "cannot be reverted" in data["frozen"]["reason"]
    assert set(data["frozen"]["choices"]) == {"resume", "rollback", "stop"}
