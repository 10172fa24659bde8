"""Redaction masks secrets, not the words of a sentence (issue 13, point 2).

Before: ``transport.password: *** key 'password'`` ("unknown" masked) and ``no token: ***
local client may read the flags`` ("every" masked).
"""

from __future__ import annotations

import logging

import pytest

from upgrader import redact
from upgrader.config import loads_fleet
from upgrader.errors import ConfigError
from upgrader.plugins import Plugins

FLEET = """\
[fleet]
name = "shop"
[release]
current = "1.0"
target = "1.1"
[commands]
install = ["true"]
start = ["true"]
stop = ["true"]
[transport]
kind = "local"
password = "{password}"
[balancer]
kind = "noop"
[health]
kind = "noop"
[[hosts]]
name = "web-01"
"""


def test_an_unknown_password_setting_keeps_the_word_unknown():
    """The real error of a fleet with a ``password`` setting the local transport does not
    know, as the CLI prints it: the message's own words survive."""
    with pytest.raises(ConfigError) as caught:
        loads_fleet(FLEET.format(password="hunter2-xyz"), registry=Plugins())
    shown = redact.redact_text(str(caught.value))
    assert "transport.password: unknown key 'password'" in shown
    assert "hunter2-xyz" not in shown


def test_flags_serve_without_a_token_says_every_local_client(caplog):
    """The warning `upgrader flags serve` logs without a token, through the log record
    factory every upgrader process installs."""
    redact.install_log_redaction()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("upgrader.flags.ofrep").warning(
            "no token: every local client may read the flags")
    assert "no token: every local client may read the flags" in caplog.text


@pytest.mark.parametrize("text, expected", [
    ("password: hunter2", "password: ***"),                  # a value, not a sentence
    ("password: letmein", "password: ***"),                  # a word, but nothing follows
    ("token: letmein, then", "token: ***, then"),
    ("password: 's3cr3t' rejected", "password: *** rejected"),  # quoted: a value
    ("password=unknown key", "password=*** key"),            # '=' is an assignment
    ("token:abcdef rejected", "token:*** rejected"),         # no space: a value
    ("api_key: Xy9-secret rejected", "api_key: *** rejected"),   # not a plain word
    ("secret: Every local client", "secret: Every local client"),
    ("no password: the store is local", "no password: the store is local"),
])
def test_key_value_scan(text, expected):
    assert redact.redact_text(text) == expected


def test_passphrase_is_a_secret_name_and_its_pointers_are_not():
    for name in ("passphrase", "key_passphrase", "SSH_PASSPHRASE"):
        assert redact.is_secret_name(name), name
    for name in ("passphrase_env", "passphrase_file", "key_passphrase_env"):
        assert not redact.is_secret_name(name), name
    assert redact.redact_text("passphrase=correct-horse") == "passphrase=***"


def test_the_secret_a_passphrase_env_setting_points_at_is_masked(monkeypatch):
    """The ssh plugin's ``passphrase_env`` names a variable; its value is the secret."""
    monkeypatch.setenv("UPG_TEST_KEY_PASSPHRASE_VALUE", "correct-horse-battery")
    redact.add_settings_secrets({"passphrase_env": "UPG_TEST_KEY_PASSPHRASE_VALUE"})
    try:
        assert redact.redact_text("key unlocked with correct-horse-battery") == \
            "key unlocked with ***"
        assert redact.redact_settings({"passphrase_env": "UPG_TEST_KEY_PASSPHRASE_VALUE"}) == \
            {"passphrase_env": "UPG_TEST_KEY_PASSPHRASE_VALUE"}
    finally:
        redact.forget_secrets()


def test_a_string_redacted_before_a_secret_was_registered_is_masked_after():
    """Short strings' redaction is cached (a big fleet's events repeat them): the cache must
    never serve a result from before a secret was added, nor keep one after it is forgotten."""
    text = "install failed: deploy --token s3cr3t-value-42 on web-01"
    try:
        assert redact.redact_text(text) == text          # cached with no secret known
        redact.add_secret("s3cr3t-value-42")
        assert "s3cr3t-value-42" not in redact.redact_text(text)
        assert redact.redact_text(text) == "install failed: deploy --token *** on web-01"
        redact.forget_secrets()
        assert redact.redact_text(text) == text
        long_text = text + " " + "x" * 300                # past the cached length
        redact.add_secret("s3cr3t-value-42")
        assert "s3cr3t-value-42" not in redact.redact_text(long_text)
    finally:
        redact.forget_secrets()
