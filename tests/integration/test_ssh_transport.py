"""The ``ssh`` transport plugin (plugins/upgrader_ssh) against real OpenSSH servers that the
tests start on loopback addresses (upgrader.lab.sshd): commands, errors, timeouts, host key
policy, ssh config aliases and ProxyJump, connection reuse, concurrency, upload, sudo, agent.

Transports are built through the plugin manager from fleet-file settings, exactly as a rollout
builds them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from upgrader.errors import CommandTimeout, ConfigError, TransportError
from upgrader.lab import sshd as labsshd
from upgrader.lab.sshd import Sshd, make_client_key
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import CommandResult, ProviderContext

pytestmark = pytest.mark.integration


def _require_openssh() -> None:
    if labsshd.sshd_path() is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")


def run(coro):
    return asyncio.run(coro)


def wait_for(condition, within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {within}s")


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def make_transport(settings: dict):
    """Build the ``ssh`` transport from a fleet file's [transport] table."""
    return Plugins().create("transport", ProviderSpec("ssh", settings), ProviderContext())


class Env:
    """A client key, a known_hosts file and helpers for the servers of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = make_client_key(root / "client_key")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("")
        self.servers: list[Sshd] = []

    def server(self, name: str, address: str, *, trust: bool = True, **kwargs) -> Sshd:
        sshd = Sshd(self.root / name, address=address, authorized_keys=[self.key.public],
                    **kwargs)
        self.servers.append(sshd)
        sshd.start()
        if trust:
            with open(self.known_hosts, "a") as fh:
                fh.write(sshd.known_hosts_line() + "\n")
        return sshd

    def settings(self, sshd: Sshd | None = None, **overrides) -> dict:
        settings = {"known_hosts": str(self.known_hosts),
                    "identity_files": [str(self.key.private)],
                    "config": "", "system_config": "", "global_known_hosts": [],
                    "agent": False, "username": "root",
                    "connect_timeout": "10s"}
        if sshd is not None:
            settings["port"] = sshd.port
        settings.update(overrides)
        return {k: v for k, v in settings.items() if v is not None}   # None: leave it out

    def close(self) -> None:
        for sshd in self.servers:
            sshd.stop()


@pytest.fixture
def env(tmp_path):
    _require_openssh()
    env = Env(tmp_path)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that do not change it."""
    _require_openssh()
    env = Env(tmp_path_factory.mktemp("ssh"))
    sshd = env.server("web-01", "127.0.0.2")
    try:
        yield env, sshd
    finally:
        env.close()


def host_of(sshd: Sshd, name: str = "web-01") -> Host:
    return Host(name, sshd.address)


# --------------------------------------------------------------------------------------------
# commands


def test_runs_commands_and_reports_exit_status_and_stderr(shared):
    env, sshd = shared
    host = host_of(sshd)

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            ok = await transport.run(host, ["sh", "-c", "echo out; echo err >&2"])
            assert ok == CommandResult(exit_status=0, stdout="out\n", stderr="err\n")
            soft = await transport.run(host, ["sh", "-c", "exit 7"], check=False)
            assert soft.exit_status == 7
            with pytest.raises(TransportError) as info:
                await transport.run(host, ["sh", "-c", "echo partial; echo 'it broke' >&2; "
                                           "exit 3"])
            return info.value

    error = run(main())
    assert error.host == "web-01"
    assert error.argv == ("sh", "-c", "echo partial; echo 'it broke' >&2; exit 3")
    assert error.exit_status == 3
    assert error.stderr == "it broke\n"
    assert error.stdout == "partial\n"
    assert "exited with status 3" in str(error) and "it broke" in str(error)


def test_shell_syntax_in_arguments_arrives_literally(shared):
    env, sshd = shared
    tricky = ["a;b", "$(touch /tmp/upgrader-ssh-pwned)", "`id`", "x\ny", "", "'q'", '"dq"',
              "$HOME", "a b", "*", "\\", "&&", "|", ">out", "#c", "~", "é"]

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            return await transport.run(host_of(sshd), ["printf", "%s\\0", *tricky])

    result = run(main())
    assert result.stdout.split("\0")[:-1] == tricky
    assert not Path("/tmp/upgrader-ssh-pwned").exists()


def test_a_command_past_its_timeout_is_killed_with_its_children(shared, tmp_path):
    env, sshd = shared
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}.child; echo $$ > {pids}; wait"

    async def main():
        async with make_transport(env.settings(sshd, timeout="30s")) as transport:
            started = time.monotonic()
            with pytest.raises(CommandTimeout) as info:
                await transport.run(host_of(sshd), ["sh", "-c", script], timeout=0.5)
            elapsed = time.monotonic() - started
            # the connection is still good for the next command
            after = await transport.run(host_of(sshd), ["echo", "still here"])
            return info.value, elapsed, after

    error, elapsed, after = run(main())
    assert isinstance(error, TimeoutError) and isinstance(error, TransportError)
    assert error.host == "web-01" and "within 0.5s" in str(error)
    assert "SIGTERM" in str(error)
    assert elapsed < 5
    wait_for(lambda: process_gone(int(pids.read_text())), what="the command ended")
    wait_for(lambda: process_gone(int(Path(f"{pids}.child").read_text())),
             what="the command's child ended")
    assert after.stdout == "still here\n"


def test_a_command_ignoring_sigterm_gets_sigkill_after_the_grace(shared, tmp_path):
    env, sshd = shared
    pid_file = tmp_path / "pid"
    script = f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done"

    async def main():
        async with make_transport(env.settings(sshd, kill_grace="300ms")) as transport:
            with pytest.raises(CommandTimeout) as info:
                await transport.run(host_of(sshd), ["sh", "-c", script], timeout=0.3)
            return info.value

    error = run(main())
    assert "SIGTERM then SIGKILL" in str(error) and "SIGKILL" in str(error)
    wait_for(lambda: process_gone(int(pid_file.read_text())), what="the command ended")


def test_a_connection_dropping_mid_command_is_an_error_and_not_retried(env, tmp_path):
    sshd = env.server("web-01", "127.0.0.3")
    marker = tmp_path / "started"

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            task = asyncio.ensure_future(transport.run(
                host_of(sshd), ["sh", "-c", f"echo x >> {marker}; sleep 30"]))
            deadline = time.monotonic() + 10
            # the command runs on the other side of sshd: its file is all there is to watch
            while not marker.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(sshd.drop_connections)
            with pytest.raises(TransportError) as info:
                await task
            return info.value

    error = run(main())
    assert not isinstance(error, CommandTimeout)
    assert "dropped" in str(error) and "unknown" in str(error)
    assert marker.read_text() == "x\n"            # not sent a second time
    assert sshd.accepted_connections() == 1


# --------------------------------------------------------------------------------------------
# host keys


def test_an_unknown_host_key_is_refused_with_its_fingerprint(env):
    sshd = env.server("web-01", "127.0.0.4", trust=False)

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            with pytest.raises(TransportError) as info:
                await transport.run(host_of(sshd), ["true"])
            return info.value

    error = run(main())
    text = str(error)
    assert error.host == "web-01"
    assert "unknown" in text and "127.0.0.4" in text
    assert sshd.host_key_fingerprint in text
    assert env.known_hosts.read_text() == ""          # nothing was recorded
    assert sshd.accepted_connections() == 0           # never logged in


def test_a_changed_host_key_is_refused_naming_both_keys(env):
    sshd = env.server("web-01", "127.0.0.5")
    old_fingerprint = sshd.host_key_fingerprint

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            assert (await transport.run(host_of(sshd), ["echo", "ok"])).stdout == "ok\n"
            await asyncio.to_thread(sshd.restart, new_host_key=True)
            with pytest.raises(TransportError) as info:
                await transport.run(host_of(sshd), ["true"])   # reconnects: new key
            return info.value

    error = run(main())
    text = str(error)
    assert "CHANGED" in text and "127.0.0.5" in text
    assert sshd.host_key_fingerprint in text and old_fingerprint in text
    assert sshd.host_key_fingerprint != old_fingerprint
    assert sshd.accepted_connections() == 1


def test_trust_on_first_use_records_the_key_then_verifies_it(env):
    sshd = env.server("web-01", "127.0.0.6", trust=False)
    known_hosts = env.root / "fresh" / "known_hosts"       # not there yet
    settings = env.settings(sshd, known_hosts=str(known_hosts), trust_on_first_use=True)

    async def first_use():
        async with make_transport(settings) as transport:
            return await transport.run(host_of(sshd), ["echo", "hello"])

    assert run(first_use()).stdout == "hello\n"
    assert known_hosts.read_text() == sshd.known_hosts_line() + "\n"

    assert run(first_use()).stdout == "hello\n"              # verified, not recorded again
    assert known_hosts.read_text() == sshd.known_hosts_line() + "\n"

    sshd.restart(new_host_key=True)

    async def changed():
        async with make_transport(settings) as transport:
            with pytest.raises(TransportError) as info:
                await transport.run(host_of(sshd), ["true"])
            return info.value

    error = run(changed())
    assert "CHANGED" in str(error) and sshd.host_key_fingerprint in str(error)
    assert known_hosts.read_text().count("\n") == 1          # the changed key is not added


# --------------------------------------------------------------------------------------------
# ssh config: aliases and ProxyJump


def test_ssh_config_alias_through_a_proxyjump(env):
    bastion = env.server("bastion", "127.0.0.7", log_level="DEBUG1")
    inner = env.server("inner", "127.0.0.8")
    config = env.root / "ssh_config"
    config.write_text(
        f"Host jump\n  HostName {bastion.address}\n  Port {bastion.port}\n  User root\n"
        f"  IdentityFile {env.key.private}\n\n"
        f"Host app-*\n  User root\n  IdentityFile {env.key.private}\n  ProxyJump jump\n\n"
        f"Host app-1\n  HostName {inner.address}\n  Port {inner.port}\n")
    settings = env.settings(config=str(config), identity_files=[], username=None)
    host = Host("web-01", "app-1")     # the fleet names the host by its ssh config alias

    async def main():
        async with make_transport(settings) as transport:
            first = await transport.run(host, ["sh", "-c", "echo $SSH_CONNECTION"])
            await asyncio.gather(*(transport.run(host, ["true"]) for _ in range(5)))
            return first

    result = run(main())
    server_side = result.stdout.split()
    assert server_side[2:] == [inner.address, str(inner.port)]
    assert inner.accepted_connections() == 1
    assert bastion.accepted_connections() == 1
    assert f"{inner.address} port {inner.port}" in bastion.log_text()   # forwarded through it


def test_an_unknown_jump_host_is_refused_too(env):
    bastion = env.server("bastion", "127.0.0.9", trust=False)
    inner = env.server("inner", "127.0.0.10")
    config = env.root / "ssh_config"
    config.write_text(
        f"Host app-1\n  HostName {inner.address}\n  Port {inner.port}\n"
        f"  ProxyJump root@{bastion.address}:{bastion.port}\n")
    settings = env.settings(config=str(config))

    async def main():
        async with make_transport(settings) as transport:
            with pytest.raises(TransportError) as info:
                await transport.run(Host("web-01", "app-1"), ["true"])
            return info.value

    error = run(main())
    assert "jump host" in str(error) and bastion.host_key_fingerprint in str(error)
    assert inner.accepted_connections() == 0 and bastion.accepted_connections() == 0


def test_host_vars_choose_port_and_user(shared):
    env, sshd = shared
    host = Host("web-01", sshd.address,
                vars={"ssh_port": str(sshd.port), "ssh_user": "root"})

    async def main():
        # the settings name neither port nor user: the host's vars do
        async with make_transport(env.settings(username=None)) as transport:
            return await transport.run(host, ["id", "-un"])

    assert run(main()).stdout == "root\n"


# --------------------------------------------------------------------------------------------
# connections and concurrency


def test_one_connection_per_host_reused_and_reopened_once_dropped(env):
    sshd = env.server("web-01", "127.0.0.11")
    host = host_of(sshd)

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            # concurrent first uses open one connection between them
            await asyncio.gather(*(transport.run(host, ["true"]) for _ in range(8)))
            for _ in range(5):
                await transport.run(host, ["true"])
            assert sshd.accepted_connections() == 1
            await asyncio.to_thread(sshd.drop_connections)
            result = await transport.run(host, ["echo", "back"])   # reconnects once
            await asyncio.gather(*(transport.run(host, ["true"]) for _ in range(4)))
            return result

    assert run(main()).stdout == "back\n"
    assert sshd.accepted_connections() == 2


def test_max_sessions_bounds_the_commands_in_flight_on_a_host(env, tmp_path):
    sshd = env.server("web-01", "127.0.0.12")
    log = tmp_path / "log"
    log.write_text("")
    # each command waits until two have started, so a bound of 2 is reached, never passed
    script = (f"echo start >> {log}; n=0; "
              f"while [ $(grep -c start {log}) -lt 2 ] && [ $n -lt 500 ]; do "
              f"sleep 0.01; n=$((n+1)); done; sleep 0.1; echo end >> {log}")

    async def main():
        async with make_transport(env.settings(sshd, max_sessions=2)) as transport:
            await asyncio.gather(*(transport.run(host_of(sshd), ["sh", "-c", script])
                                   for _ in range(6)))

    run(main())
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert log.read_text().split().count("end") == 6
    assert peak == 2


def test_nothing_listening_is_a_transport_error(env):
    port = labsshd.free_port("127.0.0.13")

    async def main():
        async with make_transport(env.settings(port=port)) as transport:
            with pytest.raises(TransportError) as info:
                await transport.run(Host("web-09", "127.0.0.13"), ["true"])
            return info.value

    error = run(main())
    assert error.host == "web-09" and "cannot connect" in str(error)
    assert f"127.0.0.13:{port}" in str(error)


# --------------------------------------------------------------------------------------------
# upload, sudo, agent, encrypted keys


def test_upload_copies_a_file_atomically(shared, tmp_path):
    env, sshd = shared
    artifact = tmp_path / "release-1.5.0.tar.gz"
    artifact.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    destination = tmp_path / "remote" / "release-1.5.0.tar.gz"
    destination.parent.mkdir()

    logins = sshd.accepted_connections()

    async def main():
        async with make_transport(env.settings(sshd)) as transport:
            size = await transport.upload(host_of(sshd), artifact, str(destination), mode=0o640)
            with pytest.raises(TransportError) as info:
                await transport.upload(host_of(sshd), artifact,
                                       str(tmp_path / "missing-dir" / "x"))
            with pytest.raises(TransportError):
                await transport.upload(host_of(sshd), tmp_path / "no-such-file", "/tmp/x")
            # the connection that carried the uploads runs commands as before
            listing = await transport.run(host_of(sshd), ["ls", str(destination.parent)])
            return size, info.value, listing

    size, error, listing = run(main())
    assert size == artifact.stat().st_size
    assert destination.read_bytes() == artifact.read_bytes()
    assert destination.stat().st_mode & 0o777 == 0o640
    assert listing.stdout.split() == [destination.name]     # no .part file left behind
    assert error.host == "web-01" and error.argv[0] == "upload"
    assert sshd.accepted_connections() == logins + 1      # uploads and commands: one connection


def test_sudo_runs_commands_through_sudo_and_kills_them_past_the_timeout(shared, tmp_path):
    env, sshd = shared
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed on this machine (apt-get install sudo)")
    pid_file = tmp_path / "pid"

    async def main():
        async with make_transport(env.settings(sshd, sudo=True)) as transport:
            result = await transport.run(host_of(sshd), ["id", "-u"])
            with pytest.raises(CommandTimeout) as info:
                await transport.run(host_of(sshd),
                                    ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"],
                                    timeout=1)
            return result, info.value

    result, error = run(main())
    assert result.stdout == "0\n"
    assert "SIGTERM" in str(error)
    wait_for(pid_file.exists, what="the command started")
    wait_for(lambda: process_gone(int(pid_file.read_text())), what="the sudo'ed command ended")


def test_logs_in_with_the_ssh_agent(env, monkeypatch):
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent is not installed (apt-get install openssh-client)")
    sshd = env.server("web-01", "127.0.0.14")
    sock = env.root / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, what="ssh-agent's socket")
        subprocess.run(["ssh-add", "-q", str(env.key.private)], check=True, timeout=30,
                       env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(env.root / "home"))   # no ~/.ssh/id_* to fall back on

        async def main():
            settings = env.settings(sshd, identity_files=[], agent=True)
            async with make_transport(settings) as transport:
                return await transport.run(host_of(sshd), ["echo", "via agent"])

        assert run(main()).stdout == "via agent\n"

        async def without_agent():
            settings = env.settings(sshd, identity_files=[], agent=False)
            async with make_transport(settings) as transport:
                with pytest.raises(TransportError) as info:
                    await transport.run(host_of(sshd), ["true"])
                return info.value

        assert "refused the login" in str(run(without_agent()))
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_an_encrypted_key_with_its_passphrase_from_the_environment(env, monkeypatch, caplog):
    secret = "correct horse battery staple"
    key = make_client_key(env.root / "encrypted_key", passphrase=secret)
    sshd = env.server("web-01", "127.0.0.15")
    sshd.add_authorized_key(key.public)
    monkeypatch.setenv("DEPLOY_KEY_PASSPHRASE", secret)
    caplog.set_level(logging.DEBUG)
    settings = env.settings(sshd, identity_files=[str(key.private)],
                            passphrase_env="DEPLOY_KEY_PASSPHRASE")

    async def main():
        transport = make_transport(settings)
        async with transport:
            result = await transport.run(host_of(sshd), ["echo", "unlocked"])
        return transport, result

    transport, result = run(main())
    assert result.stdout == "unlocked\n"
    assert secret not in repr(transport)

    monkeypatch.setenv("DEPLOY_KEY_PASSPHRASE", "wrong " + secret)

    async def wrong():
        async with make_transport(settings) as transport:
            with pytest.raises(ConfigError) as info:
                await transport.run(host_of(sshd), ["true"])
            return info.value

    error = run(wrong())
    assert error.key == "transport.identity_files" and str(key.private) in str(error)
    assert secret not in str(error)
    assert secret not in caplog.text
    key_body = key.private.read_text().splitlines()[1]
    assert key_body not in caplog.text and key_body not in str(error)

    monkeypatch.delenv("DEPLOY_KEY_PASSPHRASE")
    with pytest.raises(ConfigError) as missing:
        make_transport(settings)
    assert missing.value.key == "transport.passphrase_env"


# --------------------------------------------------------------------------------------------
# the host lock: no command outlives its controller, and no two controllers' commands overlap


def _pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def test_closing_the_connection_kills_the_commands_process_group(env, tmp_path):
    """Without the wrapper, sshd leaves a pty-less command running when its connection
    closes (the controller killed): the command, and its child, would still run."""
    sshd = env.server("web-01", "127.0.0.21")
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"

    async def main():
        transport = make_transport(env.settings(sshd, lock_dir=str(tmp_path)))
        task = asyncio.ensure_future(transport.run(host_of(sshd), ["sh", "-c", script]))
        deadline = time.monotonic() + 10
        while not pids.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # what a SIGKILLed controller does: its TCP connection just closes
        for conn in list(transport._links.values()):
            conn.abort()
        with pytest.raises(TransportError):
            await task
        await transport.aclose()

    run(main())
    shell, child = (int(p) for p in pids.read_text().split())
    pgid = os.getpgid(shell) if not process_gone(shell) else None
    wait_for(lambda: process_gone(shell) and process_gone(child), within=10,
             what="the command and its child ended")
    for pid in (shell, child):        # kill -0 fails, or only a zombie is left to reap
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        assert process_gone(pid)
    if pgid is not None:
        assert _pids_in_group(pgid) == []


def test_a_second_controller_waits_for_the_first_ones_command(env, tmp_path):
    """One transport's commands on a host run side by side; another transport's (a resumed
    controller's) command waits for them, is announced, and never overlaps them."""
    sshd = env.server("web-01", "127.0.0.22")
    log = tmp_path / "log"
    gate = tmp_path / "gate"
    slow = ["sh", "-c", f"echo start >> {log}; while [ ! -e {gate} ]; do sleep 0.02; done; "
                        f"echo done >> {log}"]
    told: list[tuple[str, str]] = []

    async def main():
        settings = env.settings(sshd, lock_dir=str(tmp_path))
        first = make_transport(settings)
        second = make_transport(settings)

        async def listener(host: str, message: str) -> None:
            told.append((host, message))

        second.watch_lock_waits(listener)
        host = host_of(sshd)
        a = asyncio.ensure_future(first.run(host, slow))
        b = asyncio.ensure_future(first.run(host, slow))       # same controller: side by side
        deadline = time.monotonic() + 10
        while (not log.exists() or log.read_text().count("start") < 2) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        c = asyncio.ensure_future(second.run(host, ["sh", "-c", f"echo second >> {log}"]))
        while not told and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert log.read_text().split() == ["start", "start"]    # still waiting
        gate.touch()
        await asyncio.gather(a, b, c)
        await first.aclose()
        await second.aclose()

    run(main())
    assert log.read_text().split() == ["start", "start", "done", "done", "second"]
    assert len(told) == 1 and told[0][0] == "web-01"
    assert "waiting for a command of a previous controller" in told[0][1]
    assert str(tmp_path / "upgrader-web-01.lock") in told[0][1]


def test_past_lock_wait_the_command_fails_naming_the_lock_and_its_holder(env, tmp_path):
    sshd = env.server("web-01", "127.0.0.23")
    pid_file = tmp_path / "pid"

    async def main():
        settings = env.settings(sshd, lock_dir=str(tmp_path))
        first = make_transport(settings)
        second = make_transport({**settings, "lock_wait": "500ms"})
        task = asyncio.ensure_future(first.run(
            host_of(sshd), ["sh", "-c", f"echo $$ > {pid_file}; sleep 30"]))
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            await second.run(host_of(sshd), ["true"])
        elapsed = time.monotonic() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await first.aclose()
        await second.aclose()
        return info.value, elapsed

    error, elapsed = run(main())
    holder = os.getpgid(int(pid_file.read_text())) if not process_gone(
        int(pid_file.read_text())) else None
    assert not isinstance(error, CommandTimeout)
    assert str(tmp_path / "upgrader-web-01.lock") in str(error)
    assert "lock_wait" in str(error) and "still held by pid" in str(error)
    assert holder is None or f"pid {holder}" in str(error)
    assert error.argv == ("true",) and error.host == "web-01"
    assert elapsed < 5


def test_a_host_without_flock_fails_clearly(env, tmp_path):
    """The wrapper looks flock and setsid up in the login's PATH: a host without util-linux
    (simulated by a PATH without them) refuses with the fix, and nothing runs."""
    sshd = env.server("web-01", "127.0.0.24")
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "cat", "sleep", "kill", "touch"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    marker = tmp_path / "ran"
    transport_settings = env.settings(sshd, lock_dir=str(tmp_path))

    async def bare_login():
        async with make_transport(transport_settings) as transport:
            from upgrader_ssh.transport import wrapped_command
            command = "PATH=" + str(bare) + "; " + wrapped_command(
                ["touch", str(marker)], lock_dir=str(tmp_path), lock_file="x.lock",
                lock_wait=1, kill_grace=1, token="t")
            conn = await transport._link(transport.target(host_of(sshd)))
            return await conn.run(command, check=False)

    result = run(bare_login())
    assert result.exit_status == 127 and result.stdout == "missing flock\n"
    assert not marker.exists()
