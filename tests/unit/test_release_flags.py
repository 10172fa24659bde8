"""``[release] flags`` and ``flags_hold`` (issue 15): parsed with file, key and line errors
(exit 2, nothing changed), and `upgrader plan` shows the roll-back plan in order with the
estimate of each part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrader import cli
from upgrader.config import load_fleet, loads_fleet
from upgrader.errors import ConfigError

FLEET = """\
[fleet]
name = "shop"

[release]
current = "1.0.0"
target = "1.1.0"
flags = ["new-checkout", "payments-v2"]
flags_hold = "20s"

[flags]
store = "flags.sqlite"

[commands]
install = ["deploy", "--release", "{release}"]
start = ["systemctl", "start", "shop"]
stop = ["systemctl", "stop", "shop"]

[balancer]
kind = "builtin"
admin_url = "http://127.0.0.1:18001"

[strategy]
kind = "rolling"
batch = 1

[[hosts]]
name = "web-01"
address = "10.0.0.1"

[[hosts]]
name = "web-02"
address = "10.0.0.2"
"""


def test_release_flags_load() -> None:
    fleet = loads_fleet(FLEET)
    assert fleet.releases.flags == ("new-checkout", "payments-v2")
    assert fleet.releases.flags_hold == 20.0
    plain = loads_fleet(FLEET.replace('flags = ["new-checkout", "payments-v2"]\n', "")
                        .replace('flags_hold = "20s"\n', ""))
    assert plain.releases.flags == () and plain.releases.flags_hold == 30.0


@pytest.mark.parametrize(("old", "new", "key", "line", "words"), [
    ('flags = ["new-checkout", "payments-v2"]', 'flags = ["new-checkout", "bad key"]',
     "release.flags[1]", 7, ("flag key", "'bad key'")),
    ('flags = ["new-checkout", "payments-v2"]', 'flags = ["new-checkout", "new-checkout"]',
     "release.flags[1]", 7, ("listed twice",)),
    ('flags = ["new-checkout", "payments-v2"]', 'flags = "new-checkout"',
     "release.flags", 7, ()),
    ('flags_hold = "20s"', 'flags_hold = "soon"', "release.flags_hold", 8, ()),
    ('flags_hold = "20s"', 'flag_hold = "20s"', "release.flag_hold", 8, ("flags_hold",)),
    ('[flags]\nstore = "flags.sqlite"\n', "", "release.flags", 7, ("[flags]",)),
])
def test_bad_release_flags_name_file_key_and_line(tmp_path: Path, capsys, old, new, key, line,
                                                  words) -> None:
    assert FLEET.count(old) == 1
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    error = info.value
    assert (error.file, error.key, error.line) == (str(path), key, line), str(error)
    for word in words:
        assert word in str(error)
    # the CLI: exit 2, the location, and nothing changed (no state written)
    state = tmp_path / "state"
    assert cli.main(["run", str(path), "--headless", "--state-dir", str(state)]) == 2
    assert f"{path}:{line}: {key}" in capsys.readouterr().err
    assert not state.exists()


def test_plan_shows_the_roll_back_plan_in_order(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET, encoding="utf-8")
    assert cli.main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = lines.index("roll-back plan after a failed verification, in order:")
    assert lines[start + 1].startswith("  1. flags off (new-checkout, payments-v2) and verify "
                                       "again; cured: stop, release kept: 20s")
    assert lines[start + 2].startswith("  2. hosts back to 1.0.0 (reinstall): ")
    assert cli.main(["plan", str(path), "--json"]) == 0
    parts = json.loads(capsys.readouterr().out)["rollback_plan"]
    assert parts[0]["estimated_s"] == 20.0 and len(parts) == 2
    # a release without flags or a migration: the one roll-back line, as before
    path.write_text(FLEET.replace('flags = ["new-checkout", "payments-v2"]\n', ""),
                    encoding="utf-8")
    assert cli.main(["plan", str(path)]) == 0
    assert "roll-back plan" not in capsys.readouterr().out
