"""Secret host vars (issue 13): which vars are secret, the reference forms of the fleet file
(``{ env = "NAME" }``, ``{ file = "PATH" }``, ``{ value = "...", secret = true }``), their
errors (file, key path, line; exit 2) and their registration for redaction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from upgrader import redact
from upgrader.config import loads_fleet
from upgrader.errors import ConfigError
from upgrader.model import Host

ROOT = Path(__file__).resolve().parents[2]

FLEET = """\
[fleet]
name = "shop"
[release]
current = "1.0"
target = "1.1"
[commands]
install = ["deploy", "{{release}}"]
start = ["true"]
stop = ["true"]
[balancer]
kind = "noop"
[health]
kind = "noop"
[defaults]
vars = {defaults}
[[hosts]]
name = "web-01"
{host_vars}
[[hosts]]
name = "web-02"
[strategy]
kind = "rolling"
"""


def load(defaults: str = "{}", host_vars: str = "", tmp_path: Path | None = None):
    text = FLEET.format(defaults=defaults, host_vars=host_vars)
    return loads_fleet(text, source=(tmp_path / "fleet.toml") if tmp_path else "fleet.toml",
                       base_dir=tmp_path)


@pytest.fixture(autouse=True)
def _clean_secrets():
    redact.forget_secrets()
    yield
    redact.forget_secrets()


def test_secret_named_vars_are_secret(monkeypatch):
    fleet = load('{ api_token = "t-1234567", db_password = "p-7654321", root = "/srv" }')
    for host in fleet.hosts:
        assert host.secret_vars == {"api_token", "db_password"}
        assert host.vars["api_token"] == "t-1234567"


def test_references_resolve_at_load_and_are_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOP_DEPLOY_CRED", "env-value-1")
    (tmp_path / "cred.txt").write_text("file-value-2\n")
    fleet = load('{ deploy = { env = "SHOP_DEPLOY_CRED" }, db = { file = "cred.txt" }, '
                 'note = { value = "marked-3", secret = true }, '
                 'plain = { value = "plain-4" }, chan = { env = "SHOP_DEPLOY_CRED", '
                 'secret = false } }', tmp_path=tmp_path)
    host = fleet.hosts[0]
    assert dict(host.vars) == {"deploy": "env-value-1", "db": "file-value-2",
                               "note": "marked-3", "plain": "plain-4", "chan": "env-value-1"}
    assert host.secret_vars == {"deploy", "db", "note"}


def test_a_hosts_own_plain_value_overrides_a_secret_default():
    fleet = load('{ note = { value = "default-secret", secret = true } }',
                 host_vars='vars = { note = "public-note" }')
    web1, web2 = fleet.hosts
    assert web1.vars["note"] == "public-note" and "note" not in web1.secret_vars
    assert web2.vars["note"] == "default-secret" and "note" in web2.secret_vars


def test_a_hosts_own_secret_is_secret_on_that_host():
    fleet = load(host_vars='vars = { note = { value = "own-secret", secret = true } }')
    assert fleet.hosts[0].secret_vars == {"note"}
    assert fleet.hosts[1].secret_vars == frozenset()


@pytest.mark.parametrize("vars_text, key, message", [
    ('{ deploy = { env = "SHOP_UNSET_VARIABLE_X" } }', "defaults.vars.deploy.env",
     "environment variable SHOP_UNSET_VARIABLE_X is not set"),
    ('{ deploy = { file = "missing.txt" } }', "defaults.vars.deploy.file", "cannot read"),
    ('{ deploy = { env = "A", file = "b" } }', "defaults.vars.deploy", "exactly one of"),
    ('{ deploy = { secret = true } }', "defaults.vars.deploy", "exactly one of"),
    ('{ deploy = { env = "A", secrets = true } }', "defaults.vars.deploy.secrets",
     "unknown key 'secrets'"),
    ('{ deploy = { value = "x", secret = "yes" } }', "defaults.vars.deploy.secret", ""),
    ('{ deploy = { env = "NOT A NAME" } }', "defaults.vars.deploy.env",
     "is not an environment variable name"),
    ('{ deploy = { value = 314159 } }', "defaults.vars.deploy.value",
     "expected a string, got an integer"),
    ('{ db_password = 314159 }', "defaults.vars.db_password",
     "expected a string or a var table, got an integer"),
])
def test_bad_references_name_the_file_key_and_line(vars_text, key, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(vars_text, tmp_path=tmp_path)
    error = caught.value
    assert error.key == key and error.line == 15 and error.file.endswith("fleet.toml")
    assert message in error.message
    assert "314159" not in str(error)           # a value (maybe a secret) is never shown


def test_a_secret_file_with_two_lines_or_nothing_is_refused_without_showing_it(tmp_path):
    (tmp_path / "two.txt").write_text("line-one-Qx7\nline-two-Qx7\n")
    with pytest.raises(ConfigError, match="has a line break") as caught:
        load('{ deploy = { file = "two.txt" } }', tmp_path=tmp_path)
    assert "Qx7" not in str(caught.value)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load('{ deploy = { file = "empty.txt" } }', tmp_path=tmp_path)


def test_an_empty_environment_variable_is_refused(monkeypatch):
    monkeypatch.setenv("SHOP_EMPTY_CRED", "")
    with pytest.raises(ConfigError, match="SHOP_EMPTY_CRED is empty"):
        load('{ deploy = { env = "SHOP_EMPTY_CRED" } }')


def test_the_cli_exits_2_on_a_missing_secret_and_changes_nothing(tmp_path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(defaults='{ deploy = { env = "SHOP_UNSET_VARIABLE_Y" } }',
                                  host_vars=""))
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "upgrader.cli", "run", str(fleet),
                           "--headless", "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert f"{fleet}:15: defaults.vars.deploy.env: environment variable " \
           "SHOP_UNSET_VARIABLE_Y is not set" in done.stderr
    assert not state.exists()


def test_host_secrets_are_registered_and_masked():
    hosts = [Host("web-01", vars={"api_token": "tok-abcdef1", "root": "/srv/app",
                                  "pin": "4711", "note": "marked-value",
                                  "dsn_url": "postgresql://app:url-pw-99@db/x"},
                  secret_vars=frozenset({"note", "pin"}))]
    redact.add_host_secrets(hosts)
    text = ("deploy --token tok-abcdef1 --pin=4711 --note marked-value root /srv/app "
            "to postgresql://app:url-pw-99@db/x id 47110")
    assert redact.redact_text(text) == ("deploy --token *** --pin=*** --note *** root /srv/app "
                                        "to postgresql://app:***@db/x id 47110")


def test_short_values_of_undeclared_secrets_are_not_registered():
    redact.add_secret("abc12")
    assert redact.redact_text("abc12") == "abc12"
    redact.add_secret("abc12", declared=True)
    assert redact.redact_text("x abc12 xabc12") == "x *** xabc12"
