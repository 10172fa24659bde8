"""Host key policy of the ssh transport: known_hosts files, trust on first use, and the
error texts of a refused key.

The files are parsed once and parsed again only when one of them changes (size or mtime), so
a fleet of hundreds of hosts does not re-read known_hosts per connection. asyncssh matches a
server's key against the parsed set; a key it does not trust reaches
:meth:`HostKeyPolicy.consider` (through ``SSHClient.validate_host_public_key``), which says
whether the key is *unknown* (no entry for the host: trusted only with
``trust_on_first_use``) or *changed* (the host has entries, none of them this key: always
refused), and remembers the offered key for the error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # asyncssh imports cryptography's DSA support, which newer cryptography releases mark as
    # deprecated (a CryptographyDeprecationWarning on import). The operator can do nothing about
    # it: it must not reach stderr, where scripts and tests read "upgrader: error: ..." as the
    # first line. (The first import of asyncssh is the one that warns: both modules that use
    # it import it so.)
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh


def known_hosts_host(host: str, port: int | None) -> str:
    """The name known_hosts uses: ``host`` on port 22, else ``[host]:port``."""
    return host if port in (None, 22) else f"[{host}]:{port}"


def hashed_host(name: str, salt: bytes | None = None) -> str:
    """``name`` as a hashed known_hosts host field, as OpenSSH writes it with
    ``HashKnownHosts yes``: ``|1|base64(salt)|base64(HMAC-SHA1(salt, name))``, a random
    20-byte salt unless one is given."""
    salt = os.urandom(20) if salt is None else salt
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@dataclass(frozen=True, slots=True)
class KnownEntry:
    """A known_hosts line that trusts a key for a host: where it is and its key type."""

    path: str
    line: int
    algorithm: str

    def __str__(self) -> str:
        return f"{self.algorithm} at {self.path}:{self.line}"


def key_text(key: asyncssh.SSHKey) -> tuple[str, str]:
    """(algorithm, SHA256 fingerprint) of a public key."""
    return key.get_algorithm(), key.get_fingerprint("sha256")


@dataclass(frozen=True, slots=True)
class OfferedKey:
    """A host key a server offered that asyncssh did not trust."""

    host: str                       # the name it was checked under (HostName or alias)
    port: int | None
    key: asyncssh.SSHKey
    known: tuple[asyncssh.SSHKey, ...]   # keys known_hosts trusts for this host (changed key)
    recorded: bool = False          # accepted on first use; record it once logged in

    @property
    def changed(self) -> bool:
        return bool(self.known)


class HostKeyPolicy:
    """Trusted host keys from ``paths`` (the first one receives trust-on-first-use records).

    Thread-safe: parsing happens in worker threads (``asyncio.to_thread``)."""

    def __init__(self, paths: Sequence[str], *, global_paths: Sequence[str] = (),
                 trust_on_first_use: bool = False) -> None:
        #: the user's files (the first receives trust-on-first-use records)
        self.paths = [str(Path(p).expanduser()) for p in paths]
        #: the system-wide files, read after the user's
        self.global_paths = [str(Path(p).expanduser()) for p in global_paths
                             if str(Path(p).expanduser()) not in self.paths]
        self.trust_on_first_use = trust_on_first_use
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int] | None, ...] | None = None
        self._parsed: asyncssh.SSHKnownHosts | None = None

    @property
    def record_path(self) -> str:
        return self.paths[0]

    @property
    def all_paths(self) -> list[str]:
        """Every file read, the user's first."""
        return self.paths + self.global_paths

    def _stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self.all_paths:
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                stamps.append(None)
        return tuple(stamps)

    def current(self) -> asyncssh.SSHKnownHosts:
        """The parsed files (blocking: call through ``asyncio.to_thread``). A missing file
        trusts nothing; an unreadable or malformed one raises ``ValueError`` naming it."""
        with self._lock:
            stamp = self._stamps()
            if self._parsed is not None and stamp == self._stamp:
                return self._parsed
            text = []
            for path, st in zip(self.all_paths, stamp):
                if st is None:
                    continue
                try:
                    with open(path, encoding="utf-8", errors="replace") as fh:
                        text.append(fh.read())
                except OSError as exc:
                    if path in self.global_paths:   # as ssh: an unreadable system file
                        continue                    # trusts nothing
                    raise ValueError(f"cannot read known_hosts file {path}: "
                                     f"{exc.strerror or exc}") from exc
            joined = "\n".join(text)
            try:
                parsed = asyncssh.import_known_hosts(joined)
            except (ValueError, asyncssh.KeyImportError) as exc:
                raise ValueError(f"malformed known_hosts ({', '.join(self.all_paths)}): "
                                 f"{exc}") from exc
            self._parsed, self._stamp = parsed, stamp
            return parsed

    def known_keys(self, host: str, addr: str | None,
                   port: int | None) -> tuple[asyncssh.SSHKey, ...]:
        """Keys (and CA keys) trusted for ``host`` / ``addr`` on ``port``."""
        matched = asyncssh.match_known_hosts(self.current(), host, addr or "",
                                             None if port in (None, 22) else port)
        trusted, cas = matched[0], matched[1]
        return tuple(trusted) + tuple(cas)

    def consider(self, host: str, addr: str | None, port: int | None,
                 key: asyncssh.SSHKey) -> OfferedKey:
        """A key asyncssh does not trust: is it unknown (acceptable on first use) or changed
        (never acceptable)?"""
        known = self.known_keys(host, addr, port)
        return OfferedKey(host=host, port=port, key=key, known=known,
                          recorded=self.trust_on_first_use and not known)

    def entries(self, host: str, addr: str | None, port: int | None) -> list[KnownEntry]:
        """The lines of the files that trust a key for ``host`` / ``addr`` on ``port``, hashed
        lines included (blocking; for error messages: each line is parsed on its own)."""
        found: list[KnownEntry] = []
        for path in self.all_paths:
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    lines = fh.read().splitlines()
            except OSError:
                continue
            for number, text in enumerate(lines, 1):
                if not text.strip() or text.lstrip().startswith("#"):
                    continue
                try:
                    matched = asyncssh.match_known_hosts(
                        asyncssh.import_known_hosts(text + "\n"), host, addr or "",
                        None if port in (None, 22) else port)
                except (ValueError, asyncssh.KeyImportError):
                    continue
                for key in (*matched[0], *matched[1]):
                    found.append(KnownEntry(path, number, key.get_algorithm()))
        return found

    def record(self, offered: OfferedKey, *, hashed: bool = False) -> None:
        """Append ``offered``'s key for its host to the first known_hosts file (blocking);
        ``hashed``: the host as OpenSSH's ``HashKnownHosts yes`` writes it."""
        algorithm = offered.key.get_algorithm()
        blob = offered.key.export_public_key("openssh").split()[1].decode()
        name = known_hosts_host(offered.host, offered.port)
        line = f"{hashed_host(name) if hashed else name} {algorithm} {blob}\n"
        path = Path(self.record_path)
        with self._lock:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                with open(fd, "a", encoding="utf-8", closefd=False) as fh:
                    # a file that does not end with a newline must not glue two entries
                    if os.fstat(fd).st_size and not _ends_with_newline(path):
                        fh.write("\n")
                    fh.write(line)
                    fh.flush()
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._stamp = None   # parse again on next use

    # messages ----------------------------------------------------------------------------

    def type_changed(self, label: str, host: str, port: int | None,
                     entries: Sequence[KnownEntry], key: asyncssh.SSHKey) -> str:
        """The server offers a key of a type known_hosts has no entry of for it (asyncssh
        offers the server only the known types, and the server gives up): say so as OpenSSH
        does, with where the old entries are and the new key's fingerprint."""
        algorithm, fp = key_text(key)
        name = known_hosts_host(host, port)
        known = ", ".join(str(e) for e in entries)
        files = sorted({e.path for e in entries})
        remove = "; ".join(f"ssh-keygen -R '{name}' -f {f}" for f in files)
        return (f"host key of {label} CHANGED (host key changed): known_hosts has {known}, "
                f"server now offers {algorithm} {fp}. Someone may be intercepting the "
                f"connection, or the host was reinstalled; if expected: {remove}, then add "
                f"the new key")

    def refusal(self, offered: OfferedKey | None, label: str, reason: str) -> str:
        """Why a host key was refused, for a TransportError: names the host and the offered
        key's SHA256 fingerprint, and says what to do."""
        files = ", ".join(self.paths + [p for p in self.global_paths if os.path.exists(p)])
        if offered is None:
            return (f"host key of {label} could not be verified against {files}: {reason}")
        algorithm, fp = key_text(offered.key)
        name = known_hosts_host(offered.host, offered.port)
        if offered.changed:
            known = ", ".join(f"{k.get_algorithm()} {k.get_fingerprint('sha256')}"
                              for k in offered.known)
            return (f"host key of {label} CHANGED: the server offered {algorithm} {fp}, but "
                    f"{files} trusts {known} for {name}. Someone may be intercepting the "
                    f"connection, or the host was reinstalled; if you can confirm the new key "
                    f"out of band, remove the old entry (ssh-keygen -R '{name}' -f "
                    f"{self.record_path}) and add the new one")
        return (f"host key of {label} is unknown: the server offered {algorithm} {fp} and "
                f"{files} has no entry for {name}. Confirm the fingerprint out of band, then "
                f"add it (ssh-keyscan{'' if offered.port in (None, 22) else f' -p {offered.port}'}"
                f" {offered.host} >> {self.record_path}), or set "
                f"trust_on_first_use = true in the fleet's [transport]")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
