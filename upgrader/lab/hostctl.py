"""Host control for lab hosts: the commands the engine runs on each lab host (built by
``LabLayout.commands()``), over a Capistrano layout under ROOT::

    releases/<version>/release.json   {"version", "variant"}
    current -> releases/<version>     slot "default"; slot S uses slots/S/current
    installs.log                      one JSON line {"ts", "release", "slot"} per install
                                      (and per switch, with "switch": true)
    run/<slot>.pid   logs/<slot>.log

Release directories are never removed, so ``switch`` (the link moved back to a release
directory that is there already, nothing written into it) can go back to any earlier release.

``python -m upgrader.lab.hostctl {install,switch,start,stop,current,system-test} --root ROOT
--slot SLOT --port PORT [--release R] [--address A]``. Exit 0 done, 1 failed, 2 bad arguments.
No shell is used anywhere. The process helpers here are shared with ``upgrader.lab.manager``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LabError
from .app import slot_current_link, variant_of

if TYPE_CHECKING:
    import subprocess

# subprocess and socket are imported where they are used: the engine runs hostctl three times
# a host procedure (stop, install or switch, start), and only start needs them

RELEASE_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
SLOT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
APP_MODULE = "upgrader.lab.app"


class HostctlError(LabError):
    """A command failed; ``status`` is the exit status (1 failed, 2 bad arguments)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# process helpers (also used by the lab manager)


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs (a zombie counts as dead: nobody may have reaped it yet)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    # state is the field after the parenthesised command name
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"] and state != ["X"]


def pid_cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` (None when /proc cannot tell)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_matches(pid: int | None, *needles: str) -> bool:
    """True if ``pid`` is alive and (where /proc can tell) its argv contains every needle,
    so a recycled pid is never signalled."""
    if not pid_alive(pid):
        return False
    argv = pid_cmdline(pid)  # type: ignore[arg-type]
    if argv is None:
        return True
    return all(needle in argv for needle in needles)


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (no zombies left behind); ignore it otherwise."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def terminate(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL. True if it stopped
    within the timeout (i.e. was not killed)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(POLL_INTERVAL)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _ in range(250):
        reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(POLL_INTERVAL)
    return False


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def child_env() -> dict[str, str]:
    """The environment for a lab child: makes ``upgrader`` importable from any cwd."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_parent not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def spawn_detached(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (it outlives its caller), stdin from /dev/null,
    stdout and stderr appended to ``log_path``."""
    import subprocess

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=child_env(),
        )


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write ``path`` through a temporary file, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode if mode is not None else 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------------------------
# host layout


def slot_name(slot: str | None) -> str:
    return slot or "default"


def pid_file(root: Path, slot: str) -> Path:
    return root / "run" / f"{slot_name(slot)}.pid"


def log_file(root: Path, slot: str) -> Path:
    return root / "logs" / f"{slot_name(slot)}.log"


def installs_log(root: Path) -> Path:
    return root / "installs.log"


def read_pid(root: Path, slot: str) -> int | None:
    try:
        return int(pid_file(root, slot).read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(root: Path, slot: str, port: int | None = None) -> int | None:
    """The pid of the slot's app if it runs (checked against its argv), else None. An app
    that runs without a pid file (its ``start`` was killed between spawning it and writing
    the file) is found by its argv and adopted: the pid file is written."""
    pid = read_pid(root, slot)
    needles = [APP_MODULE, "--slot", slot_name(slot)]
    if port is not None:
        needles.append(str(port))
    if pid_matches(pid, *needles):
        return pid
    found = find_app_pid(root, slot, port)
    if found is not None:
        write_atomic(pid_file(root, slot), f"{found}\n")
    return found


def find_app_pid(root: Path, slot: str, port: int | None = None) -> int | None:
    """The app started for this root and slot (and port), found by its argv in /proc."""
    def arg(argv: list[str], name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv[:-1] else None

    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    want = (str(root), slot_name(slot), None if port is None else str(port))
    for entry in entries:
        if not entry.isdigit():
            continue
        argv = pid_cmdline(int(entry))
        if not argv or APP_MODULE not in argv:
            continue
        seen = (arg(argv, "--root"), arg(argv, "--slot"), arg(argv, "--port"))
        if seen[:2] == want[:2] and (want[2] is None or seen[2] == want[2]):
            return int(entry)
    return None


def current_release(root: Path, slot: str) -> str | None:
    link = slot_current_link(root, slot_name(slot))
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return Path(target).name or None


def read_installs(root: Path) -> list[dict[str, Any]]:
    try:
        text = installs_log(root).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a torn last line from a crash is not an install
    return records


# --------------------------------------------------------------------------------------------
# commands


def _check_release(release: str) -> None:
    if not RELEASE_RE.match(release) or release in (".", ".."):
        raise HostctlError(
            f"invalid release name {release!r}: use only letters, digits and . _ + -", 2)


def install(root: Path, slot: str, release: str) -> None:
    _check_release(release)
    release_dir = root / "releases" / release
    release_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(release_dir / "release.json",
                 json.dumps({"version": release, "variant": variant_of(release)}) + "\n")
    _make_current(root, slot_name(slot), release_dir, {})


def switch(root: Path, slot: str, release: str) -> None:
    """Make ``release``, installed earlier and still on disk, the slot's current release
    again (exit 1 when it is not there: nothing changed)."""
    _check_release(release)
    release_dir = root / "releases" / release
    if not (release_dir / "release.json").is_file():
        raise HostctlError(f"release {release} is not installed under {root} (switch only "
                           "goes back to a release directory that is there; install it)")
    _make_current(root, slot_name(slot), release_dir, {"switch": True})


def _make_current(root: Path, slot: str, release_dir: Path, extra: dict[str, Any]) -> None:
    """Point the slot's ``current`` link at ``release_dir`` and record it in installs.log."""
    release = release_dir.name
    link = slot_current_link(root, slot)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp_link = link.with_name(f".{link.name}.{os.getpid()}.{os.urandom(4).hex()}")
    os.symlink(os.path.relpath(release_dir, link.parent), tmp_link)
    record = json.dumps({"ts": time.time(), "release": release, "slot": slot,
                         **extra}) + "\n"
    # one write(2) on an O_APPEND descriptor: concurrent installs never interleave
    fd = os.open(installs_log(root), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # the switch and its record are one act: a controller killed between them would
        # leave a host on the new release that installs.log says never installed it
        with _not_interrupted():
            try:
                os.replace(tmp_link, link)
            except BaseException:
                try:
                    os.unlink(tmp_link)
                except OSError:
                    pass
                raise
            os.write(fd, record.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(link.parent)


_PR_SET_PDEATHSIG = 1
_DEFERRED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _not_interrupted:
    """A few system calls no controller death splits: TERM, INT and HUP wait until the end
    (the SSH wrapper's way to stop a command), and so does the local transport's death signal
    (``PR_SET_PDEATHSIG``, a KILL), which is re-armed afterwards: a controller that died
    meanwhile ends the command then, with status 137."""

    def __enter__(self) -> None:
        self.parent = os.getppid()
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
        self.libc = _libc()
        self.deathsig = 0
        if self.libc is not None:
            import ctypes
            value = ctypes.c_int(0)
            if self.libc.prctl(2, ctypes.byref(value), 0, 0, 0) == 0:   # PR_GET_PDEATHSIG
                self.deathsig = value.value
            if self.deathsig:
                self.libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)

    def __exit__(self, *exc_info: object) -> None:
        if self.libc is not None and self.deathsig:
            self.libc.prctl(_PR_SET_PDEATHSIG, self.deathsig, 0, 0, 0)
            if os.getppid() != self.parent:
                os._exit(137)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def start(root: Path, slot: str, port: int, host: str | None = None,
          timeout: float = START_TIMEOUT, bind: str = "127.0.0.1") -> int:
    """Start the slot's app unless it runs; return its pid once the port accepts connections
    on ``bind`` (the app's listen address)."""
    slot = slot_name(slot)
    log = log_file(root, slot)
    pid = running_pid(root, slot, port)
    if pid is not None:
        if _wait_port(port, lambda: pid_alive(pid), timeout, bind):
            return pid
        raise HostctlError(f"app (pid {pid}) runs but port {port} does not answer\n"
                           + log_tail(log))
    if current_release(root, slot) is None:
        raise HostctlError(f"nothing installed for slot {slot!r} under {root}")
    if port_open(port, bind):
        raise HostctlError(f"port {port} is already in use by another process")
    argv = [sys.executable, "-m", APP_MODULE, "--root", str(root), "--slot", slot,
            "--port", str(port), "--host", host or root.name]
    if bind != "127.0.0.1":
        argv += ["--bind", bind]
    proc = spawn_detached(argv, log)
    write_atomic(pid_file(root, slot), f"{proc.pid}\n")
    if _wait_port(port, lambda: proc.poll() is None, timeout, bind):
        return proc.pid
    status = proc.poll()
    if status is None:
        terminate(proc.pid, timeout=2.0)
        reason = f"did not listen on port {port} within {timeout:g} s"
    else:
        reason = f"exited with status {status} before listening on port {port}"
    _remove(pid_file(root, slot))
    raise HostctlError(f"app for slot {slot!r} {reason}; log tail:\n{log_tail(log)}")


def _wait_port(port: int, alive: Callable[[], bool], timeout: float,
               address: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if port_open(port, address, timeout=0.1):
            return True
        time.sleep(POLL_INTERVAL)
    return False


def stop(root: Path, slot: str, port: int | None = None, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the slot's app (SIGTERM, then SIGKILL after ``timeout``). True if it was running."""
    slot = slot_name(slot)
    pid = running_pid(root, slot, port)
    if pid is None:
        _remove(pid_file(root, slot))
        return False
    terminate(pid, timeout)
    _remove(pid_file(root, slot))
    return True


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def system_test(address: str, port: int, requests: int = 5, timeout: float = 5.0) -> str:
    """GET / ``requests`` times and /healthz; every answer must be 2xx."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    host = f"[{address}]" if ":" in address else address
    base = f"http://{host}:{port}"
    versions = set()
    for path in ["/"] * requests + ["/healthz"]:
        url = base + path
        try:
            with opener.open(url, timeout=timeout) as response:
                response.read()
                versions.add(response.headers.get("X-Version"))
        except urllib.error.HTTPError as exc:
            raise HostctlError(f"system test failed: GET {url} answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HostctlError(f"system test failed: GET {url}: {reason}") from None
    served = ", ".join(sorted(v for v in versions if v)) or "unknown"
    return f"system test passed: {requests + 1} requests to {base}, version {served}"


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m upgrader.lab.hostctl",
                                     description="Control one lab host (slot).")
    parser.add_argument("command", choices=["install", "switch", "start", "stop", "current",
                                            "system-test"])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--slot", default="default")
    parser.add_argument("--port", type=int)
    parser.add_argument("--release")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--host", help="host name the app reports (default: ROOT's name)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="start: the address the app listens on (default 127.0.0.1)")
    return parser


def run(args: argparse.Namespace) -> str | None:
    root = args.root.expanduser().resolve()
    slot = slot_name(args.slot)
    if not SLOT_RE.match(slot):
        raise HostctlError(f"invalid slot name {slot!r}", 2)
    if args.port is not None and not 0 < args.port < 65536:
        raise HostctlError(f"invalid port {args.port}", 2)
    needs_port = args.command in ("start", "system-test")
    if needs_port and args.port is None:
        raise HostctlError(f"{args.command} needs --port", 2)

    if args.command in ("install", "switch"):
        if not args.release:
            raise HostctlError(f"{args.command} needs --release", 2)
        (install if args.command == "install" else switch)(root, slot, args.release)
        return None
    if args.command == "start":
        start(root, slot, args.port, host=args.host, bind=args.bind)
        return None
    if args.command == "stop":
        stop(root, slot, args.port)
        return None
    if args.command == "current":
        return current_release(root, slot) or ""
    return system_test(args.address, args.port)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    try:
        output = run(args)
    except HostctlError as exc:
        print(f"hostctl {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:
        print(f"hostctl {args.command}: {exc}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
