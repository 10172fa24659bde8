"""Deploy windows on the command line: outside a window `upgrader run --headless` exits 3 and
names the next opening (in UTC and in the team's zone) without touching a host;
`--override-window REASON` runs and journals the reason; `upgrader plan` prints the calendar of
waves from `--at`; a bad [windows] table exits 2 naming file, key and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from upgrader.journal import Journal

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_fleets" / "windows.toml"

BASE = """\
[fleet]
name = "unit-windows"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["touch", "{marker}"]
start = ["true"]
stop = ["true"]

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
port = 9001
"""

#: open around the clock, in Tokyo, except for a freeze around today: always closed now
FROZEN_NOW = """
[windows]
[[windows.teams]]
name = "tokyo"
timezone = "Asia/Tokyo"
hours = {{ mon-sun = "00:00-24:00" }}

[[windows.freezes]]
from = "{first}"
to = "{last}"
reason = "release freeze"
"""


def upgrader(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("UPGRADER_STATE_DIR", None)
    env.pop("UPGRADER_STATE", None)
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)


@pytest.fixture
def frozen_fleet(tmp_path):
    tokyo = ZoneInfo("Asia/Tokyo")
    today = datetime.now(tokyo).date()
    first, last = today - timedelta(days=2), today + timedelta(days=2)
    marker = tmp_path / "marker"
    text = BASE.replace("{marker}", str(marker)) + FROZEN_NOW.format(first=first, last=last)
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    opening = datetime(last.year, last.month, last.day, tzinfo=tokyo) + timedelta(days=1)
    return path, marker, tmp_path / "state", opening


def test_run_outside_the_window_exits_3_with_the_next_opening(frozen_fleet):
    path, marker, state, opening = frozen_fleet
    result = upgrader("run", str(path), "--headless", "--state-dir", str(state))
    assert result.returncode == 3, result.stderr
    err = result.stderr
    assert "Traceback" not in err and err.startswith("upgrader: refused: outside the deploy window")
    utc_text = opening.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    local_text = opening.strftime("%Y-%m-%d 00:00 JST Asia/Tokyo, team tokyo")
    assert f"next opening {utc_text}" in err and local_text in err, err
    assert "--wait" in err and "--override-window" in err
    assert not marker.exists() and not state.exists()


def test_run_json_outside_the_window_prints_the_refusal_on_stdout(frozen_fleet):
    """A script that parses stdout gets one object: outcome refused, reason and fix."""
    path, marker, state, _ = frozen_fleet
    result = upgrader("run", str(path), "--headless", "--json", "--state-dir", str(state))
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("upgrader: refused: outside the deploy window")
    (line,) = result.stdout.splitlines()
    end = json.loads(line)
    assert end["outcome"] == "refused" and end["fleet"] == "unit-windows"
    assert end["reason"].startswith("outside the deploy window") and end["problems"] == []
    assert "--wait" in end["fix"] and "--override-window REASON" in end["fix"]
    assert not marker.exists() and not state.exists()


def test_override_window_runs_and_journals_the_reason(frozen_fleet):
    path, marker, state, _ = frozen_fleet
    result = upgrader("run", str(path), "--headless", "--json", "--state-dir", str(state),
                      "--override-window", "hotfix for INC-42")
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    events = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    override = [e for e in events if e["kind"] == "window_override"]
    assert override and override[0]["reason"] == "hotfix for INC-42" and override[0]["open"] is False
    assert "deploy window overridden: hotfix for INC-42" in result.stderr
    journal = Journal(state / "journal.sqlite")
    try:
        record = journal.latest("unit-windows")
        assert record is not None
        recorded = [e.data for e in journal.entries(record.id) if e.kind == "window_override"]
    finally:
        journal.close()
    assert recorded == [{"reason": "hotfix for INC-42", "open": False}]


def test_an_empty_override_reason_is_bad_input(frozen_fleet):
    path, marker, state, _ = frozen_fleet
    result = upgrader("run", str(path), "--headless", "--state-dir", str(state),
                      "--override-window", " ")
    assert result.returncode == 2 and "needs a reason" in result.stderr
    assert not marker.exists()


def test_plan_prints_the_calendar_of_waves_from_at():
    result = upgrader("plan", str(SAMPLE), "--at", "2026-12-18T19:00:00Z")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "calendar from Fri 2026-12-18 19:00 UTC (14:00 EST newyork)" in out
    # the Friday window in New York is too short, then the year-end freeze: 5 January
    assert "    1  Tue 2027-01-05 08:00 UTC (09:00 CET berlin)" in out
    assert "finishes Tue 2027-01-05 12:00 UTC (13:00 CET berlin)" in out
    assert "deploy window, upgrade 4, verify" in out


def test_plan_json_has_the_calendar():
    result = upgrader("plan", str(SAMPLE), "--json", "--at", "2026-01-12T14:00:00+01:00")
    assert result.returncode == 0, result.stderr
    calendar = json.loads(result.stdout)["calendar"]
    assert calendar["from"] == "2026-01-12T14:00:00+01:00"
    waves = calendar["waves"]
    assert waves[0] == {"index": 1, "start": "2026-01-12T13:00:00+00:00",
                        "end": "2026-01-12T13:40:00+00:00", "waited_s": 0.0,
                        "teams": ["berlin"]}
    # Berlin hands over to New York at 16:00 UTC: the last waves run in New York's hours
    assert waves[-1]["teams"] == ["newyork"] and waves[-1]["end"] == "2026-01-12T17:00:00+00:00"


def test_plan_at_without_an_offset_is_bad_input():
    result = upgrader("plan", str(SAMPLE), "--at", "2026-01-12T14:00")
    assert result.returncode == 2 and "--at" in result.stderr and "offset" in result.stderr


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("edit,key,needle,words", [
    (lambda t: t.replace('timezone = "Europe/Berlin"', 'timezone = "Europe/Berln"'),
     "windows.teams[0].timezone", 'timezone = "Europe/Berln"', ["unknown time zone"]),
    (lambda t: t.replace('mon-fri = "09:00-17:00"', 'mon-fri = "9am-5pm"'),
     "windows.teams[0].hours.mon-fri", 'mon-fri = "9am-5pm"', ["expected a time"]),
    (lambda t: t.replace('"2026-12-31"]', '"2026-12-32"]'),
     "windows.teams[0].holidays[2]", '"2026-12-32"', ["expected a date"]),
    (lambda t: t.replace('to = "2027-01-04"', 'to = "2026-01-04"'),
     "windows.freezes[0].to", 'to = "2026-01-04"', ["before it starts"]),
])
def test_bad_windows_exit_2_naming_file_key_and_line(tmp_path, command, edit, key, needle, words):
    text = edit(SAMPLE.read_text(encoding="utf-8"))
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    extra = ["--headless", "--state-dir", str(tmp_path / "state")] if command == "run" else []
    result = upgrader(command, str(path), *extra)
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err and err.startswith("upgrader: error: ")
    line = next(n for n, text_line in enumerate(text.splitlines(), 1)
                if needle in text_line)
    assert f"{path}:{line}: {key}: " in err, err
    for word in words:
        assert word in err
    assert not (tmp_path / "state").exists()
