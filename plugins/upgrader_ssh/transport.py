"""The ``ssh`` transport: host commands over SSH with asyncssh.

One connection per host, opened on first use (a lock per host: concurrent first commands open
one connection) and reused for every later command as a new session (channel) on it. A
connection found dropped is opened again, once per command. Sessions are pty-less; a command
is an argument list, quoted with ``shlex.join`` for the remote login shell. By default
(``host_lock``) it runs under a small POSIX-sh wrapper (:data:`WRAPPER`, :data:`KEEPER`):
in a process group of its own, holding the host's lock file (``flock``) for its whole life,
and killed (TERM, then KILL after ``kill_grace``) as soon as its channel closes, so that no
command outlives its controller and a resumed controller waits for the lock rather than
running a second command beside a surviving one. See docs/SSH.md for the settings, the host
key policy, the wrapper and what a timeout does to the remote process.

Only the public plugin API of upgrader is used: ``upgrader.hookspecs``,
``upgrader.providers.base`` and ``upgrader.errors``.
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import logging
import os
import re
import secrets
import shlex
import signal
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # asyncssh imports cryptography's DSA support, which newer cryptography releases mark as
    # deprecated (a CryptographyDeprecationWarning on import). The operator can do nothing about
    # it: it must not reach stderr, where scripts and tests read "upgrader: error: ..." as the
    # first line. (The first import of asyncssh is the one that warns: both modules that use
    # it import it so.)
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

from asyncssh.config import SSHClientConfig, SSHConfig

from upgrader.errors import CommandTimeout, ConfigError, TransportError
from upgrader.providers.base import (
    CommandResult,
    ProviderContext,
    command_text,
    describe_exit,
    output_tail,
)

from .hostkeys import HostKeyPolicy, OfferedKey
from .settings import (  # the settings are read without asyncssh (see settings.py)
    DEFAULT_CONFIG,
    DEFAULT_GLOBAL_KNOWN_HOSTS,
    DEFAULT_IDENTITIES,
    DEFAULT_KNOWN_HOSTS,
    DEFAULT_SYSTEM_CONFIG,
)

log = logging.getLogger("upgrader_ssh")

#: how many trailing lines of stderr an error message quotes
#: seconds to wait for a signalled or closed channel to report its end
CLOSE_WAIT = 1.0
#: pauses before trying again a session the server refused on a live connection
REFUSAL_BACKOFF = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


# --------------------------------------------------------------------------------------------
# small helpers


def _signal_number(name: str) -> int | None:
    try:
        return int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        return None


def _exc_text(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def remote_command(argv: Sequence[str], *, sudo: bool = False) -> str:
    """The command line sent to the remote login shell.

    ``echo $$`` first: the shell's pid, which is also the command's (``exec`` replaces the
    shell by the command) and its process group (sshd starts every session in a session of
    its own), so a timeout can kill the whole group; the transport strips that first line
    from stdout. Then every argument quoted (``shlex.join``) and ``sudo -n --`` in front when
    asked."""
    parts = ["sudo", "-n", "--", *argv] if sudo else list(argv)
    return "echo $$; exec " + shlex.join(parts)


#: The keeper: runs in a session (and process group) of its own; prints its pid (the group to
#: signal), then takes the host's lock and runs the command (``$4...``) holding it. The lock
#: (``$1``) is held SHARED by every running command of one controller (``$3``, a token of the
#: transport), so one controller's commands on a host run side by side; a command of another
#: controller (a resumed one) waits, at most ``$2`` seconds and saying so (``wait``), until
#: none of them runs. ``$1.owner`` serializes the check and names the owner (token and pid).
#: The command runs with neither lock descriptor (a daemon it starts holds no lock) nor the
#: channel's stdin. TERM/HUP/INT are caught so that the keeper, and the lock, outlive a
#: command that ignores them (KILL ends both); a command killed by a signal ends the keeper by
#: the same signal. The shell's own notices go to /dev/null, the command's stderr does not.
KEEPER = r"""lock=$1 wait=$2 token=$3; shift 3
printf '%s\n' "$$"
for f in "$lock" "$lock.owner"; do
  if [ -L "$f" ]; then printf 'symlink %s\n' "$f"; exit 125; fi
done
exec 9<>"$lock" 7<>"$lock.owner" || { printf 'unopenable %s\n' "$lock"; exit 125; }
told=
while :; do
  flock -x -w "$wait" 7 || { printf 'timeout ? %s\n' "$lock.owner"; exit 75; }
  owner=; holder=; read -r owner holder <"$lock.owner"
  if [ "$owner" = "$token" ] || flock -n -x 9; then
    printf '%-60s\n' "$token $$" >"$lock.owner"
    flock -s 9; flock -u 7; break
  fi
  flock -u 7
  [ -n "$told" ] || { told=1; printf 'wait %s %s\n' "${holder:-?}" "$lock"; }
  flock -x -w "$wait" 9 || { printf 'timeout %s %s\n' "${holder:-?}" "$lock"; exit 75; }
  flock -u 9
done
printf 'run\n'
trap : HUP INT TERM
exec 8>&2 2>/dev/null
(exec "$@") 2>&8 8>&- 9>&- 7>&-
s=$?
if [ "$s" -gt 128 ]; then trap - HUP INT TERM; kill -s "$(kill -l "$s")" "$$"; fi
exit "$s"
"""

#: The wrapper: checks for flock and setsid, starts the keeper (``$1``) in a new session
#: (``setsid`` does not fork: a background job is no group leader, so the keeper's pid is its
#: group's), and a watcher that reads the channel's stdin, which the controller never closes:
#: at EOF (the channel closed: the controller died, or dropped the connection) it sends TERM
#: to the keeper's group, KILL ``$5`` seconds later (through ``sudo -n --`` when ``$6`` is 1).
#: The wrapper exits as the keeper did (by its signal, or with its status). ``$2`` is the
#: lock dir ("" = ``$XDG_RUNTIME_DIR``, else /tmp), ``$3`` the lock file's name, ``$4`` the
#: lock wait, ``$7`` the controller's token, then the command.
WRAPPER = r"""k=$1 d=${2:-${XDG_RUNTIME_DIR:-/tmp}} name=$3 wait=$4 grace=$5 sudo=$6 token=$7
shift 7
for tool in flock setsid; do
  command -v "$tool" >/dev/null 2>&1 || { printf 'missing %s\n' "$tool"; exit 127; }
done
exec 3<&0
setsid sh -c "$k" upgrader-keeper "$d/$name" "$wait" "$token" "$@" 0</dev/null 3<&- &
g=$!
(
  while IFS= read -r _; do :; done
  if [ "$sudo" = 1 ]; then k="sudo -n --"; else k=; fi
  $k kill -s TERM -- "-$g"
  sleep "$grace"
  $k kill -s KILL -- "-$g"
) 0<&3 >/dev/null 2>&1 &
w=$!
exec 3<&- 2>/dev/null
wait "$g"; s=$?
kill "$w"
if [ "$s" -gt 128 ]; then kill -s "$(kill -l "$s")" "$$"; fi
exit "$s"
"""

#: the status the keeper exits with when the lock stayed busy past ``lock_wait``
LOCK_BUSY_STATUS = 75


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def lock_name(fleet: str | None, host: str) -> str:
    """The lock file's name on a host: ``upgrader-<fleet>-<host>.lock``, every character
    outside ``[A-Za-z0-9._-]`` as ``_`` (the host's name is in it: the hosts of a lab share
    one file system)."""
    parts = ["upgrader", *([fleet] if fleet else []), host]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts)) + ".lock"


def wrapped_command(argv: Sequence[str], *, lock_dir: str | None, lock_file: str,
                    lock_wait: float, kill_grace: float, token: str,
                    sudo: bool = False) -> str:
    """The command line sent to the remote login shell with ``host_lock``: ``exec sh -c
    WRAPPER`` with the keeper, the lock's place, the bounds and the command as arguments,
    every one quoted with ``shlex.join`` (nothing is pasted into a script)."""
    parts = ["sudo", "-n", "--", *argv] if sudo else list(argv)
    return "exec " + shlex.join(["sh", "-c", WRAPPER, "upgrader-run", KEEPER, lock_dir or "",
                                 lock_file, _seconds(lock_wait), _seconds(kill_grace),
                                 "1" if sudo else "0", token, *parts])


def kill_command(pid: int, signame: str, *, sudo: bool = False) -> str:
    """Signal the process group ``pid`` leads (the command and every child it did not move
    to a group of its own)."""
    parts = ["kill", "-s", signame, "--", f"-{pid}"]
    return shlex.join(["sudo", "-n", "--", *parts] if sudo else parts)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a host's commands go: address (or ssh config alias), port and user; None means
    "as the ssh config (or SSH) decides"."""

    address: str
    port: int | None
    username: str | None

    @property
    def key(self) -> tuple[str, int | None, str | None]:
        return (self.address, self.port, self.username)

    def label(self) -> str:
        user = f"{self.username}@" if self.username else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{self.address}{port}"


class _Client(asyncssh.SSHClient):
    """Per connection: consults the host key policy for a key asyncssh does not trust."""

    def __init__(self, policy: HostKeyPolicy) -> None:
        self.policy = policy
        self.offered: OfferedKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        try:
            self.offered = self.policy.consider(host, addr, port, key)
        except ValueError:          # known_hosts became unreadable: refuse
            return False
        return self.offered.recorded


class _Session(asyncssh.SSHClientSession[bytes]):
    """Collects one command's output and how it ended.

    A ``wrapped`` command's stdout starts with the wrapper's header lines (see
    :data:`KEEPER`): its group's pid, ``wait``/``timeout HOLDER LOCK`` about the host's lock,
    ``missing TOOL``, ``symlink``/``unopenable LOCK``, and ``run`` once the command starts;
    the command's own output follows. A plain command's first line is its pid."""

    def __init__(self, done: asyncio.Future[None], *, wrapped: bool = False) -> None:
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.lost: BaseException | None = None
        self.done = done
        self.wrapped = wrapped
        self._head = b""
        self._pid: int | None = None
        self.header: list[str] = []          # the wrapper's lines after the pid
        self.started = done.get_loop().create_future()
        self.event = asyncio.Event()         # a header line arrived
        if not wrapped:
            self.started.set_result(None)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr.append(data)
        elif self.wrapped and not self.started.done():
            self._head += data
            while not self.started.done() and b"\n" in self._head:
                line, _, self._head = self._head.partition(b"\n")
                text = line.decode("utf-8", "replace")
                if self._pid is None and text.isdigit():
                    self._pid = int(text)
                elif text == "run":
                    self.started.set_result(None)
                    if self._head:
                        self.stdout.append(self._head)
                    self._head = b""
                else:
                    self.header.append(text)
                self.event.set()
        else:
            self.stdout.append(data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str,
                             lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        if not self.done.done():
            self.done.set_result(None)
        self.event.set()

    def pid(self) -> int | None:
        """The remote command's process group (see remote_command and KEEPER)."""
        if self.wrapped:
            return self._pid
        head = b"".join(self.stdout[:2])[:24]
        line, newline, _ = head.partition(b"\n")
        return int(line) if newline and line.isdigit() else None

    def header_line(self, word: str) -> list[str] | None:
        """The last header line starting with ``word``, split in its word and up to two
        fields (the last field may hold spaces: a path)."""
        for text in reversed(self.header):
            fields = text.split(" ", 2)
            if fields[0] == word:
                return fields
        return None

    def output(self) -> tuple[str, str]:
        out = b"".join(self.stdout)
        if not self.wrapped:
            line, newline, rest = out.partition(b"\n")
            if newline and line.isdigit():
                out = rest
        return (out.decode("utf-8", "replace"), b"".join(self.stderr).decode("utf-8", "replace"))

    def status(self) -> int | None:
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal is not None:
            number = _signal_number(self.exit_signal)
            return -number if number else 255
        return None


class _Attempt:
    """One try at opening a channel: ``started`` once the channel opened (from then on its
    command may run, and the channel is never tried again)."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


class _SessionFactory:
    """Makes the session once the channel opened, and marks the attempt started."""

    def __init__(self, attempt: _Attempt, *, wrapped: bool = False) -> None:
        self.attempt = attempt
        self.wrapped = wrapped
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.session: _Session | None = None

    def __call__(self) -> _Session:
        self.attempt.started = True
        self.session = _Session(self.done, wrapped=self.wrapped)
        return self.session


class _ClientConfig(SSHClientConfig):
    """asyncssh's client config reader, also reading ``HashKnownHosts`` (which asyncssh
    itself ignores) for trust-on-first-use records."""

    _handlers = {**SSHClientConfig._handlers,  # noqa: RUF012 (asyncssh's own attribute)
                 "hashknownhosts": ("HashKnownHosts", SSHConfig._set_bool)}


def _refused(exc: BaseException) -> bool:
    """A refused TCP connection (every address of the host refused it)."""
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == \
            errno.ECONNREFUSED:
        return True
    codes = re.findall(r"\[Errno (\d+)\]", str(exc))     # asyncio's "Multiple exceptions"
    return bool(codes) and all(int(c) == errno.ECONNREFUSED for c in codes)


def _dropped(exc: BaseException, conn: asyncssh.SSHClientConnection) -> bool:
    return (conn.is_closed()
            or isinstance(exc, (asyncssh.ConnectionLost, asyncssh.DisconnectError,
                                ConnectionError, BrokenPipeError)))


# --------------------------------------------------------------------------------------------
# the transport


class SshTransport:
    """Runs host commands over SSH: one reused connection per host, at most ``max_sessions``
    commands at once per host and ``max_parallel`` over all hosts.

    Optional capability beyond the Transport protocol: :meth:`upload` (SFTP).
    """

    def __init__(self, *, known_hosts: str | Sequence[str] = DEFAULT_KNOWN_HOSTS,
                 trust_on_first_use: bool = False, identity_files: Sequence[str] = (),
                 passphrase: str | None = None, agent: bool = True,
                 config: str | None = DEFAULT_CONFIG,
                 system_config: str | None = DEFAULT_SYSTEM_CONFIG,
                 global_known_hosts: Sequence[str] = DEFAULT_GLOBAL_KNOWN_HOSTS,
                 password: str | None = None, password_env: str | None = None,
                 passphrase_env: str | None = None, username: str | None = None,
                 port: int | None = None, connect_timeout: float = 10.0,
                 timeout: float | None = 300.0, kill_grace: float = 2.0,
                 keepalive_interval: float = 15.0, max_sessions: int = 10,
                 max_parallel: int = 100, sudo: bool = False, host_lock: bool = True,
                 lock_dir: str | None = None, lock_wait: float = 120.0,
                 fleet: str | None = None) -> None:
        for key, count, low in (("max_sessions", max_sessions, 1),
                                ("max_parallel", max_parallel, 1)):
            if count < low:
                raise ConfigError(f"must be at least {low}, got {count}", key=f"transport.{key}")
        for key, seconds in (("connect_timeout", connect_timeout), ("timeout", timeout),
                             ("kill_grace", kill_grace), ("lock_wait", lock_wait)):
            if seconds is not None and seconds <= 0:
                raise ConfigError(f"must be above 0 seconds, got {seconds}",
                                  key=f"transport.{key}")
        if keepalive_interval < 0:
            raise ConfigError(f"must be 0 (off) or more seconds, got {keepalive_interval}",
                              key="transport.keepalive_interval")
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"not a TCP port: {port}", key="transport.port")
        paths = [known_hosts] if isinstance(known_hosts, str) else list(known_hosts)
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError("a file name or a list of file names", key="transport.known_hosts")
        if not all(isinstance(p, str) and p for p in identity_files):
            raise ConfigError("a list of private key file names",
                              key="transport.identity_files")
        self.identity_files = [str(Path(p).expanduser()) for p in identity_files]
        for path in self.identity_files:
            if not os.path.isfile(path):
                raise ConfigError(f"no such private key file: {path}",
                                  key="transport.identity_files")
        # the user's config first, then the system-wide one: as in ssh, the first value
        # obtained for an option is used
        self.config_paths: list[str] = []
        for key, config_path, default in (
                ("config", config, DEFAULT_CONFIG),
                ("system_config", system_config, DEFAULT_SYSTEM_CONFIG)):
            if not config_path:
                continue
            expanded = str(Path(config_path).expanduser())
            if os.path.isfile(expanded):
                self.config_paths.append(expanded)
            elif config_path != default:
                raise ConfigError(f"no such ssh config file: {expanded}", key=f"transport.{key}")
        if isinstance(global_known_hosts, str) or not all(
                isinstance(p, str) and p for p in global_known_hosts):
            raise ConfigError("a list of file names ([] reads none)",
                              key="transport.global_known_hosts")
        self.host_keys = HostKeyPolicy(paths, global_paths=global_known_hosts,
                                       trust_on_first_use=trust_on_first_use)
        self.trust_on_first_use = trust_on_first_use
        self._passphrase = passphrase           # never logged, never in a message
        self.passphrase_env = passphrase_env
        self._password = password               # never logged, never in a message
        self.password_env = password_env
        self.agent = agent
        self.username = username
        self.port = port
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.keepalive_interval = keepalive_interval
        self.max_sessions = max_sessions
        self.max_parallel = max_parallel
        self.sudo = sudo
        if lock_dir is not None and not lock_dir.startswith("/"):
            raise ConfigError(f"an absolute directory on the hosts, got {lock_dir!r}",
                              key="transport.lock_dir")
        self.host_lock = host_lock
        self.lock_dir = lock_dir
        self.lock_wait = lock_wait
        self.fleet = fleet
        #: this controller's name in the hosts' lock files: its commands share the lock
        self.token = f"{os.getpid()}.{secrets.token_hex(6)}"
        self._lock_listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self._parallel = asyncio.Semaphore(max_parallel)
        self._host_slots: dict[tuple[Any, ...], asyncio.Semaphore] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}
        #: one known_hosts read shared by a burst of new connections (bench/fanout.py)
        self._known_hosts_check: asyncio.Future[Any] | None = None
        self._links: dict[tuple[Any, ...], asyncssh.SSHClientConnection] = {}
        self._jumps: dict[tuple[Any, ...], asyncssh.SSHClientConnection] = {}
        self._keys: Sequence[asyncssh.SSHKeyPair] | None = None
        self._keys_lock = asyncio.Lock()
        self._reapers: set[asyncio.Task[str]] = set()     # _kill's tasks
        self._closed = False
        #: connections opened so far (first ones and reconnections), jump hosts included
        self.connections_opened = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> SshTransport:
        passphrase = None
        env_name = settings["passphrase_env"]
        if env_name:
            passphrase = os.environ.get(env_name)
            if passphrase is None:
                raise ConfigError(f"environment variable {env_name} (the identity files' "
                                  f"passphrase) is not set", key="transport.passphrase_env")
        password = None
        password_env = settings["password_env"]
        if password_env:
            password = os.environ.get(password_env)
            if password is None:
                raise ConfigError(f"environment variable {password_env} (the login password) "
                                  f"is not set", key="transport.password_env")
        return cls(known_hosts=settings["known_hosts"],
                   trust_on_first_use=settings["trust_on_first_use"],
                   identity_files=settings["identity_files"], passphrase=passphrase,
                   passphrase_env=env_name or None, password=password,
                   password_env=password_env or None,
                   agent=settings["agent"], config=settings["config"],
                   system_config=settings["system_config"],
                   global_known_hosts=settings["global_known_hosts"],
                   username=settings["username"], port=settings["port"],
                   connect_timeout=settings["connect_timeout"], timeout=settings["timeout"],
                   kill_grace=settings["kill_grace"],
                   keepalive_interval=settings["keepalive_interval"],
                   max_sessions=settings["max_sessions"],
                   max_parallel=settings["max_parallel"], sudo=settings["sudo"],
                   host_lock=settings["host_lock"], lock_dir=settings["lock_dir"],
                   lock_wait=settings["lock_wait"],
                   fleet=context.fleet.name if context and context.fleet else None)

    def __repr__(self) -> str:   # no secrets: the passphrase and password are left out
        return (f"SshTransport(known_hosts={self.host_keys.paths!r}, "
                f"trust_on_first_use={self.trust_on_first_use}, "
                f"identity_files={self.identity_files!r}, sudo={self.sudo})")

    async def __aenter__(self) -> SshTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for the kills of cancelled commands, then close every connection (jump hosts
        last). A command still running is not signalled by sshd when its connection closes;
        with ``host_lock`` the host's wrapper ends it then (see docs/SSH.md)."""
        self._closed = True
        if self._reapers:    # commands being killed after a cancellation: let them finish
            _, pending = await asyncio.wait(set(self._reapers),
                                            timeout=self.kill_grace + 3 * CLOSE_WAIT)
            for task in pending:
                task.cancel()
        conns = list(self._links.values())
        jumps = list(self._jumps.values())
        self._links.clear()
        self._jumps.clear()
        for group in (conns, jumps):
            for conn in group:
                conn.close()
            if group:
                await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in group],
                                   timeout=5.0)

    # ---------------------------------------------------------------------------------------
    # addressing

    def watch_lock_waits(self, callback: Callable[[str, str], Awaitable[None]]) -> None:
        """Optional capability: ``await callback(host_name, message)`` when a command has to
        wait for its host's lock (a command of a previous controller still holds it). The
        engine turns it into a ``log`` event."""
        self._lock_listeners.append(callback)

    def lock_file(self, host: Any) -> str:
        """The name of ``host``'s lock file (in ``lock_dir`` on the host)."""
        return lock_name(self.fleet, host.name)

    def target(self, host: Any) -> Target:
        """Where ``host``'s commands go: ``vars.ssh_host`` (else its address), ``vars.ssh_port``
        (else the ``port`` setting), ``vars.ssh_user`` (else the ``username`` setting)."""
        hvars = getattr(host, "vars", None) or {}
        address = str(hvars.get("ssh_host") or host.address)
        port: int | None = self.port
        if hvars.get("ssh_port") not in (None, ""):
            raw = hvars["ssh_port"]
            try:
                port = int(raw)
                if not 0 < port < 65536:
                    raise ValueError
            except (TypeError, ValueError):
                raise ConfigError(f"host {host.name}: ssh_port must be a TCP port, got {raw!r}",
                                  key=f"hosts.{host.name}.vars.ssh_port") from None
        username = str(hvars.get("ssh_user") or "") or self.username
        return Target(address=address, port=port, username=username)

    # ---------------------------------------------------------------------------------------
    # connections

    async def _client_keys(self) -> Any:
        """Identity files, loaded (and decrypted) once; ``()`` lets asyncssh use the config's
        IdentityFile or the default ~/.ssh/id_* files."""
        if not self.identity_files:
            return ()
        async with self._keys_lock:
            if self._keys is None:
                try:
                    self._keys = await asyncio.to_thread(
                        asyncssh.load_keypairs, self.identity_files, self._passphrase)
                except (asyncssh.KeyImportError, OSError, ValueError) as exc:
                    # the exception text never contains the passphrase or the key itself
                    hint = ""
                    if self._passphrase is None and "passphrase" in str(exc).lower():
                        hint = (" (an identity file is encrypted and no passphrase_env is "
                                "set: name the environment variable holding its passphrase "
                                "in passphrase_env)")
                    raise ConfigError(f"cannot load the identity files "
                                      f"{', '.join(self.identity_files)}: {_exc_text(exc)}"
                                      f"{hint}", key="transport.identity_files") from None
            return self._keys

    def _config_lookup(self, address: str, port: int | None,
                       username: str | None) -> Any:
        try:
            local_user = getpass.getuser()
        except (KeyError, OSError):  # pragma: no cover - no passwd entry
            local_user = ""
        return _ClientConfig.load(None, self.config_paths, False, False, False, local_user,
                                  username if username else (), address,
                                  port if port is not None else ())

    def _resolved(self, target: Target) -> tuple[str, int, Any]:
        """(host name, port, config) the connection to ``target`` uses after the ssh config
        (HostName, Port; HostKeyAlias names the host in known_hosts); blocking."""
        config = self._config_lookup(target.address, target.port, target.username)
        host = str(config.get("HostName") or target.address)
        port = target.port if target.port is not None else int(config.get("Port") or 22)
        return host, port, config

    def _skipped_identities(self, config: Any) -> list[str]:
        """The identity files asyncssh skips silently: encrypted ones with no passphrase
        (the config's IdentityFile, else ~/.ssh/id_*; blocking)."""
        if self.identity_files or self._passphrase is not None:
            return []
        named = config.get("IdentityFile") if config is not None else None
        paths = [str(Path(p).expanduser()) for p in named] if named else [
            str(Path("~", ".ssh", name).expanduser()) for name in DEFAULT_IDENTITIES]
        skipped = []
        for path in paths:
            if not os.path.isfile(path):
                continue
            try:
                asyncssh.read_private_key(path)
            except asyncssh.KeyEncryptionError:
                skipped.append(path)
            except (asyncssh.KeyImportError, OSError, ValueError) as exc:
                if "passphrase" in str(exc).lower():
                    skipped.append(path)
        return skipped

    async def _proxy_jump(self, address: str, port: int | None,
                          username: str | None) -> str | None:
        """The config's ProxyJump for this destination, or None."""
        if not self.config_paths:
            return None
        config = await asyncio.to_thread(self._config_lookup, address, port, username)
        jump = config.get("ProxyJump")
        if not jump or str(jump).lower() == "none":
            return None
        return str(jump)

    async def _tunnel(self, spec: str | None,
                      path: tuple[Any, ...]) -> asyncssh.SSHClientConnection | None:
        """Open (or reuse) the chain of jump hosts ``user@host:port,...`` with this transport's
        own host key policy and keys (asyncssh's own ProxyJump would use its defaults)."""
        if not spec:
            return None
        conn: asyncssh.SSHClientConnection | None = None
        chain: tuple[Any, ...] = ()
        for hop in spec.split(","):
            hop = hop.strip().removeprefix("ssh://")
            username, _, hostport = hop.rpartition("@")
            host, port = hostport, None
            if hostport.startswith("["):       # [v6]:port
                host, _, rest = hostport[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") else None
            elif hostport.count(":") == 1:
                host, _, port_text = hostport.partition(":")
                port = int(port_text)
            chain = chain + ((host, port, username or None),)
            jump_target = Target(host, port, username or None)
            conn = await self._jump(jump_target, chain, conn, path)
        return conn

    async def _jump(self, target: Target, chain: tuple[Any, ...],
                    via: asyncssh.SSHClientConnection | None,
                    path: tuple[Any, ...]) -> asyncssh.SSHClientConnection:
        if target.key in path:
            raise TransportError("ProxyJump loops: " + " -> ".join(
                Target(*k).label() for k in (*path, target.key)))
        key = ("jump",) + chain
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._jumps.get(key)
            if conn is not None and not conn.is_closed():
                return conn
            if via is None:       # the first hop may have a ProxyJump of its own
                via = await self._tunnel(await self._proxy_jump(
                    target.address, target.port, target.username), (*path, target.key))
            conn = await self._connect(target, via, role="jump host ")
            self._jumps[key] = conn
            return conn

    async def _known_hosts(self) -> Any:
        """The known_hosts as the file says now, read off the event loop; connections that
        open while a read is under way share it (a file changed later is seen by the next
        connection)."""
        check = self._known_hosts_check
        if check is None:
            check = asyncio.ensure_future(asyncio.to_thread(self.host_keys.current))
            self._known_hosts_check = check
            check.add_done_callback(lambda _: setattr(self, "_known_hosts_check", None))
        return await asyncio.shield(check)

    async def _connect(self, target: Target, tunnel: asyncssh.SSHClientConnection | None,
                       role: str = "") -> asyncssh.SSHClientConnection:
        label = target.label()
        try:
            known_hosts = await self._known_hosts()
        except ValueError as exc:
            raise TransportError(f"cannot verify the host key of {role}{label}: {exc}") from None
        client = _Client(self.host_keys)
        options: dict[str, Any] = {
            "known_hosts": known_hosts,
            "client_keys": await self._client_keys(),
            "config": self.config_paths,
            "client_factory": lambda: client,
            "tunnel": tunnel,               # None: no ProxyJump (we resolved it ourselves)
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": 3,
            "x509_trusted_certs": None,
        }
        if self._passphrase is not None:
            options["passphrase"] = self._passphrase
        if self._password is not None:
            options["password"] = self._password
        if not self.agent:
            options["agent_path"] = None
        if target.port is not None:
            options["port"] = target.port
        if target.username:
            options["username"] = target.username
        self.connections_opened += 1
        try:
            conn = await asyncssh.connect(target.address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise TransportError(self.host_keys.refusal(client.offered, role + label,
                                                        _exc_text(exc))) from None
        except asyncssh.KeyExchangeFailed as exc:
            changed = await self._type_changed(target, tunnel, role)
            raise TransportError(changed or self._kex_failure(target, role, exc)) from None
        except asyncssh.PermissionDenied as exc:
            raise TransportError(await self._login_refused(target, role, exc)) from None
        except TimeoutError:
            raise TransportError(f"cannot connect to {role}{label}: no answer within "
                                 f"{self.connect_timeout:g}s (connect_timeout)") from None
        except (OSError, asyncssh.Error) as exc:
            if tunnel is None and _refused(exc):
                try:
                    host, port, _ = await asyncio.to_thread(self._resolved, target)
                except (OSError, ValueError, asyncssh.Error):
                    host, port = target.address, target.port or 22
                raise TransportError(f"cannot connect to {role}{label}: connection refused by "
                                     f"{host}:{port} (no SSH server listens there)") from exc
            # a server that has none of the key types known_hosts holds for it gives up
            # the key exchange by closing the connection: say why, as ssh does
            changed = await self._type_changed(target, tunnel, role)
            if changed:
                raise TransportError(changed) from None
            raise TransportError(f"cannot connect to {role}{label}: {_exc_text(exc)}") from exc
        except ValueError as exc:        # asyncssh: bad config values, unknown user...
            raise TransportError(f"cannot connect to {role}{label}: {exc}") from None
        if client.offered is not None and client.offered.recorded:
            try:
                hashed = await asyncio.to_thread(self._hash_known_hosts, target)
                await asyncio.to_thread(self.host_keys.record, client.offered, hashed=hashed)
            except OSError as exc:
                conn.close()
                raise TransportError(
                    f"accepted the host key of {role}{label} on first use but cannot record "
                    f"it in {self.host_keys.record_path}: {exc.strerror or exc}") from None
            algorithm = client.offered.key.get_algorithm()
            log.warning("trusted the host key of %s on first use: %s %s (recorded in %s)",
                        role + label, algorithm, client.offered.key.get_fingerprint("sha256"),
                        self.host_keys.record_path)
        return conn

    def _hash_known_hosts(self, target: Target) -> bool:
        """Whether ``HashKnownHosts yes`` is in effect for ``target`` (user's, then the
        system-wide ssh config: Debian's sets it for every host); blocking."""
        if not self.config_paths:
            return False
        try:
            config = self._config_lookup(target.address, target.port, target.username)
        except (OSError, ValueError, asyncssh.Error):
            return False
        return bool(config.get("HashKnownHosts"))

    async def _type_changed(self, target: Target,
                            tunnel: asyncssh.SSHClientConnection | None,
                            role: str) -> str | None:
        """When known_hosts has keys for ``target`` and the connection failed before the
        server's key was seen: ask the server for its key with no restriction on its type. A
        key of another type is a changed host key: the message says where the known entries
        are and what the server offers now. None when that is not the case."""
        try:
            host, port, config = await asyncio.to_thread(self._resolved, target)
            name = str(config.get("HostKeyAlias") or host)
            entries = await asyncio.to_thread(self.host_keys.entries, name, None, port)
        except (OSError, ValueError, asyncssh.Error):
            return None
        if not entries:
            return None
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(host, port, tunnel=tunnel or (), config=[]),
                self.connect_timeout)
        except (OSError, asyncssh.Error, TimeoutError, ValueError):
            return None
        if key is None or key.get_algorithm() in {e.algorithm for e in entries}:
            return None
        return self.host_keys.type_changed(role + target.label(), name, port, entries, key)

    async def _login_refused(self, target: Target, role: str,
                             exc: asyncssh.PermissionDenied) -> str:
        """Why the login failed: what was tried, and which keys were skipped unread."""
        try:
            _, _, config = await asyncio.to_thread(self._resolved, target)
            skipped = await asyncio.to_thread(self._skipped_identities, config)
        except (OSError, ValueError, asyncssh.Error):
            skipped = []
        tried = [f"the identity files {', '.join(self.identity_files)}"
                 if self.identity_files else "the ssh config's IdentityFile or ~/.ssh/id_*"]
        if self.agent and os.environ.get("SSH_AUTH_SOCK"):
            tried.append("the ssh-agent")
        if self._password is not None:
            tried.append(f"the password in ${self.password_env or 'password_env'}")
        message = (f"{role}{target.label()} refused the login ({_exc_text(exc)}); tried "
                   + " and ".join(tried))
        for path in skipped:
            message += (f"; identity file {path} is encrypted and no passphrase_env is set: "
                        f"skipped")
        return message

    def _kex_failure(self, target: Target, role: str, exc: BaseException) -> str:
        label = role + target.label()
        try:
            known = self.host_keys.known_keys(target.address, None, target.port)
        except ValueError:
            known = ()
        if known:
            types = ", ".join(sorted({k.get_algorithm() for k in known}))
            return (f"host key of {label} CHANGED: {', '.join(self.host_keys.paths)} trusts "
                    f"only {types} keys for it and the server offers none of them "
                    f"({_exc_text(exc)})")
        return f"cannot agree on algorithms with {label}: {_exc_text(exc)}"

    async def _link(self, target: Target, stale: asyncssh.SSHClientConnection | None = None,
                    ) -> asyncssh.SSHClientConnection:
        """The host's connection: reused, or opened (one at a time per host) when there is
        none or it dropped."""
        key = target.key
        conn = self._links.get(key)
        if conn is not None and conn is not stale and not conn.is_closed():
            return conn                                   # the fast path: no lock
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._links.get(key)
            if conn is not None and conn is not stale and not conn.is_closed():
                return conn
            if conn is not None:
                conn.abort()
                self._links.pop(key, None)
            if self._closed:
                raise TransportError("the ssh transport is closed")
            tunnel = await self._tunnel(
                await self._proxy_jump(target.address, target.port, target.username),
                (target.key,))
            conn = await self._connect(target, tunnel)
            self._links[key] = conn
            return conn

    def _slots(self, target: Target) -> asyncio.Semaphore:
        slots = self._host_slots.get(target.key)
        if slots is None:
            slots = self._host_slots[target.key] = asyncio.Semaphore(self.max_sessions)
        return slots

    # ---------------------------------------------------------------------------------------
    # commands

    async def run(self, host: Any, argv: Sequence[str], *, timeout: float | None = None,
                  check: bool = True) -> CommandResult:
        """Run ``argv`` on ``host`` over its SSH connection.

        :param timeout: seconds (default: the ``timeout`` setting); past it the remote command
            gets SIGTERM, SIGKILL ``kill_grace`` seconds later, its channel is closed and
            ``CommandTimeout`` raised.
        :param check: raise ``TransportError`` on a non-zero exit status.
        """
        return await self._run(host, argv, timeout=timeout, check=check, wrap=self.host_lock)

    async def run_unlocked(self, host: Any, argv: Sequence[str], *,
                           timeout: float | None = None, check: bool = True) -> CommandResult:
        """Optional capability: run a short bookkeeping command (the fleet lock's file) as a
        plain ``exec``, beside whatever holds the host's command lock: a second controller
        must learn at once that the fleet is taken, not after the first one's install."""
        return await self._run(host, argv, timeout=timeout, check=check, wrap=False)

    async def _run(self, host: Any, argv: Sequence[str], *, timeout: float | None,
                   check: bool, wrap: bool) -> CommandResult:
        argv = tuple(argv)
        if self._closed:
            raise TransportError("the ssh transport is closed", host=host.name, argv=argv)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TransportError(f"a command is a non-empty list of strings, got {list(argv)!r}",
                                 host=host.name, argv=argv)
        if any("\0" in a for a in argv):
            raise TransportError("an argument contains a NUL character, which no command "
                                 "line can carry", host=host.name, argv=argv)
        target = self.target(host)
        if wrap:
            command = wrapped_command(argv, lock_dir=self.lock_dir,
                                      lock_file=self.lock_file(host), lock_wait=self.lock_wait,
                                      kill_grace=self.kill_grace, token=self.token,
                                      sudo=self.sudo)
        else:
            command = remote_command(argv, sudo=self.sudo)
        limit = self.timeout if timeout is None else timeout
        async with self._slots(target), self._parallel:
            factory: _SessionFactory | None = None

            async def open_session(conn: asyncssh.SSHClientConnection, attempt: _Attempt) -> Any:
                nonlocal factory
                factory = _SessionFactory(attempt, wrapped=wrap)
                chan, _ = await conn.create_session(factory, command, encoding=None,
                                                    request_pty=False)
                return chan

            conn, chan = await self._open_channel(host, target, argv, open_session,
                                                  f"cannot start {command_text(argv)}")
            assert factory is not None and factory.session is not None
            return await self._finish(host, target, argv, conn, chan, factory.session, limit,
                                      check)

    async def _open_channel(self, host: Any, target: Target, argv: tuple[str, ...],
                            opener: Any, what: str) -> tuple[asyncssh.SSHClientConnection, Any]:
        """Open a channel with ``opener(conn, attempt)`` on the host's connection.

        A channel that never opened is tried again: once on a new connection when the
        connection turns out to have dropped, and a few times after a short pause when the
        server refused it on a live connection (sshd frees a closed session's slot a moment
        after the close, so a burst of commands can briefly see MaxSessions reached). A
        channel that opened is never tried again: its command may have started.
        """
        stale: asyncssh.SSHClientConnection | None = None
        reconnected = False
        refusals = 0
        while True:
            try:
                conn = await self._link(target, stale)
            except TransportError as exc:
                raise TransportError(exc.message, host=host.name, argv=argv) from exc.__cause__
            attempt = _Attempt()
            try:
                return conn, await opener(conn, attempt)
            except (asyncssh.Error, OSError) as exc:
                if not attempt.started:
                    if _dropped(exc, conn) and not reconnected:
                        log.info("connection to %s dropped; reconnecting", target.label())
                        reconnected, stale = True, conn
                        continue
                    if (isinstance(exc, asyncssh.ChannelOpenError) and not conn.is_closed()
                            and refusals < len(REFUSAL_BACKOFF)):
                        await asyncio.sleep(REFUSAL_BACKOFF[refusals])
                        refusals += 1
                        continue
                refused = isinstance(exc, asyncssh.ChannelOpenError) and not conn.is_closed()
                raise TransportError(
                    f"{what} on {target.label()}: {_exc_text(exc)}"
                    + (f" (the server keeps refusing new sessions: is its MaxSessions below "
                       f"max_sessions={self.max_sessions}?)" if refused else ""),
                    host=host.name, argv=argv) from exc

    async def _finish(self, host: Any, target: Target, argv: tuple[str, ...],
                      conn: asyncssh.SSHClientConnection,
                      chan: asyncssh.SSHClientChannel[bytes], session: _Session,
                      limit: float | None, check: bool) -> CommandResult:
        if not session.wrapped:
            try:
                chan.write_eof()        # stdin: nothing (as /dev/null)
            except (OSError, asyncssh.Error):
                pass
        # else the channel's stdin stays open: its EOF tells the wrapper the controller left
        try:
            if not session.started.done():
                await self._wait_for_lock(host, target, session)
            if session.started.done():
                done, _ = await asyncio.wait({session.done}, timeout=limit)
            elif not session.done.done():       # the host stopped answering: end it
                how = await self._kill(conn, chan, session)
                stdout, stderr = session.output()
                raise CommandTimeout(
                    f"{command_text(argv)} did not start within {self.lock_wait:g}s "
                    f"(transport.lock_wait): {how}", host=host.name, argv=argv,
                    stdout=stdout, stderr=stderr)
        except asyncio.CancelledError:
            self._end_in_background(conn, chan, session)
            raise
        if not session.started.done():
            raise self._not_started(host, target, argv, session)
        if not done:
            how = await self._kill(conn, chan, session)
            stdout, stderr = session.output()
            raise CommandTimeout(
                f"{command_text(argv)} did not finish within {limit:g}s: {how}",
                host=host.name, argv=argv, stdout=stdout, stderr=stderr)
        stdout, stderr = session.output()
        status = session.status()
        if status is None:
            reason = _exc_text(session.lost) if session.lost else "the channel closed"
            raise TransportError(
                f"the connection to {target.label()} dropped while {command_text(argv)} "
                f"ran ({reason}); whether it finished is unknown",
                host=host.name, argv=argv, stdout=stdout, stderr=stderr)
        if check and status != 0:
            tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
            raise TransportError(f"{command_text(argv)} {describe_exit(status)}:\n{tail}",
                                 host=host.name, argv=argv, exit_status=status,
                                 stdout=stdout, stderr=stderr)
        return CommandResult(exit_status=status, stdout=stdout, stderr=stderr)

    async def _wait_for_lock(self, host: Any, target: Target, session: _Session) -> None:
        """Until the wrapped command starts (or its channel ends): tell the listeners when it
        waits for the host's lock. The wait is bounded on the host (``flock -w lock_wait``);
        here by ``lock_wait`` plus a margin, should the host stop answering."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_wait + 10 * CLOSE_WAIT + self.connect_timeout
        told = False
        while not session.started.done() and not session.done.done():
            session.event.clear()
            waiting = session.header_line("wait")
            if waiting is not None and not told:
                told = True
                holder = waiting[1] if len(waiting) > 1 else "?"
                lock = waiting[2] if len(waiting) > 2 else "?"
                message = (f"waiting for a command of a previous controller to end (pid "
                           f"{holder} holds {lock} on {target.label()}; at most "
                           f"{self.lock_wait:g}s, transport.lock_wait)")
                log.warning("%s: %s", host.name, message)
                for listener in self._lock_listeners:
                    await listener(host.name, message)
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(session.event.wait(), left)
            except TimeoutError:
                return

    def _not_started(self, host: Any, target: Target, argv: tuple[str, ...],
                     session: _Session) -> TransportError:
        """Why a wrapped command never started, from the wrapper's header."""
        stdout, stderr = session.output()
        what = command_text(argv)
        where = target.label()
        if (line := session.header_line("timeout")) is not None:
            holder = line[1] if len(line) > 1 else "?"
            lock = line[2] if len(line) > 2 else "?"
            message = (f"{what} not started on {where}: its lock {lock} is still held by pid "
                       f"{holder} after {self.lock_wait:g}s (transport.lock_wait): a command "
                       f"of an earlier controller still runs there; let it end or kill its "
                       f"process group (kill -- -{holder}), then resume")
        elif (line := session.header_line("missing")) is not None:
            tool = line[1] if len(line) > 1 else "flock"
            message = (f"{what} not started on {where}: `{tool}` is not installed there; the "
                       f"ssh transport runs every command under a lock file with flock and "
                       f"setsid (util-linux): install util-linux on the host, or set "
                       f"transport.host_lock = false (then a command may outlive its "
                       f"controller)")
        elif (line := session.header_line("symlink") or session.header_line("unopenable")):
            lock = " ".join(line[1:]) or "?"
            reason = "is a symbolic link" if line[0] == "symlink" else "cannot be opened"
            message = (f"{what} not started on {where}: the lock file {lock} {reason} "
                       f"(transport.lock_dir: a directory the login user may write)"
                       + (f": {output_tail(stderr)}" if output_tail(stderr) else ""))
        elif session.status() is None:
            reason = _exc_text(session.lost) if session.lost else "the channel closed"
            message = (f"the connection to {where} dropped before {what} was seen to start "
                       f"({reason}); if it started, the host's wrapper ends it as its channel "
                       f"closed")
        else:
            tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
            message = (f"the command wrapper for {what} on {where} failed before the command "
                       f"started ({describe_exit(session.status() or 0)}): {tail}")
        return TransportError(message, host=host.name, argv=argv, stdout=stdout, stderr=stderr)

    async def _kill(self, conn: asyncssh.SSHClientConnection,
                    chan: asyncssh.SSHClientChannel[bytes], session: _Session) -> str:
        """End a command past its timeout: SIGTERM to its process group, SIGKILL after
        ``kill_grace``, then close the channel. Returns what happened, for the error message.

        The signals go through a second session on the same connection (``kill -s SIG --
        -PID``, with sudo when the transport uses it): OpenSSH refuses the protocol's own
        "signal" request for root logins, and sends it to one process only. When that session
        cannot be opened, the "signal" request is the fallback.
        """
        steps: list[str] = []
        pid = session.pid()
        for name, wait in (("TERM", self.kill_grace), ("KILL", CLOSE_WAIT)):
            sent = False
            if pid is not None:
                try:
                    result = await asyncio.wait_for(
                        conn.run(kill_command(pid, name, sudo=self.sudo), check=False),
                        CLOSE_WAIT)
                    sent = result.exit_status == 0
                except (asyncssh.Error, OSError, TimeoutError):
                    pass
            if not sent:
                try:
                    chan.send_signal(name)
                    sent = True
                except (OSError, asyncssh.Error):
                    pass
            if sent:
                steps.append(f"SIG{name}")
            if session.done.done():
                break
            done, _ = await asyncio.wait({session.done}, timeout=wait)
            if done:
                break
        what = f"sent {' then '.join(steps)} to its process group" if steps else \
            "could not signal it"
        if session.done.done():
            ended = (f"it was ended by SIG{session.exit_signal}" if session.exit_signal
                     else f"it exited with status {session.exit_status}"
                     if session.exit_status is not None else "its channel closed")
            return f"{what}; {ended}"
        chan.close()
        await asyncio.wait({session.done}, timeout=CLOSE_WAIT)
        return (f"{what} without effect and closed its channel; it may still run on the host")

    def _end_in_background(self, conn: asyncssh.SSHClientConnection,
                           chan: asyncssh.SSHClientChannel[bytes], session: _Session) -> None:
        """A cancelled command must not go on unobserved: kill it in a task of its own."""
        task = asyncio.ensure_future(self._kill(conn, chan, session))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    # ---------------------------------------------------------------------------------------
    # upload (optional transport capability)

    async def upload(self, host: Any, local_path: str | os.PathLike[str], remote_path: str,
                     *, mode: int | None = None, timeout: float | None = None) -> int:
        """Copy the local file ``local_path`` to ``remote_path`` on ``host`` over SFTP, on the
        host's connection; return the bytes copied.

        The file is written beside its destination as ``<remote_path>.part-<random>`` and
        renamed into place, so ``remote_path`` never holds half a file. It is written as
        the login user (``sudo`` does not apply): upload to a directory that user may write,
        then move it with a command. ``mode`` (e.g. ``0o644``) is set before the rename.

        Raises ``TransportError`` (``argv`` is ``("upload", local_path, remote_path)``), and
        ``CommandTimeout`` past ``timeout`` (default: the ``timeout`` setting).
        """
        local = os.fspath(local_path)
        argv = ("upload", local, remote_path)
        if self._closed:
            raise TransportError("the ssh transport is closed", host=host.name, argv=argv)
        try:
            size = await asyncio.to_thread(lambda: os.stat(local).st_size)
        except OSError as exc:
            raise TransportError(f"cannot read {local}: {exc.strerror or exc}",
                                 host=host.name, argv=argv) from None
        target = self.target(host)
        limit = self.timeout if timeout is None else timeout
        async with self._slots(target), self._parallel:
            async def open_sftp(conn: asyncssh.SSHClientConnection, attempt: _Attempt) -> Any:
                return await conn.start_sftp_client()

            _, sftp = await self._open_channel(host, target, argv, open_sftp,
                                               "cannot open SFTP")
            try:
                await asyncio.wait_for(self._put(sftp, local, remote_path, mode), limit)
            except TimeoutError:
                raise CommandTimeout(f"upload of {local} to {target.label()}:{remote_path} "
                                     f"did not finish within {limit:g}s",
                                     host=host.name, argv=argv) from None
            except (asyncssh.Error, OSError) as exc:
                raise TransportError(f"upload of {local} to {target.label()}:{remote_path} "
                                     f"failed: {_exc_text(exc)}", host=host.name,
                                     argv=argv) from exc
            finally:
                sftp.exit()
            return size

    @staticmethod
    async def _put(sftp: asyncssh.SFTPClient, local: str, remote: str,
                   mode: int | None) -> None:
        part = f"{remote}.part-{secrets.token_hex(4)}"
        try:
            await sftp.put(local, part)
            if mode is not None:
                await sftp.chmod(part, mode)
            try:
                await sftp.posix_rename(part, remote)
            except asyncssh.SFTPOpUnsupported:   # a server without the OpenSSH extension
                if await sftp.exists(remote):
                    await sftp.remove(remote)
                await sftp.rename(part, remote)
        except BaseException:
            try:
                await asyncio.shield(sftp.remove(part))
            except (asyncssh.Error, OSError, asyncio.CancelledError):
                pass
            raise
