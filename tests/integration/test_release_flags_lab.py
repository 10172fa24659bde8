"""Flags bound to a release, on the lab (issue 15): a failed verification turns the release's
flags off first and verifies again.

The lab's apps read the flag ``new-path`` from the lab's flag store (``<lab dir>/flags.sqlite``,
a real SQLite store, or a real PostgreSQL store: ``lab up --flag-store URL``; polled as any
service polls it), and the fleet's ``[flags] store`` is that same store; a ``-flagged`` release
fails only while
that flag is on, a ``-bad`` release fails whatever the flags say. The release also carries a
real schema change (the lab database). So:

- ``2.0.0-flagged`` is cured by the flag step alone: the rollout stops "flags off, release
  kept", the upgraded hosts keep the new release and the schema change stays started;
- ``2.0.0-bad`` is not: its flags go off (and stay off), the hosts go back to 1.0.0 and the
  schema change is rolled back, the flag that needs it turned off before it.

Both run on each kind of store (PostgreSQL: a throw-away server of the session, see
tests/conftest.py; skipped on a laptop without one, a failure in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrader.flags.loader import loads as loads_flags
from upgrader.flags.schemaguard import SchemaGuard
from upgrader.flags.store import open_store
from upgrader.lab.layout import LAB_FLAG_STORE, LabLayout
from upgrader.lab.manager import Lab, free_base_port
from upgrader.schema import load_migration, open_backend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "sample_fleets" / "migrations" / "lab"

FLEET = """
[fleet]
name = "lab-release-flags"
environment = "lab"

[release]
current = "1.0.0"
target = "{target}"
migration = "{migration}"
flags = ["new-path"]
flags_hold = "6s"

[flags]
store = "{store}"
environment = "lab"

[lab]
hosts = 4
dir = "{dir}"
base_port = {port}

[verify]
error_rate_max = "1%"
min_requests = 20
interval = "2s"
for = "6s"
consecutive_failures = 2

[timing]
host_upgrade = "5s"
drain_timeout = "10s"

[strategy]
kind = "rolling"
on_failure = "rollback"
batch = [1, 3]
max_unavailable = "50%"
"""

FLAGS = """
environments = ["lab"]

[flags.new-path]
description = "the new code path of release 2.0.0"
default = "on"

[flags.new-path.environments.lab]
enabled = true

[flags.visits-url]
description = "reads visits.url: needs the schema change"
default = "on"
schema = "{migration}"
"""


def upgrader(*args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("upgrader")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def migration_state(db: Path, name: str) -> str | None:
    with open_backend(str(db)) as backend:
        history = backend.status().history
    return ([s for n, _r, s in history if n == name] or [None])[-1]


@pytest.fixture(params=["sqlite", "postgresql"])
def flag_store(request) -> str | None:
    """The lab's flag store: None (the lab's default, ``<lab dir>/flags.sqlite``) or a fresh
    PostgreSQL database (``lab up --flag-store URL``)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@contextlib.contextmanager
def running_lab(tmp_path: Path, flag_store: str | None = None) -> Iterator[Lab]:
    layout = LabLayout(dir=tmp_path / "lab", hosts=4, base_port=free_base_port())
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=150, users=200,
                       database=load_migration(MIGRATIONS / "0001_visits.toml"),
                       flag_store=flag_store))
    try:
        yield lab
    finally:
        asyncio.run(lab.down())


@pytest.fixture
def lab(tmp_path: Path):
    """A lab on its default flag store, ``<lab dir>/flags.sqlite`` (test_freeze_lab.py uses
    it too)."""
    with running_lab(tmp_path) as lab:
        yield lab


@pytest.fixture
def flags_lab(tmp_path: Path, flag_store: str | None):
    """A lab on each kind of flag store."""
    with running_lab(tmp_path, flag_store) as lab:
        yield lab


def prepare(tmp_path: Path, lab: Lab, target: str) -> tuple[Path, str, str]:
    """A migration for ``target``, the lab's flag store filled, the fleet file."""
    name = "0002_visits_url_" + target.rsplit("-", 1)[-1]
    text = (MIGRATIONS / "0002_visits_url.toml").read_text(encoding="utf-8")
    migration = tmp_path / f"{name}.toml"
    migration.write_text(text.replace('release = "2.0.0"', f'release = "{target}"')
                         .replace('name = "0002_visits_url"', f'name = "{name}"'),
                         encoding="utf-8")
    # the store the lab's apps read, as `lab up` recorded it
    store = lab.layout.flag_store_file.read_text(encoding="utf-8").strip()
    if store.startswith("postgresql://"):
        assert not (Path(lab.dir) / LAB_FLAG_STORE).exists()
    else:
        assert store == str(Path(lab.dir) / LAB_FLAG_STORE)
    with open_store(store) as flags:
        flags.replace(loads_flags(FLAGS.format(migration=name), source="flags.toml"),
                      actor="test", reason="setup")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(target=target, migration=migration, store=store, dir=lab.dir,
                                  port=lab.layout.base_port), encoding="utf-8")
    return fleet, store, name


def events(stdout: str) -> list[dict]:
    found = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e for e in found if "kind" in e]


def test_a_release_whose_bad_path_is_behind_its_flag_is_cured_by_the_flag_step(
        tmp_path: Path, flags_lab: Lab) -> None:
    lab = flags_lab
    fleet, store, migration = prepare(tmp_path, lab, "2.0.0-flagged")
    plan = upgrader("plan", str(fleet))
    assert plan.returncode == 0, plan.stderr
    assert "roll-back plan after a failed verification, in order:" in plan.stdout
    assert "1. flags off (new-path, those whose schema is" in plan.stdout
    assert "2. hosts back to 1.0.0" in plan.stdout and "3. schema change" in plan.stdout

    result = upgrader("run", "--headless", "--json", str(fleet),
                      "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1, result.stderr[-3000:]
    seen = events(result.stdout)
    finished = [e for e in seen if e["kind"] == "rollout_finished"][-1]
    assert finished["outcome"] == "flags_off", [
        e for e in seen if e["kind"] == "flags_first" or e.get("phase") == "flags_off"]
    assert "flags off, release kept" in result.stderr
    first = [e for e in seen if e["kind"] == "flags_first"]
    assert [e["phase"] for e in first] == ["begin", "end"] and first[-1]["cured"] is True
    assert first[0]["was"]["new-path"]["on"] is True             # the old state, kept
    # no host was rolled back: the upgraded ones keep the new release
    assert not [e for e in seen if e["kind"] == "host_done" and e.get("mode") == "rollback"]
    status = asyncio.run(lab.status())
    assert "2.0.0-flagged" in {h["version"] for h in status["hosts"]}
    assert migration_state(lab.layout.database_file, migration) == "started"
    status_out = upgrader("status", str(fleet), "--state-dir", str(tmp_path / "state"))
    assert "flags_off" in status_out.stdout, status_out.stdout + status_out.stderr
    assert "flags off, release kept: 2.0.0-flagged verified without new-path" in \
        status_out.stdout
    with open_store(store) as flags:
        assert not flags.load().flags["new-path"].env("lab").enabled
        last = flags.history("new-path", 1)[0]
        assert (last.action, last.old, last.new) == ("disable", True, False)
        assert "its flags go off first" in last.reason


def test_a_release_bad_without_its_flag_is_rolled_back_all_the_way(tmp_path: Path,
                                                                    flags_lab: Lab) -> None:
    lab = flags_lab
    fleet, store, migration = prepare(tmp_path, lab, "2.0.0-bad")
    db = lab.layout.database_file
    # an operator turns on the flag that needs the schema change once it is live (refused
    # before: the guard reads the lab database)
    stop = threading.Event()
    enabled = threading.Event()

    def operator() -> None:
        with open_store(store) as flags:
            flags.guard = SchemaGuard(str(db), "lab")
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                if migration_state(db, migration) == "started":
                    flags.set_enabled("visits-url", "lab", True, actor="operator")
                    enabled.set()
                    return
                stop.wait(0.1)

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    try:
        result = upgrader("run", "--headless", "--json", str(fleet),
                          "--state-dir", str(tmp_path / "state"))
    finally:
        stop.set()
        thread.join(10)
    assert enabled.is_set()
    assert result.returncode == 1, result.stderr[-3000:]
    seen = events(result.stdout)
    finished = [e for e in seen if e["kind"] == "rollout_finished"][-1]
    assert finished["outcome"] == "rolled_back", finished
    first = [e for e in seen if e["kind"] == "flags_first"]
    assert first[-1]["cured"] is False
    assert set(first[0]["flags"]) == {"new-path", "visits-url"}
    kinds = [(e["kind"], e.get("key") or e.get("action"), e.get("result")) for e in seen
             if e["kind"] in ("flags_first", "flag", "host_done", "schema")]
    # in order: flags off, hosts back, schema rolled back
    off = max(i for i, k in enumerate(kinds) if k[0] == "flag")
    hosts_back = [i for i, e in enumerate(kinds) if e[0] == "host_done"]
    schema_back = kinds.index(("schema", "rollback", "rolled back"))
    assert off < min(i for i in hosts_back if i > off) and max(hosts_back) < schema_back
    assert migration_state(db, migration) == "rolled_back"
    status = asyncio.run(lab.status())
    assert {h["version"] for h in status["hosts"]} == {"1.0.0"}
    with open_store(store) as flags:
        state = flags.load()
        assert not state.flags["new-path"].env("lab").enabled
        assert not state.flags["visits-url"].env("lab").enabled
