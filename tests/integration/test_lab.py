"""The lab with real processes: hostctl on a Capistrano layout, the app's variants, graceful
stop, the traffic generator's counting, and a whole lab (hosts + balancer + traffic)."""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from upgrader.errors import UpgraderError
from upgrader.lab import hostctl
from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PY = sys.executable
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Host:
    """One lab host root driven through the hostctl command line, as the engine does."""

    def __init__(self, root: Path, port: int, slot: str = "default") -> None:
        self.root, self.port, self.slot = root, port, slot

    def ctl(self, command: str, *extra: str, env: dict | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        argv = [PY, "-m", "upgrader.lab.hostctl", command, *extra, "--root", str(self.root),
                "--slot", self.slot, "--port", str(self.port)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)

    def ok(self, command: str, *extra: str, env: dict | None = None) -> str:
        result = self.ctl(command, *extra, env=env)
        assert result.returncode == 0, f"{command}: {result.returncode} {result.stderr}"
        return result.stdout

    def install_and_start(self, release: str, env: dict | None = None) -> int:
        self.ok("install", "--release", release)
        self.ok("start", env=env)
        pid = hostctl.read_pid(self.root, self.slot)
        assert pid is not None
        return pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def make_host(tmp_path):
    hosts: list[Host] = []

    def make(name: str = "web-01", slot: str = "default") -> Host:
        host = Host(tmp_path / "hosts" / name, free_port(), slot)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        pid = hostctl.read_pid(host.root, host.slot)
        if pid and hostctl.pid_matches(pid, hostctl.APP_MODULE):
            hostctl.terminate(pid, timeout=5)


# --------------------------------------------------------------------------------------------
# hostctl


def test_hostctl_install_start_current_stop_roundtrip(make_host):
    host = make_host()
    assert host.ok("current") == ""                       # nothing installed yet
    assert host.ctl("start").returncode == 1              # nothing to start

    pid = host.install_and_start("1.0.0")
    assert os.readlink(host.root / "current") == os.path.join("releases", "1.0.0")
    assert json.loads((host.root / "releases/1.0.0/release.json").read_text()) == {
        "version": "1.0.0", "variant": "good"}
    assert host.ok("current").strip() == "1.0.0"

    status, headers, body = get(host.url + "/some/path")
    assert status == 200 and headers["X-Version"] == "1.0.0"
    assert json.loads(body) == {"host": "web-01", "version": "1.0.0", "slot": "default",
                                "path": "/some/path"}
    status, _, body = get(host.url + "/healthz")
    assert status == 200 and json.loads(body)["version"] == "1.0.0"
    assert "system test passed" in host.ok("system-test", "--address", "127.0.0.1")

    host.ok("start")                                      # already running: no second app
    assert hostctl.read_pid(host.root, "default") == pid

    host.ok("stop")
    assert not hostctl.pid_alive(pid)
    assert not (host.root / "run/default.pid").exists()
    assert not hostctl.port_open(host.port)
    host.ok("stop")                                       # idempotent

    host.install_and_start("1.1.0")
    assert host.ok("current").strip() == "1.1.0"
    assert get(host.url)[1]["X-Version"] == "1.1.0"
    host.ok("stop")

    bad = host.ctl("install", "--release", "../evil")
    assert bad.returncode == 2 and "invalid release" in bad.stderr
    assert host.ctl("install", "--release", "1.0 0").returncode == 2

    records = hostctl.read_installs(host.root)
    assert [r["release"] for r in records] == ["1.0.0", "1.1.0"]
    assert all(r["slot"] == "default" and r["ts"] > 0 for r in records)


def test_hostctl_switch_goes_back_to_a_release_still_installed(make_host):
    """`switch` (the lab's `[commands] switch`) moves `current` back to a release directory
    that is there, records it, and writes nothing into the release; a release that was never
    installed is refused (exit 1) with nothing changed; a bad name is exit 2."""
    host = make_host()
    host.ok("install", "--release", "1.0.0")
    host.ok("install", "--release", "1.1.0")
    before = (host.root / "releases/1.0.0/release.json").stat().st_mtime_ns

    missing = host.ctl("switch", "--release", "0.9.0")
    assert missing.returncode == 1 and "0.9.0 is not installed" in missing.stderr
    assert host.ok("current").strip() == "1.1.0"
    assert not (host.root / "releases/0.9.0").exists()
    assert host.ctl("switch", "--release", "../evil").returncode == 2
    assert host.ctl("switch").returncode == 2                 # --release is needed

    host.ok("switch", "--release", "1.0.0")
    host.ok("switch", "--release", "1.0.0")                   # idempotent
    assert os.readlink(host.root / "current") == os.path.join("releases", "1.0.0")
    assert (host.root / "releases/1.0.0/release.json").stat().st_mtime_ns == before
    records = hostctl.read_installs(host.root)
    assert [(r["release"], r.get("switch", False)) for r in records] == [
        ("1.0.0", False), ("1.1.0", False), ("1.0.0", True), ("1.0.0", True)]
    host.ok("start")
    assert get(host.url)[1]["X-Version"] == "1.0.0"
    host.ok("stop")


def test_an_app_left_without_its_pid_file_is_found_and_adopted(make_host):
    """A controller killed while `hostctl start` ran can leave the app running before its
    pid file was written (seen in crash torture: the next start found the port taken).
    stop and start find it by its argv instead."""
    host = make_host()
    pid = host.install_and_start("1.0.0")
    (host.root / "run/default.pid").unlink()            # the kill landed before the write
    host.ok("start")                                      # adopts it: no second app, no error
    assert hostctl.read_pid(host.root, "default") == pid
    (host.root / "run/default.pid").unlink()
    host.ok("stop")                                       # found by argv and stopped
    assert wait_until(lambda: not hostctl.pid_alive(pid), 10)
    assert not hostctl.port_open(host.port)
    host.install_and_start("1.1.0")
    assert get(host.url)[1]["X-Version"] == "1.1.0"
    host.ok("stop")


def test_hostctl_slots_have_their_own_current_link(make_host):
    blue = make_host("web-01", "blue")
    green = Host(blue.root, free_port(), "green")
    try:
        blue.install_and_start("1.0.0")
        green.install_and_start("1.1.0")
        assert os.readlink(blue.root / "slots/blue/current") == "../../releases/1.0.0"
        assert green.ok("current").strip() == "1.1.0"
        assert blue.ok("current").strip() == "1.0.0"
        assert json.loads(get(green.url)[2])["slot"] == "green"
        assert get(blue.url)[1]["X-Version"] == "1.0.0"
        assert [(r["release"], r["slot"]) for r in hostctl.read_installs(blue.root)] == [
            ("1.0.0", "blue"), ("1.1.0", "green")]
    finally:
        green.ctl("stop")
        blue.ctl("stop")


def test_hostctl_start_reports_a_port_in_use(make_host):
    host = make_host()
    host.ok("install", "--release", "1.0.0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", host.port))
        sock.listen()
        result = host.ctl("start")
    assert result.returncode == 1 and "in use" in result.stderr
    assert hostctl.read_pid(host.root, "default") is None


def test_system_test_fails_against_nothing(make_host):
    host = make_host()
    result = host.ctl("system-test", "--address", "127.0.0.1")
    assert result.returncode == 1 and "system test failed" in result.stderr


# --------------------------------------------------------------------------------------------
# variants


def test_bad_release_answers_thirty_percent_errors(make_host):
    host = make_host()
    host.install_and_start("2.0.0-bad")
    statuses = [get(host.url + f"/x{i}")[0] for i in range(100)]
    assert statuses.count(500) == 30 and statuses.count(200) == 70
    assert get(host.url + "/healthz")[0] == 200          # health checks do not see it
    assert host.ctl("system-test", "--address", "127.0.0.1").returncode == 1


def test_error_rate_release_fails_its_share_seeded_by_release_and_host(make_host):
    import random

    host = make_host()
    host.install_and_start("2.0.0-r7-err20")
    assert json.loads((host.root / "current/release.json").read_text())["variant"] == "err20"
    statuses = [get(host.url + f"/x{i}")[0] for i in range(200)]
    draws = random.Random("2.0.0-r7-err20/web-01/default")
    expected = sum(1 for _ in range(200) if draws.random() < 0.20)
    assert statuses.count(500) == expected and 20 < expected < 60   # N %, drawn, seeded
    assert statuses.count(200) == 200 - expected
    assert get(host.url + "/healthz")[0] == 200          # health checks do not see it


def test_base_release_with_a_background_error_rate(make_host):
    """A base release such as ``1.0.0-err1`` (the baseline of bench/analysis.py
    --base-errors 1): 1 % of requests fail, counted over 1000 requests. The draws are
    seeded by release, host and slot, so the count is exact (it cannot flake), and the
    seeded expectation itself is within a binomial tolerance of 1 %."""
    import random

    host = make_host("web-02")
    host.install_and_start("1.0.0-err1")
    statuses = [get(host.url + f"/x{i}")[0] for i in range(1000)]
    draws = random.Random("1.0.0-err1/web-02/default")
    expected = sum(1 for _ in range(1000) if draws.random() < 0.01)
    assert statuses.count(500) == expected and 4 <= expected <= 18   # 10 +- 2.6 sd
    assert statuses.count(200) == 1000 - expected


def test_unhealthy_release_fails_healthz_only(make_host):
    host = make_host()
    host.install_and_start("2.0.0-unhealthy")
    assert all(get(host.url + "/")[0] == 200 for _ in range(10))
    status, _, body = get(host.url + "/healthz")
    assert status == 503 and json.loads(body)["version"] == "2.0.0-unhealthy"
    result = host.ctl("system-test", "--address", "127.0.0.1")
    assert result.returncode == 1 and "503" in result.stderr


def test_crash_release_exits_after_the_configured_delay(make_host):
    host = make_host()
    env = dict(os.environ, UPGRADER_LAB_CRASH_AFTER="1.0")
    started = time.monotonic()
    pid = host.install_and_start("2.0.0-crash", env=env)
    assert get(host.url)[0] == 200                        # healthy at first
    assert wait_until(lambda: not hostctl.pid_alive(pid), timeout=10)
    assert time.monotonic() - started >= 0.9
    assert "crashes now" in (host.root / "logs/default.log").read_text()
    assert not hostctl.port_open(host.port)
    host.ok("stop")                                       # nothing runs: still exit 0


def test_sigterm_finishes_the_request_in_flight(make_host):
    host = make_host()
    env = dict(os.environ, UPGRADER_LAB_SLOW_LATENCY="2.0")
    pid = host.install_and_start("3.0.0-slow", env=env)
    result: dict = {}

    def slow_request() -> None:
        started = time.monotonic()
        result["status"], result["headers"], _ = get(host.url + "/in-flight")
        result["elapsed"] = time.monotonic() - started

    request = threading.Thread(target=slow_request)
    request.start()
    time.sleep(0.3)                                       # the request is being served
    stop = subprocess.Popen(
        [PY, "-m", "upgrader.lab.hostctl", "stop", "--root", str(host.root), "--slot",
         "default", "--port", str(host.port)], stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        # stopping: no new connections, while the request in flight goes on
        assert wait_until(lambda: not hostctl.port_open(host.port), timeout=1.5)
        assert request.is_alive()
        assert stop.wait(timeout=15) == 0, stop.stderr.read()
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    request.join(10)
    assert result["status"] == 200 and result["headers"]["X-Version"] == "3.0.0-slow"
    assert result["elapsed"] >= 1.9
    assert not hostctl.pid_alive(pid)
    assert "stopped" in (host.root / "logs/default.log").read_text()   # graceful, no SIGKILL


# --------------------------------------------------------------------------------------------
# traffic generator


class ScriptedServer:
    """A tiny server whose answers follow a script: (until_seconds, kind) with kind one of
    ok, maintenance (503 + Retry-After), error (500), and counts what it answered."""

    def __init__(self, script: list[tuple[float, str]]) -> None:
        self.script = script
        self.counts = {"ok": 0, "maintenance": 0, "error": 0}
        self.users: set[str] = set()
        self.groups: dict[str, int] = {}
        self.lock = threading.Lock()
        self.started: float | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                kind = server.kind()
                with server.lock:
                    server.counts[kind] += 1
                    server.users.add(self.headers.get("X-User", ""))
                    group = self.headers.get("X-User-Group", "")
                    server.groups[group] = server.groups.get(group, 0) + 1
                status = {"ok": 200, "maintenance": 503, "error": 500}[kind]
                body = b"{}"
                self.send_response(status)
                self.send_header("X-Version", "9.9.9")
                if kind == "maintenance":
                    self.send_header("Retry-After", "5")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def kind(self) -> str:
        with self.lock:
            if self.started is None:                      # the script starts with traffic
                self.started = time.monotonic()
        elapsed = time.monotonic() - self.started
        for until, kind in self.script:
            if elapsed < until:
                return kind
        return self.script[-1][1]

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run_traffic(url: str, stats: Path, *args: str, timeout: float = 30) -> dict:
    argv = [PY, "-m", "upgrader.lab.traffic", "--url", url, "--stats", str(stats), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return json.loads(stats.read_text())


def test_traffic_counts_ok_failed_and_maintenance(tmp_path):
    script = [(1.2, "ok"), (2.4, "maintenance"), (3.2, "error"), (99, "ok")]
    with ScriptedServer(script) as server:
        stats = run_traffic(f"http://127.0.0.1:{server.port}/", tmp_path / "t.json",
                            "--rps", "50", "--users", "40", "--duration", "4.5")
    counts = server.counts
    assert stats["final"] is True and stats["rps_target"] == 50
    assert stats["requests"] == sum(counts.values()) >= 150    # ~225 scheduled
    assert stats["ok"] == counts["ok"] > 0
    assert stats["maintenance"] == counts["maintenance"] > 0
    assert stats["failed"] == counts["error"] > 0
    assert stats["errors"] == {"http_500": counts["error"]}
    assert stats["versions"] == {"9.9.9": stats["requests"]}
    # the timeline adds up to the totals: each request counted exactly once
    timeline = stats["timeline"]
    assert sum(e["ok"] for e in timeline) == stats["ok"]
    assert sum(e["failed"] for e in timeline) == stats["failed"]
    assert sum(e["maintenance"] for e in timeline) == stats["maintenance"]
    assert [e["t"] for e in timeline] == sorted(e["t"] for e in timeline)
    # ~2 s without a 2xx, spread over whole seconds
    assert 1 <= stats["downtime_s"] <= 3
    assert stats["maintenance_first_ts"] < stats["first_failure_ts"] <= stats["last_failure_ts"]
    assert stats["started_ts"] <= stats["maintenance_first_ts"]
    # users and groups
    assert server.users == {f"user-{i}" for i in range(40)}
    assert set(server.groups) <= {"internal", "beta", "free", "paid"}
    assert sum(stats["groups"].values()) == stats["requests"]


def test_traffic_counts_connection_errors_and_stops_on_sigterm(tmp_path):
    stats_file = tmp_path / "t.json"
    argv = [PY, "-m", "upgrader.lab.traffic", "--url", f"http://127.0.0.1:{free_port()}/",
            "--stats", str(stats_file), "--rps", "40", "--users", "10"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(stats_file.exists, timeout=10)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stats = json.loads(stats_file.read_text())
    assert stats["final"] is True
    assert stats["ok"] == 0 and stats["maintenance"] == 0
    assert stats["failed"] == stats["requests"] >= 40
    assert all(k.startswith("connection:") for k in stats["errors"])
    assert stats["downtime_s"] >= 1


def test_user_groups_follow_the_documented_shares():
    from upgrader.lab.traffic import user_group

    groups = [user_group(f"user-{i}") for i in range(20000)]
    share = {g: groups.count(g) / len(groups) for g in ("internal", "beta", "free", "paid")}
    assert abs(share["internal"] - 0.02) < 0.01
    assert abs(share["beta"] - 0.08) < 0.015
    assert abs(share["free"] - 0.60) < 0.02
    assert abs(share["paid"] - 0.30) < 0.02
    assert user_group("user-7") == user_group("user-7")


# --------------------------------------------------------------------------------------------
# the whole lab


def _balancer_missing() -> str | None:
    for module in ("upgrader.balancer.__main__", "upgrader.providers.builtin_balancer"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not written yet"
        except ImportError as exc:
            return f"{module} cannot be imported: {exc}"
    return None


def test_free_base_port_leaves_room():
    base = free_base_port()
    assert base >= 20000 and base + 400 < 65536


@pytest.mark.timeout(120)
def test_lab_up_status_down(tmp_path):
    missing = _balancer_missing()
    if missing:
        if os.environ.get("UPGRADER_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"the built-in balancer is required: {missing}")
        pytest.skip(f"the built-in balancer is not available: {missing}")

    layout = LabLayout(dir=tmp_path / "lab", hosts=3, new_hosts=1,
                       base_port=free_base_port(), base_release="1.0.0")
    lab = Lab(layout)

    async def scenario() -> None:
        state = await lab.up(traffic_rps=50, users=30)
        assert set(state["pids"]["hosts"]) == {"web-01", "web-02", "web-03"}
        assert (layout.token_file.stat().st_mode & 0o777) == 0o600

        with pytest.raises(UpgraderError, match="already running"):
            await Lab(layout).up()

        await asyncio.sleep(2.0)
        status = await Lab.from_dir(layout.dir).status()
        assert status["running"] is True
        by_name = {h["name"]: h for h in status["hosts"]}
        for name in ("web-01", "web-02", "web-03"):
            assert by_name[name]["running"] and by_name[name]["version"] == "1.0.0"
            assert by_name[name]["installs"] == 1
        assert by_name["web-04"]["cluster"] == "new"
        assert not by_name["web-04"]["running"] and by_name["web-04"]["installs"] == 0
        assert status["balancer"]["up"] is True
        backends = status["balancer"]["state"]["backends"]
        assert set(backends) == {"web-01", "web-02", "web-03"}
        assert {b["pool"] for b in backends.values()} == {"1.0.0"}
        json.dumps(status)                                  # JSON-ready for `--json`
        assert status["traffic"]["running"] is True
        stats = status["traffic"]["stats"]
        assert stats["ok"] > 0 and stats["failed"] == 0
        assert stats["versions"].get("1.0.0", 0) > 0
        assert [r["release"] for r in lab.installs("web-02")] == ["1.0.0"]

        final = await lab.down()
        assert final["final"] is True and final["failed"] == 0 and final["ok"] >= 50
        assert not lab.is_running()
        ports = [layout.balancer_port, layout.admin_port,
                 *(h.port for h in layout.host_objects())]
        assert not any(hostctl.port_open(p) for p in ports)
        after = await lab.status()
        assert after["running"] is False
        assert (await lab.down())["final"] is True         # idempotent

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(lab.down())


@pytest.mark.timeout(120)
def test_lab_with_blue_green_slots_and_no_traffic(tmp_path):
    missing = _balancer_missing()
    if missing:
        if os.environ.get("UPGRADER_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"the built-in balancer is required: {missing}")
        pytest.skip(f"the built-in balancer is not available: {missing}")

    layout = LabLayout(dir=tmp_path / "lab", hosts=2, slots=True,
                       base_port=free_base_port(), base_release="2.0.0")
    lab = Lab(layout)

    async def scenario() -> None:
        state = await lab.up(traffic_rps=0)
        assert state["pids"]["traffic"] is None
        status = await lab.status()
        backends = status["balancer"]["state"]["backends"]
        assert set(backends) == {"web-01@blue", "web-02@blue"}
        for host in status["hosts"]:
            assert host["slots"]["blue"]["running"] and host["version"] == "2.0.0"
            assert not host["slots"]["green"]["running"]
        # users reach the blue slots through the balancer
        status_code, headers, _ = await asyncio.to_thread(get, layout.balancer_url + "/")
        assert status_code == 200 and headers["X-Version"] == "2.0.0"
        assert await lab.down() == {}
        assert not lab.is_running()

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(lab.down())


@pytest.mark.timeout(120)
def test_lab_on_a_base_release_with_background_errors(tmp_path):
    """A lab whose base release is ``1.0.0-err1`` (a fleet's ``[release] current``): every
    host serves it, and users see 1 % of failures
    through the balancer: exactly the seeded draws of each host over the requests it
    answered (its /metrics), within a binomial tolerance of 1 % over 1500 requests."""
    import random
    import re

    missing = _balancer_missing()
    if missing:
        if os.environ.get("UPGRADER_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"the built-in balancer is required: {missing}")
        pytest.skip(f"the built-in balancer is not available: {missing}")

    layout = LabLayout(dir=tmp_path / "lab", hosts=2, base_port=free_base_port(),
                       base_release="1.0.0-err1")
    lab = Lab(layout)

    def send(n: int) -> list[int]:
        return [get(layout.balancer_url + f"/x{i}")[0] for i in range(n)]

    async def scenario() -> None:
        await lab.up(traffic_rps=0)
        status = await lab.status()
        assert [h["version"] for h in status["hosts"]] == ["1.0.0-err1"] * 2
        statuses = await asyncio.to_thread(send, 1500)
        expected = 0
        for host in layout.host_objects():
            _, _, body = await asyncio.to_thread(get, f"http://127.0.0.1:{host.port}/metrics")
            answered = sum(float(n) for n in re.findall(
                r'^upgrader_app_requests_total\{[^}]*\} (\S+)$', body.decode(), re.M))
            draws = random.Random(f"1.0.0-err1/{host.name}/default")
            expected += sum(1 for _ in range(int(answered)) if draws.random() < 0.01)
        assert statuses.count(500) == expected and 5 <= expected <= 27   # 15 +- 3.9 sd
        assert statuses.count(200) == 1500 - expected

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(lab.down())


def test_lab_refuses_a_taken_port(tmp_path):
    layout = LabLayout(dir=tmp_path / "lab", hosts=1, base_port=free_base_port())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", layout.balancer_port))
        sock.listen()
        with pytest.raises(UpgraderError, match="ports in use"):
            asyncio.run(Lab(layout).up(traffic_rps=0))
    with pytest.raises(UpgraderError, match="no lab"):
        Lab.from_dir(tmp_path / "elsewhere")
