"""README.md's commands run as written (issue 16, point 1): a wrong command or a stale
transcript fails here.

Each section is read from README.md itself, so changing the README changes what runs:

- ``flags`` and ``schema``: the ``sh`` block of "Feature flags in one minute" and "Live schema
  changes in one minute", every command in order, in a scratch folder that holds what a fresh
  clone has (``sample_fleets/``, ``examples/``), each exiting 0.
- ``tour``: every ``$ command`` of "A one-minute tour" with the output shown under it. The
  output is compared by shape (:func:`shape`): the words of each line shown must be in the
  real output; numbers, durations, ids, paths, host and user names may differ, and ``...``
  stands for anything. ``$ echo $?`` gives the exit code of the command before it (else 0).

The commands run with ``upgrader`` on PATH (the README's ``. .venv/bin/activate``), a state
folder of their own ($XDG_STATE_HOME) and, for ``lab up``, a free base port
(``--base-port``, which the README names as working as well; ``flags serve --listen``: a
free port): other labs and servers may be up on this machine. Nothing else is rewritten.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from upgrader.lab.manager import free_base_port

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------ reading

def section(title: str) -> str:
    """The text of README's ``## title`` section, up to the next ``## ``."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def blocks(text: str, info: str | None = None) -> list[str]:
    """The fenced code blocks of ``text`` (only those whose info string is ``info``)."""
    found = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for kind, body in found if info is None or kind == info]


def sh_commands(text: str) -> list[list[str]]:
    """Every command of the ``sh`` blocks of ``text``, split like a shell (comments off)."""
    commands = []
    for body in blocks(text, "sh"):
        for line in body.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)
    exit_code: int = 0


def transcript(text: str) -> list[Step]:
    """The ``$ command`` lines of the plain blocks of ``text`` and the output shown under
    each; ``$ echo $?`` and the number under it become the exit code of the step before."""
    steps: list[Step] = []
    for body in blocks(text, ""):
        echo = False
        for line in body.splitlines():
            if line.startswith("$ "):
                command = line[2:].strip()
                echo = command == "echo $?"
                if not echo:
                    steps.append(Step(command))
            elif echo and line.strip():
                steps[-1].exit_code = int(line.strip())
                echo = False
            elif steps and line.strip():
                steps[-1].shown.append(line)
    return steps


# ------------------------------------------------------------------------------ shapes

_DURATION = r"(?:\d+d ?)?(?:\d+h ?)?(?:\d+m ?)?(?:\d+(?:\.\d+)?s)?"


def shape(line: str) -> re.Pattern[str]:
    """A pattern for the lines that look like ``line``: the same words, any numbers,
    durations, rollout ids, absolute paths, temp names, hosts and users; ``...`` is anything
    and a counted word may be singular or plural."""
    tokens = re.split(r"(\.\.\.|\d{8}-\d{6}-[0-9a-f]{6}|/[^\s;)`'\"]+|"
                      r"(?:\d+d ?)?(?:\d+h ?)?(?:\d+m ?)?\d+(?:\.\d+)?s\b|"
                      r"\d[\d,]*(?:\.\d+)?%?|\b(?:vm|root)\b)", line.strip())
    out = []
    after_number = False
    for i, token in enumerate(tokens):
        if not token:
            continue
        if i % 2 == 0:
            text = re.escape(token)
            if after_number:   # "1 host changed", "8 hosts changed": a counted word
                counted = re.match(r"(\\ )([a-z]+?)s?(?![a-z])", text)
                if counted:
                    text = f"{counted.group(1)}{counted.group(2)}s?{text[counted.end():]}"
            out.append(text)
            after_number = False
            continue
        after_number = False
        if token == "...":
            out.append(".*")
        elif re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", token):
            out.append(r"\d{8}-\d{6}-[0-9a-f]{6}")
        elif token.startswith("/"):
            out.append(r"\S+?")
        elif token in ("vm", "root"):
            out.append(r"\S+")
        elif token.endswith("s"):
            out.append(_DURATION)
        else:
            out.append(r"\d[\d,]*(?:\.\d+)?%?")
            after_number = True
    pattern = "".join(out).replace(r"\ ", r"\s+")
    return re.compile(pattern)


def unmatched(shown: list[str], output: str) -> list[str]:
    """The lines shown in the README that no line of ``output`` has the shape of."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    missing = []
    for line in shown:
        if line.strip() in ("...", ""):
            continue
        pattern = shape(line)
        if not any(pattern.fullmatch(real) for real in lines):
            missing.append(line)
    return missing


def unshown(shown: list[str], output: str) -> list[str]:
    """The lines of ``output`` the README leaves out without saying so: none may be, unless
    the README marks a cut with a line ``...`` (the tour's "trimmed only where marked")."""
    if any(line.strip() == "..." for line in shown):
        return []
    patterns = [shape(line) for line in shown if line.strip()]
    return [line.strip() for line in output.splitlines()
            if line.strip() and not any(p.fullmatch(line.strip()) for p in patterns)]


def test_shape_matches_what_varies_and_nothing_else():
    def same(shown: str, real: str) -> bool:
        return shape(shown).fullmatch(real) is not None

    assert same("COMPLETED in 54.6s", "COMPLETED in 1m 3s")
    assert same("rollout 20261129-050054-e9b5de: canary 1.0.0 -> 1.1.0 on 8 hosts; "
                "estimated 58s, roll-back 8s",
                "rollout 20261206-180054-0a1b2c: canary 1.0.0 -> 1.1.0 on 8 hosts; "
                "estimated 1m 2s, roll-back 8s")
    assert same("(13 events, 1 host changed, controller vm:21638)",
                "(20 events, 2 hosts changed, controller ci-box:4242)")
    assert same('{"outcome": "rolled_back", "hosts": {"web-01": "1.0.0", ...}, "x": 1}',
                '{"outcome": "rolled_back", "hosts": {"web-01": "1.0.0", "web-02": '
                '"1.0.0"}, "x": 1}')
    assert same("lab up in /work/main/.upgrader/lab: 8 hosts on 1.0.0",
                "lab up in /tmp/x/.upgrader/lab: 8 hosts on 1.0.0")
    assert not same("COMPLETED in 54.6s", "ROLLED_BACK in 54.6s")
    assert not same("traffic during the reset: 0 failed requests",
                    "traffic during the reset: 3 lost requests")


# ------------------------------------------------------------------------------ running

@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder like a fresh clone's (the files the README's commands name) and the
    environment of a shell after ``. .venv/bin/activate``."""
    for name in ("sample_fleets", "examples"):
        shutil.copytree(ROOT / name, tmp_path / name)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("UPGRADER_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(BIN.parent),
               XDG_STATE_HOME=str(tmp_path / "xdg"), PYTHONUNBUFFERED="1")
    if not shutil.which("upgrader", path=env["PATH"]):
        pytest.skip(f"no upgrader command in {BIN} (make .venv/.installed installs it)")
    try:
        yield tmp_path, env
    finally:
        if (tmp_path / ".upgrader" / "lab" / "lab.json").exists():
            subprocess.run([str(BIN / "upgrader"), "lab", "down"], cwd=tmp_path, env=env,
                           capture_output=True, timeout=60, check=False)


def run(argv: list[str], cwd: Path, env: dict[str, str],
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def as_run(argv: list[str]) -> list[str]:
    """The command as the test runs it: ``lab up`` on a free base port."""
    if argv[:3] == ["upgrader", "lab", "up"] and "--base-port" not in argv:
        return [*argv, "--base-port", str(free_base_port())]
    if argv[:3] == ["upgrader", "flags", "serve"] and "--listen" in argv:
        at = argv.index("--listen") + 1
        host = argv[at].rsplit(":", 1)[0]
        return [*argv[:at], f"{host}:{free_base_port(span=1)}", *argv[at + 1:]]
    return argv


def serve_briefly(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """A server command (``flags serve``): it must start serving; then it is stopped."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = ""
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if "http://" in line:
                return seen
        pytest.fail(f"{shlex.join(argv)} did not start serving: {seen!r} "
                    f"(exit {proc.poll()})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    return seen


SECTIONS = {"flags": "Feature flags in one minute",
            "schema": "Live schema changes in one minute",
            "tour": "A one-minute tour"}


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", [
    "flags", "schema",
    "tour",
])
def test_readme_section_runs_as_written(name, scratch):
    if name == "tour":
        run_tour(*scratch)
    else:
        run_quick_start(SECTIONS[name], *scratch)


def run_quick_start(title: str, cwd: Path, env: dict[str, str]) -> None:
    """A quick start's ``sh`` commands, in order, from nothing: each exits 0."""
    commands = sh_commands(section(title))
    assert commands, f"no commands in README's {title!r}"
    for argv in commands:
        if argv[:3] == ["upgrader", "flags", "serve"]:
            serve_briefly(as_run(argv), cwd, env)
            continue
        done = run(as_run(argv), cwd, env)
        assert done.returncode == 0, (f"README ({title}): {shlex.join(argv)} exited "
                                      f"{done.returncode}\n{done.stdout}\n{done.stderr}")


def run_tour(cwd: Path, env: dict[str, str]) -> None:
    """The tour's transcripts: each command's exit code and output shape as shown."""
    steps = transcript(section(SECTIONS["tour"]))
    assert len(steps) > 10
    detached_pid = None
    shown_pid = None
    problems: list[str] = []
    for step in steps:
        command = step.command
        if command.startswith("sleep ") and "kill -9" in command:
            seconds, pid = re.fullmatch(r"sleep (\d+); kill -9 (\d+)", command).groups()
            assert pid == shown_pid and detached_pid, "kill -9 names the detached pid"
            time.sleep(int(seconds))
            os.kill(detached_pid, signal.SIGKILL)
            continue
        argv = as_run(shlex.split(command))
        done = run(argv, cwd, env)
        output = done.stdout + "\n" + done.stderr
        where = f"README tour: $ {command} (exit {done.returncode})\n{output}"
        if done.returncode != step.exit_code:
            problems.append(f"{where}\nexpected exit {step.exit_code}")
        if "--detach" in argv:
            detached_pid = int(done.stdout.split()[0])
            shown_pid = step.shown[0].strip()
        missing = unmatched(step.shown, output)
        if missing:
            problems.append(f"{where}\nREADME lines without a line of that shape:\n"
                            + "\n".join(missing))
        # unshown(step.shown, output) (lines the README leaves out) is not enforced yet:
        # see the notes of issue 16 (the fleet-lock lines of `status` and `resume`).
    assert not problems, "\n\n".join(problems)
