"""upgrader.tokens: token files (mode check on the bits, so root is held to it too), generated
tokens, and the Authorization header (scheme in any case, token in constant time)."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

import pytest

from upgrader.errors import ConfigError
from upgrader.tokens import (
    bearer_token,
    ensure_generated_token,
    generated_token_path,
    read_token_file,
    token_dir,
    token_matches,
    write_generated_token,
    write_token_file,
)


def token_at(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_private_token_file_is_read_stripped(tmp_path, mode):
    assert read_token_file(token_at(tmp_path / "t", "  s3cret \n", mode)) == "s3cret"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o666])
def test_a_token_file_group_or_others_may_use_is_refused_naming_file_mode_and_fix(tmp_path,
                                                                                  mode):
    path = token_at(tmp_path / "admin.token", "s3cret\n", mode)
    with pytest.raises(ConfigError) as caught:
        read_token_file(path, key="--token-file")
    error = caught.value
    assert error.file == str(path) and error.key == "--token-file"
    assert f"mode {mode:04o}" in str(error)
    assert f"chmod 600 {path}" in str(error)
    assert "s3cret" not in str(error)


@pytest.mark.parametrize("case, expected", [
    ("missing", "token file does not exist"),
    ("empty", "the token file is empty"),
    ("folder", "not a regular file"),
    ("binary", "not UTF-8 text"),
])
def test_bad_token_files_are_config_errors(tmp_path, case, expected):
    path = tmp_path / "t"
    if case == "empty":
        token_at(path, " \n\n", 0o600)
    elif case == "folder":
        path.mkdir(mode=0o700)
    elif case == "binary":
        path.write_bytes(b"\xff\xfe")
        path.chmod(0o600)
    with pytest.raises(ConfigError, match=expected) as caught:
        read_token_file(path, key="token_file")
    assert caught.value.file == str(path) and caught.value.key == "token_file"


def test_write_token_file_is_0600_whatever_the_umask_and_replaces_atomically(tmp_path):
    path = tmp_path / "new" / "t.token"
    old = os.umask(0)
    try:
        write_token_file(path, "first")
        assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
        inode = os.stat(path).st_ino
        write_token_file(path, "second")
    finally:
        os.umask(old)
    assert read_token_file(path) == "second"
    assert os.stat(path).st_ino != inode           # a new file renamed over the old one
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.token"]   # no temp left


def test_generated_tokens_live_in_the_state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert token_dir() == tmp_path / "upgrader" / "tokens"
    assert generated_token_path("balancer", 18001) == \
        tmp_path / "upgrader" / "tokens" / "balancer-18001.token"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")   # the XDG spec: absolute only
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert token_dir() == tmp_path / "home" / ".local" / "state" / "upgrader" / "tokens"


def test_ensure_generated_token_reuses_a_private_one_and_replaces_a_loose_one(tmp_path):
    folder = tmp_path / "tokens"
    path = folder / "balancer-1.token"
    first = ensure_generated_token(path)
    assert len(first) >= 40 and mode_of(path) == 0o600 and mode_of(folder) == 0o700
    assert ensure_generated_token(path) == first            # kept across restarts
    path.chmod(0o644)                                       # someone loosened it
    second = ensure_generated_token(path)
    assert second != first and mode_of(path) == 0o600       # replaced, not just chmod-ed
    token_at(path, "", 0o600)                               # emptied
    assert ensure_generated_token(path) not in ("", second)
    folder.chmod(0o755)                                     # our folder: tightened
    ensure_generated_token(path)
    assert mode_of(folder) == 0o700


def test_a_generated_token_folder_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, 65534, 65534)      # nobody's
    with pytest.raises(ConfigError, match="not a folder of this user"):
        write_generated_token(folder / "ofrep-1.token", "x")


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"),
    ("bearer abc", "abc"),
    ("BEARER abc", "abc"),
    ("bEaReR abc", "abc"),
    ("Bearer   abc  ", "abc"),
    ("  Bearer\tabc", "abc"),
    ("Bearer a.b-c_d~e+f/g==", "a.b-c_d~e+f/g=="),
    ("Basic abc", None),
    ("Bearerabc", None),
    ("Bearer", None),
    ("Bearer ", None),
    ("Bearer abc def", None),
    ("abc", None),
    ("", None),
    (None, None),
])
def test_bearer_token_matches_the_scheme_in_any_case(header, token):
    assert bearer_token(header) == token


def test_token_matches_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert token_matches("s3cret", "s3cret") and token_matches("s3cret", b"s3cret")
    assert not token_matches("S3CRET", "s3cret")      # the token is case-sensitive
    assert not token_matches(None, "s3cret")          # compared all the same (no early out)
    assert not token_matches("", "")                  # an empty expected token never matches
    assert not token_matches("s\udcff", "s3cret")     # undecodable header bytes: no crash
    assert (b"", b"s3cret") in calls and (b"S3CRET", b"s3cret") in calls
