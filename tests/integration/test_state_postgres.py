"""Shared state on PostgreSQL (`--state postgresql://...`): the journal and the fleet lock.

Two real controller processes, each with a state folder of its own (as on two machines), one
PostgreSQL database between them. The fleet runs without a lab: local transport, no-op
balancer and health check. Host web-02's install blocks on a FIFO, so the test knows, without
timing, when the first controller is in the middle of the rollout: opening the FIFO for
writing returns exactly when the install has opened it for reading.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from upgrader.errors import PolicyRefused
from upgrader.journal_postgres import (
    SCHEMA,
    PostgresFleetLock,
    PostgresJournal,
    fleet_lock_key,
    lock_holder,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("web-01", "web-02", "web-03")
TIMEOUT = 90


def fleet_text(tmp: Path, gate: Path, installs: Path, *, name: str = "shared") -> str:
    hosts = "".join(
        f'[[hosts]]\nname = "{host}"\naddress = "127.0.0.1"\nport = {9100 + i}\n'
        f'vars = {{gate = "{gate if host == "web-02" else "/dev/null"}"}}\n\n'
        for i, host in enumerate(HOSTS))
    return f"""\
[fleet]
name = "{name}"

[release]
current = "1.0.0"
target = "2.0.0"

[commands]
# the release and host go in as positional parameters, never into the script text
install = ["sh", "-c", 'cat "$1" > /dev/null && echo "$2 $3" >> "$4"', "install",
           "{{gate}}", "{{host}}", "{{release}}", "{installs}"]
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
verify = false

{hosts}"""


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("UPGRADER_STATE_DIR", "UPGRADER_STATE"):
        env.pop(name, None)
    return env


def cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=cli_env(),
                          cwd=ROOT)


class Controller:
    """`upgrader run|resume ... --headless --json` in a session of its own."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "upgrader.cli", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True).start()

    def events(self) -> list[dict]:
        found = []
        for line in self.out:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "kind" in data:
                found.append(data)
        return found

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"controller ran past {timeout}s: {''.join(self.err)[-3000:]}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


def open_gate_writer(fifo: Path, controller: Controller, timeout: float = TIMEOUT) -> int:
    """Open ``fifo`` for writing: returns once the blocked install has opened it to read."""
    opened: queue.Queue[int] = queue.Queue()
    threading.Thread(target=lambda: opened.put(os.open(fifo, os.O_WRONLY)), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return opened.get(timeout=0.2)
        except queue.Empty:
            pass
        if controller.proc.poll() is not None or time.monotonic() > deadline:
            # unblock the opener thread, then report
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            pytest.fail(f"the install never reached the gate (exit {controller.proc.poll()}): "
                        f"{''.join(controller.err)[-3000:]}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def fleet(tmp_path):
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    installs = tmp_path / "installs.log"
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(tmp_path, gate, installs))
    return path, gate, installs


# --------------------------------------------------------------------------------------------


def test_second_controller_is_refused_then_takes_over_when_the_first_dies(fleet, tmp_path,
                                                                         postgres_url):
    """Two controllers, two state folders, one database: the second is refused (exit 3) and
    told who holds the fleet; after the first is SIGKILLed, PostgreSQL frees the lock and the
    second resumes from the PostgreSQL journal without installing any host twice."""
    import psycopg

    path, gate, installs = fleet
    first_dir, second_dir = tmp_path / "machine-a", tmp_path / "machine-b"
    first = Controller("run", str(path), "--headless", "--json", "--state", postgres_url,
                       "--state-dir", str(first_dir))
    try:
        writer = open_gate_writer(gate, first)        # first is inside web-02's install
        started = [e for e in first.events() if e["kind"] == "rollout_started"]
        rollout = started[0]["rollout"] if started else None

        second = cli("run", str(path), "--headless", "--json", "--state", postgres_url,
                     "--state-dir", str(second_dir))
        assert second.returncode == 3, second.stderr
        message = second.stderr
        assert "refused" in message and "Traceback" not in message
        assert f"pid {first.proc.pid}" in message, message
        assert socket.gethostname() in message, message
        user = os.environ.get("USER") or __import__("getpass").getuser()
        assert f"user {user}" in message and " since " in message, message
        with psycopg.connect(postgres_url) as conn:
            running = conn.execute(f"SELECT id FROM {SCHEMA}.rollouts WHERE status = "
                                   "'running'").fetchall()
        assert len(running) == 1
        assert f"rollout {running[0][0]}" in message, message
        assert rollout in (None, running[0][0])
        assert not (second_dir / "journal.sqlite").exists()

        # resume is refused too while the first one drives
        again = cli("resume", str(path), "--headless", "--state", postgres_url,
                    "--state-dir", str(second_dir))
        assert again.returncode == 3 and f"pid {first.proc.pid}" in again.stderr

        status = cli("status", str(path), "--json", "--state", postgres_url,
                     "--state-dir", str(second_dir))
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["status"] == "running" and f"pid {first.proc.pid}" in info["driven_by"]
        holder = info["lock_holder"]
        assert (holder["pid"], holder["host"], holder["user"]) == (
            first.proc.pid, socket.gethostname(), user)
        assert holder["rollout"] == running[0][0] and holder["since"]

        first.kill()                                  # SIGKILL: no clean-up of any kind
        os.close(writer)
        wait_until(lambda: lock_holder(postgres_url, "shared") is None,
                   "PostgreSQL to end the dead controller's session")

        resumed = Controller("resume", str(path), "--headless", "--json", "--state",
                             postgres_url, "--state-dir", str(second_dir))
        try:
            os.close(open_gate_writer(gate, resumed))     # let web-02's install through
            assert resumed.wait() == 0, "".join(resumed.err)[-3000:]
        finally:
            resumed.kill()
    finally:
        first.kill()

    lines = installs.read_text().splitlines()
    assert sorted(lines) == sorted(f"{host} 2.0.0" for host in HOSTS), lines
    with psycopg.connect(postgres_url) as conn:
        status, controller = conn.execute(
            f"SELECT status, controller FROM {SCHEMA}.rollouts WHERE id = %s",
            (running[0][0],)).fetchone()
    assert status == "completed"
    assert controller == f"{socket.gethostname()}:{resumed.proc.pid}"
    assert not (second_dir / "journal.sqlite").exists()
    after = json.loads(cli("status", str(path), "--json", "--state", postgres_url,
                           "--state-dir", str(second_dir)).stdout)
    assert after["status"] == "completed" and after["driven_by"] is None
    assert set(after["hosts_changed"]) == set(HOSTS)


def test_the_lock_is_one_per_fleet_and_shows_its_holder(postgres_url):
    first = PostgresFleetLock(postgres_url, "alpha")
    first.acquire()
    try:
        with pytest.raises(PolicyRefused) as refused:
            PostgresFleetLock(postgres_url, "alpha").acquire()
        assert f"pid {os.getpid()} on {socket.gethostname()}" in str(refused.value)
        other = PostgresFleetLock(postgres_url, "beta")      # another fleet: no conflict
        other.acquire()
        other.release()
        holder = lock_holder(postgres_url, "alpha")
        assert holder is not None and holder.pid == os.getpid()
    finally:
        first.release()
    assert lock_holder(postgres_url, "alpha") is None
    again = PostgresFleetLock(postgres_url, "alpha")
    again.acquire()
    again.release()
    # the key is the documented one (docs/STATE.md)
    import hashlib

    digest = hashlib.sha256(b"upgrader fleet lock\0alpha").digest()
    assert fleet_lock_key("alpha") == int.from_bytes(digest[:8], "big", signed=True)


def test_a_controller_that_lost_its_lock_session_cannot_write(postgres_url):
    """Fencing: once the lock's session is gone (a server restart, a cut), journal writes
    are refused, so the controller stops before its next action."""
    import psycopg

    lock = PostgresFleetLock(postgres_url, "fenced")
    lock.acquire()
    journal = PostgresJournal(postgres_url)
    try:
        journal.fence_with(lock)
        rollout = journal.begin(fleet="fenced", fleet_path=None, strategy="rolling",
                                current="1", target="2", plan={"steps": []})
        journal.append(rollout, 1, 0.0, "step_started", {"index": 0})
        journal.append(rollout, 1, 0.0, "step_started", {"index": 0})   # idempotent
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lock.session[0],))
        wait_until(lambda: lock_holder(postgres_url, "fenced") is None, "the session to end")
        with pytest.raises(PolicyRefused, match="lost the fleet lock"):
            journal.append(rollout, 2, 0.0, "step_finished", {"index": 0})
        assert [e.seq for e in journal.entries(rollout)] == [1]
    finally:
        journal.close()
        lock.release()


def test_library_rollout_on_postgres_state(tmp_path, postgres_url):
    """``Rollout(fleet, state=URL)``: the journal lands in upgrader_state, none in SQLite."""
    from upgrader.config import loads_fleet
    from upgrader.rollout import Rollout

    gate = tmp_path / "open"
    gate.write_text("")
    text = fleet_text(tmp_path, gate, tmp_path / "installs.log", name="library")
    fleet = loads_fleet(text, source=tmp_path / "fleet.toml")

    async def main():
        async with Rollout(fleet, state=postgres_url, state_dir=tmp_path / "state",
                           metrics_interval=None) as rollout:
            return await rollout.run()

    result = asyncio.run(main())
    assert result.exit_code == 0
    journal = PostgresJournal(postgres_url)
    try:
        record = journal.latest("library")
        assert record is not None and record.status == "completed"
        kinds = [e.kind for e in journal.entries(record.id)]
        assert kinds[0] == "rollout_started" and kinds.count("host_done") == 3
    finally:
        journal.close()
    assert not (tmp_path / "state" / "journal.sqlite").exists()
    assert lock_holder(postgres_url, "library") is None
