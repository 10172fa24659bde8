"""The SSH lab: every lab host is a machine of its own, reached over SSH, behind HAProxy.

Each host runs its own ``sshd`` and its app, in a network namespace of its own with its own
address (a veth pair into a bridge in the root namespace, which holds the gateway address),
or, where namespaces cannot be made (not root, no ``ip``), on its own 127.x.y.z loopback
address. HAProxy fronts the hosts (the layout the ``haproxy`` balancer plugin expects,
written by :mod:`upgrader.lab.haproxy`) and the lab's traffic generator plays the users
against it. A client key and a known_hosts file are generated, so the ``ssh`` transport
verifies every host key. The host files (Capistrano layout, installs.log) live in the lab
dir, since it is one machine; the engine only reaches them through SSH.

``[lab] ssh = true`` in a fleet file makes the loader take the transport (``ssh``), the
balancer (``haproxy``), the commands and the hosts from :class:`SshLabLayout`. Addresses,
from the subnet S (default 10.231.0.0/24) and base port B::

    netns mode     host i: S.(10+i), gateway (bridge, root namespace) S.1
    loopback mode  host i: 127.<S's 2nd octet>.<S's 3rd octet>.(10+i)
    sshd of host i: port B+200+i; app: port B+100+i (green slot B+300+i); HAProxy: 127.0.0.1:B

Everything on the root side is named after the lab dir (``lab_id``: 6 hex digits), so two
labs in two dirs never touch each other's namespaces and links, and ``lab down`` (or a new
``lab up`` in the same dir) removes what a killed lab left behind.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import LabError, UpgraderError
from ..model import Commands, Host, ProviderSpec
from . import hostctl
from .layout import LabLayout
from .manager import (
    STATE_VERSION,
    HostRunner,
    Lab,
    LabState,
    StartStep,
    plain,
    read_layout_fields,
)

NETWORKS = ("auto", "netns", "loopback")
DEFAULT_SUBNET = "10.231.0.0/24"
#: pool backends in haproxy.cfg: lab_1 .. lab_3
HAPROXY_BACKEND = "lab"
HAPROXY_SLOTS = 3
SSH_PORT_OFFSET = 200
HOST_OFFSET = 10
SSHD_READY_TIMEOUT = 15.0
HAPROXY_READY_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
SSHD_NEEDLE = "sshd"
HAPROXY_NEEDLE = "-db"


class NetworkError(LabError):
    """An ``ip`` command failed (the message quotes it and its stderr)."""


# --------------------------------------------------------------------------------------------
# addresses and names


def lab_id(directory: Path) -> str:
    """Six hex digits naming a lab dir's namespaces, links and bridge."""
    return hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:6]


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A private IPv4 /24 (or larger) network; ValueError says what is wrong."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise ValueError(f"not an IPv4 network like {DEFAULT_SUBNET!r}: {exc}") from None
    if net.prefixlen > 24:
        raise ValueError(f"{text} is too small: the lab needs a /24 (or larger) network")
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
        raise ValueError(f"{text} is not a private network (use 10.x, 172.16-31.x or "
                         "192.168.x)")
    return net


_NETNS_REASON: list[str | None] = []


def netns_unavailable(probe: bool = True) -> str | None:
    """None when this machine lets the lab make network namespaces, else why not. With
    ``probe``, by making and removing a namespace and a veth pair (once per process);
    without, from the platform, the user and ``ip`` alone (no side effect: the loader's
    guess before a lab runs)."""
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "iproute2 (`ip`) is not installed"
    if reason or not probe:
        return reason
    if _NETNS_REASON:
        return _NETNS_REASON[0]
    name = f"upgprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
        try:
            _ip("link", "add", f"{name}a", "type", "veth", "peer", "name", "eth0",
                "netns", name)
        finally:
            _ip("netns", "del", name, check=False)
            _ip("link", "del", f"{name}a", check=False)
    except NetworkError as exc:
        reason = f"cannot make a network namespace here: {exc}"
    _NETNS_REASON.append(reason)
    return reason


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(argv)}: {exc}") from None
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


@dataclass(frozen=True, slots=True)
class SshLabLayout(LabLayout):
    """A :class:`LabLayout` whose hosts are reached over SSH, behind HAProxy."""

    ssh: bool = True
    #: auto: namespaces where the machine allows them, else loopback addresses
    network: str = "auto"
    subnet: str = DEFAULT_SUBNET

    # names and paths ---------------------------------------------------------------------

    @property
    def lab_id(self) -> str:
        return lab_id(self.dir)

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def haproxy_dir(self) -> Path:
        return self.dir / "haproxy"

    def sshd_dir(self, name: str) -> Path:
        return self.host_root(name) / "sshd"

    def netns_name(self, name: str) -> str:
        return f"upg{self.lab_id}-{name}"

    def veth_name(self, index: int) -> str:
        return f"u{self.lab_id}h{index:03d}"          # at most 15 characters

    @property
    def bridge_name(self) -> str:
        return f"u{self.lab_id}br"

    def haproxy_site(self) -> Any:
        from .haproxy import HAProxySite

        return HAProxySite(self.haproxy_dir, port=self.balancer_port,
                           backend=HAPROXY_BACKEND, slots=HAPROXY_SLOTS)

    # addressing --------------------------------------------------------------------------

    def network_mode(self) -> str:
        """``netns`` or ``loopback``: the setting, else what the running (or last) lab in
        this dir used, else what the machine allows."""
        if self.network != "auto":
            return self.network
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
            mode = state.get("network")
            if mode in ("netns", "loopback") and state.get("layout", {}).get("ssh"):
                return str(mode)
        except (OSError, ValueError, AttributeError):
            pass
        return "netns" if netns_unavailable(probe=False) is None else "loopback"

    @property
    def net(self) -> ipaddress.IPv4Network:
        return parse_subnet(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1)

    def host_address(self, index: int, mode: str | None = None) -> str:
        mode = mode or self.network_mode()
        if mode == "netns":
            return str(self.net.network_address + HOST_OFFSET + index)
        octets = str(self.net.network_address).split(".")
        return f"127.{octets[1]}.{octets[2]}.{HOST_OFFSET + index}"

    def ssh_port(self, index: int) -> int:
        return self.base_port + SSH_PORT_OFFSET + index

    def host_objects(self) -> tuple[Host, ...]:
        mode = self.network_mode()
        result = []
        for i, host in enumerate(LabLayout.host_objects(self), start=1):
            result.append(Host(
                name=host.name, address=self.host_address(i, mode), port=host.port,
                labels=host.labels,
                vars={**host.vars, "ssh_port": str(self.ssh_port(i))},
                cluster=host.cluster, slots=host.slots, secret_vars=host.secret_vars))
        return tuple(result)

    # providers ---------------------------------------------------------------------------

    def commands(self) -> Commands:
        commands = LabLayout.commands(self)
        assert commands.start is not None
        # the app listens on the host's own address (in a namespace, 127.0.0.1 is its own)
        return Commands(install=commands.install,
                        start=commands.start + ("--bind", "{address}"),
                        stop=commands.stop, current=commands.current,
                        system_test=commands.system_test, switch=commands.switch)

    def transport_spec(self) -> ProviderSpec:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):      # pragma: no cover - no passwd entry
            user = "root"
        return ProviderSpec("ssh", {
            "known_hosts": str(self.known_hosts),
            "trust_on_first_use": False,          # every host key is checked
            "identity_files": [str(self.client_key)],
            "agent": False,
            "config": "",
            "system_config": "",                  # the machine's ssh setup stays out
            "global_known_hosts": [],
            "username": user,
            "connect_timeout": 5.0,
            "keepalive_interval": 5.0,
            "timeout": COMMAND_TIMEOUT,
        })

    def balancer_spec(self) -> ProviderSpec:
        site = self.haproxy_site()
        return ProviderSpec("haproxy", {**site.balancer_settings(), "delete_timeout": 15.0})

    @property
    def kind(self) -> str:
        return "ssh"

    def ports_text(self) -> str:
        count = self.hosts + self.new_hosts
        return (f"users {self.balancer_port} (HAProxy), apps "
                f"{_span(self.base_port + 101, self.base_port + 100 + count)}, sshd "
                f"{_span(self.ssh_port(1), self.ssh_port(count))}; subnet {self.subnet}")

    def up_options(self) -> list[str]:
        options = ["--ssh", *LabLayout.up_options(self)]
        if self.network != "auto":
            options += ["--network", self.network]
        if self.subnet != DEFAULT_SUBNET:
            options += ["--subnet", self.subnet]
        return options


# --------------------------------------------------------------------------------------------
# sshd with the lab's session environment


def _sshd(layout: SshLabLayout, host: Host, index: int, authorized: list[str]) -> Any:
    from .sshd import Sshd

    package_parent = str(Path(__file__).resolve().parents[2])

    class LabSshd(Sshd):
        def config_text(self) -> str:
            # sshd takes only the first SetEnv line: put the lab's variables on that one
            return super().config_text().replace(
                "SetEnv SHLVL=1",
                f'SetEnv SHLVL=1 PYTHONUNBUFFERED=1 "PYTHONPATH={package_parent}"')

    return LabSshd(layout.sshd_dir(host.name), address=host.address,
                   port=layout.ssh_port(index), authorized_keys=authorized)


# --------------------------------------------------------------------------------------------
# the lab


class SshLab(Lab):
    """A lab of SSH hosts behind HAProxy (see the module docstring)."""

    layout: SshLabLayout

    def __init__(self, layout: SshLabLayout) -> None:
        super().__init__(layout)

    @classmethod
    def from_fields(cls, directory: Path, fields: Mapping[str, Any]) -> SshLab:
        if not fields.get("ssh"):
            raise LabError(f"the lab in {directory} is not an SSH lab: reattach to it with "
                           "Lab.from_dir() or open_lab()")
        return cls(SshLabLayout(
            dir=directory, hosts=int(fields["hosts"]), new_hosts=int(fields.get("new_hosts", 0)),
            slots=bool(fields.get("slots", False)), base_port=int(fields["base_port"]),
            base_release=str(fields["base_release"]),
            network=str(fields.get("network", "auto")),
            subnet=str(fields.get("subnet", DEFAULT_SUBNET))))

    def index_of(self, name: str) -> int:
        for i, host in enumerate(self.hosts, start=1):
            if host.name == name:
                return i
        raise LabError(f"no host {name!r} in the lab at {self.dir}")

    # state -----------------------------------------------------------------------------

    def running_pids(self) -> dict[str, int]:
        found = super().running_pids()
        pids = (self.read_state() or {}).get("pids") or {}
        if hostctl.pid_matches(pids.get("haproxy"), HAPROXY_NEEDLE,
                               str(self.layout.haproxy_site().config_path)):
            found["haproxy"] = pids["haproxy"]
        for name, pid in (pids.get("sshd") or {}).items():
            if self._sshd_alive(name, pid):
                found[f"{name}/sshd"] = pid
        return found

    def _sshd_alive(self, name: str, pid: int | None) -> bool:
        """``pid`` is ``name``'s sshd listener (sshd rewrites its argv into one title line,
        so the config path is looked for inside it)."""
        if not hostctl.pid_alive(pid):
            return False
        argv = hostctl.pid_cmdline(pid) or []      # type: ignore[arg-type]
        config = str(self.layout.sshd_dir(name) / "sshd_config")
        return any(config in arg for arg in argv) and any(SSHD_NEEDLE in a for a in argv)

    # the steps of Lab.up() ------------------------------------------------------------
    # Lab.up() runs the skeleton (checks, lab.json, teardown on failure); the SSH lab needs
    # sshd and haproxy, picks its network, removes stale namespaces and starts other parts.

    async def _preflight(self) -> dict[str, Any]:
        """sshd and haproxy installed; the network mode (``auto``: namespaces where the
        machine allows them, else loopback addresses)."""
        for binary, what in (("sshd", "openssh-server"), ("haproxy", "haproxy")):
            if _binary(binary) is None:
                raise LabError(f"the SSH lab needs {binary} (Debian: apt-get install {what})")
        mode = self.layout.network
        if mode == "netns":
            reason = await asyncio.to_thread(netns_unavailable)
            if reason:
                raise LabError(f"network = \"netns\": {reason}")
        elif mode == "auto":
            reason = await asyncio.to_thread(netns_unavailable)
            mode = "loopback" if reason else "netns"
        return {"network": mode}

    async def _clear_leftovers(self) -> None:
        # a crashed lab in this dir may have left its namespaces: ours by name, so remove them
        await asyncio.to_thread(self._remove_network)

    def _initial_state(self, traffic_rps: int, users: int,
                       facts: Mapping[str, Any]) -> LabState:
        layout = self.layout
        site = layout.haproxy_site()
        return {
            "version": STATE_VERSION,
            "dir": str(self.dir),
            "layout": {k: v for k, v in asdict(layout).items() if k != "dir"},
            **facts,
            "started_ts": time.time(),
            "running": True,
            "pids": {"haproxy": None, "traffic": None, "hosts": {}, "sshd": {}},
            "urls": {"balancer": layout.balancer_url},
            "haproxy": {"config": str(site.config_path), "socket": str(site.socket_path),
                        "maps": str(site.map_dir), "backend": site.backend},
            "ssh": {"client_key": str(layout.client_key),
                    "known_hosts": str(layout.known_hosts)},
            "stats_file": str(layout.traffic_stats_file),
            "logs_dir": str(self.logs_dir),
            "traffic": {"rps": traffic_rps, "users": users},
        }

    def _check_prometheus(self) -> None:
        raise LabError("--prometheus is for the local lab: the SSH lab's balancer is HAProxy, "
                       "which has no /metrics of upgrader's")

    def _start_steps(self, state: LabState) -> Sequence[StartStep]:
        """The network (netns mode only), one sshd per host, the apps (over SSH), HAProxy."""
        steps: list[StartStep] = []
        if state.get("network") == "netns":
            steps.append(_in_thread(self._up_network))
        steps += [_in_thread(self._up_sshds), self._up_apps, _in_thread(self._up_haproxy)]
        return steps

    def _up_network(self, state: LabState) -> None:
        layout = self.layout
        net = layout.net
        taken = _addresses_in_use(net)
        if taken:
            raise LabError(f"subnet {net} is in use on this machine ({', '.join(taken)}); "
                           "pick another (`--subnet`, or [lab] subnet)")
        bridge = layout.bridge_name
        state["net"] = {"bridge": bridge, "netns": {}, "veth": {}, "subnet": str(net),
                        "gateway": layout.gateway}
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{layout.gateway}/{net.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, host in enumerate(self.hosts, start=1):
            ns, veth = layout.netns_name(host.name), layout.veth_name(index)
            _ip("netns", "add", ns)
            state["net"]["netns"][host.name] = ns
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            state["net"]["veth"][host.name] = veth
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            _ip("addr", "add", f"{host.address}/{net.prefixlen}", "dev", "eth0", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("route", "add", "default", "via", layout.gateway, netns=ns)

    def _up_sshds(self, state: LabState) -> None:
        from .sshd import ensure_privsep_dir, make_client_key, sshd_path

        layout = self.layout
        ensure_privsep_dir()
        binary = sshd_path()
        assert binary is not None
        client = make_client_key(layout.client_key)
        os.chmod(layout.client_key, 0o600)
        started: list[tuple[str, Any, Any, int]] = []
        for index, host in enumerate(self.hosts, start=1):
            sshd = _sshd(layout, host, index, [client.public])
            sshd.dir.mkdir(parents=True, exist_ok=True)
            sshd.new_host_key()
            sshd.authorized_keys_path.write_text(client.public + "\n")
            os.chmod(sshd.authorized_keys_path, 0o600)
            sshd.config_path.write_text(sshd.config_text())
            proc = self._spawn_sshd(host.name, binary)
            state["pids"]["sshd"][host.name] = proc.pid
            started.append((host.name, sshd, proc, 0))
        lines = []
        for _name, sshd, proc, offset in started:
            _wait_sshd(sshd, proc, offset)
            lines.append(sshd.known_hosts_line())
        hostctl.write_atomic(layout.known_hosts, "".join(line + "\n" for line in lines), 0o600)

    def _spawn_sshd(self, name: str, binary: str | None = None) -> subprocess.Popen[bytes]:
        from .sshd import sshd_path

        binary = binary or sshd_path()
        if binary is None:
            raise LabError("sshd is not installed")
        directory = self.layout.sshd_dir(name)
        argv = [binary, "-D", "-e", "-f", str(directory / "sshd_config")]
        if self._mode() == "netns":
            argv = ["ip", "netns", "exec", self.layout.netns_name(name), *argv]
        log = directory / "sshd.log"
        log.unlink(missing_ok=True)
        return hostctl.spawn_detached(argv, log)

    def _mode(self) -> str:
        return (self.read_state() or {}).get("network") or self.layout.network_mode()

    async def _up_apps(self, state: LabState) -> None:
        """Install and start the base release on every main host, over SSH (the same
        commands and transport a rollout uses)."""
        commands = self.layout.commands()
        slot = self.serving_slot()
        release = self.layout.base_release
        transport = self._plugins().create("transport", self.layout.transport_spec())
        try:
            async def one(host: Host) -> None:
                port = self.slots_of(host)[slot]
                for template in (commands.install, commands.start):
                    assert template is not None
                    argv = self._render(template, host, slot, port, release)
                    try:
                        await transport.run(host, argv, timeout=COMMAND_TIMEOUT, check=True)
                    except UpgraderError as exc:
                        raise LabError(f"{host.name}: {exc}") from exc
                pid = await asyncio.to_thread(hostctl.read_pid,
                                              self.layout.host_root(host.name), slot)
                state["pids"]["hosts"][host.name] = {slot: pid}

            results = await asyncio.gather(
                *(one(h) for h in self.hosts if h.cluster == "main"), return_exceptions=True)
        finally:
            await transport.aclose()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _plugins(self) -> Any:
        from ..plugins import Plugins

        return Plugins()

    def _up_haproxy(self, state: LabState) -> None:
        from .haproxy import HAProxyProcess, haproxy_binary, runtime_command, write_files

        site = self.layout.haproxy_site()
        write_files(site)
        HAProxyProcess(site).check()
        site.socket_path.unlink(missing_ok=True)
        binary = haproxy_binary()
        assert binary is not None
        log = site.directory / "haproxy.log"
        proc = hostctl.spawn_detached([binary, "-db", "-f", str(site.config_path)], log)
        state["pids"]["haproxy"] = proc.pid
        deadline = time.monotonic() + HAPROXY_READY_TIMEOUT
        while True:
            status = proc.poll()
            if status is not None:
                raise LabError(f"haproxy exited with status {status}:\n"
                               + hostctl.log_tail(log))
            try:
                if "Name: HAProxy" in runtime_command(site.socket_path, "show info", 1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"haproxy's Runtime API did not answer within "
                               f"{HAPROXY_READY_TIMEOUT:g} s:\n{hostctl.log_tail(log)}")
            time.sleep(0.02)

    def balancer(self) -> Any:
        """The ``haproxy`` balancer plugin on this lab's HAProxy (``aclose()`` it)."""
        return self._plugins().create("balancer", self.layout.balancer_spec())

    @asynccontextmanager
    async def host_runner(self) -> AsyncIterator[HostRunner]:
        """Host commands over SSH, through the ``ssh`` transport a rollout uses."""
        transport = self._plugins().create("transport", self.layout.transport_spec())

        async def run(template: Sequence[str] | None, host: Host, slot: str, port: int,
                      release: str = "") -> str:
            assert template is not None
            argv = self._render(template, host, slot, port, release)
            try:
                result = await transport.run(host, argv, timeout=COMMAND_TIMEOUT, check=True)
            except UpgraderError as exc:
                raise LabError(f"{host.name}: {exc}") from exc
            return str(getattr(result, "stdout", ""))

        try:
            yield run
        finally:
            await transport.aclose()

    async def _register_backends(self) -> None:
        slot = self.serving_slot()
        balancer = self.balancer()
        try:
            for host in self.hosts:
                if host.cluster != "main":
                    continue
                await balancer.set_backend(self.backend_name(host, slot), address=host.address,
                                           port=self.slots_of(host)[slot],
                                           pool=self.layout.base_release, weight=100,
                                           state="ready")
        finally:
            await balancer.aclose()

    # faults ----------------------------------------------------------------------------

    def kill_sshd(self, name: str) -> int | None:
        """SIGKILL ``name``'s sshd and every connection it serves (the app keeps running).
        Returns the pid killed, None if it was not running."""
        from .sshd import descendants

        pid = ((self.read_state() or {}).get("pids") or {}).get("sshd", {}).get(name)
        if not self._sshd_alive(name, pid):
            return None
        pids = [pid, *descendants(pid)]
        for each in pids:
            try:
                os.kill(each, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while hostctl.pid_alive(pid) and time.monotonic() < deadline:
            hostctl.reap(pid)
            time.sleep(0.01)
        return int(pid)

    def start_sshd(self, name: str) -> int:
        """Start ``name``'s sshd again (same host key, address and port); its pid."""
        from .sshd import Sshd

        state = self.read_state() or {}
        pid = (state.get("pids") or {}).get("sshd", {}).get(name)
        if self._sshd_alive(name, pid):
            return int(pid)
        host = self.host(name)
        proc = self._spawn_sshd(name)
        sshd = Sshd(self.layout.sshd_dir(name), address=host.address,
                    port=self.layout.ssh_port(self.index_of(name)))
        _wait_sshd(sshd, proc, 0)
        state.setdefault("pids", {}).setdefault("sshd", {})[name] = proc.pid
        self._write_state(state)
        return proc.pid

    def set_link(self, name: str, up: bool) -> None:
        """Cut (``up=False``) or restore ``name``'s network: its veth in the root namespace
        goes down or up. Only in netns mode (LabError otherwise)."""
        if self._mode() != "netns":
            raise LabError("the lab runs on loopback addresses: there is no link to cut")
        veth = self.layout.veth_name(self.index_of(name))
        _ip("link", "set", veth, "up" if up else "down")

    def link_up(self, name: str) -> bool | None:
        if self._mode() != "netns":
            return None
        try:
            out = _ip("-o", "link", "show", self.layout.veth_name(self.index_of(name)))
        except NetworkError:
            return False
        flags = out.split("<", 1)[-1].split(">", 1)[0].split(",")
        return "UP" in flags

    async def balancer_state(self) -> Any:
        """HAProxy's state, read back through the plugin."""
        balancer = self.balancer()
        try:
            return await balancer.state()
        finally:
            await balancer.aclose()

    # status ----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        state = await asyncio.to_thread(self.read_state) or {}
        files = await asyncio.to_thread(self._ssh_file_status, state)
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async def served(address: str, port: int) -> str | None:
                try:
                    async with session.get(f"http://{address}:{port}/") as resp:
                        await resp.read()
                        return resp.headers.get("X-Version")
                except (TimeoutError, aiohttp.ClientError, OSError):
                    return None

            probes = []
            for host in files["hosts"]:
                for slot_info in host["slots"].values():
                    if slot_info["running"]:
                        probes.append((slot_info, served(host["address"], slot_info["port"])))
            versions = await asyncio.gather(*(p for _, p in probes))
            for (slot_info, _), version in zip(probes, versions):
                slot_info["version"] = version
        for host in files["hosts"]:
            live = [s for s in host["slots"].values() if s["running"]]
            host["running"] = bool(live)
            host["version"] = next((s["version"] for s in live if s["version"]), None)
        balancer = files["balancer"]
        if balancer["running"]:
            try:
                balancer["state"] = plain(await asyncio.wait_for(self.balancer_state(), 5.0))
                balancer["up"] = True
            except Exception as exc:  # status is best effort: report, do not fail
                balancer["error"] = f"{type(exc).__name__}: {exc}"
        files["running"] = (balancer["running"] or files["traffic"]["running"]
                            or any(h["running"] or h["ssh"]["running"] for h in files["hosts"]))
        return files

    def _ssh_file_status(self, state: LabState) -> dict[str, Any]:
        files = self._file_status(state)
        pids = state.get("pids") or {}
        mode = state.get("network") or self.layout.network_mode()
        by_name = {h.name: (i, h) for i, h in enumerate(self.hosts, start=1)}
        for info in files["hosts"]:
            index, host = by_name[info["name"]]
            sshd_pid = (pids.get("sshd") or {}).get(host.name)
            info["address"] = host.address
            info["ssh"] = {"port": self.layout.ssh_port(index), "pid": sshd_pid,
                           "running": self._sshd_alive(host.name, sshd_pid)}
            if mode == "netns":
                info["netns"] = self.layout.netns_name(host.name)
                info["link_up"] = self.link_up(host.name)
        haproxy = pids.get("haproxy")
        site = self.layout.haproxy_site()
        files["network"] = mode
        files["balancer"] = {"kind": "haproxy", "pid": haproxy, "url": self.layout.balancer_url,
                             "socket": str(site.socket_path),
                             "running": hostctl.pid_matches(haproxy, HAPROXY_NEEDLE,
                                                            str(site.config_path)),
                             "up": False}
        files["ssh"] = {"client_key": str(self.layout.client_key),
                        "known_hosts": str(self.layout.known_hosts)}
        return files

    # down ------------------------------------------------------------------------------

    async def _teardown(self, state: LabState | None = None) -> None:
        """Stop traffic, the apps, the sshds and HAProxy; remove the namespaces and links.
        Every step runs even when an earlier one fails; the first error is raised last."""
        if state is None:
            state = await asyncio.to_thread(self.read_state) or {}
        pids = state.get("pids") or {}
        errors: list[BaseException] = []
        traffic = pids.get("traffic")
        if traffic is not None and hostctl.pid_matches(traffic, "upgrader.lab.traffic"):
            await asyncio.to_thread(hostctl.terminate, traffic, 5.0)
        try:
            await self._stop_hosts()       # hostctl stop by pid: works from the root namespace
        except Exception as exc:
            errors.append(exc)
        # apps whose pidfiles went missing, matched by their root (never a stranger's process)
        await asyncio.to_thread(self._kill_stray_apps)
        for name, pid in (pids.get("sshd") or {}).items():
            if self._sshd_alive(name, pid):
                await asyncio.to_thread(self.kill_sshd, name)
        haproxy = pids.get("haproxy")
        config = str(self.layout.haproxy_site().config_path)
        if haproxy is not None and hostctl.pid_matches(haproxy, HAPROXY_NEEDLE, config):
            await asyncio.to_thread(hostctl.terminate, haproxy, 5.0)
        try:
            await asyncio.to_thread(self._remove_network)
        except Exception as exc:
            errors.append(exc)
        if errors:
            raise errors[0]

    def _kill_stray_apps(self) -> None:
        for host in self.hosts:
            root = str(self.layout.host_root(host.name).resolve())
            for pid in _pids_with_args(hostctl.APP_MODULE, root):
                hostctl.terminate(pid, 5.0)

    def _remove_network(self) -> None:
        """Remove this lab's namespaces, veths and bridge (by their names; missing ones are
        fine). No-op where namespaces cannot be made."""
        if shutil.which("ip") is None or os.geteuid() != 0:
            return
        layout = self.layout
        existing = set(_ip("netns", "list", check=False).split())
        for index, host in enumerate(self.hosts, start=1):
            name = layout.netns_name(host.name)
            if name in existing:
                _ip("netns", "del", name, check=False)
            _ip("link", "del", layout.veth_name(index), check=False)
        _ip("link", "del", layout.bridge_name, check=False)
        left = [n for n in (layout.netns_name(h.name) for h in self.hosts)
                if n in set(_ip("netns", "list", check=False).split())]
        if left:
            raise NetworkError(f"could not remove network namespaces: {', '.join(left)}")


def make_lab(layout: LabLayout) -> Lab:
    """The lab a layout describes: an :class:`SshLab` for an SSH layout."""
    return SshLab(layout) if isinstance(layout, SshLabLayout) else Lab(layout)


def running_layout(directory: Path) -> LabLayout | None:
    """The layout of the lab running in ``directory`` as its lab.json recorded it (ports,
    host count, kind, base release), or None when no process of a lab runs there. Cheap:
    reads lab.json and /proc; the fleet loader calls it for every ``[lab]`` table."""
    if not (directory / "lab.json").is_file():
        return None
    try:
        lab = open_lab(directory)
    except LabError:
        return None
    state = lab.read_state() or {}
    if not state.get("running", True) or not lab.is_running():
        return None
    return lab.layout


def open_lab(path: str | Path | None = None) -> Lab:
    """Reattach to the lab whose ``lab.json`` is in ``path`` (default: the lab dir): an
    :class:`SshLab` when lab.json records an SSH layout, else a :class:`Lab`. LabError when
    there is no lab there."""
    directory, fields = read_layout_fields(path)
    return (SshLab if fields.get("ssh") else Lab).from_dir(directory)


def _in_thread(step: Callable[[LabState], None]) -> StartStep:
    """A blocking start step (``ip``, sshd, haproxy: subprocesses and polling) run off the
    event loop."""
    async def run(state: LabState) -> None:
        await asyncio.to_thread(step, state)
    return run


# --------------------------------------------------------------------------------------------
# helpers


def _span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"


def _binary(name: str) -> str | None:
    if name == "sshd":
        from .sshd import sshd_path

        return sshd_path()
    from .haproxy import haproxy_binary

    return haproxy_binary()


def _wait_sshd(sshd: Any, proc: subprocess.Popen[bytes], offset: int) -> None:
    """Until ``sshd``'s log says it listens; LabError with the log tail if it exits or
    takes too long."""
    deadline = time.monotonic() + SSHD_READY_TIMEOUT
    while True:
        text = sshd.log_text()
        if "Server listening on " in text[offset:]:
            return
        status = proc.poll()
        if status is not None:
            raise LabError(f"sshd on {sshd.address}:{sshd.port} exited with status "
                           f"{status}: {sshd.log_tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"sshd on {sshd.address}:{sshd.port} did not listen within "
                           f"{SSHD_READY_TIMEOUT:g} s: {sshd.log_tail()}")
        time.sleep(0.01)


def _addresses_in_use(net: ipaddress.IPv4Network) -> list[str]:
    """Addresses and routes of the root namespace inside ``net``."""
    found = []
    for line in _ip("-4", "-o", "addr", "show", check=False).splitlines():
        parts = line.split()
        if "inet" in parts:
            text = parts[parts.index("inet") + 1]
            try:
                iface = ipaddress.IPv4Interface(text)
            except ValueError:
                continue
            if iface.network.overlaps(net):
                found.append(f"{text} on {parts[1]}")
    for line in _ip("-4", "route", "show", check=False).splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", ""):
            continue
        try:
            route = ipaddress.IPv4Network(dest, strict=False)
        except ValueError:
            continue
        if route.overlaps(net) and not any(dest in f for f in found):
            found.append(f"route {line.strip()}")
    return found


def _pids_with_args(*needles: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = hostctl.pid_cmdline(int(entry)) or []
        if all(needle in argv for needle in needles):
            found.append(int(entry))
    return found
