"""A local HAProxy for labs and tests: writes the haproxy.cfg that the ``haproxy`` balancer
plugin expects (see docs/HAPROXY.md), starts haproxy in the foreground as a child process,
waits until its Runtime API answers, and stops it.

    site = HAProxySite(Path("/tmp/lab/haproxy"), port=18080)
    with HAProxyProcess(site) as proc:          # writes the files, starts, waits ready
        ...                                     # balancer settings: site.balancer_settings()

Everything here is synchronous (it runs from tests and from ``asyncio.to_thread`` in a lab).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: file names of the maps inside the map directory (the plugin's ``maps`` setting)
MAP_FILES = ("state.map", "groups.map", "cohorts.map", "split.map")
READY_TIMEOUT = 10.0

#: 2**32 % 10000: the bucket of a user is (hi * 2**32 + lo) % 10000 over the first 8 bytes of
#: sha256(user key), computed in two 32-bit halves because HAProxy's integers are signed
_TWO_POW_32_MOD_10000 = (1 << 32) % 10000


@dataclass(frozen=True, slots=True)
class StaticServer:
    """A server written into haproxy.cfg (a fleet HAProxy already knows)."""

    name: str
    address: str
    port: int
    weight: int = 100


@dataclass(frozen=True, slots=True)
class HAProxySite:
    """Where the files go and what the configuration says."""

    directory: Path
    port: int                                   # the users' frontend, on ``bind_address``
    bind_address: str = "127.0.0.1"
    backend: str = "upgrader"                   # pool backends are <backend>_1 .. _<slots>
    slots: int = 3
    balance: str = "roundrobin"
    group_header: str = "X-User-Group"
    user_header: str = "X-User"
    #: servers written into the configuration, per slot number (1-based)
    servers: Mapping[int, Sequence[StaticServer]] = field(default_factory=dict)
    #: pool bound to a slot from the start (slot number -> pool name), e.g. {1: "1.4.0"}
    pools: Mapping[int, str] = field(default_factory=dict)
    timeout_server: str = "30s"
    #: a TCP Runtime API listener besides the Unix socket (``tcp:127.0.0.1:PORT``), or None
    admin_port: int | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def map_dir(self) -> Path:
        return self.directory / "maps"

    def backend_names(self) -> list[str]:
        return [f"{self.backend}_{i}" for i in range(1, self.slots + 1)]

    def balancer_settings(self) -> dict[str, Any]:
        """The ``[balancer]`` table (without ``kind``) that drives this HAProxy."""
        return {"socket": str(self.socket_path), "backend": self.backend, "slots": self.slots,
                "maps": str(self.map_dir), "group_header": self.group_header,
                "user_header": self.user_header}


def render_config(site: HAProxySite) -> str:
    """The haproxy.cfg for ``site`` (the layout docs/HAPROXY.md documents)."""
    maps = {name.split(".")[0]: str(site.map_dir / name) for name in MAP_FILES}
    state, groups, cohorts, split = maps["state"], maps["groups"], maps["cohorts"], maps["split"]
    backends = site.backend_names()
    unset = "!{ var(txn.upg_backend) -m found }"
    lines = [
        "# written by upgrader.lab.haproxy: the layout of docs/HAPROXY.md",
        "global",
        f"    stats socket {site.socket_path} mode 600 level admin",
    ]
    if site.admin_port is not None:
        lines.append(f"    stats socket ipv4@127.0.0.1:{site.admin_port} level admin")
    lines += [
        "    stats timeout 2m",
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 3s",
        "    timeout client 30s",
        f"    timeout server {site.timeout_server}",
        "    timeout http-request 10s",
        "    retries 2",
        "    option redispatch 1",
        "",
        "frontend web",
        f"    bind {site.bind_address}:{site.port}",
        "    # 1. maintenance: every request answered 503 with Retry-After, no backend touched",
        "    http-request return status 503 content-type text/plain string \"down for "
        "maintenance, back soon\" hdr Retry-After \"%[str(retry_after),map("
        f"{state},60)]\" if {{ str(maintenance),map({state}) -m str on }}",
        "    # 2. a named group (header, else cookie `group`) routed to a pool",
        "    http-request set-var(txn.upg_group) req.cook(group)",
        f"    http-request set-var(txn.upg_group) req.hdr({site.group_header}) "
        f"if {{ req.hdr({site.group_header}) -m found }}",
        f"    http-request set-var(txn.upg_backend) var(txn.upg_group),map({groups})",
        "    # 3. cohorts: bucket = first 8 bytes of sha256(user key), big-endian, mod 10000",
        f"    http-request set-var(txn.upg_user) req.cook(user) if {unset}",
        f"    http-request set-var(txn.upg_user) req.hdr({site.user_header}) "
        f"if {unset} {{ req.hdr({site.user_header}) -m found }}",
        f"    http-request set-var(txn.upg_hash) var(txn.upg_user),sha2(256) "
        f"if {unset} {{ var(txn.upg_user) -m found }}",
        "    http-request set-var(txn.upg_hi) var(txn.upg_hash),bytes(0,4),be2dec(:,4),"
        "mod(10000) if { var(txn.upg_hash) -m found }",
        "    http-request set-var(txn.upg_lo) var(txn.upg_hash),bytes(4,4),be2dec(:,4) "
        "if { var(txn.upg_hash) -m found }",
        f"    http-request set-var(txn.upg_bucket) var(txn.upg_hi),mul({_TWO_POW_32_MOD_10000}),"
        "add(txn.upg_lo),mod(10000) if { var(txn.upg_hash) -m found }",
        f"    http-request set-var(txn.upg_backend) var(txn.upg_bucket),map_int({cohorts}) "
        f"if {unset} {{ var(txn.upg_bucket) -m found }}",
        "    # 4. everyone else: the routes' default pool, else the split",
        f"    http-request set-var(txn.upg_backend) str(default),map({state}) if {unset}",
        f"    http-request set-var(txn.upg_backend) rand(10000),map_int({split}) if {unset}",
        "    # the chosen pool while it has a usable server; else any pool that has one",
    ]
    for name in backends:
        lines.append(f"    use_backend {name} if {{ var(txn.upg_backend) -m str {name} }} "
                     f"{{ nbsrv({name}) gt 0 }}")
    for name in backends:
        lines.append(f"    use_backend {name} if {{ nbsrv({name}) gt 0 }}")
    lines.append(f"    default_backend {backends[0]}")
    for index, name in enumerate(backends, start=1):
        lines += ["", f"backend {name}", f"    balance {site.balance}"]
        for server in site.servers.get(index, ()):
            lines.append(f"    server {server.name} {server.address}:{server.port} "
                         f"weight {server.weight}")
    return "\n".join(lines) + "\n"


def render_state_map(site: HAProxySite) -> str:
    """The state map's initial content: the pools bound to slots from the start."""
    from urllib.parse import quote

    return "".join(f"pool.{site.backend}_{slot} {quote(pool, safe='')}\n"
                   for slot, pool in sorted(site.pools.items()))


def write_files(site: HAProxySite) -> Path:
    """Write haproxy.cfg and the map files (maps are written only where missing, so a
    restart keeps what was mirrored to them). Returns the configuration's path."""
    site.directory.mkdir(parents=True, exist_ok=True)
    site.map_dir.mkdir(parents=True, exist_ok=True)
    for name in MAP_FILES:
        path = site.map_dir / name
        if not path.exists():
            path.write_text(render_state_map(site) if name == "state.map" else "",
                            encoding="utf-8")
    _write_atomic(site.config_path, render_config(site))
    return site.config_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.path.exists(p)), None)


def runtime_command(socket_path: str | Path, command: str, timeout: float = 5.0) -> str:
    """One Runtime API command over the Unix socket; the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class HAProxyProcess:
    """haproxy in the foreground (``-db``) as a child of this process."""

    def __init__(self, site: HAProxySite, *, binary: str | None = None) -> None:
        self.site = site
        self.binary = binary or haproxy_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = site.directory / "haproxy.log"
        self._log: Any = None

    def check(self) -> None:
        """``haproxy -c``: raise RuntimeError with haproxy's words if the config is bad."""
        if self.binary is None:
            raise RuntimeError("haproxy is not installed")
        result = subprocess.run([self.binary, "-c", "-q", "-f", str(self.site.config_path)],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {self.site.config_path}:\n"
                               f"{result.stdout}{result.stderr}")

    def start(self, timeout: float = READY_TIMEOUT) -> HAProxyProcess:
        if self.binary is None:
            raise RuntimeError("haproxy is not installed")
        write_files(self.site)
        self.check()
        self.site.socket_path.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.site.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=str(self.site.directory))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the Runtime API answers ``show info`` (or haproxy exits: RuntimeError)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with status {self.process.returncode}:\n"
                                   + self.log_tail())
            try:
                if "Name: HAProxy" in runtime_command(self.site.socket_path, "show info", 1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy's Runtime API did not answer within {timeout:g} s:"
                                   f"\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGUSR1 (soft stop: finish what is in flight), then SIGKILL after ``timeout``."""
        process, self.process = self.process, None
        status = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGUSR1)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            status = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return status

    def __enter__(self) -> HAProxyProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
