"""The built-in providers against real processes, sockets and files: the local transport,
the http / tcp / command health checks and the directory snapshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from upgrader.errors import CommandTimeout, ConfigError, SnapshotError, TransportError
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import ProviderContext
from upgrader.providers.health import CommandHealthCheck, HttpHealthCheck, TcpHealthCheck
from upgrader.providers.local import LocalTransport
from upgrader.providers.snapshot import DirectorySnapshot

pytestmark = pytest.mark.integration

PY = sys.executable
HOST = Host("web-01", "127.0.0.1", 8101)

for tool in ("tar", "find", "sh", "sleep"):
    if shutil.which(tool) is None:  # pragma: no cover - every CI image has them
        pytestmark = [pytest.mark.integration,
                      pytest.mark.skip(reason=f"{tool} is not installed")]


def run(coro):
    return asyncio.run(coro)


def process_gone(pid: int, within: float = 2.0) -> bool:
    """True once ``pid`` no longer exists or is a zombie waiting for its new parent."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


# -------------------------------------------------------------------------------------------
# local transport


def test_local_runs_a_command_and_captures_its_output():
    async def scenario():
        async with LocalTransport() as transport:
            return await transport.run(HOST, [
                PY, "-c", "import sys; print('to out'); print('to err', file=sys.stderr)"])

    result = run(scenario())
    assert (result.exit_status, result.stdout, result.stderr) == (0, "to out\n", "to err\n")


def test_local_failure_raises_with_exit_status_and_stderr_tail():
    script = ("import sys\n"
              "for i in range(20): print(f'line {i}', file=sys.stderr)\n"
              "print('partial output')\n"
              "sys.exit(3)")

    async def scenario():
        transport = LocalTransport()
        with pytest.raises(TransportError) as info:
            await transport.run(HOST, [PY, "-c", script])
        unchecked = await transport.run(HOST, [PY, "-c", script], check=False)
        return info.value, unchecked

    error, unchecked = run(scenario())
    assert error.exit_status == 3 and error.host == "web-01"
    assert error.argv == (PY, "-c", script)
    assert "status 3" in str(error) and "line 19" in str(error) and "line 0\n" not in str(error)
    assert error.stdout == "partial output\n" and error.stderr.count("\n") == 20
    assert unchecked.exit_status == 3 and unchecked.stdout == "partial output\n"


def test_local_missing_program_is_a_transport_error():
    with pytest.raises(TransportError) as info:
        run(LocalTransport().run(HOST, ["/nonexistent/upgrader-test-binary"], check=False))
    assert info.value.exit_status is None and "cannot run" in str(info.value)


def test_local_timeout_kills_the_process_group(tmp_path):
    pids = tmp_path / "pids"
    script = f'echo $$ > {pids}; sleep 5 & echo $! >> {pids}; wait'

    async def scenario():
        transport = LocalTransport(timeout=60)
        started = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            await transport.run(HOST, ["sh", "-c", script], timeout=0.3)
        return info.value, time.monotonic() - started

    error, elapsed = run(scenario())
    assert isinstance(error, TimeoutError) and isinstance(error, TransportError)
    assert elapsed < 3
    assert "0.3s" in str(error)
    shell_pid, sleep_pid = (int(line) for line in pids.read_text().split())
    assert process_gone(shell_pid), "the command outlived its timeout"
    assert process_gone(sleep_pid), "a child of the command outlived its timeout"


def test_local_setting_timeout_applies_by_default():
    with pytest.raises(CommandTimeout):
        run(LocalTransport(timeout=0.2).run(HOST, ["sleep", "5"]))


def test_local_returns_when_the_command_exits_even_if_a_daemon_keeps_its_output(tmp_path):
    pidfile = tmp_path / "daemon.pid"

    async def scenario():
        started = time.monotonic()
        result = await LocalTransport().run(
            HOST, ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo started"])
        return result, time.monotonic() - started

    result, elapsed = run(scenario())
    daemon = int(pidfile.read_text())
    try:
        assert result.stdout == "started\n"
        assert elapsed < 5
        assert not process_gone(daemon, within=0.1), "the daemon must outlive the command"
    finally:
        os.kill(daemon, 9)


def test_local_bounded_concurrency(tmp_path):
    running = tmp_path / "running"
    running.mkdir()
    seen = tmp_path / "seen"
    seen.mkdir()
    script = (
        "import os, sys, time\n"
        f"running, seen = {str(running)!r}, {str(seen)!r}\n"
        "marker = os.path.join(running, str(os.getpid()))\n"
        "open(marker, 'w').close()\n"
        "count = len(os.listdir(running))\n"
        "open(os.path.join(seen, str(os.getpid())), 'w').write(str(count))\n"
        "time.sleep(0.3)\n"
        "os.remove(marker)\n"
    )

    async def scenario():
        transport = LocalTransport(max_parallel=3)
        hosts = [Host(f"web-{i:02d}") for i in range(10)]
        await asyncio.gather(*(transport.run(h, [PY, "-c", script]) for h in hosts))

    run(scenario())
    counts = [int(p.read_text()) for p in seen.iterdir()]
    assert len(counts) == 10
    assert max(counts) <= 3, f"more than 3 commands ran at once: {counts}"
    assert max(counts) >= 2, f"commands did not run in parallel at all: {counts}"
    assert list(running.iterdir()) == []


def test_local_env_and_cwd_settings_through_the_plugin_manager(tmp_path):
    root = tmp_path / "web-01"
    root.mkdir()
    transport = Plugins().create(
        "transport",
        ProviderSpec("local", {"env": {"UPGRADER_TEST_VAR": "hello"}, "cwd": "{root}",
                               "timeout": "30s"}),
        ProviderContext())
    host = Host("web-01", vars={"root": str(root)})
    result = run(transport.run(host, [
        PY, "-c", "import os; print(os.environ['UPGRADER_TEST_VAR'], os.getcwd())"]))
    assert result.stdout.split() == ["hello", str(root)]
    assert transport.timeout == 30.0


# -------------------------------------------------------------------------------------------
# health checks


class HealthServer:
    """A real aiohttp server whose /healthz answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.headers_seen: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.headers_seen.append(dict(request.headers))
        return web.Response(status=self.status, text="ok" if self.status == 200 else "down")

    async def __aenter__(self) -> HealthServer:
        app = web.Application()
        app.router.add_get("/healthz", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_health_check():
    async def scenario():
        async with HealthServer() as server:
            check = Plugins().create(
                "health", ProviderSpec("http", {"headers": {"X-Probe": "upgrader"}}))
            host = Host("web-01", "127.0.0.1", server.port)
            ok = await check.check(host)
            session = check._session
            server.status = 503
            down = await check.check(host)
            assert check._session is session, "one session per provider"
            # the slot port overrides the host's port
            server.status = 200
            via_slot = await check.check(Host("web-01", "127.0.0.1", closed_port()),
                                         port=server.port)
            refused = await check.check(Host("web-01", "127.0.0.1", closed_port()))
            await check.aclose()
            assert session.closed
            return ok, down, via_slot, refused, server.headers_seen

    ok, down, via_slot, refused, headers = run(scenario())
    assert ok.ok and "200" in ok.detail
    assert not down.ok and "503" in down.detail and "down" in down.detail
    assert via_slot.ok
    assert not refused.ok and refused.detail
    assert headers[0]["X-Probe"] == "upgrader"


def test_http_health_check_timeout():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: asyncio.sleep(5), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        check = HttpHealthCheck(timeout=0.2)
        try:
            return await check.check(Host("web-01", "127.0.0.1", port))
        finally:
            await check.aclose()
            server.close()

    result = run(scenario())
    assert not result.ok and "0.2s" in result.detail


def test_tcp_health_check():
    async def scenario():
        async with HealthServer() as server:
            check = TcpHealthCheck(timeout=1.0)
            up = await check.check(Host("web-01", "127.0.0.1", server.port))
            down = await check.check(Host("web-01", "127.0.0.1", closed_port()))
            with pytest.raises(ConfigError):
                await check.check(Host("web-01", "127.0.0.1", None))
            return up, down

    up, down = run(scenario())
    assert up.ok
    assert not down.ok and "connect" in down.detail


def test_command_health_check():
    script = "import sys; print('bad port', file=sys.stderr) if sys.argv[1] != '8101' else None;" \
             " sys.exit(0 if sys.argv[1] == '8101' and sys.argv[2] == 'web-01' else 1)"
    transport = LocalTransport()
    check = Plugins().create(
        "health", ProviderSpec("command", {"argv": [PY, "-c", script, "{port}", "{host}"],
                                           "timeout": 5}),
        ProviderContext(transport=transport))
    assert isinstance(check, CommandHealthCheck)
    healthy = run(check.check(HOST))
    unhealthy = run(check.check(HOST, port=8102))
    assert healthy.ok
    assert not unhealthy.ok and "status 1" in unhealthy.detail and "bad port" in unhealthy.detail

    slow = CommandHealthCheck(transport, argv=["sleep", "5"], timeout=0.2)
    timed_out = run(slow.check(HOST))
    assert not timed_out.ok and "0.2s" in timed_out.detail

    missing = CommandHealthCheck(transport, argv=["/nonexistent/check"])
    assert not run(missing.check(HOST)).ok

    with pytest.raises(ConfigError) as info:
        run(CommandHealthCheck(transport, argv=["echo", "{nope}"]).check(HOST))
    assert info.value.key == "health.argv"
    with pytest.raises(ConfigError):
        Plugins().create("health", ProviderSpec("command", {"argv": ["true"]}),
                         ProviderContext(transport=None))


# -------------------------------------------------------------------------------------------
# directory snapshot


def tree(root: Path, skip: tuple[str, ...] = (".snapshots", "run", "logs")) -> dict:
    """Every entry below ``root`` (minus top-level ``skip``): type, mode, content / target."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            result[str(rel)] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            result[str(rel)] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            result[str(rel)] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return result


def make_release_folder(root: Path) -> None:
    (root / "releases" / "1.4.0" / "run").mkdir(parents=True)
    (root / "releases" / "1.4.0" / "app.py").write_text("VERSION = '1.4.0'\n")
    (root / "releases" / "1.4.0" / "run" / "nested").write_text("a nested run/ is content\n")
    tool = root / "releases" / "1.4.0" / "bin-tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / "current").symlink_to("releases/1.4.0")
    (root / "installs.log").write_text("1.4.0\n")
    (root / "shared").mkdir()
    (root / "shared" / "config.toml").write_text("[db]\nurl = 'x'\n")
    (root / "run").mkdir()
    (root / "run" / "app.pid").write_text("1234\n")
    (root / "logs").mkdir()
    (root / "logs" / "app.log").write_text("started\n")


def test_directory_snapshot_create_modify_revert_delete(tmp_path):
    root = tmp_path / "hosts" / "web-01"
    make_release_folder(root)
    host = Host("web-01", vars={"root": str(root)})
    before = tree(root)
    snapshots = Plugins().create("snapshot", ProviderSpec("directory"),
                                 ProviderContext(transport=LocalTransport()))

    snapshot_id = run(snapshots.create(host, "pre 1.5.0"))
    assert snapshot_id == "pre_1.5.0-1"
    archive = root / ".snapshots" / f"{snapshot_id}.tar"
    assert archive.is_file()
    assert not list((root / ".snapshots").glob("*.partial"))

    # the upgrade changes everything
    (root / "releases" / "1.5.0").mkdir()
    (root / "releases" / "1.5.0" / "app.py").write_text("VERSION = '1.5.0'\n")
    (root / "current").unlink()
    (root / "current").symlink_to("releases/1.5.0")
    (root / "releases" / "1.4.0" / "app.py").write_text("corrupted\n")
    (root / "releases" / "1.4.0" / "bin-tool").chmod(0o600)
    (root / "shared" / "config.toml").unlink()
    (root / "installs.log").write_text("1.4.0\n1.5.0\n")
    (root / "run" / "app.pid").write_text("5678\n")
    (root / "logs" / "app.log").write_text("started\nupgraded\n")
    assert tree(root) != before

    run(snapshots.revert(host, snapshot_id))
    assert tree(root) == before
    # run/ and logs/ belong to the live service: neither saved nor replaced
    assert (root / "run" / "app.pid").read_text() == "5678\n"
    assert (root / "logs" / "app.log").read_text() == "started\nupgraded\n"
    assert archive.is_file()

    run(snapshots.delete(host, snapshot_id))
    assert not archive.exists()
    with pytest.raises(SnapshotError):
        run(snapshots.revert(host, snapshot_id))


def test_directory_snapshot_ids_keep_and_errors(tmp_path):
    root = tmp_path / "web-01"
    make_release_folder(root)
    host = Host("web-01", vars={"root": str(root)})
    transport = LocalTransport()
    snapshots = DirectorySnapshot(transport, keep=2)
    ids = [run(snapshots.create(host, "wave")) for _ in range(3)]
    assert ids == ["wave-1", "wave-2", "wave-3"]
    assert sorted(p.name for p in (root / ".snapshots").iterdir()) == ["wave-2.tar",
                                                                       "wave-3.tar"]
    # a new provider (a new controller) continues the numbering instead of overwriting
    assert run(DirectorySnapshot(transport, keep=0).create(host, "wave")) == "wave-4"

    before = tree(root)
    for bad in ("../../etc/passwd", "wave", "wave-1/..", ".hidden-1"):
        with pytest.raises(SnapshotError):
            run(snapshots.revert(host, bad))
    with pytest.raises(SnapshotError, match="missing or unreadable"):
        run(snapshots.revert(host, "wave-1"))  # pruned
    assert tree(root) == before, "a failed revert must not touch the release folder"

    with pytest.raises(SnapshotError, match="root"):
        run(snapshots.create(Host("web-02"), "x"))  # no root var
    with pytest.raises(SnapshotError, match="absolute"):
        run(DirectorySnapshot(transport, path="/").create(host, "x"))
    with pytest.raises(SnapshotError, match="no such folder"):
        run(DirectorySnapshot(transport, path=str(tmp_path / "missing")).create(host, "x"))
    assert not (tmp_path / "missing").exists()
    with pytest.raises(SnapshotError, match="cannot"):
        run(DirectorySnapshot(transport, path="/proc/self/fdinfo").create(host, "x"))
    with pytest.raises(ConfigError):
        DirectorySnapshot(None)
    with pytest.raises(ConfigError):
        DirectorySnapshot(transport, exclude=["a/b"])
