"""Counts read properly ("1 host", not "1 hosts"), `schema start` says when its release is
the only one, and `make` echoes no comment lines (issue 16)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader.lab.cli import down_message
from upgrader.schema.cli import start_message
from upgrader.units import plural

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("count", "text"), [(0, "0 hosts"), (1, "1 host"), (2, "2 hosts"),
                                             (22587, "22,587 hosts")])
def test_plural(count: int, text: str) -> None:
    assert plural(count, "host") == text


def test_plural_irregular() -> None:
    assert plural(1, "batch", "batches") == "1 batch"
    assert plural(3, "batch", "batches") == "3 batches"


def test_lab_down_counts_one_request_as_one() -> None:
    assert down_message({"requests": 1, "failed": 0}) == \
        "lab down; traffic: 1 request, 0 failed, 0 maintenance"
    assert down_message({}) == "lab down; traffic: 0 requests, 0 failed, 0 maintenance"


def test_schema_start_with_no_other_release_does_not_say_beside_none() -> None:
    text = start_message("0007_x", "1.1.0", [])
    assert "none" not in text
    assert text == "started 0007_x: release 1.1.0 is live, the only release"
    assert start_message("0007_x", "1.1.0", ["1.0.0"]) == \
        "started 0007_x: release 1.1.0 is live beside 1.0.0"


def test_no_printed_count_says_1_hosts() -> None:
    """The pattern the issue found: a count of a list printed before a plural noun. Strings
    that are errors about limits ("has N names; at most M") read fine for any N but 1: the
    user-facing summaries below must go through plural()."""
    sites = {"upgrader/cli.py": ("hosts", "events", "waves"),
             "upgrader/lab/cli.py": ("hosts", "requests"),
             "upgrader/flags/cli.py": ("flags in", "flags,", "flags (store"),
             "upgrader/engine/gates.py": ("hosts",)}
    found = []
    for path, nouns in sites.items():
        text = (ROOT / path).read_text(encoding="utf-8")
        for noun in nouns:
            found += [f"{path}: {m.group(0)}" for m in re.finditer(
                r"\{(len\([^}]*\)|[a-z_.]*(hosts|total_hosts|requests))\} " + re.escape(noun),
                text)]
    assert found == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["demo", "test", "lint"])
def test_make_echoes_no_comment_lines(target: str, tmp_path: Path) -> None:
    result = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target,
                             f"VENV={tmp_path / 'venv'}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    echoed = [line for line in result.stdout.splitlines() if line.lstrip().startswith("#")]
    assert echoed == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("demo_exit", [0, 1])
def test_make_demo_says_how_to_put_upgrader_on_path_whatever_the_demo_ends(
        demo_exit: int, tmp_path: Path) -> None:
    """Issue 16: the README's tour starts with `. .venv/bin/activate`, which `make demo`
    names at its end; a demo that ends in a roll-back (exit 1: `--bad-release`, quitting a
    live demo) said nothing, as make stopped at the failed command. The demo's exit code
    is still make's."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "upgrader"
    stub.write_text(f"#!/bin/sh\necho demo ran: \"$@\"\nexit {demo_exit}\n")
    stub.chmod(0o755)
    (venv / ".installed").touch()
    (venv / "bin" / "python").symlink_to(sys.executable)
    later = (ROOT / "pyproject.toml").stat().st_mtime + 10
    os.utime(venv / ".installed", (later, later))
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "demo", f"VENV={venv}",
                             "DEMO_ARGS=--bad-release"], capture_output=True, text=True,
                            timeout=30)
    assert "demo ran: demo --bad-release" in result.stdout
    assert (f"upgrader is installed in {venv}/bin; put it on PATH for the README's tour: "
            f". {venv}/bin/activate") in result.stdout
    assert (result.returncode == 0) == (demo_exit == 0)
    readme = (ROOT / "README.md").read_text()
    assert "```sh\n. .venv/bin/activate\n```" in readme      # the tour's first command
