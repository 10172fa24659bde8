"""`upgrader flags bisect` end to end: a real test command (a Python script reading the flags
through the upgrader.flags API) run against a scratch copy of a SQLite store."""

from __future__ import annotations

import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from upgrader.flags.cli import run as flags_cli
from upgrader.flags.loader import loads
from upgrader.flags.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ENV = "production"
FLAGS = [f"feature-{i:02d}" for i in range(16)]

#: the test command: fails when every flag named on its command line is on (for the user)
TEST_SCRIPT = """
import os, sys
from upgrader.flags.store import open_store

with open_store(os.environ["UPGRADER_FLAG_STORE"]) as store:
    evaluator = store.evaluator(os.environ["UPGRADER_FLAG_ENV"])
    broken = all(evaluator.evaluate(key, {"targetingKey": "smoke-test"}).value
                 for key in sys.argv[1:])
print("broken" if broken else "fine")
sys.exit(1 if broken else 0)
"""


def flags_toml(enabled: bool = True) -> str:
    parts = ['environments = ["staging", "production"]\n']
    for key in FLAGS:
        parts.append(f"[flags.{key}]\ndefault = \"on\"\n[flags.{key}.environments.production]\n"
                     f"enabled = {'true' if enabled else 'false'}\n")
    return "\n".join(parts)


@pytest.fixture
def store_spec(tmp_path: Path) -> str:
    spec = str(tmp_path / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(loads(flags_toml()), actor="test")
    return spec


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "smoke.py"
    path.write_text(TEST_SCRIPT)
    return path


def bisect(store_spec: str, script: Path, *failing: str, extra: list[str] | None = None
           ) -> int:
    command = shlex.join([sys.executable, str(script), *failing])
    argv = ["bisect", "--test", command, "--store", store_spec, "--env", ENV]
    return flags_cli(argv + (extra if extra is not None else ["--flags", ",".join(FLAGS)]))


def states(store_spec: str) -> tuple[int, dict[str, bool]]:
    with open_store(store_spec) as store:
        flagset = store.load()
        return flagset.version, {k: f.env(ENV).enabled for k, f in flagset.flags.items()}


def test_finds_the_flag_that_breaks_the_test(store_spec, script, capsys):
    before = states(store_spec)
    assert bisect(store_spec, script, "feature-11") == 0
    out = capsys.readouterr().out
    assert "culprit: feature-11" in out
    steps = [line for line in out.splitlines() if line.startswith("step")]
    assert 1 <= len(steps) <= 5                  # ceil(log2 16) + 1
    assert all(("-> pass" in line) or ("-> FAIL" in line) for line in steps)
    assert "bisecting 16 flag(s) in production on a scratch copy" in out
    assert states(store_spec) == before          # the real store was never touched


def test_finds_a_pair_that_fails_only_together(store_spec, script, capsys):
    assert bisect(store_spec, script, "feature-02", "feature-13") == 0
    out = capsys.readouterr().out
    assert "failing combination: feature-02, feature-13" in out
    assert "[minimize]" in out


def test_nothing_to_find_when_the_test_passes_with_every_flag_on(store_spec, script, capsys):
    assert bisect(store_spec, script, "no-such-flag-so-never-broken") == 1
    assert "nothing to find: the test passes with all 16 flags on" in capsys.readouterr().out


def test_nothing_to_find_when_the_test_fails_without_flags(store_spec, tmp_path, capsys):
    failing = tmp_path / "fail.py"
    failing.write_text("import sys; sys.exit(1)\n")
    assert bisect(store_spec, failing) == 1
    assert "fails with none of the flags on" in capsys.readouterr().out


@pytest.mark.parametrize("code, output", [
    (4, "ERROR: file or directory not found: tests/smoke"),   # pytest: a path that is not there
    (5, "no tests ran in 0.01s"),                             # pytest: nothing collected
    (127, "sh: 1: smoke-test: not found"),                    # a shell: no such command
])
def test_a_broken_test_command_is_told_from_an_answer(store_spec, tmp_path, capsys, code,
                                                      output):
    """Issue 16: `pytest tests/smoke` (no such folder) exits 4 with every flag on and with
    none; bisect said "nothing to find ... the cause is elsewhere" (exit 1). It now runs both
    ends, says the test command is broken, shows its last line, and exits 3."""
    broken = tmp_path / "broken.py"
    broken.write_text(f"import sys; print({output!r}); sys.exit({code})\n")
    before = states(store_spec)
    assert bisect(store_spec, broken) == 3
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("step")]
    assert any("0/16 on: (none) -> FAIL" in line for line in steps)
    assert any("16/16 on: all -> FAIL" in line for line in steps)
    assert (f"the test command is broken, not a flag: it fails the same way with none and "
            f"with all of the 16 flags on (exit {code} in every run: {output}); run it by "
            f"hand: ") in out
    assert "nothing to find" not in out and "culprit" not in out
    assert states(store_spec) == before


def test_a_test_that_errors_only_with_a_flag_on_is_an_answer(store_spec, tmp_path, capsys):
    """The same exit 4 is a flag's doing when the run with no flag on passes."""
    script = tmp_path / "usage.py"
    script.write_text(SCRIPT_HEAD + "sys.exit(4 if on('feature-07') else 0)\n")
    assert bisect(store_spec, script) == 0
    assert "culprit: feature-07" in capsys.readouterr().out


SCRIPT_HEAD = """
import os, sys
from upgrader.flags.store import open_store
with open_store(os.environ["UPGRADER_FLAG_STORE"]) as store:
    evaluator = store.evaluator(os.environ["UPGRADER_FLAG_ENV"])
    on = lambda key: evaluator.evaluate(key, {"targetingKey": "smoke-test"}).value
"""


def test_the_readme_bisect_example_finds_the_pair(tmp_path, capsys):
    """README's `flags bisect` example runs a test that exists (examples/checkout_smoke.py)
    against the sample flags and finds the pair behind the one-page checkout's bug."""
    root = Path(__file__).resolve().parents[2]
    spec = str(tmp_path / "flags.sqlite")
    assert flags_cli(["import", str(root / "sample_fleets" / "flags.toml"),
                      "--store", spec]) == 0
    command = shlex.join([sys.executable, str(root / "examples" / "checkout_smoke.py")])
    assert flags_cli(["bisect", "--test", command, "--store", spec,
                      "--flags", "new-checkout,payments-v2"]) == 0
    assert "failing combination: new-checkout, payments-v2" in capsys.readouterr().out


def test_live_flips_the_real_store_and_restores_it(store_spec, script, capsys):
    before_version, before = states(store_spec)
    assert bisect(store_spec, script, "feature-05",
                  extra=["--flags", ",".join(FLAGS), "--live", "--reason", "INC-42"]) == 0
    assert "culprit: feature-05" in capsys.readouterr().out
    after_version, after = states(store_spec)
    assert after == before and after_version > before_version
    with open_store(store_spec) as store:
        history = store.history(limit=100)
    assert history[0].action == "bisect" and "restoring" in history[0].reason
    assert all("INC-42" in entry.reason for entry in history if entry.action == "bisect")


def test_changed_since_takes_the_flags_enabled_since_then(tmp_path, script, capsys):
    spec = str(tmp_path / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(loads(flags_toml(enabled=False)), actor="test")
        store.set_enabled("feature-00", ENV, True)            # before T: not a candidate
        time.sleep(0.01)
        since = datetime.now(UTC).isoformat()
        time.sleep(0.01)
        for key in ("feature-03", "feature-07", "feature-09", "feature-14"):
            store.set_enabled(key, ENV, True)
        store.set_enabled("feature-09", "staging", True)      # another environment
        store.set_enabled("feature-14", ENV, False)           # enabled, then off again
    assert bisect(spec, script, "feature-07", extra=["--changed-since", since]) == 0
    out = capsys.readouterr().out
    assert f"flags enabled in {ENV} since" in out
    assert "feature-03, feature-07, feature-09" in out
    assert "bisecting 3 flag(s)" in out and "culprit: feature-07" in out

    later = datetime.now(UTC).isoformat()
    assert bisect(spec, script, "feature-07", extra=["--changed-since", later]) == 1
    assert "no flag was turned on since then" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--flags", "feature-01,nope"], "unknown flag 'nope'"),
    (["--flags", " , "], "--flags names no flag"),
    (["--changed-since", "yesterday-ish"], "--changed-since"),
    (["--flags", "feature-01", "--env", "moon"], "unknown environment 'moon'"),
])
def test_bad_input_exits_2(store_spec, script, capsys, extra, message):
    assert bisect(store_spec, script, extra=extra) == 2
    assert message in capsys.readouterr().err


def test_an_empty_or_unparsable_test_command_exits_2(store_spec, capsys):
    base = ["bisect", "--store", store_spec, "--flags", "feature-01"]
    assert flags_cli(base + ["--test", ""]) == 2
    assert flags_cli(base + ["--test", "python 'unclosed"]) == 2
    assert flags_cli(base + ["--test", "/no/such/program"]) == 2
    assert "cannot run the test" in capsys.readouterr().err
