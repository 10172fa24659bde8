"""Bearer tokens of upgrader's servers (balancer admin API, OFREP, control API): token files
read with a mode check, generated token files (0600 in a 0700 folder), and the
``Authorization`` header, its scheme matched case-insensitively and its token in constant time.

    token = read_token_file(path)                 # ConfigError: missing, empty, mode 0644
    path = generated_token_path("balancer", 18001)   # <state>/upgrader/tokens/balancer-18001.token
    token = ensure_generated_token(path)          # reuse ours if private, else a fresh one
    token_matches(bearer_token(header), expected) # "bearer T", "Bearer  T": the scheme is
                                                  # case-insensitive (RFC 9110 section 11.1)
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from .errors import ConfigError

#: the mode bits a token file must not have: readable, writable or usable by group or others
LOOSE_BITS = 0o077
TOKEN_BYTES = 32
# auth-scheme SP token68 (RFC 9110 section 11.4); spaces or tabs around and between
_AUTHORIZATION = re.compile(r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+(\S+)[ \t]*")


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe base64)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token_file(path: str | Path, *, key: str | None = None) -> str:
    """The token in ``path``, stripped. ``ConfigError`` naming the file (and ``key``, the
    option or setting that named it) when it is missing, unreadable, not a regular file,
    empty, or readable by group or others: the check is on the mode bits, so it holds for
    root too."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError("token file does not exist", file=path, key=key) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}", file=path,
                          key=key) from None
    try:
        st = os.fstat(fd)       # the file we read, not whatever the name points at later
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("the token file is not a regular file", file=path, key=key)
        mode = stat.S_IMODE(st.st_mode)
        if mode & LOOSE_BITS:
            raise ConfigError(
                f"the token file has mode {mode:04o}: group or others may read it; refusing "
                f"to use it (fix: chmod 600 {path})", file=path, key=key)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}", file=path,
                          key=key) from None
    finally:
        os.close(fd)
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError("the token file is not UTF-8 text", file=path, key=key) from None
    if not token:
        raise ConfigError("the token file is empty", file=path, key=key)
    return token


def write_token_file(path: str | Path, token: str) -> None:
    """Write ``token`` to ``path``, 0600, replaced atomically (a reader sees the old token or
    the new one, never a part); a missing folder is created 0700."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)        # whatever the umask
            os.write(fd, (token + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def token_dir() -> Path:
    """Where generated tokens live: ``$XDG_STATE_HOME/upgrader/tokens``, else
    ``~/.local/state/upgrader/tokens``. Not created here."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path("~/.local/state").expanduser()
    return root / "upgrader" / "tokens"


def generated_token_path(server: str, port: int) -> Path:
    """The generated token of ``server`` (``balancer``, ``ofrep``) listening on ``port``:
    one path per server and port, so a client on the same machine finds it."""
    return token_dir() / f"{server}-{int(port)}.token"


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700, or tighten it to 0700 when it is ours; refuse another user's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError("not a folder of this user: refusing to keep tokens in it",
                          file=path)
    if stat.S_IMODE(st.st_mode) & LOOSE_BITS:
        os.chmod(path, 0o700)


def ensure_generated_token(path: str | Path) -> str:
    """The token in ``path``, an upgrader-generated token file: reused when it is a private
    (0600) regular file of this user, otherwise replaced by a fresh one, which also fixes a
    file whose mode was loosened (its old token may have been read: it is not kept)."""
    path = Path(path)
    _private_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if (st is not None and stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()
            and not stat.S_IMODE(st.st_mode) & LOOSE_BITS):
        try:
            return read_token_file(path)
        except ConfigError:
            pass                        # empty or unreadable: write a fresh one
    token = new_token()
    write_token_file(path, token)
    return token


def write_generated_token(path: str | Path, token: str) -> None:
    """Write a generated ``token`` to ``path`` (its folder created or tightened to 0700)."""
    path = Path(path)
    _private_dir(path.parent)
    write_token_file(path, token)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None. The scheme is
    case-insensitive (``bearer``, ``BEARER``; RFC 9110 section 11.1, RFC 6750 section 2.1)."""
    if not header:
        return None
    match = _AUTHORIZATION.fullmatch(header)
    if match is None or match.group(1).lower() != "bearer":
        return None
    return match.group(2)


def token_matches(given: str | None, expected: str | bytes) -> bool:
    """``given == expected``, compared in constant time (a missing token never matches)."""
    want = expected.encode("utf-8") if isinstance(expected, str) else expected
    if not want:
        return False
    have = (given or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(have, want) and given is not None
