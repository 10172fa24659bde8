"""The ssh transport plugin without a server: found through its entry point, its settings
validated, hosts addressed, commands quoted, and only the public plugin API imported.
(Against real sshd processes: tests/integration/test_ssh_transport.py.)"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest

from upgrader.errors import ConfigError
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import ProviderContext, Transport

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "upgrader_ssh"
PUBLIC_API = {"upgrader.hookspecs", "upgrader.providers.base", "upgrader.errors"}


def create(settings: dict):
    return Plugins().create("transport", ProviderSpec("ssh", settings), ProviderContext())


def test_the_plugin_is_found_through_its_entry_point():
    plugins = Plugins()
    assert "ssh" in plugins.names("transport")
    factory = plugins.lookup("transport", "ssh")
    assert factory is not None and factory.plugin == "ssh"
    listed = {p["name"]: p for p in plugins.list_plugins()}
    assert listed["ssh"]["kind"] == "entrypoint"
    assert listed["ssh"]["providers"] == {"transport": ["ssh"]}


def test_the_plugin_can_be_turned_off():
    plugins = Plugins(environ={"UPGRADER_DISABLE_PLUGINS": "ssh"})
    assert "ssh" not in plugins.names("transport")
    assert "local" in plugins.names("transport")


def test_defaults_and_the_transport_protocol():
    transport = create({})
    assert isinstance(transport, Transport)
    assert callable(getattr(transport, "upload", None))     # the optional capability
    assert transport.host_keys.paths == [str(Path("~/.ssh/known_hosts").expanduser())]
    assert transport.trust_on_first_use is False
    assert (transport.max_sessions, transport.max_parallel) == (10, 100)
    assert (transport.timeout, transport.connect_timeout, transport.kill_grace) == \
        (300.0, 10.0, 2.0)
    assert transport.sudo is False and transport.agent is True


@pytest.mark.parametrize("settings, key", [
    ({"timout": 5}, "transport.timout"),
    ({"max_sessions": 0}, "transport.max_sessions"),
    ({"max_parallel": True}, "transport.max_parallel"),
    ({"timeout": "-1s"}, "transport.timeout"),
    ({"port": 70000}, "transport.port"),
    ({"identity_files": ["/nonexistent/id_ed25519"]}, "transport.identity_files"),
    ({"config": "/nonexistent/ssh_config"}, "transport.config"),
    ({"passphrase_env": "UPGRADER_TEST_NO_SUCH_VARIABLE"}, "transport.passphrase_env"),
    ({"known_hosts": []}, "transport.known_hosts"),
])
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError) as info:
        create(settings)
    assert info.value.key == key


def test_durations_and_lists_are_accepted():
    transport = create({"timeout": "1m30s", "connect_timeout": "500ms",
                        "known_hosts": ["/a/known_hosts", "/etc/ssh/ssh_known_hosts"]})
    assert transport.timeout == 90.0 and transport.connect_timeout == 0.5
    assert transport.host_keys.record_path == "/a/known_hosts"


def test_host_addressing_from_vars_then_settings():
    transport = create({"port": 2222, "username": "deploy"})
    assert transport.target(Host("web-01", "10.0.0.11")).key == ("10.0.0.11", 2222, "deploy")
    assert transport.target(Host("web-02", "10.0.0.12", vars={
        "ssh_port": "2200", "ssh_user": "ops", "ssh_host": "web-02.mgmt"})).key == \
        ("web-02.mgmt", 2200, "ops")
    # nothing set anywhere: the ssh config (or SSH's defaults) decides
    assert create({}).target(Host("web-03", "web-03-alias")).key == ("web-03-alias", None, None)
    with pytest.raises(ConfigError) as info:
        transport.target(Host("web-04", "10.0.0.14", vars={"ssh_port": "ssh"}))
    assert info.value.key == "hosts.web-04.vars.ssh_port"


def test_the_remote_command_quotes_every_argument():
    from upgrader_ssh import remote_command

    argv = ["printf", "%s", "a;b", "$(id)", "`id`", "x\ny", "", "it's"]
    command = remote_command(argv)
    assert command.startswith("echo $$; exec ")
    assert shlex.split(command.removeprefix("echo $$; exec ")) == argv
    sudo = remote_command(["id", "-u"], sudo=True)
    assert sudo == "echo $$; exec sudo -n -- id -u"


def test_the_wrapped_command_passes_every_value_as_a_quoted_argument():
    from upgrader_ssh.transport import KEEPER, WRAPPER, lock_name, wrapped_command

    argv = ["printf", "%s", "a;b", "$(id)", "`id`", "x\ny", "", "it's"]
    command = wrapped_command(argv, lock_dir="/run/a dir", lock_file=lock_name("shop; x", "w/1"),
                              lock_wait=120, kill_grace=2.5, token="123.ab")
    assert command.startswith("exec ")
    words = shlex.split(command.removeprefix("exec "))
    assert words[:4] == ["sh", "-c", WRAPPER, "upgrader-run"]
    assert words[4:11] == [KEEPER, "/run/a dir", "upgrader-shop__x-w_1.lock", "120", "2.5",
                           "0", "123.ab"]
    assert words[11:] == argv
    sudo = shlex.split(wrapped_command(["id"], lock_dir=None, lock_file="l", lock_wait=1,
                                       kill_grace=1, token="t", sudo=True)[5:])
    assert sudo[5:] == ["", "l", "1", "1", "1", "t", "sudo", "-n", "--", "id"]


def test_a_command_the_wrapper_did_not_start_is_explained():
    import asyncio

    from upgrader.errors import TransportError
    from upgrader_ssh.transport import _Session

    transport = create({"lock_wait": "30s"})
    host = Host("web-01", "10.0.0.11")

    def explain(*lines: str, status: int) -> TransportError:
        async def main() -> TransportError:
            session = _Session(asyncio.get_running_loop().create_future(), wrapped=True)
            session.data_received("".join(f"{line}\n" for line in lines).encode(), None)
            session.exit_status_received(status)
            return transport._not_started(host, transport.target(host), ("install",), session)
        return asyncio.run(main())

    busy = explain("4242", "wait 4100 /tmp/l.lock", "timeout 4100 /tmp/l.lock", status=75)
    assert "/tmp/l.lock is still held by pid 4100 after 30s" in str(busy)
    assert "kill -- -4100" in str(busy) and busy.host == "web-01" and busy.stdout == ""
    missing = explain("missing flock", status=127)
    assert "`flock` is not installed" in str(missing) and "host_lock = false" in str(missing)
    link = explain("77", "symlink /tmp/l.lock", status=125)
    assert "/tmp/l.lock is a symbolic link" in str(link)


def test_the_plugin_imports_only_the_public_plugin_api():
    imported: set[str] = set()
    for path in PLUGIN_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
    upgrader_modules = {m for m in imported if m == "upgrader" or m.startswith("upgrader.")}
    assert upgrader_modules <= PUBLIC_API, sorted(upgrader_modules - PUBLIC_API)


def test_a_proxyjump_loop_is_an_error_not_a_hang(tmp_path):
    import asyncio

    from upgrader.errors import TransportError

    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  ProxyJump b\n\nHost b\n  ProxyJump a\n")

    async def main():
        async with create({"config": str(config), "known_hosts": str(tmp_path / "kh"),
                           "agent": False, "connect_timeout": "2s"}) as transport:
            with pytest.raises(TransportError) as info:
                await asyncio.wait_for(transport.run(Host("web-01", "a"), ["true"]), 10)
            return info.value, transport.connections_opened

    error, opened = asyncio.run(main())
    assert "ProxyJump loops" in str(error) and error.host == "web-01"
    assert opened == 0                      # found before any connection was tried


def test_loading_the_plugin_and_checking_ssh_settings_does_not_import_asyncssh():
    """Every command loads the plugin (and checks a fleet's [transport] settings through its
    registry): asyncssh is imported only when an ssh transport is created."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from upgrader.plugins import Plugins\n"
        "from upgrader.model import ProviderSpec\n"
        "plugins = Plugins()\n"
        "plugins.validate('transport', ProviderSpec('ssh', {'username': 'deploy'}))\n"
        "import upgrader_ssh\n"
        "print('asyncssh' in sys.modules)\n"
        "print(upgrader_ssh.SshTransport.__name__, 'asyncssh' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["False", "SshTransport True"]
    assert out.stderr == ""         # asyncssh's import warning is still filtered


def test_the_registered_factory_creates_the_transport():
    from upgrader_ssh import SshTransport

    transport = create({"username": "deploy", "config": "", "system_config": ""})
    assert isinstance(transport, SshTransport)
