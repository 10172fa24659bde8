"""The ssh transport's OpenSSH behaviours without a server (issue 13, point 4): hashed
known_hosts entries, the system-wide config and known_hosts settings, HashKnownHosts, the
refused-connection test, and password settings (a literal password in the fleet file is a
ConfigError naming file, key and line). Against real sshd: tests/integration/test_ssh_openssh.py.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
from pathlib import Path

import pytest

from upgrader.config import loads_fleet
from upgrader.errors import ConfigError
from upgrader.model import ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import ProviderContext
from upgrader_ssh import hostkeys
from upgrader_ssh.hostkeys import HostKeyPolicy, OfferedKey, hashed_host
from upgrader_ssh.transport import (
    DEFAULT_GLOBAL_KNOWN_HOSTS,
    DEFAULT_SYSTEM_CONFIG,
    Target,
    _refused,
)

SAMPLE = Path(__file__).resolve().parents[2] / "sample_fleets" / "production-sketch.toml"
LOCAL = 'kind = "local"                 # with the ssh plugin: kind = "ssh", username = "deploy", ...'

asyncssh = hostkeys.asyncssh    # imported by the plugin, under its warnings filter
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519")


def create(settings: dict):
    base = {"config": "", "system_config": "", "global_known_hosts": []}
    return Plugins().create("transport", ProviderSpec("ssh", {**base, **settings}),
                            ProviderContext())


def public_line(key) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


# --------------------------------------------------------------------------------------------
# hashed known_hosts entries


def test_a_hashed_host_is_openssh_s_hmac_sha1_of_the_name():
    salt = bytes(range(20))
    field = hashed_host("[10.0.0.1]:2222", salt)
    magic, salt64, digest64 = field.split("|")[1:]
    assert magic == "1" and base64.b64decode(salt64) == salt
    assert base64.b64decode(digest64) == hmac.new(salt, b"[10.0.0.1]:2222",
                                                  hashlib.sha1).digest()
    assert hashed_host("web", salt) != hashed_host("web")      # a fresh salt each time


def test_a_recorded_hashed_entry_is_matched_and_hides_the_name(tmp_path):
    known = tmp_path / "known_hosts"
    policy = HostKeyPolicy([str(known)], trust_on_first_use=True)
    offered = OfferedKey(host="10.0.0.7", port=2222, key=HOST_KEY.convert_to_public(), known=())
    policy.record(offered, hashed=True)
    text = known.read_text()
    assert text.startswith("|1|") and "10.0.0.7" not in text
    assert policy.known_keys("10.0.0.7", None, 2222) == (HOST_KEY.convert_to_public(),)
    assert policy.known_keys("10.0.0.7", None, 22) == ()
    [entry] = policy.entries("10.0.0.7", None, 2222)
    assert (entry.path, entry.line, entry.algorithm) == (str(known), 1, "ssh-ed25519")


def test_global_known_hosts_are_read_after_the_user_s_and_never_written(tmp_path):
    user = tmp_path / "known_hosts"
    system = tmp_path / "ssh_known_hosts"
    system.write_text("# system\n" + "web " + public_line(HOST_KEY.convert_to_public()) + "\n")
    policy = HostKeyPolicy([str(user)], global_paths=[str(system), str(tmp_path / "absent")],
                           trust_on_first_use=True)
    assert policy.record_path == str(user)
    assert policy.known_keys("web", None, 22) == (HOST_KEY.convert_to_public(),)
    [entry] = policy.entries("web", None, 22)
    assert (entry.path, entry.line) == (str(system), 2)


def test_an_unreadable_global_file_trusts_nothing_but_an_unreadable_user_file_is_an_error(
        tmp_path):
    unreadable = tmp_path / "dir-not-file"
    unreadable.mkdir()
    assert HostKeyPolicy([str(tmp_path / "kh")], global_paths=[str(unreadable)]).known_keys(
        "web", None, 22) == ()
    with pytest.raises(ValueError, match="cannot read known_hosts"):
        HostKeyPolicy([str(unreadable)]).current()


# --------------------------------------------------------------------------------------------
# settings


def test_defaults_read_the_system_wide_files_as_openssh():
    transport = Plugins().create("transport", ProviderSpec("ssh", {}), ProviderContext())
    assert transport.host_keys.global_paths == list(DEFAULT_GLOBAL_KNOWN_HOSTS)
    assert DEFAULT_SYSTEM_CONFIG == "/etc/ssh/ssh_config"
    assert transport.password_env is None and transport._password is None   # off by default


@pytest.mark.parametrize("settings, key", [
    ({"system_config": "/nonexistent/ssh_config"}, "transport.system_config"),
    ({"global_known_hosts": "/etc/ssh/ssh_known_hosts"}, "transport.global_known_hosts"),
    ({"global_known_hosts": [""]}, "transport.global_known_hosts"),
    ({"password_env": "UPGRADER_TEST_UNSET_PASSWORD"}, "transport.password_env"),
])
def test_bad_settings_name_their_key(settings, key, monkeypatch):
    monkeypatch.delenv("UPGRADER_TEST_UNSET_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as info:
        create(settings)
    assert info.value.key == key


def test_a_literal_password_is_refused_naming_file_key_and_line(tmp_path):
    text = SAMPLE.read_text()
    assert LOCAL in text
    text = text.replace(LOCAL, 'kind = "ssh"\nusername = "deploy"\npassword = "hunter2"')
    line = text.splitlines().index('password = "hunter2"') + 1
    fleet = tmp_path / "fleet.toml"
    with pytest.raises(ConfigError) as info:
        loads_fleet(text, source=fleet, registry=Plugins())
    error = info.value
    assert (error.file, error.key, error.line) == (str(fleet), "transport.password", line)
    assert "password_env" in str(error) and "hunter2" not in str(error)


def test_the_cli_refuses_a_literal_password_with_exit_2_and_changes_nothing(tmp_path, capsys):
    from upgrader import cli

    fleet = tmp_path / "fleet.toml"
    fleet.write_text(SAMPLE.read_text().replace(
        LOCAL, 'kind = "ssh"\nusername = "deploy"\npassword = "hunter2"'))
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(["plan", str(fleet)])
    err = capsys.readouterr().err
    line = fleet.read_text().splitlines().index('password = "hunter2"') + 1
    assert code == 2
    assert err.startswith(f"upgrader: error: {fleet}:{line}: transport.password: ")
    assert "password_env" in err and "hunter2" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_literal_password_is_refused_when_the_transport_is_built_too():
    with pytest.raises(ConfigError) as info:
        create({"password": "hunter2"})
    assert info.value.key == "transport.password" and "password_env" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_the_password_is_read_from_its_environment_variable_and_never_shown(monkeypatch):
    monkeypatch.setenv("UPGRADER_TEST_SSH_PASSWORD", "s3cret-pw")
    transport = create({"password_env": "UPGRADER_TEST_SSH_PASSWORD"})
    assert transport._password == "s3cret-pw"
    assert "s3cret-pw" not in repr(transport) and "s3cret-pw" not in str(vars(transport).get(
        "password_env"))


# --------------------------------------------------------------------------------------------
# ssh config: system-wide file, Include, HashKnownHosts


def test_hash_known_hosts_and_aliases_come_from_the_system_wide_config(tmp_path):
    conf_d = tmp_path / "ssh_config.d"
    conf_d.mkdir()
    (conf_d / "10-fleet.conf").write_text("Host fleet-*\n  User deploy\n  Port 2200\n")
    system = tmp_path / "ssh_config"
    system.write_text(f"Include {conf_d}/*.conf\nHost *\n  HashKnownHosts yes\n")
    user = tmp_path / "config"
    user.write_text("Host fleet-9\n  Port 2299\n  HashKnownHosts no\n")
    transport = create({"config": str(user), "system_config": str(system)})
    assert transport.config_paths == [str(user), str(system)]      # the user's first
    config = transport._config_lookup("fleet-1", None, None)
    assert (config.get("User"), config.get("Port")) == ("deploy", 2200)
    assert transport._hash_known_hosts(Target("fleet-1", None, None)) is True
    assert transport._config_lookup("fleet-9", None, None).get("Port") == 2299
    assert transport._hash_known_hosts(Target("fleet-9", None, None)) is False
    assert create({"config": str(user)})._hash_known_hosts(Target("x", None, None)) is False


# --------------------------------------------------------------------------------------------
# refused connections


@pytest.mark.parametrize("exc, refused", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 22)"), True),
    (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 22, 0, 0), "
             "[Errno 111] Connect call failed ('127.0.0.1', 22)"), True),
    (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 22, 0, 0), "
             "[Errno 113] Connect call failed ('10.0.0.1', 22)"), False),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), False),
])
def test_a_refused_connection_is_recognised(exc, refused):
    assert _refused(exc) is refused
