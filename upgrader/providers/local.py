"""The ``local`` transport: host commands run as local subprocesses (the lab, a one-machine
deployment, blue-green on one host).

Commands are argument lists run with ``asyncio.create_subprocess_exec`` (never a shell), each
in a session of its own so that a daemon it starts outlives the controller. Output goes to
temporary files rather than pipes: a command that leaves a background process holding its
stdout still returns as soon as the command itself exits.

No command of a dead controller runs beside a new one: the command itself dies with its
controller (``PR_SET_PDEATHSIG``), and while it runs a record file names its process group
(``<lock_dir>/upgrader-<fleet>-<host>[-<port>].d/<pgid>``). A child the command left in its
group (a shell's subprocess, a double fork without ``setsid``) does not get the controller's
death signal; a later controller finds the record, and waits (at most ``lock_wait`` seconds,
saying so) until no process of that group is left before it runs a command on the host.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import signal
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import CommandTimeout, ConfigError, TransportError
from ..hookspecs import Register, hookimpl
from ..model import Host
from .base import (
    CommandResult,
    ProviderContext,
    Setting,
    Transport,
    command_text,
    describe_exit,
    output_tail,
)

SETTINGS: tuple[Setting, ...] = (
    Setting("max_parallel", int, 32, "commands running at once, over all hosts"),
    Setting("timeout", float, 300.0,
            "seconds a command may run before its process group is killed "
            "(a per-call timeout overrides it)"),
    Setting("env", dict, {}, "extra environment variables for every command"),
    Setting("cwd", str, None,
            "working directory; a template of {host} {address} {port} and the host's vars"),
    Setting("lock_dir", str, None,
            "directory of the per-host records of running commands; default "
            "$XDG_RUNTIME_DIR, else <tmp>/upgrader-<uid>"),
    Setting("lock_wait", float, 120.0,
            "seconds a command waits for the processes of a dead controller's command on its "
            "host to end, before failing"),
)

#: seconds between two looks at a dead controller's command group
ORPHAN_POLL = 0.05

#: how many trailing lines of stderr an error message quotes


def host_fields(host: Host, port: int | None = None) -> dict[str, str]:
    """Template fields of a host: its vars, then host, address, port."""
    fields = {str(k): str(v) for k, v in host.vars.items()}
    chosen = port if port is not None else host.port
    fields.update(host=host.name, address=host.address,
                  port="" if chosen is None else str(chosen))
    return fields





def _open_outputs() -> tuple[IO[bytes], IO[bytes]]:
    return tempfile.TemporaryFile(), tempfile.TemporaryFile()


def _read_outputs(files: tuple[IO[bytes], IO[bytes]]) -> tuple[str, str]:
    texts = []
    for f in files:
        try:
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
        finally:
            f.close()
    return texts[0], texts[1]


def default_lock_dir() -> Path:
    """``$XDG_RUNTIME_DIR`` (per user, 0700), else ``<tmp>/upgrader-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime)
    return Path(tempfile.gettempdir()) / f"upgrader-{os.getuid()}"


def records_name(fleet: str | None, host: str, port: int | None = None) -> str:
    """``upgrader-<fleet>-<host>[-<port>].d``, every character outside ``[A-Za-z0-9._-]``
    as ``_``. The port tells apart two local fleets of one name and host names (two labs,
    two demos at once on one machine): a command of the other is not a dead controller's."""
    parts = ["upgrader", *([fleet] if fleet else []), host, *([str(port)] if port else [])]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts)) + ".d"


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():                 # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass



_PR_SET_PDEATHSIG = 1


def _die_with_controller(controller: int) -> None:  # pragma: no cover - in the child
    """In the child, before exec: if the controller dies, the command dies with it.

    A command still running when its controller is killed would otherwise go on in its own
    session, and finish (say, switch a release) after ``upgrader resume`` has asked the host
    what it runs: the host would be installed twice, or changed behind a roll-back. Daemons a
    command starts (``start`` of a service) do not inherit this and keep running.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != controller:   # the controller died before prctl took effect
            os._exit(137)
    except (OSError, AttributeError):
        pass

class LocalTransport:
    """Runs each command as a local subprocess, at most ``max_parallel`` at a time."""

    def __init__(self, *, max_parallel: int = 32, timeout: float | None = 300.0,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 lock_dir: str | None = None, lock_wait: float = 120.0,
                 fleet: str | None = None) -> None:
        if max_parallel < 1:
            raise ConfigError(f"must be at least 1, got {max_parallel}",
                              key="transport.max_parallel")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"must be above 0 seconds, got {timeout}", key="transport.timeout")
        for key, value in (env or {}).items():
            if not isinstance(value, str):
                raise ConfigError(f"environment variable {key!r} must be a string, got {value!r}",
                                  key="transport.env")
        self.max_parallel = max_parallel
        self.timeout = timeout
        self.env = dict(env or {})
        self.cwd = cwd
        if lock_wait <= 0:
            raise ConfigError(f"must be above 0 seconds, got {lock_wait}",
                              key="transport.lock_wait")
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir else default_lock_dir()
        self.lock_wait = lock_wait
        self.fleet = fleet
        #: this controller's name in the records: its own commands are never waited for
        self.token = f"{os.getpid()}.{secrets.token_hex(6)}"
        self._lock_listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self._semaphore = asyncio.Semaphore(max_parallel)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> LocalTransport:
        return cls(max_parallel=settings["max_parallel"], timeout=settings["timeout"],
                   env=settings["env"], cwd=settings["cwd"], lock_dir=settings["lock_dir"],
                   lock_wait=settings["lock_wait"],
                   fleet=context.fleet.name if context and context.fleet else None)

    def watch_lock_waits(self, callback: Callable[[str, str], Awaitable[None]]) -> None:
        """Optional capability: ``await callback(host_name, message)`` when a command waits
        for a dead controller's command on its host to end (the engine logs it)."""
        self._lock_listeners.append(callback)

    def records_dir(self, host: Host) -> Path:
        """Where ``host``'s running commands are recorded (one file per process group)."""
        return self.lock_dir / records_name(self.fleet, host.name, host.port)

    def _records(self, host: Host, argv: tuple[str, ...]) -> Path:
        records = self.records_dir(host)
        try:
            self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            records.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise TransportError(f"cannot make {records} (transport.lock_dir): "
                                 f"{exc.strerror or exc}", host=host.name, argv=argv) from None
        return records

    def _foreign_records(self, records: Path) -> list[tuple[Path, int]]:
        """The records of other controllers' commands: (file, process group)."""
        found = []
        for record in sorted(records.iterdir()):
            if not record.name.isdigit():
                continue
            try:
                owner = record.read_text().split(" ", 1)[0]
            except OSError:
                continue
            if owner != self.token:
                found.append((record, int(record.name)))
        return found

    async def _wait_for_orphans(self, host: Host, records: Path,
                                argv: tuple[str, ...]) -> None:
        """Wait until no process is left of a command another controller started on ``host``
        (it died while the command ran: its record stayed); forget the records of groups
        that ended."""
        loop = asyncio.get_running_loop()
        deadline = None
        told = False
        for record, pgid in await asyncio.to_thread(self._foreign_records, records):
            while await asyncio.to_thread(group_alive, pgid):
                if deadline is None:
                    deadline = loop.time() + self.lock_wait
                if not told:
                    told = True
                    message = (f"waiting for a command of a previous controller to end "
                               f"(process group {pgid}, recorded in {record}; at most "
                               f"{self.lock_wait:g}s, transport.lock_wait)")
                    for listener in self._lock_listeners:
                        await listener(host.name, message)
                if loop.time() >= deadline:
                    raise TransportError(
                        f"{command_text(argv)} not started: process group {pgid} of a command "
                        f"of an earlier controller still runs ({record}) after "
                        f"{self.lock_wait:g}s (transport.lock_wait); let it end or kill it "
                        f"(kill -- -{pgid}), then resume", host=host.name, argv=argv)
                await asyncio.sleep(ORPHAN_POLL)
            record.unlink(missing_ok=True)

    async def __aenter__(self) -> LocalTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True

    def _cwd_for(self, host: Host) -> str | None:
        if self.cwd is None:
            return None
        try:
            return self.cwd.format_map(host_fields(host))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"bad template {self.cwd!r} for host {host.name}: {exc!r}",
                              key="transport.cwd") from exc

    async def run(self, host: Host, argv: Sequence[str], *, timeout: float | None = None,
                  check: bool = True) -> CommandResult:
        """Run ``argv`` locally for ``host``.

        :param timeout: seconds (default: the ``timeout`` setting); past it the command's
            process group is killed and ``CommandTimeout`` raised.
        :param check: raise ``TransportError`` on a non-zero exit status.
        """
        return await self._run(host, argv, timeout=timeout, check=check, recorded=True)

    async def run_unlocked(self, host: Host, argv: Sequence[str], *,
                           timeout: float | None = None, check: bool = True) -> CommandResult:
        """Optional capability: run a short bookkeeping command (the fleet lock's file)
        unrecorded, without waiting for other controllers' commands on the host: a second
        controller must learn at once that the fleet is taken."""
        return await self._run(host, argv, timeout=timeout, check=check, recorded=False)

    async def _run(self, host: Host, argv: Sequence[str], *, timeout: float | None,
                   check: bool, recorded: bool) -> CommandResult:
        argv = tuple(argv)
        if self._closed:
            raise TransportError("the local transport is closed", host=host.name, argv=argv)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TransportError(f"a command is a non-empty list of strings, got {list(argv)!r}",
                                 host=host.name, argv=argv)
        limit = self.timeout if timeout is None else timeout
        cwd = self._cwd_for(host)
        env = {**os.environ, **self.env} if self.env else None
        async with self._semaphore:
            records = self._records(host, argv) if recorded else None
            if records is not None:
                await self._wait_for_orphans(host, records, argv)
            files = await asyncio.to_thread(_open_outputs)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=files[0], stderr=files[1],
                    env=env, cwd=cwd, start_new_session=True,
                    preexec_fn=functools.partial(_die_with_controller, os.getpid()))
            except OSError as exc:
                await asyncio.to_thread(_read_outputs, files)
                raise TransportError(
                    f"cannot run {argv[0]!r}: {exc.strerror or exc}"
                    + (f" (cwd {cwd})" if cwd and isinstance(exc, FileNotFoundError)
                       and exc.filename == cwd else ""),
                    host=host.name, argv=argv) from exc
            record = records / str(proc.pid) if records is not None else None
            try:
                if record is not None:
                    record.write_text(f"{self.token} {os.getpid()} {argv[0]}\n")
            except OSError:
                pass                    # the command runs all the same, unrecorded
            try:
                if limit is None:
                    status = await proc.wait()
                else:
                    status = await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError as exc:
                _kill_group(proc.pid)
                await proc.wait()
                stdout, stderr = await asyncio.to_thread(_read_outputs, files)
                raise CommandTimeout(
                    f"{command_text(argv)} did not finish within {limit:g}s and was killed",
                    host=host.name, argv=argv, stdout=stdout, stderr=stderr) from exc
            except BaseException:
                # cancelled: the command must not go on unobserved
                if proc.returncode is None:
                    _kill_group(proc.pid)
                for f in files:
                    f.close()
                raise
            finally:
                if record is not None:
                    record.unlink(missing_ok=True)
            stdout, stderr = await asyncio.to_thread(_read_outputs, files)
        if check and status != 0:
            tail = output_tail(stderr) or output_tail(stdout) or "(no output)"
            raise TransportError(f"{command_text(argv)} {describe_exit(status)}:\n{tail}",
                                 host=host.name, argv=argv, exit_status=status,
                                 stdout=stdout, stderr=stderr)
        return CommandResult(exit_status=status, stdout=stdout, stderr=stderr)


@hookimpl
def register_transports(register: Register[Transport]) -> None:
    register("local", LocalTransport.from_settings, settings=SETTINGS,
             description="commands run as local subprocesses (argument lists, no shell)")
