"""``upgrader lab up --flag-store SPEC`` (issue 15): the flag store the lab's apps read, on a
real lab. A PostgreSQL store (the session's throw-away server, tests/conftest.py) is kept in
``flags.store`` (mode 0600) and shown by ``lab up`` and ``lab status`` with its password
masked; a value that cannot work is exit 2 naming ``--flag-store``, and no lab starts.

That the apps then read the PostgreSQL store (through every restart a rollout makes) is
proved by tests/integration/test_release_flags_lab.py, which runs on both kinds of store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader.flags.store import open_store
from upgrader.lab import hostctl
from upgrader.lab.layout import LAB_FLAG_STORE, LAB_FLAG_STORE_SPEC
from upgrader.lab.manager import free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORD = "s3cret-lab-pw"


def upgrader(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("upgrader")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def test_a_postgres_flag_store_is_kept_and_shown_with_its_password_masked(
        tmp_path: Path, postgres_url: str) -> None:
    # the session's server trusts loopback: a password in the URL is accepted and ignored,
    # which is what this test needs (a URL that holds one)
    url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    assert PASSWORD in url
    lab_dir = tmp_path / "lab"
    base = free_base_port()
    up = upgrader("lab", "up", "--hosts", "1", "--rps", "0", "--dir", str(lab_dir),
                  "--base-port", str(base), "--flag-store", url)
    try:
        assert up.returncode == 0, up.stderr
        masked = url.replace(PASSWORD, "***")
        assert f"  flags:    {masked}  (flag new-path, environment lab" in up.stdout
        assert PASSWORD not in up.stdout + up.stderr
        spec = lab_dir / LAB_FLAG_STORE_SPEC
        assert spec.read_text(encoding="utf-8").strip() == url       # what the apps read
        assert spec.stat().st_mode & 0o777 == 0o600
        lab_json = (lab_dir / "lab.json").read_text(encoding="utf-8")
        assert PASSWORD not in lab_json and json.loads(lab_json)["flag_store"] == masked
        assert not (lab_dir / LAB_FLAG_STORE).exists()
        with open_store(url) as store:                 # opened (and made) before the lab
            assert store.version() == 0

        status = upgrader("lab", "status", "--dir", str(lab_dir))
        assert status.returncode == 0, status.stderr
        assert f"  flags:   {masked}" in status.stdout and PASSWORD not in status.stdout
        as_json = upgrader("lab", "status", "--dir", str(lab_dir), "--json")
        assert json.loads(as_json.stdout)["flag_store"] == masked
    finally:
        upgrader("lab", "down", "--dir", str(lab_dir))


def test_the_default_flag_store_is_the_labs_sqlite_file(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    up = upgrader("lab", "up", "--hosts", "1", "--rps", "0", "--dir", str(lab_dir),
                  "--base-port", str(free_base_port()))
    try:
        assert up.returncode == 0, up.stderr
        assert "flags:" not in up.stdout                # the README's `lab up`, unchanged
        assert (lab_dir / LAB_FLAG_STORE_SPEC).read_text(encoding="utf-8").strip() == \
            str(lab_dir.resolve() / LAB_FLAG_STORE)
        status = upgrader("lab", "status", "--dir", str(lab_dir))
        assert f"  flags:   {lab_dir.resolve() / LAB_FLAG_STORE}" in status.stdout
    finally:
        upgrader("lab", "down", "--dir", str(lab_dir))


def test_a_relative_sqlite_flag_store_is_kept_as_an_absolute_path(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    up = upgrader("lab", "up", "--hosts", "1", "--rps", "0", "--dir", str(lab_dir),
                  "--base-port", str(free_base_port()), "--flag-store", "shared/flags.sqlite",
                  cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        store = tmp_path / "shared" / "flags.sqlite"
        assert f"  flags:    {store}  (flag new-path" in up.stdout
        assert (lab_dir / LAB_FLAG_STORE_SPEC).read_text(encoding="utf-8").strip() == str(store)
        assert store.exists()
    finally:
        upgrader("lab", "down", "--dir", str(lab_dir))


@pytest.mark.parametrize(("spec", "says"), [
    ("mysql://app:hunter2-pw@db/flags", "unknown flag store 'mysql://app:***@db/flags'"),
    (":memory:", "':memory:' is a store of one process"),
    ("", "empty flag store"),
    ("postgresql://nobody:hunter2-pw@127.0.0.1:1/none?connect_timeout=2",
     "cannot use this flag store: postgresql://nobody:***@127.0.0.1:1/none"),
    ("/proc/no-such/flags.sqlite", "cannot use this flag store: /proc/no-such/flags.sqlite"),
])
def test_a_bad_flag_store_is_exit_2_and_no_lab_starts(tmp_path: Path, spec: str,
                                                      says: str) -> None:
    lab_dir = tmp_path / "lab"
    base = free_base_port()
    result = upgrader("lab", "up", "--hosts", "2", "--rps", "0", "--dir", str(lab_dir),
                      "--base-port", str(base), "--flag-store", spec)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("upgrader: error: --flag-store: "), result.stderr
    assert says in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stdout == ""
    # nothing started, nothing written
    assert not lab_dir.exists()
    assert not any(hostctl.port_open(port) for port in (base, base + 1, base + 101, base + 102))


def lab_fleet(tmp_path: Path, store: str) -> Path:
    """A fleet of a 1-host lab whose ``[flags] store`` is ``store``."""
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[fleet]
name = "flagged"

[release]
current = "1.0.0"
target = "1.1.0-flagged"

[lab]
hosts = 1
dir = "{tmp_path / 'lab'}"
base_port = {free_base_port()}

[flags]
store = "{store}"
environment = "lab"

[strategy]
kind = "rolling"
""", encoding="utf-8")
    return path


def test_lab_up_fleet_defaults_the_flag_store_to_the_fleets(tmp_path: Path) -> None:
    """``lab up --fleet FILE`` gives the apps the fleet's ``[flags] store`` (before: the
    lab's own flags.sqlite, so the rollout switched flags the apps never read); an explicit
    ``--flag-store`` still wins."""
    store = tmp_path / "shared" / "flags.sqlite"
    fleet = lab_fleet(tmp_path, str(store))
    lab_dir = tmp_path / "lab"
    up = upgrader("lab", "up", "--fleet", str(fleet), "--rps", "0")
    try:
        assert up.returncode == 0, up.stderr
        assert f"  flags:    {store}  (flag new-path" in up.stdout, up.stdout
        assert (lab_dir / LAB_FLAG_STORE_SPEC).read_text(encoding="utf-8").strip() == str(store)
        assert store.exists() and not (lab_dir / LAB_FLAG_STORE).exists()
    finally:
        upgrader("lab", "down", "--dir", str(lab_dir))
    other = tmp_path / "other.sqlite"
    up = upgrader("lab", "up", "--fleet", str(fleet), "--rps", "0", "--flag-store", str(other))
    try:
        assert up.returncode == 0, up.stderr
        assert (lab_dir / LAB_FLAG_STORE_SPEC).read_text(encoding="utf-8").strip() == str(other)
    finally:
        upgrader("lab", "down", "--dir", str(lab_dir))


def test_a_fleets_flag_store_that_cannot_be_used_is_exit_2_naming_its_line(
        tmp_path: Path) -> None:
    fleet = lab_fleet(tmp_path, "/proc/no-such/flags.sqlite")
    line = fleet.read_text(encoding="utf-8").splitlines().index(
        'store = "/proc/no-such/flags.sqlite"') + 1
    result = upgrader("lab", "up", "--fleet", str(fleet), "--rps", "0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"upgrader: error: {fleet}:{line}: flags.store: cannot use this flag store: "
        "/proc/no-such/flags.sqlite"), result.stderr
    assert "--flag-store SPEC names another" in result.stderr
    assert result.stdout == "" and not (tmp_path / "lab").exists()      # nothing started
