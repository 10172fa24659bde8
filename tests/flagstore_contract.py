"""What every flag store must do, run against SQLite (tests/unit/test_flags_store.py) and
PostgreSQL (tests/integration/test_flags_postgres.py). A subclass provides the ``spec``
fixture: the store spec of a fresh, empty store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader.errors import ConfigError
from upgrader.flags.evaluate import Reason
from upgrader.flags.loader import dump, load, loads
from upgrader.flags.model import Flag, FlagSet, Prerequisite
from upgrader.flags.store import LiveFlags, default_actor, open_store

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_fleets" / "flags.toml"

#: changes a process makes to a store given on the command line (the concurrency test)
WRITER = """
import sys
from upgrader.flags.store import open_store
spec, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open_store(spec) as store:
    for i in range(count):
        store.set_enabled(f"{prefix}{i}", "production", True, actor=prefix, reason="race")
        store.set_rollout("shared", "production", (i % 100) + 0.5, actor=prefix)
"""


def many_flags(n_per_writer: int) -> str:
    lines = ['[flags.shared.environments.production]\nenabled = true\n'
             'rules = [{ name = "rollout", percent = 1 }]\n']
    for prefix in ("a", "b"):
        lines += [f"[flags.{prefix}{i}]\n" for i in range(n_per_writer)]
    return "".join(lines)


class StoreContract:
    @pytest.fixture
    def spec(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def store(self, spec):
        with open_store(spec) as store:
            yield store

    def test_an_empty_store(self, store):
        assert store.version() == 0
        assert store.load().flags == {}
        assert store.history() == []

    def test_import_is_one_audited_change(self, store):
        sample = load(SAMPLE)
        version = store.replace(sample, actor="alice@laptop", reason="first import")
        assert version == store.version() == 1
        loaded = store.load()
        assert loaded.version == 1
        assert dump(loaded) == dump(sample).replace("version = 0", "version = 1", 1)
        entries = store.history(limit=100)
        assert {e.flag for e in entries} == set(sample.flags) | {None}
        assert {(e.actor, e.reason, e.action, e.version) for e in entries} == \
            {("alice@laptop", "first import", "import", 1)}
        added = next(e for e in entries if e.flag == "new-checkout")
        assert added.old is None and added.new["description"] == "the one-page checkout"
        assert store.replace(sample, actor="bob") == 1          # nothing changed
        assert len(store.history(limit=100)) == len(entries)

    def test_changes_bump_the_version_and_are_audited(self, store):
        store.replace(load(SAMPLE))
        assert store.set_enabled("new-checkout", "production", False, actor="carol",
                                 reason="incident 42") == 2
        entry = store.history("new-checkout", limit=1)[0]
        assert (entry.action, entry.environment, entry.old, entry.new, entry.actor,
                entry.reason, entry.version) == \
            ("disable", "production", True, False, "carol", "incident 42", 2)
        assert entry.ts.endswith("Z")
        assert store.set_enabled("new-checkout", "production", False) == 2   # no-op
        assert store.set_rollout("new-checkout", "production", 45, reason="more") == 3
        entry = store.history("new-checkout", limit=1)[0]
        assert (entry.action, entry.old, entry.new) == ("rollout", 30, 45)
        assert store.set_default("export-format", "production", "csv") == 4
        entry = store.history("export-format")[0]
        assert (entry.action, entry.old, entry.new) == ("default", "none", "csv")
        assert entry.actor == default_actor()
        fs = store.load()
        assert fs.version == 4
        assert not fs.flags["new-checkout"].env("production").enabled
        rules = fs.flags["new-checkout"].env("production").rules
        assert [r.percent for r in rules if r.percent is not None] == [45]
        assert fs.flags["export-format"].default_in("production") == "csv"
        assert [e.version for e in store.history()][:3] == [4, 3, 2]
        assert len(store.history(limit=2)) == 2

    def test_a_rollout_on_a_flag_without_one_adds_a_rule(self, store):
        store.replace(loads('[flags.x.environments.production]\nenabled = true\n'))
        store.set_rollout("x", "production", 12.5)
        rule = store.load().flags["x"].env("production").rules[-1]
        assert (rule.name, rule.percent, rule.variant) == ("rollout", 12.5, "on")
        assert store.history("x")[0].old is None

    @pytest.mark.parametrize("change", [
        lambda s: s.set_rollout("new-checkout", "production", 150),
        lambda s: s.set_rollout("new-checkout", "production", 12.345),
        lambda s: s.set_enabled("no-such-flag", "production", True),
        lambda s: s.set_enabled("new-checkout", "prod", True),
        lambda s: s.set_default("new-checkout", "production", "maybe"),
        lambda s: s.replace(FlagSet(flags={"x": Flag("x", prerequisites=(
            Prerequisite("y", "on"),))})),
        lambda s: s.change(lambda fs: FlagSet(environments=(), flags=fs.flags)),
    ], ids=["percent>100", "percent-decimals", "unknown-flag", "unknown-env",
            "unknown-variant", "prerequisite-of-nothing", "no-environments"])
    def test_an_invalid_change_is_refused_and_changes_nothing(self, store, change):
        store.replace(load(SAMPLE))
        before = dump(store.load())
        history = store.history(limit=1000)
        with pytest.raises(ConfigError):
            change(store)
        assert store.version() == 1
        assert dump(store.load()) == before
        assert store.history(limit=1000) == history

    def test_load_and_compile_once_per_version(self, store):
        store.replace(load(SAMPLE))
        first = store.load()
        assert store.load() is first
        evaluator = store.evaluator("production")
        assert store.evaluator("production") is evaluator
        store.set_enabled("recommendations", "production", False)
        assert store.load() is not first
        after = store.evaluator("production")
        assert after is not evaluator and after.version == 2
        assert after.evaluate("recommendations", {}).reason is Reason.DISABLED
        assert evaluator.evaluate("recommendations", {}).value is True   # old one unchanged

    def test_another_connection_sees_each_change(self, store, spec):
        store.replace(load(SAMPLE))
        with open_store(spec) as other:
            live = LiveFlags(other, "production")
            assert live.evaluator.version == 1
            assert not live.refresh()
            store.set_enabled("recommendations", "production", False, actor="ops")
            assert other.version() == 2
            assert live.refresh()
            assert live.evaluator.evaluate("recommendations", {}).value is False
            assert other.history("recommendations")[0].actor == "ops"

    def test_two_processes_do_not_lose_updates(self, store, spec):
        n = 15
        store.replace(loads(many_flags(n)))
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, spec, prefix, str(n)],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
                   for prefix in ("a", "b")]
        for writer in writers:
            out, err = writer.communicate(timeout=180)
            assert writer.returncode == 0, err
        fs = store.load()
        assert all(fs.flags[f"{p}{i}"].env("production").enabled
                   for p in ("a", "b") for i in range(n))
        entries = store.history(limit=1000)
        enables = [e for e in entries if e.action == "enable"]
        assert len(enables) == 2 * n
        rollouts = [e for e in entries if e.action == "rollout"]
        changed_rollouts = len(rollouts)
        assert store.version() == 1 + 2 * n + changed_rollouts
        # every version was made by exactly one change: no two writers wrote the same one
        versions = [e.version for e in entries if e.flag is not None and e.action != "import"]
        assert len(versions) == len(set(versions))
        assert sorted(versions) == list(range(2, store.version() + 1))

    def test_history_is_json_round_tripped(self, store):
        store.replace(load(SAMPLE))
        entry = next(e for e in store.history(limit=100) if e.flag == "checkout-button")
        assert entry.new["variants"]["big"] == {"color": "green", "label": "Buy now",
                                                 "size": "large"}
        json.dumps([e.new for e in store.history(limit=100)])
