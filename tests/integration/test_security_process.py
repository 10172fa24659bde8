"""Security with real processes: every file a run creates under the state folder is 0600 (the
folder 0700), and secrets (a token in a setting, passwords in the state and flag store URLs)
appear in no log line, no event and no journal row.

The fleet runs without a lab (local transport, no-op balancer and health check); host web-02's
install blocks on a FIFO so the test can look at the state folder while the controller runs.
"""

from __future__ import annotations

import json
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 90
TOKEN = "tok-Zq8vN3xWp1"
STATE_PASSWORD = "st-Pw9fK2mLq7"
FLAGS_PASSWORD = "fl-Pw4hT6rBn5"


def env() -> dict[str, str]:
    result = dict(os.environ)
    for name in ("UPGRADER_STATE_DIR", "UPGRADER_STATE"):
        result.pop(name, None)
    return result


def cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env(),
                          cwd=ROOT)


def fleet_text(installs: Path, gate: Path, extra: str = "", install: str | None = None) -> str:
    install = install or (f'["sh", "-c", \'cat "$1" > /dev/null && echo "$2 $3" >> "$4"\', '
                          f'"install", "{{gate}}", "{{host}}", "{{release}}", "{installs}"]')
    hosts = "".join(
        f'[[hosts]]\nname = "{host}"\naddress = "127.0.0.1"\nport = {9200 + i}\n'
        f'vars = {{gate = "{gate if host == "web-02" else "/dev/null"}"}}\n\n'
        for i, host in enumerate(("web-01", "web-02", "web-03")))
    return f"""\
[fleet]
name = "secure"

[release]
current = "1.0.0"
target = "2.0.0"

[commands]
install = {install}
start = ["true"]
stop = ["true"]

[transport]
kind = "local"
env = {{DEPLOY_TOKEN = "{TOKEN}"}}

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
verify = false
on_failure = "rollback"
{extra}
{hosts}"""


def open_gate_writer(fifo: Path, alive, timeout: float = TIMEOUT) -> int:
    """Open ``fifo`` for writing; returns once the blocked install opened it to read."""
    opened: queue.Queue[int] = queue.Queue()
    threading.Thread(target=lambda: opened.put(os.open(fifo, os.O_WRONLY)), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return opened.get(timeout=0.2)
        except queue.Empty:
            pass
        if not alive() or time.monotonic() > deadline:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            pytest.fail("the install never reached the gate")


def modes(state: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for path in [state, *state.rglob("*")]:
        st = os.lstat(path)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "sock" if stat.S_ISSOCK(st.st_mode) \
            else "file"
        found[str(path.relative_to(state.parent))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def assert_private(found: dict[str, tuple[str, int]]) -> None:
    loose = {p: f"{kind} {mode:o}" for p, (kind, mode) in found.items()
             if mode != (0o700 if kind == "dir" else 0o600)}
    assert not loose, f"not private: {loose}"


def test_every_file_under_the_state_dir_is_private(tmp_path):
    """A detached controller (journal, WAL, lock, control token and socket, controller log):
    each 0600, the folder 0700, while it runs and after it ends. A permissive umask does not
    loosen them."""
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(fleet_text(tmp_path / "installs.log", gate))
    state = tmp_path / "state"
    old_umask = os.umask(0o002)
    try:
        started = cli("run", str(fleet), "--detach", "--state-dir", str(state))
    finally:
        os.umask(old_umask)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"controller pid (\d+)", started.stderr).group(1))

    def alive() -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    attach = subprocess.Popen([sys.executable, "-m", "upgrader.cli", "attach", str(fleet),
                               "--headless", "--state-dir", str(state)], env=env(), cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        writer = open_gate_writer(gate, alive)
        running = modes(state)
        names = {Path(p).name for p in running}
        assert {"journal.sqlite", "secure.lock", "secure.control.token",
                "secure.controller.log"} <= names, names
        assert any(kind == "sock" for kind, _ in running.values()) or \
            not (state / "secure.control.sock").exists()
        assert_private(running)
        os.close(writer)
        out, err = attach.communicate(timeout=TIMEOUT)
        assert attach.returncode == 0, err
    finally:
        if attach.poll() is None:
            attach.kill()
            attach.wait(10)
        if alive():
            deadline = time.monotonic() + 30
            while alive() and time.monotonic() < deadline:   # it lingers, then exits
                time.sleep(0.05)
            if alive():
                os.kill(pid, 9)
    assert_private(modes(state))
    assert (tmp_path / "installs.log").read_text().count("2.0.0") == 3


def test_secrets_never_reach_logs_events_or_the_journal(tmp_path, postgres_url):
    """A token in a transport setting (which the install command echoes in its error), a
    password in the --state URL and one in the flag store URL: none appears in the
    controller's stdout (events), stderr (log), the PostgreSQL journal, or `upgrader status`.
    The masked message does arrive, so the search is not vacuous."""
    import psycopg

    state_url = postgres_url.replace("postgres@", f"postgres:{STATE_PASSWORD}@")
    flags_url = postgres_url.replace("postgres@", f"postgres:{FLAGS_PASSWORD}@")
    assert STATE_PASSWORD in state_url
    install = ('["sh", "-c", \'echo "auth failed with token $DEPLOY_TOKEN for $1" >&2; '
               'exit 1\', "install", "{release}"]')
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(fleet_text(tmp_path / "installs.log", Path("/dev/null"),
                                extra=f'\n[flags]\nstore = "{flags_url}"\n', install=install))
    run = cli("run", str(fleet), "--headless", "--json", "--state", state_url,
              "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 1, run.stderr            # the install fails: rolled back / failed
    status = cli("status", str(fleet), "--state", state_url, "--state-dir",
                 str(tmp_path / "state"))
    bad_url = cli("status", str(fleet), "--state",
                  f"postgresql://postgres:{STATE_PASSWORD}@127.0.0.1:1/nowhere")
    assert bad_url.returncode == 1 and "***" in bad_url.stderr

    with psycopg.connect(postgres_url) as conn:
        journal = [json.dumps(row, default=str) for table in ("rollouts", "events",
                                                              "fleet_locks")
                   for row in conn.execute(f"SELECT * FROM upgrader_state.{table}").fetchall()]
    journal_text = "\n".join(journal)
    files = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*")
                      if p.is_file())
    searched = {"events (stdout)": run.stdout, "log (stderr)": run.stderr,
                "journal": journal_text, "state files": files,
                "status": status.stdout + status.stderr, "bad url": bad_url.stderr}
    for where, text in searched.items():
        for secret in (TOKEN, STATE_PASSWORD, FLAGS_PASSWORD):
            assert secret not in text, f"{secret} found in {where}"
    # not vacuous: the failure carrying the (masked) token reached events and journal
    assert "auth failed with token *** for 2.0.0" in run.stdout
    assert "auth failed with token *** for 2.0.0" in journal_text
    assert any(json.loads(line).get("kind") == "host_failed" for line in run.stdout.splitlines()
               if line.startswith("{") and "kind" in line) or "failed" in run.stdout
