"""One controller per fleet wherever it starts (issue 12, point 2), with real processes: a lab
(`upgrader lab up`, the built-in balancer keeps the lock), a throw-away PostgreSQL, and a fleet
without a lock-keeping balancer (lock files on its hosts through the local transport).

Before the lock lived on the fleet, each controller only saw the ``flock`` in its own state
folder (``.upgrader/state`` under its working directory) or its own PostgreSQL: two controllers
started from two directories, or one on ``--state postgresql://`` and one without, both drove
the same hosts. Every refusal asserted here was a second rollout before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from upgrader.journal import Journal
from upgrader.lab import hostctl
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
HOSTS = [f"web-{i:02d}" for i in range(1, 5)]

LAB_FLEET = """
[fleet]
name = "lock-lab"
environment = "lab"

[release]
current = "1.0.0"
target = "1.1.0"

[lab]
hosts = 4
base_port = {base_port}
dir = "{lab_dir}"

[verify]
error_rate_max = "5%"
min_requests = 0
interval = "500ms"
for = "1500ms"
no_data = "pass"

[timing]
host_upgrade = "2s"

[strategy]
kind = "rolling"
batch = 1
on_failure = "rollback"

[commands]
install = {install}
start = {start}
stop = {stop}
current = {current}
"""

#: the lab's install, which on web-02 first waits while HOLD exists: controller A keeps the
#: fleet (and its lock) as long as the test needs, with no race against A's pace
HELD_INSTALL = textwrap.dedent("""\
    import os, subprocess, sys, time
    host = os.path.basename(sys.argv[sys.argv.index("--root") + 1].rstrip("/"))
    deadline = time.monotonic() + 90
    while host == "web-02" and os.path.exists({hold!r}) and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(subprocess.call([sys.executable, "-m", "upgrader.lab.hostctl", "install",
                              *sys.argv[1:]]))
    """)


def lab_commands(tmp_path: Path, hold: Path) -> dict[str, str]:
    wrapper = tmp_path / "held_install.py"
    wrapper.write_text(HELD_INSTALL.format(hold=str(hold)))
    ctl = [sys.executable, "-m", "upgrader.lab.hostctl"]
    common = ["--root", "{root}", "--slot", "{slot}", "--port", "{port}"]
    return {"install": json.dumps([sys.executable, str(wrapper), "--release", "{release}",
                                   *common]),
            "start": json.dumps([*ctl, "start", *common]),
            "stop": json.dumps([*ctl, "stop", *common]),
            "current": json.dumps([*ctl, "current", *common])}


def upgrader_argv() -> list[str]:
    script = Path(sys.executable).with_name("upgrader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]


def env_for(xdg: Path, **extra: str) -> dict[str, str]:
    """A controller's environment: its own per-user state home (two users, or one user on two
    machines, as far as the local state is concerned)."""
    env = dict(os.environ)
    for name in ("UPGRADER_STATE_DIR", "UPGRADER_STATE"):
        env.pop(name, None)
    env["XDG_STATE_HOME"] = str(xdg)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, xdg: Path, timeout: float = 90,
        **extra: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*upgrader_argv(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd,
                          env=env_for(xdg, **extra))


class Controller:
    """`upgrader run|resume FLEET --headless --json` in a session of its own; its stdout goes
    to a file that the test polls (no pipe to fill up)."""

    def __init__(self, *args: str, cwd: Path, xdg: Path, **extra: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.out = cwd / f"controller-{time.monotonic_ns()}.out"
        self.err_path = self.out.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([*upgrader_argv(), *args, "--headless", "--json"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=cwd, env=env_for(xdg, **extra),
                                         start_new_session=True)

    def events(self) -> list[dict]:
        found = []
        for line in self.out.read_text().splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "kind" in data:
                found.append(data)
        return found

    def wait_event(self, predicate, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            if self.proc.poll() is not None:
                pytest.fail(f"controller exited ({self.proc.returncode}): {self.err()[-2000:]}")
            time.sleep(0.05)
        pytest.fail(f"no such event in {timeout}s: {self.events()[-3:]}; {self.err()[-2000:]}")

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"controller ran past {timeout}s: {self.err()[-2000:]}")

    def err(self) -> str:
        return self.err_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


@pytest.fixture
def lab(tmp_path: Path):
    lab_dir = tmp_path / "lab"
    base_port = free_base_port()
    fleet = tmp_path / "fleet.toml"
    hold = tmp_path / "hold"
    fleet.write_text(LAB_FLEET.format(base_port=base_port, lab_dir=lab_dir,
                                      **lab_commands(tmp_path, hold)))
    result = cli("lab", "up", "--hosts", "4", "--dir", str(lab_dir), "--base-port",
                 str(base_port), "--rps", "50", cwd=tmp_path, xdg=tmp_path / "xdg-lab")
    assert result.returncode == 0, result.stderr
    controllers: list[Controller] = []
    try:
        yield fleet, Lab.from_dir(lab_dir), controllers
    finally:
        hold.unlink(missing_ok=True)
        for ctl in controllers:
            ctl.kill()
        import asyncio

        try:
            asyncio.run(asyncio.wait_for(Lab.from_dir(lab_dir).down(), 60))
        except Exception:
            pass
        for pid in Lab.from_dir(lab_dir).running_pids().values():
            hostctl.terminate(pid, 5.0)


def read_lock(lab: Lab) -> dict | None:
    import urllib.request

    layout = lab.layout
    request = urllib.request.Request(layout.admin_url + "/admin/lock", headers={
        "Authorization": "Bearer " + layout.token_file.read_text().strip()})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())["lock"]


def first_install(event: dict) -> bool:
    return event["kind"] == "host_phase" and event.get("phase") == "installing"


def test_a_second_controller_anywhere_is_refused_by_the_lock_on_the_balancer(
        lab, tmp_path: Path, postgres_url: str) -> None:
    """Controller A runs from directory a with its journal on PostgreSQL. B (directory b, the
    local default state) and C (directory a again, another per-user state home) are refused
    with exit 3 naming A, and touch no host: every host installs 1.1.0 exactly once."""
    fleet, the_lab, controllers = lab
    hold = tmp_path / "hold"
    hold.write_text("web-02")
    a = Controller("run", str(fleet), "--state", postgres_url, cwd=tmp_path / "a",
                   xdg=tmp_path / "xdg-a")
    controllers.append(a)
    started = a.wait_event(lambda e: first_install(e) and e["host"] == "web-02")
    rollout = started["rollout"]
    lock = read_lock(the_lab)
    assert lock is not None and lock["pid"] == a.proc.pid and lock["rollout"] == rollout

    for cwd, xdg in ((tmp_path / "b", tmp_path / "xdg-b"), (tmp_path / "a", tmp_path / "xdg-c")):
        t0 = time.monotonic()
        second = cli("run", str(fleet), "--headless", cwd=cwd, xdg=xdg)
        assert second.returncode == 3, second.stderr
        text = second.stderr
        assert "locked by" in text and f"pid {a.proc.pid}" in text, text
        assert f"rollout {rollout}" in text and "since" in text, text
        assert "on the balancer" in text and "Traceback" not in text, text
        print(f"\nrefused in {time.monotonic() - t0:.2f}s: {text.strip()}")

    # status names the holder from anywhere: the lock on the balancer, and the PostgreSQL row
    status = cli("status", str(fleet), cwd=tmp_path / "b", xdg=tmp_path / "xdg-b")
    assert status.returncode == 0, status.stderr
    assert "fleet lock (on the balancer): held by" in status.stdout, status.stdout
    assert f"pid {a.proc.pid}, rollout {rollout}" in status.stdout, status.stdout
    shared = cli("status", str(fleet), "--state", postgres_url, "--json", cwd=tmp_path / "b",
                 xdg=tmp_path / "xdg-b")
    assert shared.returncode == 0, shared.stderr
    info = json.loads(shared.stdout)
    assert info["lock_holder"]["pid"] == a.proc.pid and info["rollout"] == rollout
    assert info["fleet_lock"]["pid"] == a.proc.pid

    hold.unlink()
    assert a.finish() == 0, a.err()[-3000:]
    assert read_lock(the_lab) is None           # released at the end
    for host in HOSTS:
        releases = [r["release"] for r in the_lab.installs(host)]
        assert releases == ["1.0.0", "1.1.0"], (host, releases)


def test_a_dead_holder_is_taken_over_with_a_journaled_reason(lab, tmp_path: Path) -> None:
    """SIGKILL the controller mid-rollout: its lock stays on the balancer. ``resume`` (same
    machine: the holder's pid is gone) takes it over, journals why, and finishes."""
    fleet, the_lab, controllers = lab
    state = tmp_path / "state"
    a = Controller("run", str(fleet), "--state-dir", str(state), cwd=tmp_path / "a",
                   xdg=tmp_path / "xdg")
    controllers.append(a)
    a.wait_event(lambda e: e["kind"] == "host_done")
    a.kill()
    lock = read_lock(the_lab)
    assert lock is not None and lock["pid"] == a.proc.pid      # a crash leaves it

    b = Controller("resume", str(fleet), "--state-dir", str(state), cwd=tmp_path / "b",
                   xdg=tmp_path / "xdg")
    controllers.append(b)
    assert b.finish() == 0, b.err()[-3000:]
    assert read_lock(the_lab) is None
    journal = Journal(state / "journal.sqlite")
    try:
        notes = journal.lock_log("lock-lab")
    finally:
        journal.close()
    assert notes and notes[0].action == "taken over", notes
    assert f"pid {a.proc.pid} is not alive" in notes[0].reason, notes[0]
    assert notes[0].holder is not None and notes[0].holder["pid"] == a.proc.pid


# ------------------------------------------------------------- host lock files (no lock API)

HOSTFILE_FLEET = """
[fleet]
name = "lock-files"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = {install}
start = ["true"]
stop = ["true"]

[transport]
kind = "local"

[balancer]
{balancer}

[health]
kind = "noop"

[verify]
for = "100ms"
interval = "50ms"
no_data = "pass"
min_requests = 0

[timing]
host_upgrade = "30s"

[strategy]
kind = "rolling"
batch = 1
on_failure = "rollback"
{hosts}"""

#: an install that records itself in the host's log, and on web-01 waits while FLAG exists
INSTALL = textwrap.dedent("""\
    import os, sys, time
    host, release, log, flag = sys.argv[1:5]
    with open(log, "a") as f:
        f.write(f"{host} {release}\\n")
    deadline = time.monotonic() + 60
    while host == "web-01" and os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    """)


def hostfile_fleet(tmp_path: Path, balancer: dict | None = None,
                   base: int | None = None) -> tuple[Path, Path, Path, list[Path]]:
    script = tmp_path / "install.py"
    script.write_text(INSTALL)
    log, flag = tmp_path / "installs.log", tmp_path / "hold"
    base = base or free_base_port()
    table = 'kind = "noop"' if balancer is None else "\n".join(
        [f"{key} = {json.dumps(value)}" for key, value in {"kind": "haproxy",
                                                             **balancer}.items()])
    locks = [tmp_path / f"lock-web-{i:02d}" for i in range(1, 4)]
    hosts = "".join(f'\n[[hosts]]\nname = "web-{i:02d}"\nport = {base + i}\n'
                    f'vars = {{ upgrader_lock_file = "{locks[i - 1]}" }}\n' for i in range(1, 4))
    install = json.dumps([sys.executable, str(script), "{host}", "{release}", str(log),
                          str(flag)])
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(HOSTFILE_FLEET.format(install=install, hosts=hosts, balancer=table))
    return fleet, log, flag, locks


@pytest.fixture
def haproxy_site(tmp_path: Path):
    """A real HAProxy (the helpers of test_haproxy.py) that knows web-01..03 in its first
    pool, each a server at the port the fleet file gives the host."""
    from upgrader.lab.haproxy import HAProxyProcess, HAProxySite, StaticServer, haproxy_binary

    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    base = free_base_port()
    servers = [StaticServer(f"web-{i:02d}", "127.0.0.1", base + i) for i in range(1, 4)]
    site = HAProxySite(tmp_path / "haproxy", port=base + 50, backend="shop", slots=3,
                       servers={1: servers}, pools={1: "1.0.0"})
    process = HAProxyProcess(site)
    process.start()
    try:
        yield site, base
    finally:
        process.stop()


def test_host_lock_files_refuse_a_second_controller_and_unlock_needs_a_reason(
        tmp_path: Path, haproxy_site) -> None:
    """HAProxy keeps no lock: the lock is a file on each host (through the local transport).
    A second controller (another directory and state home) is refused, exit 3, and runs no
    install; ``unlock`` without --reason is bad input (exit 2, the lock stays); with a reason it
    removes every host's file and journals why."""
    site, base = haproxy_site
    fleet, log, flag, locks = hostfile_fleet(tmp_path, site.balancer_settings(), base)
    flag.write_text("hold")
    a = Controller("run", str(fleet), cwd=tmp_path / "a", xdg=tmp_path / "xdg-a")
    try:
        a.wait_event(first_install)
        deadline = time.monotonic() + 10
        while not log.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        holders = [json.loads(p.read_text()) for p in locks]
        assert {h["pid"] for h in holders} == {a.proc.pid}
        assert holders[0]["anchor"] == "web-01"

        second = cli("run", str(fleet), "--headless", cwd=tmp_path / "b", xdg=tmp_path / "xdg-b")
        assert second.returncode == 3, second.stderr
        assert f"pid {a.proc.pid}" in second.stderr and "host lock files" in second.stderr
        assert log.read_text().splitlines() == ["web-01 1.1.0"]      # B installed nothing

        bad = cli("unlock", str(fleet), cwd=tmp_path / "b", xdg=tmp_path / "xdg-b")
        assert bad.returncode == 2 and "--reason" in bad.stderr, bad.stderr
        empty = cli("unlock", str(fleet), "--reason", " ", cwd=tmp_path / "b",
                    xdg=tmp_path / "xdg-b")
        assert empty.returncode == 2 and "--reason" in empty.stderr, empty.stderr
        assert all(p.exists() for p in locks)
    finally:
        a.kill()
        flag.unlink(missing_ok=True)
    assert all(p.exists() for p in locks)           # a crash leaves the lock

    xdg_b = tmp_path / "xdg-b"
    done = cli("unlock", str(fleet), "--reason", "controller A was killed", cwd=tmp_path / "b",
               xdg=xdg_b)
    assert done.returncode == 0, done.stderr
    assert f"pid {a.proc.pid}" in done.stdout, done.stdout
    assert not any(p.exists() for p in locks)
    journals = list(xdg_b.glob("upgrader/lock-files-*/journal.sqlite"))
    assert len(journals) == 1, journals
    journal = Journal(journals[0])
    try:
        notes = journal.lock_log("lock-files")
    finally:
        journal.close()
    assert [(n.action, n.holder["pid"]) for n in notes] == [("unlocked", a.proc.pid)]
    assert notes[0].reason.startswith("controller A was killed")
    again = cli("unlock", str(fleet), "--reason", "again", cwd=tmp_path / "b", xdg=xdg_b)
    assert again.returncode == 0 and "no lock held" in again.stdout, again.stdout


def test_a_dead_holders_host_lock_files_are_taken_over(tmp_path: Path) -> None:
    """Controller A SIGKILLed during web-01's install leaves its host lock files; controller B
    (another directory and state home: it cannot resume A's rollout) takes them over because
    A's pid is gone, journals the reason, and runs its rollout."""
    fleet, log, flag, locks = hostfile_fleet(tmp_path)
    flag.write_text("hold")
    a = Controller("run", str(fleet), cwd=tmp_path / "a", xdg=tmp_path / "xdg-a")
    try:
        a.wait_event(first_install)
    finally:
        a.kill()
        flag.unlink(missing_ok=True)
    assert all(json.loads(p.read_text())["pid"] == a.proc.pid for p in locks)
    b = cli("run", str(fleet), "--headless", cwd=tmp_path / "b", xdg=tmp_path / "xdg-b")
    assert b.returncode == 0, b.stderr
    assert not any(p.exists() for p in locks)
    journal = Journal(next((tmp_path / "xdg-b").glob("upgrader/lock-files-*/journal.sqlite")))
    try:
        notes = journal.lock_log("lock-files")
    finally:
        journal.close()
    assert notes and notes[0].action == "taken over"
    assert f"pid {a.proc.pid} is not alive" in notes[0].reason
