"""Security, in-process: hostile names at load, literal argv through the local transport, no
shell anywhere, tokens on every server compared in constant time, and the redaction helper.
(tests/integration/test_security_process.py runs the real processes: file modes, secrets.)
"""

from __future__ import annotations

import ast
import asyncio
import hmac
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from upgrader import redact
from upgrader.config import loads_fleet
from upgrader.errors import ConfigError, UpgraderError
from upgrader.model import Host

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ("1.0;touch pwned", "$(touch pwned)", "`touch pwned`", "1.0\ntouch pwned",
           "1.0\x00x", "a b", "1.0|sh", "1.0&&id", "'quoted'", "1.0>out", "a\\b")

BASE = """\
[fleet]
name = "sec"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["printf", "%s", "{release}"]
start = ["true"]
stop = ["true"]

[transport]
kind = "local"

[balancer]
kind = "noop"

[health]
kind = "noop"

[strategy]
kind = "rolling"

[[hosts]]
name = "web-01"
address = "127.0.0.1"
port = 9001
labels = {zone = "a"}
"""


def toml_string(value: str) -> str:
    """A TOML basic string holding ``value`` (control characters as \\uXXXX escapes)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --------------------------------------------------------------------------- rejected at load

@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field,old", [
    ("release.target", 'target = "1.1.0"'),
    ("release.current", 'current = "1.0.0"'),
    ("hosts[0].name", 'name = "web-01"'),
    ("fleet.name", 'name = "sec"'),
    ("hosts[0].address", 'address = "127.0.0.1"'),
    ("hosts[0].labels.zone", 'labels = {zone = "a"}'),
])
def test_names_releases_and_labels_with_shell_syntax_are_rejected_at_load(field, old, value):
    key = old.split(" = ")[0]
    if key == "labels":
        new = f"labels = {{zone = {toml_string(value)}}}"
    else:
        new = f"{key} = {toml_string(value)}"
    text = BASE.replace(old, new, 1)
    with pytest.raises(ConfigError) as error:
        loads_fleet(text, source="fleet.toml")
    assert error.value.key == field, str(error.value)
    assert error.value.line is not None and error.value.file == "fleet.toml"


def test_label_names_with_shell_syntax_are_rejected():
    with pytest.raises(ConfigError) as error:
        loads_fleet(BASE.replace('labels = {zone = "a"}', 'labels = {"z;one" = "a"}'))
    assert error.value.key == 'hosts[0].labels."z;one"' or "z;one" in str(error.value)


def test_plain_labels_still_load():
    fleet = loads_fleet(BASE.replace('labels = {zone = "a"}',
                                     'labels = {zone = "eu-west-1a", "team/owner" = "web@ops"}'))
    assert fleet.hosts[0].labels["team/owner"] == "web@ops"


@pytest.mark.parametrize("value", ["a\x00b", "a\x1bb"])
def test_vars_with_control_characters_are_rejected(value):
    text = BASE.replace('labels = {zone = "a"}', f"vars = {{note = {toml_string(value)}}}")
    with pytest.raises(ConfigError) as error:
        loads_fleet(text)
    assert error.value.key == "hosts[0].vars.note"


@pytest.mark.parametrize("key", ["a;b", "$(id)", "`id`", "a b", "x\ny"])
def test_flag_keys_with_shell_syntax_are_rejected(key):
    from upgrader.flags.loader import loads as loads_flags

    with pytest.raises(ConfigError) as error:
        loads_flags(f"[flags.{toml_string(key)}]\n")
    assert error.value.line is not None or error.value.key


def test_the_cli_exits_2_on_a_hostile_release(tmp_path):
    import subprocess

    path = tmp_path / "fleet.toml"
    path.write_text(BASE.replace('target = "1.1.0"', 'target = "1.1.0$(touch pwned)"'))
    done = subprocess.run([sys.executable, "-m", "upgrader.cli", "run", str(path), "--headless",
                           "--state-dir", str(tmp_path / "state")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "release.target" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "state").exists()


# ------------------------------------------------------------------- literal argv, no shell

@pytest.mark.parametrize("value", [v for v in HOSTILE if "\x00" not in v])
def test_the_local_transport_passes_hostile_values_as_one_literal_argument(tmp_path, value):
    """Even a value that got past the loader (the engine's own render, a plugin) reaches the
    program as one literal argv element: printf prints it, and nothing runs."""
    from upgrader.engine.core import Engine
    from upgrader.providers.local import LocalTransport

    host = Host(name="web-01", address="127.0.0.1", port=9001, vars={"note": value})
    fleet = loads_fleet(BASE)
    engine = Engine.__new__(Engine)          # render() only needs the fleet
    engine.fleet = fleet
    argv = engine.render(["printf", "%s|%s", "{release}", "{note}"], host, value, None)

    async def run() -> str:
        async with LocalTransport(cwd=str(tmp_path)) as transport:
            return (await transport.run(host, argv)).stdout

    assert asyncio.run(run()) == f"{value}|{value}"
    assert not list(tmp_path.glob("pwned*"))


def test_no_code_path_runs_a_shell():
    """No ``shell=True``, ``create_subprocess_shell``, ``os.system`` or ``os.popen`` in the
    package or the first-party plugins."""
    offenders = []
    for path in [*ROOT.joinpath("upgrader").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                offenders.append(f"{path}:{node.value.lineno} shell=")
            if isinstance(node, ast.Attribute) and node.attr in (
                    "create_subprocess_shell", "system", "popen") and isinstance(
                    node.value, ast.Name) and node.value.id in ("os", "asyncio"):
                offenders.append(f"{path}:{node.lineno} {node.value.id}.{node.attr}")
    assert not offenders, offenders


# --------------------------------------------------------------------- tokens on the servers

@pytest.fixture
def compare_calls(monkeypatch):
    """Record every hmac.compare_digest call (the servers call it through the module)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


async def _status(url: str, headers: dict[str, str] | None = None,
                  method: str = "GET", connector: Any = None) -> int:
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.request(method, url, headers=headers or {}) as response:
        return response.status


def test_balancer_admin_api_token_is_compared_in_constant_time(compare_calls):
    from upgrader.balancer.server import Admin, Table, _auth_middleware

    async def main() -> None:
        app = web.Application(middlewares=[_auth_middleware("s3cret-admin")])
        app.add_routes(Admin(Table()).routes())
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/admin/state"
        try:
            assert await _status(url) == 401
            assert await _status(url, {"Authorization": "Bearer wrong"}) == 401
            assert await _status(url, {"Authorization": "Bearer s3cret-admin"}) == 200
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert len(compare_calls) == 3
    assert compare_calls[1] == (b"wrong", b"s3cret-admin")     # the token, the scheme apart


def test_balancer_refuses_an_admin_api_beyond_loopback_without_a_token(tmp_path):
    from upgrader.balancer import server

    code = server.main(["--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0",
                        "--token-file", str(tmp_path / "missing")])
    assert code == 2
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(PermissionError):
            asyncio.run(server.serve(listen, sock, "", None))
    finally:
        sock.close()
        listen.close()


def test_ofrep_token_is_compared_in_constant_time(tmp_path, compare_calls):
    from upgrader.flags.ofrep import OfrepServer

    store = str(tmp_path / "flags.sqlite")

    async def main() -> None:
        server = OfrepServer(store, "production", port=0, token="ofrep-t0ken")
        await server.start()
        url = server.url + "/ofrep/v1/configuration"
        try:
            assert await _status(url) == 401
            assert await _status(url, {"X-API-Key": "nope"}) == 401
            assert await _status(url, {"Authorization": "Bearer ofrep-t0ken"}) == 200
        finally:
            await server.aclose()

    asyncio.run(main())
    assert (b"nope", b"ofrep-t0ken") in compare_calls
    assert (b"ofrep-t0ken", b"ofrep-t0ken") in compare_calls


def test_ofrep_refuses_to_serve_beyond_loopback_without_a_token(tmp_path):
    from upgrader.flags.ofrep import OfrepServer

    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(ConfigError):
            OfrepServer(str(tmp_path / "flags.sqlite"), "production", host=host, port=0)


class _Handle:
    """The least a ControlServer serves; the server's auth is what is under test."""

    history: tuple[Any, ...] = ()

    def snapshot(self) -> dict[str, Any]:
        return {"state": "running", "reason": "password=hunter2-secret"}

    def subscribe(self, callback: Any) -> Any:
        return lambda: None


def test_control_api_token_is_compared_in_constant_time(tmp_path, compare_calls):
    from upgrader.control.server import ControlServer

    with pytest.raises(UpgraderError):
        ControlServer(_Handle(), socket_path=tmp_path / "c.sock", token="")

    async def main() -> None:
        server = ControlServer(_Handle(), socket_path=tmp_path / "c.sock", token="ctl-t0ken")
        await server.start()
        url = "http://upgrader/v1/status"
        try:
            def unix() -> aiohttp.UnixConnector:
                return aiohttp.UnixConnector(path=str(tmp_path / "c.sock"))

            assert await _status(url, connector=unix()) == 401
            assert await _status(url, {"Authorization": "Bearer bad"}, connector=unix()) == 401
            async with aiohttp.ClientSession(connector=unix()) as session, \
                    session.get(url, headers={"Authorization": "Bearer ctl-t0ken"}) as r:
                assert r.status == 200
                body = await r.json()
            assert "hunter2" not in str(body)        # the snapshot goes out redacted
        finally:
            await server.aclose()

    asyncio.run(main())
    assert (b"bad", b"ctl-t0ken") in compare_calls
    assert (b"ctl-t0ken", b"ctl-t0ken") in compare_calls


# ------------------------------------------------------------------------------- redaction

def test_redact_urls_headers_and_pairs():
    assert redact.redact_url("postgresql://app:pa55word@db:5432/x") == \
        "postgresql://app:***@db:5432/x"
    text = redact.redact_text("connect postgresql://u:hunter2@h/db failed; "
                              "Authorization: Bearer abcdefghijkl; password=swordfish "
                              "X-API-Key: k3y-value")
    for secret in ("hunter2", "abcdefghijkl", "swordfish", "k3y-value"):
        assert secret not in text
    assert redact.redact_text("the basic requirement") == "the basic requirement"


def test_known_secrets_are_masked_everywhere():
    redact.add_settings_secrets({"token": "tok-1234567", "env": {"DEPLOY_TOKEN": "dt-7654321",
                                                                 "HOME_DIR": "/home/x"},
                                 "admin_url": "http://a:zz-pass-99@h/"})
    masked = redact.redact_data({"error": "got tok-1234567 and dt-7654321 and zz-pass-99",
                                 "list": ["dt-7654321"], "n": 3})
    assert masked == {"error": "got *** and *** and ***", "list": ["***"], "n": 3}
    assert redact.redact_text("/home/x") == "/home/x"


def test_secret_names():
    for name in ("token", "PGPASSWORD", "DEPLOY_TOKEN", "api_key", "client_secret",
                 "Authorization", "private_key"):
        assert redact.is_secret_name(name), name
    for name in ("token_file", "token_env", "PWD", "timeout", "admin_url", "keepalive",
                 "SSH_AUTH_SOCK", "max_parallel"):
        assert not redact.is_secret_name(name), name


def test_settings_shown_are_masked():
    shown = redact.redact_settings({"token": "x" * 10, "timeout": 3, "env": {"API_KEY": "v"}})
    assert shown == {"token": "***", "timeout": 3, "env": {"API_KEY": "***"}}


def test_log_records_are_redacted(caplog):
    import logging

    redact.install_log_redaction()
    redact.add_secret("log-secret-42")
    with caplog.at_level(logging.INFO):
        logging.getLogger("upgrader.test").info("token is %s at %s", "log-secret-42",
                                                "postgresql://u:pw-in-url@h/d")
    assert "log-secret-42" not in caplog.text and "pw-in-url" not in caplog.text
