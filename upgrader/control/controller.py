"""Controller processes: where a fleet's control socket and token live, serving a rollout on
them, starting a detached controller and finding (connecting to) a running one.

    <state_dir>/<fleet>.control.sock     the control API (0600; a short path under
                                          /tmp/upgrader-<uid>/ when this one is too long)
    <state_dir>/<fleet>.control.token    the bearer token, fresh for each controller (0600)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ControlError, PolicyRefused
from ..tokens import new_token, read_token_file, write_token_file
from .client import RemoteRollout
from .server import HEARTBEAT_S, MAX_SOCKET_PATH, ControlServer, socket_answers

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.core import RolloutResult
    from ..rollout import Rollout

log = logging.getLogger("upgrader.control")

#: how long a controller keeps serving after the rollout ends, so attached clients see the end
LINGER_S = 2.0
SHORT_SOCKET_ROOT = Path("/tmp")

# detached children, kept so that Popen does not warn about a still-running process
_DETACHED: list[subprocess.Popen[bytes]] = []


def control_paths(state_dir: str | Path, fleet_name: str) -> tuple[Path, Path]:
    """``(socket_path, token_path)`` of the controller of ``fleet_name`` in ``state_dir``.

    Both live in the state folder; when the socket path would pass the ~107 bytes a Unix
    socket allows, it moves to ``/tmp/upgrader-<uid>/<hash of state dir and fleet>.sock``
    (the same for every process that asks, so clients find it)."""
    state = Path(state_dir).expanduser().resolve()
    socket_path = state / f"{fleet_name}.control.sock"
    token_path = state / f"{fleet_name}.control.token"
    if len(os.fsencode(str(socket_path))) > MAX_SOCKET_PATH:
        digest = hashlib.sha256(os.fsencode(str(state)) + b"\0" + fleet_name.encode())
        socket_path = short_socket_dir() / f"{digest.hexdigest()[:20]}.sock"
    return socket_path, token_path


def short_socket_dir() -> Path:
    return SHORT_SOCKET_ROOT / f"upgrader-{os.getuid()}"


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700; refuse one that another user owns or others may write to (a
    shared /tmp is where someone could plant a socket of their own)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PolicyRefused(f"{path} is not a folder of this user; refusing to put a control "
                            "socket there")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def write_token(token_path: str | Path) -> str:
    """A fresh random token in ``token_path`` (0600, replaced atomically); returns it."""
    token = new_token()
    write_token_file(token_path, token)
    return token


def read_token(token_path: str | Path) -> str:
    """The controller's token. ``ControlError`` when there is none (no controller);
    ``ConfigError`` (exit 2) when group or others may read it, with the ``chmod 600`` fix:
    the same rule as every token file of upgrader (:mod:`upgrader.tokens`)."""
    path = Path(token_path)
    if not path.exists():
        raise ControlError(f"no control token at {path}")
    return read_token_file(path)


def _remove_token(token_path: Path, token: str) -> None:
    try:
        if token_path.read_text().strip() == token:    # ours, not a successor's
            token_path.unlink()
    except FileNotFoundError:
        pass


async def serve_rollout(rollout: Rollout, *, linger: float = LINGER_S,
                        heartbeat: float | None = None) -> RolloutResult:
    """Run an entered ``Rollout`` while serving its control API; return its result.

    Writes a fresh token, serves ``rollout.engine`` on the fleet's control socket, runs the
    rollout, keeps serving ``linger`` seconds after the end (when a client has watched) so
    attached clients see ``rollout_finished``, then removes the socket and the token."""
    engine = rollout.engine
    if engine is None:
        raise ControlError("serve_rollout needs an entered Rollout (`async with Rollout(...)`)")
    socket_path, token_path = control_paths(rollout.state_dir, rollout.fleet.name)
    if socket_path.parent != token_path.parent:     # the token is in the (resolved) state dir
        _ensure_private_dir(socket_path.parent)
    token = await asyncio.to_thread(write_token, token_path)
    server = ControlServer(engine, socket_path=socket_path, token=token,
                           heartbeat=HEARTBEAT_S if heartbeat is None else heartbeat)
    try:
        await server.start()
    except BaseException:
        _remove_token(token_path, token)
        raise
    try:
        result = await rollout.run()
        if server.streams_opened or server.active_streams:
            await asyncio.sleep(linger)
        return result
    finally:
        await server.aclose()
        _remove_token(token_path, token)


def start_detached(argv: Sequence[str], *, log_path: str | Path,
                   env: dict[str, str] | None = None) -> int:
    """Start ``python -m upgrader.cli *argv`` in a session of its own, with no terminal:
    stdin from /dev/null, stdout and stderr appended to ``log_path`` (0600). Returns its pid."""
    path = Path(log_path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "upgrader.cli", *argv],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env)
    finally:
        os.close(fd)
    _DETACHED.append(proc)
    return proc.pid


def controller_exit_status(pid: int) -> int | None:
    """The exit status of our child ``pid`` if it has ended (reaping it), else None. For a
    process that is not our child: None while it exists, -1 once it is gone. Asked again
    after the reaping, it returns the same status."""
    for proc in _DETACHED:
        if proc.pid == pid and proc.returncode is not None:
            return proc.returncode
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            return None
        return None
    if done == 0:
        return None
    for proc in _DETACHED:
        if proc.pid == pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
    return os.waitstatus_to_exitcode(status)


async def controller_running(state_dir: str | Path, fleet_name: str) -> bool:
    """True if a controller answers on the fleet's control socket."""
    socket_path, _ = control_paths(state_dir, fleet_name)
    return socket_path.exists() and await socket_answers(socket_path)


async def connect(state_dir: str | Path, fleet_name: str, *, timeout: float = 10.0,
                  reconnect_timeout: float = 60.0, pid: int | None = None,
                  fleet_file: str | None = None) -> RemoteRollout:
    """A connected ``RemoteRollout`` on the controller of ``fleet_name``.

    Waits up to ``timeout`` seconds for the controller to answer (a detached one may still be
    starting). ``ControlError`` if none does, or at once if ``pid`` (the controller just
    started with ``start_detached``) exits first; its hint names ``fleet_file`` so that the
    suggested ``upgrader status`` command runs as printed."""
    socket_path, token_path = control_paths(state_dir, fleet_name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    last_error: ControlError | None = None
    while True:
        if socket_path.exists() and token_path.exists() and await socket_answers(socket_path):
            try:
                token = await asyncio.to_thread(read_token, token_path)
                remote = RemoteRollout(socket_path, token, reconnect_timeout=reconnect_timeout)
                return await remote.connect(timeout=max(1.0, deadline - loop.time()))
            except ControlError as exc:    # e.g. the token changed under us: try again
                last_error = exc
        if pid is not None:
            status = controller_exit_status(pid)
            if status is not None:
                raise ControlError(f"the controller (pid {pid}) for fleet {fleet_name} exited "
                                   f"with status {status} before it served its control API")
        if loop.time() >= deadline:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    state = token_path.parent       # the state dir, resolved
    detail = f" ({last_error})" if last_error else ""
    command = f"upgrader status {fleet_file}" if fleet_file else "upgrader status <fleet file>"
    raise ControlError(f"no controller for fleet {fleet_name} in {state}; is a rollout "
                       f"running? `{command}`{detail}")
