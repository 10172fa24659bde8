"""The checked-TOML toolkit (upgrader.tomlsource): each getter's happy path, its error naming
file, key path and line, did-you-mean for unknown keys, and garbage in -> only ConfigError."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader.errors import ConfigError
from upgrader.tomlsource import (
    REQUIRED,
    Checker,
    Locator,
    line_in_file,
    parse_toml,
    read_text,
    unknown_key_message,
)

TEXT = """\
[server]
name = "web"
port = 8080
debug = true
timeout = "30s"
share = "25%"
mode = "fast"
tags = ["a", "b"]

[server.limits]
max = 3
"""


@pytest.fixture
def checker() -> Checker:
    return Checker("conf.toml", TEXT)


@pytest.fixture
def server() -> dict[str, Any]:
    return parse_toml(TEXT)["server"]


def test_getters_happy_path(checker: Checker, server: dict[str, Any]) -> None:
    path = ("server",)
    assert checker.string(server, path, "name") == "web"
    assert checker.integer(server, path, "port", minimum=1) == 8080
    assert checker.port(server, path, "port") == 8080
    assert checker.boolean(server, path, "debug") is True
    assert checker.duration(server, path, "timeout") == 30.0
    assert checker.percentage(server, path, "share") == 25.0
    assert checker.choice(server, path, "mode", ("fast", "slow")) == "fast"
    assert checker.array(server, path, "tags") == ["a", "b"]
    assert checker.subtable(server, path, "limits", ("max",)) == {"max": 3}
    assert checker.string(server, path, "absent", None) is None
    assert checker.integer(server, path, "absent", 7) == 7


@pytest.mark.parametrize("method,key,args,words,line", [
    ("string", "port", (), "expected a string, got an integer (8080)", 3),
    ("integer", "name", (), "expected an integer, got a string ('web')", 2),
    ("integer", "port", (), "expected an integer between 1 and 10, got 8080", 3),
    ("port", "debug", (), "expected an integer, got a boolean (true)", 4),
    ("boolean", "name", (), "expected true or false", 2),
    ("duration", "name", (), "duration", 2),
    ("percentage", "mode", (), "percentage", 7),
    ("choice", "mode", (("slow", "safe"),), "expected one of slow, safe; got 'fast'", 7),
    ("array", "name", (), "expected an array", 2),
])
def test_getter_errors_name_file_key_and_line(checker: Checker, server: dict[str, Any],
                                              method: str, key: str, args: tuple[Any, ...],
                                              words: str, line: int) -> None:
    kwargs = {"minimum": 1, "maximum": 10} if (method, key) == ("integer", "port") else {}
    with pytest.raises(ConfigError) as info:
        getattr(checker, method)(server, ("server",), key, *args, **kwargs)
    error = info.value
    assert error.file == "conf.toml"
    assert error.key == f"server.{key}"
    assert error.line == line
    assert words in error.message


def test_missing_required_key_and_table(checker: Checker, server: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="missing required key 'host'") as info:
        checker.string(server, ("server",), "host", REQUIRED)
    assert info.value.key == "server.host" and info.value.line == 1
    with pytest.raises(ConfigError, match=r"missing required table \[client\]"):
        checker.get({}, (), "client")


def test_unknown_key_has_did_you_mean(checker: Checker, server: dict[str, Any]) -> None:
    allowed = ("name", "port", "debug", "timeout", "share", "mode", "tag", "limits")
    with pytest.raises(ConfigError) as info:
        checker.table(server, ("server",), allowed, "[server]")
    error = info.value
    assert error.key == "server.tags" and error.line == 8
    assert "unknown key 'tags' in [server] (did you mean 'tag'?)" in error.message
    assert "allowed keys: name, port" in error.message
    assert unknown_key_message("x", ()) == "unknown key 'x'; allowed keys: (none)"


def test_under_scopes_paths_and_keeps_lines(checker: Checker, server: dict[str, Any]) -> None:
    limits = checker.under("server", "limits")
    with pytest.raises(ConfigError) as info:
        limits.integer(server["limits"], (), "max", maximum=2)
    assert info.value.key == "server.limits.max" and info.value.line == 11
    assert "at most 2" in info.value.message


def test_plain_data_has_no_line() -> None:
    with pytest.raises(ConfigError) as info:
        Checker("store", None).boolean({"on": "yes"}, ("flags",), "on")
    assert info.value.line is None and info.value.key == "flags.on"


def test_string_pattern_words() -> None:
    with pytest.raises(ConfigError, match=r"'a b' is not a valid name \(allowed: letters\)"):
        Checker("f", 'n = "a b"').string({"n": "a b"}, (), "n", pattern=re.compile("[a-z]+"),
                                         what="name", words="letters")


def test_read_and_parse_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such thing file"):
        read_text(tmp_path / "nope.toml", "thing file")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"a = 1\nb = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        read_text(bad, "thing file")
    assert info.value.line == 2
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        parse_toml("a = 1\nb = \n", "x.toml")
    assert info.value.line == 2 and info.value.file == "x.toml"


def test_locator_and_line_in_file(tmp_path: Path) -> None:
    assert Locator(TEXT).line_of(("server", "limits", "max")) == 11
    file = tmp_path / "c.toml"
    file.write_text(TEXT)
    assert line_in_file(file, ("server", "mode")) == 7
    assert line_in_file(None, ("server",)) is None
    assert line_in_file(tmp_path / "missing.toml", ("server",)) is None


GARBAGE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.dates() | st.datetimes() | st.times(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)

GETTERS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("string", (), {}), ("string", (), {"pattern": re.compile("[a-z]+")}),
    ("integer", (), {"minimum": 0, "maximum": 5}), ("port", (), {}), ("boolean", (), {}),
    ("duration", (), {"positive": True}), ("percentage", (), {"allow_zero": False}),
    ("choice", (("a", "b"),), {}), ("array", (), {"non_empty": True}),
]


@settings(max_examples=300, deadline=None)
@given(value=GARBAGE, getter=st.sampled_from(GETTERS))
def test_getters_raise_only_config_error_on_garbage(
        value: Any, getter: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
    name, args, kwargs = getter
    checker = Checker("g.toml", "[t]\nk = 1\n")
    try:
        getattr(checker, name)({"k": value}, ("t",), "k", *args, **kwargs)
    except ConfigError as exc:
        assert exc.key == "t.k" and exc.line == 2 and exc.file == "g.toml"
    try:
        checker.table(value, ("t",), ("k",), "[t]")
    except ConfigError as exc:
        assert exc.key is not None and exc.key.startswith("t")
