"""README.md's commands run as written (issue 16, point 1): a wrong command or a stale
transcript fails here.

Each section is read from README.md itself, so changing the README changes what runs: every
``$ command`` of "A one-minute tour", "Feature flags in one minute" and "Live schema changes
in one minute", in order, from nothing (a scratch folder that holds what a fresh clone has:
``sample_fleets/``, ``examples/``), with the output shown under it. ``$ echo $?`` gives the
exit code of the command before it (else 0). The output is compared by shape
(:func:`shape`): numbers, durations, ids, paths, host and user names may differ, and ``...``
stands for anything. Both ways: every line shown must have a line of its shape in the real
output (:func:`unmatched`), and every line of the real output must be shown, unless the
README marks a cut with a line ``...`` (:func:`unshown`: "trimmed only where marked").

The commands run with ``upgrader`` on PATH (the README's ``. .venv/bin/activate``), a state
folder of their own ($XDG_STATE_HOME) and, for ``lab up``, a free base port
(``--base-port``, which the README names as working as well; ``flags serve --listen``: a
free port, and the server is stopped once it serves): other labs and servers may be up on
this machine. Nothing else is rewritten.
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
    # a run of n spaces: n or more blanks (as n times \s+ would, without its backtracking,
    # which never ends on a wide table such as `flags list`'s)
    def blanks(run: re.Match[str]) -> str:
        n = len(run.group()) // 2
        return r"\s+" if n == 1 else rf"\s{{{n},}}"

    return re.compile(re.sub(r"(?:\\ )+", blanks, "".join(out)))


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
    assert same("KEY     KIND", "KEY        KIND") and not same("KEY     KIND", "KEY  KIND")
    # a wide table's row (`flags list`): its runs of blanks as n times \s+ backtracked for
    # minutes; as \s{n,} it matches at once, itself and not its neighbour
    row = ("recommendations   kill_switch  on     on       -" + " " * 66
           + "product recommendations on the basket page (calls the ML service)")
    assert same(row, row)
    assert not same(row, row.replace("on     on", "on     off"))
    assert not same("traffic during the reset: 0 failed requests",
                    "traffic during the reset: 3 lost requests")


def test_unshown_reports_a_line_left_out_unless_a_cut_is_marked():
    output = ("rollout 20261206-180054-0a1b2c: canary 1.0.0 -> 1.1.0 on 8 hosts\n"
              "fleet lock of lab-canary taken over: holder root@ci pid 42 is not alive\n"
              "\n"
              "COMPLETED in 1m 3s\n")
    shown = ["rollout 20261129-050514-8f14e0: canary 1.0.0 -> 1.1.0 on 8 hosts",
             "COMPLETED in 49.7s"]
    assert unmatched(shown, output) == []
    assert unshown(shown, output) == [
        "fleet lock of lab-canary taken over: holder root@ci pid 42 is not alive"]
    assert unshown([shown[0], "...", shown[1]], output) == []
    assert unshown([*shown, "fleet lock of lab-canary taken over: holder root@vm pid 22264 "
                    "is not alive"], output) == []
    # a "..." inside a line is a cut of that line only, not of the output
    assert unshown(["rollout ...", "COMPLETED in 49.7s"], output) == [
        "fleet lock of lab-canary taken over: holder root@ci pid 42 is not alive"]


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
    steps = transcript(section(SECTIONS[name]))
    assert len(steps) > (10 if name == "tour" else 3), f"README's {SECTIONS[name]!r}: no commands"
    problems = run_transcript(steps, *scratch)
    assert not problems, "\n\n".join(problems)


def run_transcript(steps: list[Step], cwd: Path, env: dict[str, str]) -> list[str]:
    """A section's transcripts, in order, from nothing: each command's exit code as shown,
    every line shown in its output (:func:`unmatched`) and no output line left out unless
    the README marks the cut with ``...`` (:func:`unshown`). The problems, all of them."""
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
        argv = as_run(shlex.split(command, comments=True))
        if argv[:3] == ["upgrader", "flags", "serve"]:
            output = serve_briefly(argv, cwd, env)     # a server: its lines until it serves
            where = f"README: $ {command}\n{output}"
        else:
            done = run(argv, cwd, env)
            output = done.stdout + "\n" + done.stderr
            where = f"README: $ {command} (exit {done.returncode})\n{output}"
            if done.returncode != step.exit_code:
                problems.append(f"{where}\nexpected exit {step.exit_code}")
            if "--detach" in argv:
                detached_pid = int(done.stdout.split()[0])
                shown_pid = step.shown[0].strip()
        missing = unmatched(step.shown, output)
        if missing:
            problems.append(f"{where}\nREADME lines without a line of that shape:\n"
                            + "\n".join(missing))
        extra = unshown(step.shown, output)
        if extra:
            problems.append(f"{where}\nlines the README leaves out without a `...`:\n"
                            + "\n".join(extra))
    return problems
