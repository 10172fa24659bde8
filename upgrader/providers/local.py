"""The ``local`` transport: host commands run as local subprocesses (the lab, a one-machine
deployment, blue-green on one host).

Commands are argument lists run with ``asyncio.create_subprocess_exec`` (never a shell), each
in a session of its own so that a daemon it starts outlives the controller. Output goes to
temporary files rather than pipes: a command that leaves a background process holding its
stdout still returns as soon as the command itself exits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence
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
)

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
                 env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
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
        self._semaphore = asyncio.Semaphore(max_parallel)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> LocalTransport:
        return cls(max_parallel=settings["max_parallel"], timeout=settings["timeout"],
                   env=settings["env"], cwd=settings["cwd"])

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
