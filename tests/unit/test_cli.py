"""The command line on bad input, and `upgrader plan` on the samples. No lab, no network.

Bad input through `upgrader run` and `upgrader plan` exits 2 with one line on stderr naming
the file, the key path and the line, never a traceback, and nothing happens: the fleet's host
commands would create a marker file (local transport), and neither the marker nor the state
folder may appear. A positive control shows that the same fleet, when valid, does run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader import cli

ROOT = Path(__file__).resolve().parents[2]
#: sample_fleets/ also holds flags files (tests/unit/test_flags_loader.py loads those)
SAMPLES = sorted(p for p in (ROOT / "sample_fleets").glob("*.toml") if p.name != "flags.toml")

BASE = """\
[fleet]
name = "unit"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["touch", "{marker}"]
start = ["touch", "{marker}"]
stop = ["touch", "{marker}"]

[transport]
kind = "local"

[balancer]
kind = "noop"

[health]
kind = "noop"

[verify]
interval = "100ms"
for = "0s"
no_data = "pass"

[strategy]
kind = "rolling"

[[hosts]]
name = "web-01"
address = "127.0.0.1"
port = 9001
"""

# name -> (edit of BASE, key path named, text whose line is named (None: no line), words)
CASES = {
    "malformed_toml": (lambda t: t.replace('name = "unit"', 'name = "unit'),
                       None, 'name = "unit', ["not valid TOML"]),
    "unknown_key": (lambda t: t.replace('address = "127.0.0.1"', 'adress = "127.0.0.1"'),
                    "hosts[0].adress", "adress =", ["unknown key", "address"]),
    "wrong_type": (lambda t: t.replace("port = 9001", 'port = "9001"'),
                   "hosts[0].port", 'port = "9001"', ["expected an integer"]),
    "unknown_provider": (lambda t: t.replace('[balancer]\nkind = "noop"',
                                             '[balancer]\nkind = "nginx"'),
                         "balancer.kind", 'kind = "nginx"', ["nginx", "builtin"]),
    "no_hosts": (lambda t: t.split("[[hosts]]")[0],
                 "hosts", None, ["no hosts"]),
    "duplicate_host": (lambda t: t + '\n[[hosts]]\nname = "web-01"\nport = 9002\n',
                       "hosts[1].name", None, ["duplicate", "web-01"]),
    "percent_over_100": (lambda t: t.replace('no_data = "pass"',
                                             'no_data = "pass"\nerror_rate_max = "150%"'),
                         "verify.error_rate_max", 'error_rate_max = "150%"', ["150%"]),
    "semicolon_release": (lambda t: t.replace('target = "1.1.0"', 'target = "1.1.0;rm -rf"'),
                          "release.target", 'target = "1.1.0;rm -rf"', ["not a valid release"]),
}


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the fleet text")


@pytest.fixture
def fleet_dir(tmp_path):
    marker = tmp_path / "marker"
    state = tmp_path / "state"

    def write(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    write.marker, write.state = marker, state       # type: ignore[attr-defined]
    return write


def base_text(marker: Path) -> str:
    return BASE.replace("{marker}", str(marker))


def upgrader(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("UPGRADER_STATE_DIR", None)
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env,
                          cwd=ROOT)


def check_error(err: str, path: Path, text: str, key: str | None, needle: str | None,
                words: list[str]) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("upgrader: error: "), err
    assert str(path) in err, err
    if key is not None:
        assert f": {key}: " in err, err
    if needle is not None:
        assert f"{path}:{line_of(text, needle)}:" in err, err
    for word in words:
        assert word in err, err


def assert_nothing_happened(fleet_dir) -> None:
    assert not fleet_dir.marker.exists(), "a host command ran"
    assert not fleet_dir.state.exists(), "the state folder was created"


# --------------------------------------------------------------------------------------------


def test_the_valid_fleet_runs_its_commands(fleet_dir):
    """Positive control: the marker and the state folder appear when the fleet is valid."""
    path = fleet_dir("good", base_text(fleet_dir.marker))
    result = upgrader("run", str(path), "--headless", "--state-dir", str(fleet_dir.state))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["outcome"] == "completed"
    assert fleet_dir.marker.exists() and fleet_dir.state.is_dir()


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_fleet_exits_2_naming_file_key_and_line(fleet_dir, capsys, case, command):
    edit, key, needle, words = CASES[case]
    text = edit(base_text(fleet_dir.marker))
    path = fleet_dir(case, text)
    extra = ["--headless", "--state-dir", str(fleet_dir.state)] if command == "run" else \
        ["--state-dir", str(fleet_dir.state)]
    code = cli.main([command, str(path), *extra])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    check_error(err, path, text, key, needle, words)
    assert_nothing_happened(fleet_dir)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_fleet_through_the_real_command(fleet_dir, case):
    """The same, as a user runs it: a process, its exit status and its stderr."""
    edit, key, needle, words = CASES[case]
    text = edit(base_text(fleet_dir.marker))
    path = fleet_dir(case, text)
    result = upgrader("run", str(path), "--headless", "--state-dir", str(fleet_dir.state))
    assert result.returncode == 2
    assert result.stdout == ""
    check_error(result.stderr, path, text, key, needle, words)
    assert_nothing_happened(fleet_dir)


@pytest.mark.parametrize("command", ["run", "plan", "status", "resume"])
def test_missing_fleet_file_exits_2(fleet_dir, capsys, command):
    path = fleet_dir.marker.parent / "nowhere.toml"
    extra = ["--headless"] if command in ("run", "resume") else []
    code = cli.main([command, str(path), *extra, "--state-dir", str(fleet_dir.state)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err and "no such fleet file" in err
    assert_nothing_happened(fleet_dir)


def test_unknown_strategy_option_exits_2(fleet_dir, capsys):
    path = fleet_dir("good", base_text(fleet_dir.marker))
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", str(path), "--strategy", "yolo", "--state-dir", str(fleet_dir.state)])
    assert exc.value.code == 2
    assert "--strategy" in capsys.readouterr().err
    assert_nothing_happened(fleet_dir)


# --------------------------------------------------------------------------------------------
# upgrader plan


def plan_json(*args: str) -> dict:
    result = upgrader("plan", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_plan_of_a_thousand_hosts_is_about_a_week():
    plan = plan_json(str(ROOT / "sample_fleets/thousand-hosts.toml"))
    assert plan["hosts"] == 1000
    assert 6 * 86400 <= plan["estimated_s"] <= 8 * 86400
    assert plan["rollback_estimated_s"] > 0
    assert plan["waits_for_promotion"] == 0

    text = upgrader("plan", str(ROOT / "sample_fleets/thousand-hosts.toml"))
    assert text.returncode == 0, text.stderr
    assert "about a week" in text.stdout
    assert "roll-back" in text.stdout


def test_plan_with_another_strategy():
    plan = plan_json(str(ROOT / "sample_fleets/canary.toml"), "--strategy", "rolling")
    assert plan["strategy"] == "rolling"
    assert plan["fleet"] == "lab-canary"
    assert plan["hosts"] == 8
    assert plan["estimated_s"] > 0 and plan["rollback_estimated_s"] > 0


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_plan_of_every_sample(sample, capsys):
    code = cli.main(["plan", str(sample), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads(out)
    assert plan["hosts"] >= 1 and plan["steps"] >= 1
    assert plan["estimated_s"] > 0 and plan["rollback_estimated_s"] >= 0
    assert plan["waves"], plan


def test_there_are_samples():
    assert len(SAMPLES) >= 7
