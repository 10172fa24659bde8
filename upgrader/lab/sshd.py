"""Real OpenSSH servers for the SSH lab, its tests and benchmarks: one unprivileged-port
``sshd`` per lab host, on a loopback address of its own, as a child process.

Each :class:`Sshd` owns a directory holding everything it uses::

    sshd_config         generated (see :meth:`Sshd.config_text`)
    host_ed25519_key    its own host key (``.pub`` beside it), made with ssh-keygen
                        (``host_<type>_key`` for another ``host_key_type``)
    authorized_keys     the client keys allowed to log in
    sshd.pid  sshd.log  pid file; the server's log (``-D -e``: foreground, log to stderr)

The server runs in the foreground (``sshd -D -e``) in a session of its own, so stopping it
never signals its caller. Password (unless ``password_authentication``) and
keyboard-interactive logins are off; a client logs in with a key listed in
``authorized_keys`` (as the user running sshd, root included: ``PermitRootLogin
prohibit-password``). ``UsePAM no`` and ``StrictModes no`` let it run from
any directory without touching the machine's PAM or ssh setup. sshd needs its privilege
separation directory ``/run/sshd``; :func:`ensure_privsep_dir` creates it.

The remote shell does not read rc files. sshd runs a command as ``$SHELL -c COMMAND`` with the
user's login shell. ``sh`` (dash) reads nothing for ``-c``, but Debian's bash reads
``~/.bashrc`` when it guesses it was started by sshd and is a top-level shell (``SHLVL`` below
2), and a heavy ``~/.bashrc`` (pyenv, nvm, conda) then costs tens of milliseconds per command,
measuring the remote shell rather than the tool. The generated config sets ``SHLVL=1`` for
sessions (``SetEnv``), so bash starts as a nested shell and skips its rc files; a command
still runs in an ordinary ``-c`` shell.

Everything here is synchronous (``subprocess``, small files): call it through
``asyncio.to_thread`` from an event loop.

Typical use::

    client = make_client_key(tmp / "client")
    with Sshd(tmp / "web-01", address="127.0.0.2", authorized_keys=[client.public]) as sshd:
        Path(tmp / "known_hosts").write_text(sshd.known_hosts_line() + "\\n")
        ...  # ssh -i client.private -p sshd.port root@127.0.0.2
        assert sshd.accepted_connections() == 1
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError

#: where sshd expects its (root-owned) privilege separation directory
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.01
#: sshd's log line for every successful login (one per SSH connection)
ACCEPTED_RE = re.compile(r"^Accepted (publickey|password|keyboard-interactive\S*) for ",
                         re.MULTILINE)


class SshdError(LabError):
    """sshd (or ssh-keygen) could not be found, started or stopped; the message quotes its
    log."""


# --------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An OpenSSH key pair on disk: ``private`` path, ``public`` line (``type base64
    comment``)."""

    private: Path
    public: str

    @property
    def public_path(self) -> Path:
        return self.private.with_name(self.private.name + ".pub")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def _which(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise SshdError(f"{name} is not installed (Debian: apt-get install openssh-server "
                    f"openssh-client)")


def sshd_path() -> str | None:
    """Absolute path of the sshd binary, or None when OpenSSH's server is not installed."""
    try:
        return _which("sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd")
    except SshdError:
        return None


def make_key(path: str | os.PathLike[str], *, comment: str = "upgrader-lab",
             key_type: str = "ed25519", passphrase: str = "") -> KeyPair:
    """Make a new key pair at ``path`` (and ``path.pub``), replacing any there.

    :param passphrase: encrypts the private key (for tests of encrypted keys); the
        passphrase is handed to ssh-keygen as an argument and never logged here.
    """
    keygen = _which("ssh-keygen", "/usr/bin/ssh-keygen")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    result = subprocess.run(
        [keygen, "-q", "-t", key_type, "-N", passphrase, "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SshdError(f"ssh-keygen could not make {path}: {result.stderr.strip()}")
    return KeyPair(private=path, public=path.with_name(path.name + ".pub").read_text().strip())


def make_client_key(path: str | os.PathLike[str], *, comment: str = "upgrader-lab-client",
                    passphrase: str = "") -> KeyPair:
    """A client key pair (ed25519) at ``path``: put ``.public`` in an sshd's
    authorized_keys and hand ``.private`` to the client."""
    return make_key(path, comment=comment, passphrase=passphrase)


def fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (``SHA256:...``, as
    ``ssh-keygen -l`` prints it)."""
    parts = public_key.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key line: {public_key!r}")
    digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_host(address: str, port: int = 22) -> str:
    """How known_hosts names ``address:port``: ``address`` on port 22, else
    ``[address]:port``."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_line(address: str, port: int, public_key: str) -> str:
    """A known_hosts line trusting ``public_key`` (``type base64 [comment]``) for
    ``address:port``."""
    key_type, blob = public_key.split()[:2]
    return f"{known_hosts_host(address, port)} {key_type} {blob}"


def ensure_privsep_dir() -> None:
    """Create sshd's privilege separation directory (``/run/sshd``) when it is missing."""
    if PRIVSEP_DIR.is_dir():
        return
    try:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise SshdError(f"sshd needs {PRIVSEP_DIR} and it cannot be created "
                        f"({exc.strerror}); create it as root: mkdir -p {PRIVSEP_DIR}") from exc


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# processes


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)    # reap it if it is our child and has exited
    except (ChildProcessError, OSError):
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), from ``/proc``."""
    children = _children_map()
    found: list[int] = []
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        left = [p for p in left if _alive(p)]
    return left


# --------------------------------------------------------------------------------------------
# the server


class Sshd:
    """One OpenSSH server on ``address:port`` with its own host key, run as a child process.

    :param directory: holds its config, host key, authorized_keys, pid file and log.
    :param address: a loopback address (127.0.0.0/8 or ::1).
    :param port: an unprivileged port; None picks a free one (again on each failed start).
    :param authorized_keys: public key lines allowed to log in.
    :param max_sessions: sshd's ``MaxSessions``: sessions at once on one connection.
    :param log_level: sshd's ``LogLevel``; ``INFO`` logs every accepted login, ``DEBUG1``
        also every forwarded connection (a ProxyJump through this server).
    :param extra_config: more ``sshd_config`` lines, appended (for most keywords sshd keeps
        the first value it reads, so these add rather than override).
    :param host_key_type: the type of the host key ssh-keygen makes (``ed25519``, ``ecdsa``,
        ``rsa``); change :attr:`host_key_type` and ``restart(new_host_key=True)`` to serve a
        key of another type.
    :param password_authentication: also accept password logins (``PasswordAuthentication
        yes``; with ``UsePAM no`` sshd checks the password in /etc/shadow itself, so sshd must
        run as root). ``PermitRootLogin`` stays ``prohibit-password``.
    """

    def __init__(self, directory: str | os.PathLike[str], *, address: str = "127.0.0.1",
                 port: int | None = None, authorized_keys: Sequence[str] = (),
                 max_sessions: int = 10, log_level: str = "INFO",
                 extra_config: Sequence[str] = (), host_key_type: str = "ed25519",
                 password_authentication: bool = False) -> None:
        self.dir = Path(directory).resolve()
        self.address = address
        self._fixed_port = port
        self.port = port if port is not None else 0
        self.authorized_keys = [line.strip() for line in authorized_keys]
        self.max_sessions = max_sessions
        self.log_level = log_level
        self.extra_config = list(extra_config)
        self.host_key_type = host_key_type
        self.password_authentication = password_authentication
        self._proc: subprocess.Popen[bytes] | None = None

    # paths -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key_path(self) -> Path:
        return self.dir / f"host_{self.host_key_type}_key"

    @property
    def authorized_keys_path(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def pid_file(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    # host key ----------------------------------------------------------------------------

    @property
    def host_public_key(self) -> str:
        """The server's host public key line (made on first start)."""
        return self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text().strip()

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint(self.host_public_key)

    def known_hosts_line(self, name: str | None = None) -> str:
        """The known_hosts line trusting this server as ``name`` (default its address)."""
        return known_hosts_line(name or self.address, self.port, self.host_public_key)

    def new_host_key(self) -> str:
        """Replace the host key (takes effect on the next start); return the new public
        line."""
        return make_key(self.host_key_path, comment=f"upgrader-lab-host-{self.address}",
                        key_type=self.host_key_type).public

    # config ------------------------------------------------------------------------------

    def config_text(self) -> str:
        listen = f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"
        lines = [
            f"ListenAddress {listen}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if self.password_authentication else 'no'}",
            "KbdInteractiveAuthentication no",
            "PermitUserEnvironment no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",       # ProxyJump through this host
            f"LogLevel {self.log_level}",
            f"MaxSessions {self.max_sessions}",
            "MaxStartups 200:30:400",       # a benchmark opens many connections at once
            "Subsystem sftp internal-sftp",
            # bash skips ~/.bashrc when it is not a top-level shell: see the module docstring
            "SetEnv SHLVL=1",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key_path.exists():
            self.new_host_key()
        self.authorized_keys_path.write_text(
            "".join(line + "\n" for line in self.authorized_keys))
        os.chmod(self.authorized_keys_path, 0o600)
        self.config_path.write_text(self.config_text())

    def add_authorized_key(self, public_key: str) -> None:
        """Allow one more client key (effective at once: sshd reads the file per login)."""
        self.authorized_keys.append(public_key.strip())
        if self.dir.exists():
            self.authorized_keys_path.write_text(
                "".join(line + "\n" for line in self.authorized_keys))

    # lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> Sshd:
        """Start the server; return once it listens. Raises :class:`SshdError` with the tail
        of its log when it does not."""
        if self.running:
            return self
        binary = sshd_path()
        if binary is None:
            raise SshdError("sshd is not installed (Debian: apt-get install openssh-server)")
        ensure_privsep_dir()
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            if self._fixed_port is None:
                self.port = free_port(self.address)
            self._write_files()
            try:
                self._spawn(binary, timeout)
                return self
            except SshdError:
                if attempt + 1 == attempts or "Address already in use" not in self.log_tail():
                    raise
        return self  # pragma: no cover - the loop returns or raises

    def _spawn(self, binary: str, timeout: float) -> None:
        self.pid_file.unlink(missing_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        needle = "Server listening on "
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if needle in self._log_since(offset):     # logged once it listens
                return
            time.sleep(POLL_INTERVAL)
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise SshdError(f"sshd on {self.address}:{self.port} did not start "
                        f"(exit status {proc.returncode}): {self.log_tail()}")

    def connection_pids(self) -> list[int]:
        """Processes serving connections (and the commands they run), from ``/proc``."""
        return descendants(self._proc.pid) if self.running and self._proc else []

    def drop_connections(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> None:
        """Kill every process serving a connection (and the commands they run); the server
        keeps listening. Clients see their connections drop."""
        pids = self.connection_pids()
        _signal_all(pids, sig)
        _wait_gone(pids, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop listening and end every connection this server serves (SIGTERM, then SIGKILL
        after ``timeout``)."""
        proc = self._proc
        if proc is None:
            return
        pids = [proc.pid, *descendants(proc.pid)]
        _signal_all(pids, signal.SIGTERM)
        left = _wait_gone(pids, timeout)
        if left:
            _signal_all(left, signal.SIGKILL)
            _wait_gone(left, timeout)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server and its connections at once (a crash, for fault tests)."""
        proc = self._proc
        if proc is None:
            return
        pids = [proc.pid, *descendants(proc.pid)]
        _signal_all(pids, signal.SIGKILL)
        _wait_gone(pids, STOP_TIMEOUT)
        proc.wait()
        self._proc = None

    def restart(self, *, new_host_key: bool = False, timeout: float = START_TIMEOUT) -> Sshd:
        """Stop and start again on the same address and port; ``new_host_key`` replaces the
        host key first (a reinstalled host, or a man in the middle)."""
        self.stop()
        if new_host_key:
            self.new_host_key()
        if self._fixed_port is None and self.port:
            self._fixed_port = self.port
            try:
                return self.start(timeout)
            finally:
                self._fixed_port = None
        return self.start(timeout)

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # log ---------------------------------------------------------------------------------

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        return self._log_since(0)

    def log_tail(self, lines: int = 20) -> str:
        kept = [line for line in self.log_text().splitlines() if line.strip()]
        return "\n".join(kept[-lines:]) or "(empty log)"

    def accepted_connections(self) -> int:
        """Logins accepted since the log began (each SSH connection logs in once)."""
        return len(ACCEPTED_RE.findall(self.log_text()))
