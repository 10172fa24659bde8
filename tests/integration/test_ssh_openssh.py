"""The ``ssh`` transport where operators compare it with OpenSSH (issue 13, point 4), against
real sshd servers on loopback (upgrader.lab.sshd): the system-wide ssh config and its
``Include`` of ssh_config.d, the system-wide known_hosts files, a changed host key of another
type, a refused port, an encrypted IdentityFile with no passphrase, hashed trust-on-first-use
records (checked with OpenSSH's own ``ssh-keygen -F``), and password logins.

The system-wide files are temporary files the settings point at: the real /etc/ssh is never
written. The password login needs a second local user with a password; it is created as root
(``useradd``/``chpasswd``) and the test is skipped with the reason when not root.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from upgrader.errors import TransportError
from upgrader.lab import sshd as labsshd
from upgrader.lab.sshd import Sshd, free_port, make_client_key
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import ProviderContext

pytestmark = pytest.mark.integration

PASSWORD_USER = "upgrader-sshpw"


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("UPGRADER_REQUIRE_INTEGRATION") == "1":
        pytest.fail(reason + " (UPGRADER_REQUIRE_INTEGRATION=1)")
    pytest.skip(reason)


def _require_openssh() -> None:
    _require(labsshd.sshd_path() is not None,
             "sshd is not installed (apt-get install openssh-server)")
    _require(shutil.which("ssh-keygen") is not None,
             "ssh-keygen is not installed (apt-get install openssh-client)")


def run(coro):
    return asyncio.run(coro)


def make_transport(settings: dict):
    """The ``ssh`` transport from a fleet file's [transport] table (as a rollout builds it)."""
    return Plugins().create("transport", ProviderSpec("ssh", settings), ProviderContext())


class Env:
    """A client key, a known_hosts file, and the servers of one test."""

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
                    "agent": False, "username": "root", "connect_timeout": "10s"}
        if sshd is not None:
            settings["port"] = sshd.port
        settings.update(overrides)
        return {k: v for k, v in settings.items() if v is not None}   # None: leave it out

    def system_config(self, conf_d_text: str, main_text: str = "") -> Path:
        """A system-wide ssh_config as Debian's: it Includes ssh_config.d/*.conf first."""
        conf_d = self.root / "etc-ssh" / "ssh_config.d"
        conf_d.mkdir(parents=True, exist_ok=True)
        (conf_d / "50-fleet.conf").write_text(conf_d_text)
        main = self.root / "etc-ssh" / "ssh_config"
        main.write_text(f"Include {conf_d}/*.conf\n{main_text}")
        return main

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


async def failure(settings: dict, host: Host) -> TransportError:
    async with make_transport(settings) as transport:
        with pytest.raises(TransportError) as info:
            await transport.run(host, ["true"])
        return info.value


# --------------------------------------------------------------------------------------------
# system-wide config and known_hosts


def test_a_host_alias_of_the_system_wide_ssh_config_d_is_used(env):
    sshd = env.server("web-01", "127.0.1.1")
    system = env.system_config(
        f"Host fleet-web-01\n  HostName {sshd.address}\n  Port {sshd.port}\n  User root\n",
        "Host *\n  HashKnownHosts yes\n")
    settings = env.settings(system_config=str(system), username=None)

    async def main():
        async with make_transport(settings) as transport:
            return await transport.run(Host("web-01", "fleet-web-01"),
                                       ["sh", "-c", "echo $SSH_CONNECTION; id -un"])

    out = run(main()).stdout.split()
    assert out[2:4] == [sshd.address, str(sshd.port)] and out[4] == "root"
    assert sshd.accepted_connections() == 1


def test_the_user_config_wins_over_the_system_wide_one(env):
    sshd = env.server("web-01", "127.0.1.2")
    system = env.system_config(f"Host web\n  HostName {sshd.address}\n  Port 1\n")
    user = env.root / "config"
    user.write_text(f"Host web\n  Port {sshd.port}\n")      # ssh: the first value obtained
    settings = env.settings(config=str(user), system_config=str(system))

    async def main():
        async with make_transport(settings) as transport:
            return await transport.run(Host("web-01", "web"), ["echo", "ok"])

    assert run(main()).stdout == "ok\n"


def test_keys_in_the_system_wide_known_hosts_files_are_trusted(env):
    first = env.server("web-01", "127.0.1.3", trust=False)
    second = env.server("web-02", "127.0.1.4", trust=False)
    global_1 = env.root / "ssh_known_hosts"
    global_2 = env.root / "ssh_known_hosts2"
    global_1.write_text(first.known_hosts_line() + "\n")
    # the second file holds a hashed entry, as `ssh-keygen -H` leaves it
    global_2.write_text(second.known_hosts_line() + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(global_2)], check=True,
                   capture_output=True)
    assert second.address not in global_2.read_text()
    settings = env.settings(global_known_hosts=[str(global_1), str(global_2)], port=None)

    async def main():
        async with make_transport(settings) as transport:
            return [await transport.run(Host(name, s.address, vars={"ssh_port": s.port}),
                                        ["echo", name])
                    for name, s in (("web-01", first), ("web-02", second))]

    assert [r.stdout for r in run(main())] == ["web-01\n", "web-02\n"]
    assert env.known_hosts.read_text() == ""             # the user's file is left alone


# --------------------------------------------------------------------------------------------
# clear errors


def test_a_host_key_of_another_type_is_reported_as_changed(env):
    sshd = env.server("web-01", "127.0.1.5")                 # ed25519, trusted
    sshd.host_key_type = "ecdsa"
    sshd.restart(new_host_key=True)                          # reinstalled: an ecdsa key now
    assert sshd.host_public_key.startswith("ecdsa-sha2-nistp256 ")

    error = run(failure(env.settings(sshd), Host("web-01", sshd.address)))
    text = str(error)
    assert "host key changed" in text and "Connection reset" not in text
    assert f"known_hosts has ssh-ed25519 at {env.known_hosts}:1" in text
    assert f"server now offers ecdsa-sha2-nistp256 {sshd.host_key_fingerprint}" in text
    assert f"ssh-keygen -R '[{sshd.address}]:{sshd.port}'" in text
    assert sshd.accepted_connections() == 0


def test_a_refused_port_says_refused(env):
    address = "127.0.1.6"
    port = free_port(address)                                # nothing listens there

    error = run(failure(env.settings(port=port), Host("web-01", address)))
    assert f"connection refused by {address}:{port}" in str(error)
    assert "Connect call failed" not in str(error)


def test_an_encrypted_identity_file_without_passphrase_env_is_named_as_skipped(env):
    locked = make_client_key(env.root / "locked_key", passphrase="correct horse")
    sshd = env.server("web-01", "127.0.1.7")
    sshd.add_authorized_key(locked.public)
    config = env.root / "config"
    config.write_text(f"Host web\n  HostName {sshd.address}\n  Port {sshd.port}\n"
                      f"  User root\n  IdentityFile {locked.private}\n")
    settings = env.settings(config=str(config), identity_files=[], username=None)

    error = run(failure(settings, Host("web-01", "web")))
    text = str(error)
    assert "refused the login" in text
    assert (f"identity file {locked.private} is encrypted and no passphrase_env is set: "
            f"skipped") in text
    assert "correct horse" not in text

    os.environ["UPGRADER_TEST_KEY_PASSPHRASE"] = "correct horse"
    try:
        async def with_passphrase():
            async with make_transport(
                    dict(settings, passphrase_env="UPGRADER_TEST_KEY_PASSPHRASE")) as transport:
                return await transport.run(Host("web-01", "web"), ["echo", "in"])

        assert run(with_passphrase()).stdout == "in\n"
    finally:
        del os.environ["UPGRADER_TEST_KEY_PASSPHRASE"]


# --------------------------------------------------------------------------------------------
# trust on first use, hashed


def test_trust_on_first_use_writes_a_hashed_entry_under_hash_known_hosts(env):
    sshd = env.server("web-01", "127.0.1.8", trust=False)
    system = env.system_config("", "Host *\n  HashKnownHosts yes\n")   # as Debian's
    settings = env.settings(sshd, system_config=str(system), trust_on_first_use=True)

    async def main():
        async with make_transport(settings) as transport:
            return await transport.run(Host("web-01", sshd.address), ["echo", "hi"])

    assert run(main()).stdout == "hi\n"
    recorded = env.known_hosts.read_text()
    assert recorded.startswith("|1|") and sshd.address not in recorded
    assert recorded.count("\n") == 1
    assert recorded.split()[1:] == sshd.host_public_key.split()[:2]
    # OpenSSH finds it under the host's name: the hash is its HMAC-SHA1
    name = f"[{sshd.address}]:{sshd.port}"
    found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(env.known_hosts)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and "found" in found.stdout
    assert run(main()).stdout == "hi\n"                       # verified, not recorded again
    assert env.known_hosts.read_text() == recorded


# --------------------------------------------------------------------------------------------
# password login


@pytest.fixture
def password_user():
    """A local user ``upgrader-sshpw`` with a fresh random password (made as root)."""
    _require(os.geteuid() == 0, f"creating the user {PASSWORD_USER} with a password needs root")
    _require(shutil.which("useradd") is not None and shutil.which("chpasswd") is not None,
             "useradd and chpasswd are not installed (passwd package)")
    exists = subprocess.run(["id", "-u", PASSWORD_USER], capture_output=True).returncode == 0
    if not exists:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", PASSWORD_USER],
                       check=True, capture_output=True)
    password = secrets.token_urlsafe(18)
    subprocess.run(["chpasswd"], input=f"{PASSWORD_USER}:{password}\n", text=True,
                   check=True, capture_output=True)
    return password


def test_password_login_with_password_env(env, password_user, monkeypatch, request):
    sshd = env.server("web-01", "127.0.1.9", password_authentication=True)
    monkeypatch.setenv("UPGRADER_TEST_SSH_PASSWORD", password_user)
    # the host's lock file is made by the password user: in a directory it can reach
    lock_dir = Path(tempfile.mkdtemp(prefix="upgrader-sshpw-"))
    os.chmod(lock_dir, 0o1777)
    request.addfinalizer(lambda: shutil.rmtree(lock_dir, ignore_errors=True))
    settings = env.settings(sshd, username=PASSWORD_USER, identity_files=[],
                            password_env="UPGRADER_TEST_SSH_PASSWORD", lock_dir=str(lock_dir))

    async def main():
        async with make_transport(settings) as transport:
            return await transport.run(Host("web-01", sshd.address), ["id", "-un"])

    assert run(main()).stdout == f"{PASSWORD_USER}\n"
    assert f"Accepted password for {PASSWORD_USER}" in sshd.log_text()

    monkeypatch.setenv("UPGRADER_TEST_SSH_PASSWORD", "not-" + password_user)
    error = run(failure(settings, Host("web-01", sshd.address)))
    assert "refused the login" in str(error)
    assert "the password in $UPGRADER_TEST_SSH_PASSWORD" in str(error)
    assert password_user not in str(error)


def test_without_password_env_there_is_no_password_login(env, password_user, monkeypatch):
    sshd = env.server("web-01", "127.0.1.10", password_authentication=True)
    monkeypatch.setenv("UPGRADER_TEST_SSH_PASSWORD", password_user)   # set, but not named
    settings = env.settings(sshd, username=PASSWORD_USER, identity_files=[])

    error = run(failure(settings, Host("web-01", sshd.address)))
    assert "refused the login" in str(error) and "password" not in str(error)
    assert sshd.accepted_connections() == 0
