"""Start, inspect and stop a lab: a real local fleet of app processes (installed through
``upgrader.lab.hostctl``, exactly as the engine installs them), the built-in balancer in
front of them and a traffic generator playing the users.

Every part is a process of its own, in a session of its own: if the caller dies, the fleet
serves and the users keep sending. ``lab.json`` in the lab dir records the pids, so any later
process can reattach with :meth:`Lab.from_dir`.

API (all I/O off the event loop): ``await up()``, ``await status()``, ``await down()`` are
async (asyncio subprocesses for hostctl, aiohttp for HTTP, ``asyncio.to_thread`` for file and
process work); ``installs(host)``, ``traffic_stats()``, ``read_state()`` and ``is_running()``
are plain methods that read small local files (call them through ``asyncio.to_thread`` from a
loop that must never block, e.g. a TUI).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import secrets
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, LabError
from ..model import Host
from . import hostctl
from . import prometheus as prometheus_server
from .layout import LabLayout

if TYPE_CHECKING:
    from ..providers.builtin_balancer import BuiltinBalancer

STATE_VERSION = 1
BALANCER_MODULE = "upgrader.balancer"
TRAFFIC_MODULE = "upgrader.lab.traffic"
BALANCER_READY_TIMEOUT = 15.0
TRAFFIC_READY_TIMEOUT = 10.0
HOSTCTL_TIMEOUT = 30.0
PARALLEL_HOSTS = 8
#: how long ``reset`` waits for a drained backend's requests in flight before stopping it
RESET_DRAIN_TIMEOUT = 10.0
PORT_SPAN = 400

#: lab.json's content (JSON-ready)
LabState = dict[str, Any]
#: one step of :meth:`Lab.up`: starts a part of the lab and records its pids in the state
StartStep = Callable[[LabState], Awaitable[None]]
#: runs one host command of the lab (template, host, slot, port, release) on its host
HostRunner = Callable[[Sequence[str] | None, Host, str, int, str], Awaitable[Any]]


class Lab:
    """A local fleet described by a :class:`LabLayout`."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout

    # ----------------------------------------------------------------------------------------
    # paths and state

    @property
    def dir(self) -> Path:
        return self.layout.dir

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def balancer_ready_file(self) -> Path:
        return self.dir / "run" / "balancer.ready"

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.layout.host_objects()

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no host {name!r} in the lab at {self.dir}")

    def slots_of(self, host: Host) -> dict[str, int]:
        """slot -> port: ``{"default": port}``, or the blue/green slots."""
        return dict(host.slots) if host.slots else {"default": host.port or 0}

    def serving_slot(self) -> str:
        """The slot a main host serves from at first."""
        return "blue" if self.layout.slots else "default"

    @classmethod
    def from_dir(cls, path: str | Path | None = None) -> Lab:
        """Reattach to the lab whose ``lab.json`` is in ``path`` (default: the lab dir).

        ``Lab.from_dir`` reattaches a local lab; ``SshLab.from_dir`` an SSH lab.
        :func:`upgrader.lab.sshlab.open_lab` reattaches either, as lab.json says."""
        directory, fields = read_layout_fields(path)
        try:
            return cls.from_fields(directory, fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"{directory / 'lab.json'}: bad layout: {exc}") from None

    @classmethod
    def from_fields(cls, directory: Path, fields: Mapping[str, Any]) -> Lab:
        """The lab of ``directory`` from the layout fields its lab.json recorded."""
        if fields.get("ssh"):
            raise LabError(f"the lab in {directory} is an SSH lab: reattach to it with "
                           "upgrader.lab.sshlab.open_lab()")
        return cls(LabLayout(dir=directory, hosts=int(fields["hosts"]),
                             new_hosts=int(fields.get("new_hosts", 0)),
                             slots=bool(fields.get("slots", False)),
                             base_port=int(fields["base_port"]),
                             base_release=str(fields["base_release"])))

    def read_state(self) -> LabState | None:
        """lab.json, or None when there is none (or it is unreadable)."""
        try:
            state = json.loads(self.layout.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _write_state(self, state: LabState) -> None:
        hostctl.write_atomic(self.layout.state_file, json.dumps(state, indent=2) + "\n")

    def running_pids(self) -> dict[str, int]:
        """Live processes of this lab: ``balancer``, ``traffic``, ``prometheus`` and
        ``<host>/<slot>``."""
        found: dict[str, int] = {}
        state = self.read_state() or {}
        pids = state.get("pids") or {}
        if hostctl.pid_matches(pids.get("balancer"), BALANCER_MODULE):
            found["balancer"] = pids["balancer"]
        if hostctl.pid_matches(pids.get("traffic"), TRAFFIC_MODULE):
            found["traffic"] = pids["traffic"]
        if hostctl.pid_matches(pids.get("prometheus"),
                               str(self.prometheus_dir / "prometheus.yml")):
            found["prometheus"] = pids["prometheus"]
        for host in self.hosts:
            root = self.layout.host_root(host.name)
            for slot in self._slots_with_pidfiles(root):
                pid = hostctl.running_pid(root, slot)
                if pid is not None:
                    found[f"{host.name}/{slot}"] = pid
        return found

    def is_running(self) -> bool:
        return bool(self.running_pids())

    @staticmethod
    def _slots_with_pidfiles(root: Path) -> list[str]:
        try:
            return sorted(p.stem for p in (root / "run").glob("*.pid"))
        except OSError:
            return []

    def installs(self, host: str) -> list[dict[str, Any]]:
        """The install records of ``host`` (installs.log), oldest first."""
        self.host(host)
        return hostctl.read_installs(self.layout.host_root(host))

    def traffic_stats(self) -> dict[str, Any]:
        """The traffic generator's latest stats ({} before it first wrote them)."""
        try:
            stats = json.loads(self.layout.traffic_stats_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return stats if isinstance(stats, dict) else {}

    # ----------------------------------------------------------------------------------------
    # up

    async def up(self, traffic_rps: int = 200, users: int = 500,
                 database: Any = None, prometheus: bool = False,
                 flag_store: str | os.PathLike[str] | None = None) -> LabState:
        """Start the lab; return what lab.json now holds. Raises LabError if a lab runs in
        this dir, a port is taken, or a part fails to start (what started is stopped).

        ``database``: a :class:`upgrader.schema.Migration` that makes the lab's database
        (started and completed, so its release's views are live) before the apps start;
        None: the lab has no database (a stale one is removed).

        ``prometheus``: also start a Prometheus server scraping the apps and the balancer
        each second (:mod:`upgrader.lab.prometheus`); its URL is ``state["urls"]["prometheus"]``.

        ``flag_store``: the flag store the apps read (``-flagged`` releases: flag ``new-path``
        in environment ``lab``): a SQLite file or a ``postgresql://`` URL, checked (opened)
        before anything starts (ConfigError naming ``--flag-store`` if it cannot be used) and
        recorded in ``flags.store`` (mode 0600), which every app reads at start: the hosts
        `lab reset` or a rollout restarts read the same store. None: ``<lab dir>/flags.sqlite``.

        The skeleton is the same for every kind of lab; a subclass (the SSH lab) fills in
        the steps: :meth:`_preflight` (what this kind of lab needs before anything is touched),
        :meth:`_clear_leftovers` (what a crashed lab may have left), :meth:`_initial_state`
        (lab.json's first content) and :meth:`_start_steps` (the parts to start, in order;
        lab.json is written after each). Then the backends are registered with the balancer
        and the traffic starts. On any failure, :meth:`_teardown` stops what started."""
        if traffic_rps < 0 or users <= 0:
            raise LabError("traffic_rps must be >= 0 and users > 0")
        running = await asyncio.to_thread(self.running_pids)
        if running:
            listed = ", ".join(f"{name} (pid {pid})" for name, pid in sorted(running.items()))
            raise LabError(f"a lab is already running in {self.dir}: {listed}; "
                           "stop it first (`upgrader lab down`)")
        if prometheus:
            self._check_prometheus()
        store = (await asyncio.to_thread(check_flag_store, flag_store) if flag_store is not None
                 else str(self.layout.default_flag_store))
        facts = await self._preflight()
        await asyncio.to_thread(self._prepare_dirs)
        await asyncio.to_thread(hostctl.write_atomic, self.layout.flag_store_file, store + "\n",
                                0o600)
        await asyncio.to_thread(self._prepare_database, database)
        await self._clear_leftovers()
        busy = await asyncio.to_thread(self._busy_ports)
        if busy:
            raise LabError(
                f"ports in use: {', '.join(map(str, busy[:10]))}"
                f"{' …' if len(busy) > 10 else ''}; pick another base port")

        state = self._initial_state(traffic_rps, users, facts)
        state["flag_store"] = flag_store_text(store)
        await asyncio.to_thread(self._write_state, state)
        try:
            for step in self._start_steps(state):
                await step(state)
                await asyncio.to_thread(self._write_state, state)
            await self._register_backends()
            if traffic_rps > 0:
                await self._up_traffic(state, traffic_rps, users)
            if prometheus:
                await self._up_prometheus(state)
            await asyncio.to_thread(self._write_state, state)
        except BaseException:
            # stop what started, by the pids known in memory (lab.json may lag behind)
            await asyncio.shield(self._teardown(state))
            state["running"] = False
            state["stopped_ts"] = time.time()
            await asyncio.to_thread(self._write_state, state)
            raise
        return state

    # the steps of up() a kind of lab fills in ------------------------------------------

    async def _preflight(self) -> dict[str, Any]:
        """Check what this kind of lab needs before anything is touched (LabError if it is
        missing); return facts :meth:`_initial_state` records. The local lab needs nothing."""
        return {}

    async def _clear_leftovers(self) -> None:
        """Remove what a crashed lab in this dir may have left beyond its files."""

    def _initial_state(self, traffic_rps: int, users: int,
                       facts: Mapping[str, Any]) -> LabState:
        """lab.json before the first part starts."""
        layout = self.layout
        return {
            "version": STATE_VERSION,
            "dir": str(self.dir),
            "layout": {k: v for k, v in asdict(layout).items() if k != "dir"},
            **facts,
            "started_ts": time.time(),
            "running": True,
            "pids": {"balancer": None, "traffic": None, "hosts": {}},
            "urls": {"balancer": layout.balancer_url, "admin": layout.admin_url},
            "token_file": str(layout.token_file),
            "stats_file": str(layout.traffic_stats_file),
            "logs_dir": str(self.logs_dir),
            "traffic": {"rps": traffic_rps, "users": users},
        }

    def _start_steps(self, state: LabState) -> Sequence[StartStep]:
        """The parts to start, in order (each records its pids in ``state``): the app hosts,
        then the built-in balancer."""
        return (self._up_hosts, self._up_balancer)

    def _prepare_dirs(self) -> None:
        """A fresh lab: the hosts of a stopped lab, its stats and ready file are removed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.dir / "hosts", ignore_errors=True)
        for stale in (self.layout.traffic_stats_file, self.balancer_ready_file):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            self.layout.host_root(host.name).mkdir(parents=True, exist_ok=True)

    def _prepare_database(self, migration: Any) -> None:
        path = self.layout.database_file
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        if migration is None:
            return
        from ..schema import open_backend

        with open_backend(str(path)) as backend:
            backend.start(migration)
            backend.complete(migration.name)
        os.chmod(path, 0o600)

    def _lab_ports(self) -> list[int]:
        ports = [self.layout.balancer_port, self.layout.admin_port]
        for host in self.hosts:
            ports.extend(self.slots_of(host).values())
        return ports

    def _busy_ports(self) -> list[int]:
        return [port for port in self._lab_ports() if not port_free(port)]

    def _render(self, template: Sequence[str], host: Host, slot: str, port: int,
                release: str = "") -> list[str]:
        values = {"root": str(self.layout.host_root(host.name)), "slot": slot,
                  "port": str(port), "release": release, "address": host.address,
                  "host": host.name, "previous": ""}
        return [part.format_map(values) for part in template]

    async def _hostctl(self, template: Sequence[str] | None, host: Host, slot: str, port: int,
                       release: str = "") -> str:
        """Run one hostctl command (the argv the engine runs) and return its stdout."""
        assert template is not None
        argv = self._render(template, host, slot, port, release)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=hostctl.child_env())
        try:
            out, err = await asyncio.wait_for(proc.communicate(), HOSTCTL_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise LabError(f"{host.name}/{slot}: {argv[3]} failed "
                           f"(exit {proc.returncode}): {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def _up_hosts(self, state: LabState) -> None:
        commands = self.layout.commands()
        slot = self.serving_slot()
        release = self.layout.base_release
        limit = asyncio.Semaphore(PARALLEL_HOSTS)

        async def one(host: Host) -> None:
            port = self.slots_of(host)[slot]
            async with limit:
                await self._hostctl(commands.install, host, slot, port, release)
                await self._hostctl(commands.start, host, slot, port)
            pid = await asyncio.to_thread(hostctl.read_pid, self.layout.host_root(host.name),
                                          slot)
            state["pids"]["hosts"][host.name] = {slot: pid}

        results = await asyncio.gather(*(one(h) for h in self.hosts if h.cluster == "main"),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _up_balancer(self, state: LabState) -> None:
        layout = self.layout
        token = secrets.token_urlsafe(32)
        await asyncio.to_thread(hostctl.write_atomic, layout.token_file, token + "\n", 0o600)
        ready = self.balancer_ready_file
        argv = [sys.executable, "-m", BALANCER_MODULE,
                "--listen", f"127.0.0.1:{layout.balancer_port}",
                "--admin", f"127.0.0.1:{layout.admin_port}",
                "--token-file", str(layout.token_file), "--ready-file", str(ready)]
        log = self.logs_dir / "balancer.log"
        proc = await asyncio.to_thread(hostctl.spawn_detached, argv, log)
        state["pids"]["balancer"] = proc.pid
        deadline = time.monotonic() + BALANCER_READY_TIMEOUT
        while True:
            if ready.exists():
                try:
                    info = json.loads(await asyncio.to_thread(ready.read_text))
                    state["balancer"] = info
                    return
                except ValueError:
                    pass  # being written
            status = proc.poll()
            if status is not None:
                tail = await asyncio.to_thread(hostctl.log_tail, log)
                raise LabError(f"the balancer exited with status {status}:\n{tail}")
            if time.monotonic() > deadline:
                tail = await asyncio.to_thread(hostctl.log_tail, log)
                raise LabError(f"the balancer did not get ready within "
                               f"{BALANCER_READY_TIMEOUT:g} s:\n{tail}")
            await asyncio.sleep(0.02)

    def _balancer_client(self) -> BuiltinBalancer:
        try:
            from ..providers.builtin_balancer import BuiltinBalancer
        except ImportError as exc:
            raise LabError(f"the built-in balancer client is not available: {exc}"
                           ) from exc
        from ..tokens import read_token_file

        try:        # the same mode check as every client of the balancer's token
            token = read_token_file(self.layout.token_file)
        except ConfigError as exc:
            raise LabError(f"the lab's balancer token: {exc}") from exc
        return BuiltinBalancer(self.layout.admin_url, token)

    def balancer(self) -> Any:
        """A balancer client (the Balancer protocol) on this lab's balancer (``aclose()`` it):
        the built-in balancer's; the SSH lab's is the ``haproxy`` plugin."""
        return self._balancer_client()

    @asynccontextmanager
    async def host_runner(self) -> AsyncIterator[HostRunner]:
        """Runs a host command the way this kind of lab runs them: hostctl as a local
        child process here; over SSH in the SSH lab."""
        async def run(template: Sequence[str] | None, host: Host, slot: str, port: int,
                      release: str = "") -> str:
            return await self._hostctl(template, host, slot, port, release)

        yield run

    def backend_name(self, host: Host, slot: str) -> str:
        """The balancer backend of a host slot: ``web-01``, or ``web-01@blue`` with slots."""
        return host.name if slot == "default" else f"{host.name}@{slot}"

    async def _register_backends(self) -> None:
        slot = self.serving_slot()
        client = await asyncio.to_thread(self._balancer_client)
        try:
            for host in self.hosts:
                if host.cluster != "main":
                    continue
                await client.set_backend(self.backend_name(host, slot), address=host.address,
                                         port=self.slots_of(host)[slot],
                                         pool=self.layout.base_release, weight=100,
                                         state="ready")
        finally:
            await client.aclose()

    def _check_prometheus(self) -> None:
        """LabError before anything starts when ``--prometheus`` cannot work here."""
        prometheus_server.find_binary()

    @property
    def prometheus_dir(self) -> Path:
        return self.dir / "prometheus"

    async def _up_prometheus(self, state: LabState) -> None:
        layout = self.layout
        targets = [f"127.0.0.1:{port}" for host in self.hosts
                   for port in self.slots_of(host).values()]
        settings = prometheus_server.config(targets, f"127.0.0.1:{layout.admin_port}",
                                            layout.token_file)
        serving = sum(1 for host in self.hosts if host.cluster == "main")
        pid, url = await asyncio.to_thread(
            prometheus_server.start, self.prometheus_dir, settings,
            self.logs_dir / "prometheus.log", None, serving)
        state["pids"]["prometheus"] = pid
        state["urls"]["prometheus"] = url

    async def _up_traffic(self, state: LabState, rps: int, users: int) -> None:
        stats = self.layout.traffic_stats_file
        argv = [sys.executable, "-m", TRAFFIC_MODULE, "--url", self.layout.balancer_url + "/",
                "--rps", str(rps), "--users", str(users), "--stats", str(stats)]
        log = self.logs_dir / "traffic.log"
        proc = await asyncio.to_thread(hostctl.spawn_detached, argv, log)
        state["pids"]["traffic"] = proc.pid
        deadline = time.monotonic() + TRAFFIC_READY_TIMEOUT
        while not stats.exists():
            status = proc.poll()
            if status is not None:
                tail = await asyncio.to_thread(hostctl.log_tail, log)
                raise LabError(f"the traffic generator exited with status {status}:\n{tail}")
            if time.monotonic() > deadline:
                raise LabError("the traffic generator wrote no stats within "
                               f"{TRAFFIC_READY_TIMEOUT:g} s")
            await asyncio.sleep(0.02)

    # ----------------------------------------------------------------------------------------
    # reset

    async def reset(self) -> dict[str, Any]:
        """Put the running lab back as ``up`` left it, without failing a user's request:
        every main host's serving slot on the base release, running, in the balancer as
        ``up`` registered it (pool = base release, weight 100, ready); other slots and the
        new hosts stopped and out of the balancer; no split, no routes, no maintenance.

        A host that needs work is drained first (no new requests; its requests in flight
        finish, up to :data:`RESET_DRAIN_TIMEOUT`), then stopped, given the base release
        and started through the lab's own host commands (hostctl, over SSH in an SSH lab),
        and put back in service; a quarter of the main hosts at most at a time, so the
        others serve. Hosts already as ``up`` left them are not touched. A one-host lab
        cannot be reset without its users seeing failures while its host restarts.

        Returns ``{"reset": [hosts changed], "unchanged": [...], "seconds": s}``. LabError
        when no lab runs here. Do not reset a lab while a rollout drives it."""
        if not await asyncio.to_thread(self.is_running):
            raise LabError(f"no lab runs in {self.dir}: start one with `upgrader lab up`")
        started = time.monotonic()
        main = [h for h in self.hosts if h.cluster == "main"]
        new = [h for h in self.hosts if h.cluster != "main"]
        changed: list[str] = []
        balancer = await asyncio.to_thread(self.balancer)
        try:
            table = await balancer.state()
            if table.maintenance:
                await balancer.set_maintenance(False)
            if table.split is not None:
                await balancer.set_split(None)
            if table.routes is not None:
                await balancer.set_routes(None)
            async with self.host_runner() as run:
                limit = asyncio.Semaphore(max(1, len(main) // 4))

                async def one(host: Host) -> None:
                    async with limit:
                        if await self._reset_host(balancer, run, host):
                            changed.append(host.name)

                results = await asyncio.gather(*(one(h) for h in main),
                                               return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
                for host in new:         # out of service once every main host serves again
                    if await self._retire_slots(balancer, run, host, list(self.slots_of(host))):
                        changed.append(host.name)
        finally:
            await balancer.aclose()
        state = await asyncio.to_thread(self.read_state) or {}
        state["reset_ts"] = time.time()
        await asyncio.to_thread(self._write_state, state)
        return {"reset": sorted(changed),
                "unchanged": sorted(h.name for h in self.hosts if h.name not in changed),
                "seconds": round(time.monotonic() - started, 3)}

    async def _reset_host(self, balancer: Any, run: HostRunner, host: Host) -> bool:
        """One main host back as ``up`` left it; True if anything had to change."""
        slot = self.serving_slot()
        port = self.slots_of(host)[slot]
        root = self.layout.host_root(host.name)
        base = self.layout.base_release
        name = self.backend_name(host, slot)
        current = await asyncio.to_thread(hostctl.current_release, root, slot)
        pid = await asyncio.to_thread(hostctl.running_pid, root, slot, port)
        backend = (await balancer.state()).backends.get(name)
        commands = self.layout.commands()
        changed = False
        if current != base or pid is None:
            if backend is not None and backend.state == "ready":
                await balancer.set_backend_state(name, "drain")
                if pid is not None:     # a stopped app has nothing in flight to wait for
                    await balancer.wait_drained(name, RESET_DRAIN_TIMEOUT)
            if pid is not None:
                await run(commands.stop, host, slot, port, "")
            if current != base:
                await run(commands.install, host, slot, port, base)
            await run(commands.start, host, slot, port, "")
            backend, changed = None, True
        if (backend is None or backend.state != "ready" or backend.pool != base
                or backend.weight != 100 or backend.port != port
                or backend.address != host.address):
            await balancer.set_backend(name, address=host.address, port=port, pool=base,
                                       weight=100, state="ready")
            changed = True
        others = [s for s in self.slots_of(host) if s != slot]
        return await self._retire_slots(balancer, run, host, others) or changed

    async def _retire_slots(self, balancer: Any, run: HostRunner, host: Host,
                            slots: Sequence[str]) -> bool:
        """``host``'s ``slots`` drained, out of the balancer and stopped; True if any was
        in the balancer or running."""
        changed = False
        commands = self.layout.commands()
        ports = self.slots_of(host)
        root = self.layout.host_root(host.name)
        table = await balancer.state()
        for slot in slots:
            name = self.backend_name(host, slot)
            backend = table.backends.get(name)
            running = await asyncio.to_thread(hostctl.running_pid, root, slot, ports[slot])
            if backend is not None:
                if backend.state == "ready":
                    await balancer.set_backend_state(name, "drain")
                if running:             # a stopped app has nothing in flight to wait for
                    await balancer.wait_drained(name, RESET_DRAIN_TIMEOUT)
                await balancer.remove_backend(name)
                changed = True
            if running:
                await run(commands.stop, host, slot, ports[slot], "")
                changed = True
        return changed

    # ----------------------------------------------------------------------------------------
    # status

    async def status(self) -> dict[str, Any]:
        """What runs now: hosts (per slot: pid, installed and served release), balancer,
        traffic stats."""
        state = await asyncio.to_thread(self.read_state) or {}
        files = await asyncio.to_thread(self._file_status, state)
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async def served(port: int) -> str | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/") as resp:
                        await resp.read()
                        return resp.headers.get("X-Version")
                except (TimeoutError, aiohttp.ClientError, OSError):
                    return None

            probes = []
            for host in files["hosts"]:
                for slot_info in host["slots"].values():
                    if slot_info["running"]:
                        probes.append((slot_info, served(slot_info["port"])))
            versions = await asyncio.gather(*(p for _, p in probes))
            for (slot_info, _), version in zip(probes, versions):
                slot_info["version"] = version
        for host in files["hosts"]:
            live = [s for s in host["slots"].values() if s["running"]]
            host["running"] = bool(live)
            host["version"] = next((s["version"] for s in live if s["version"]), None)

        balancer = files["balancer"]
        if balancer["running"]:
            balancer["up"] = await asyncio.to_thread(hostctl.port_open, self.layout.admin_port)
            if balancer["up"]:
                try:
                    client = await asyncio.to_thread(self._balancer_client)
                    try:
                        balancer["state"] = plain(await asyncio.wait_for(client.state(), 2.0))
                    finally:
                        await client.aclose()
                except Exception as exc:  # status is best effort: report, do not fail
                    balancer["error"] = f"{type(exc).__name__}: {exc}"
        files["running"] = (balancer["running"] or files["traffic"]["running"]
                            or any(h["running"] for h in files["hosts"]))
        return files

    def _file_status(self, state: LabState) -> dict[str, Any]:
        pids = state.get("pids") or {}
        hosts = []
        for host in self.hosts:
            root = self.layout.host_root(host.name)
            slots = {}
            for slot, port in self.slots_of(host).items():
                pid = hostctl.running_pid(root, slot)
                slots[slot] = {"port": port, "pid": pid, "running": pid is not None,
                               "current": hostctl.current_release(root, slot),
                               "version": None}
            hosts.append({"name": host.name, "cluster": host.cluster, "port": host.port,
                          "root": str(root), "slots": slots,
                          "installs": len(hostctl.read_installs(root))})
        balancer_pid = pids.get("balancer")
        traffic_pid = pids.get("traffic")
        return {
            "dir": str(self.dir),
            "layout": {k: v for k, v in asdict(self.layout).items() if k != "dir"},
            "started_ts": state.get("started_ts"),
            "hosts": hosts,
            "balancer": {"pid": balancer_pid, "url": self.layout.balancer_url,
                         "admin_url": self.layout.admin_url,
                         "running": hostctl.pid_matches(balancer_pid, BALANCER_MODULE),
                         "up": False},
            "traffic": {"pid": traffic_pid,
                        "running": hostctl.pid_matches(traffic_pid, TRAFFIC_MODULE),
                        "stats": self.traffic_stats()},
            "flag_store": self.flag_store_text(),
        }

    def flag_store_text(self) -> str:
        """The flag store the lab's apps read, fit to show (a URL's password masked)."""
        try:
            spec = self.layout.flag_store_file.read_text(encoding="utf-8").strip()
        except OSError:
            spec = ""
        return flag_store_text(spec or str(self.layout.default_flag_store))

    # ----------------------------------------------------------------------------------------
    # down

    async def down(self) -> dict[str, Any]:
        """Stop traffic (it writes its final stats), every host slot, then the balancer.
        Idempotent. Returns the final traffic stats ({} if there never was traffic)."""
        await self._teardown()
        state = await asyncio.to_thread(self.read_state)
        if state is not None and state.get("running", True):
            state["running"] = False
            state["stopped_ts"] = time.time()
            await asyncio.to_thread(self._write_state, state)
        return await asyncio.to_thread(self.traffic_stats)

    async def _teardown(self, state: LabState | None = None) -> None:
        if state is None:
            state = await asyncio.to_thread(self.read_state) or {}
        pids = state.get("pids") or {}
        if pids.get("prometheus") is not None:
            await asyncio.to_thread(prometheus_server.stop, pids["prometheus"],
                                    self.prometheus_dir / "prometheus.yml")
        traffic = pids.get("traffic")
        if traffic is not None and hostctl.pid_matches(traffic, TRAFFIC_MODULE):
            await asyncio.to_thread(hostctl.terminate, traffic, 5.0)
        await self._stop_hosts()
        balancer = pids.get("balancer")
        if balancer is not None and hostctl.pid_matches(balancer, BALANCER_MODULE):
            await asyncio.to_thread(hostctl.terminate, balancer, 10.0)

    async def _stop_hosts(self) -> None:
        commands = self.layout.commands()
        limit = asyncio.Semaphore(PARALLEL_HOSTS * 2)

        async def one(host: Host, slot: str, port: int) -> None:
            async with limit:
                await self._hostctl(commands.stop, host, slot, port)

        jobs = []
        for host in self.hosts:
            root = self.layout.host_root(host.name)
            ports = self.slots_of(host)
            for slot in await asyncio.to_thread(self._slots_with_pidfiles, root):
                jobs.append(one(host, slot, ports.get(slot, host.port or 0)))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


def check_flag_store(spec: str | os.PathLike[str]) -> str:
    """The flag store spec ``lab up --flag-store`` names, ready for the apps: a PostgreSQL
    URL as is, a SQLite file as an absolute path (the apps run in other folders). The store
    is opened (made if missing) so a spec that cannot work fails here, before the lab
    starts: ConfigError naming ``--flag-store`` (CLI exit 2)."""
    from ..errors import StoreError
    from ..flags.store import open_store

    text = os.fspath(spec).strip()
    key = "--flag-store"
    if text == ":memory:":
        raise ConfigError("':memory:' is a store of one process: the lab's apps and the "
                          "rollout need one they share (a SQLite file or a postgresql:// URL)",
                          key=key)
    sqlite = "://" not in text or text.startswith("sqlite:///")
    path = text[len("sqlite:///"):] if text.startswith("sqlite:///") else text
    if sqlite and path:
        text = str(Path(path).expanduser().resolve())
    try:
        with open_store(text):
            pass
    except ConfigError as exc:
        raise ConfigError(exc.message, key=key) from None
    except (StoreError, OSError) as exc:
        raise ConfigError(f"cannot use this flag store: {exc}", key=key) from None
    return text


def flag_store_text(spec: str) -> str:
    """A flag store spec fit to show: a URL's password masked."""
    from ..redact import redact_url

    return redact_url(spec)


def read_layout_fields(path: str | Path | None = None) -> tuple[Path, Mapping[str, Any]]:
    """The lab dir (``path``, default: the lab dir) and the layout fields its lab.json
    recorded; LabError when there is no lab.json or it cannot be read."""
    from .layout import default_lab_dir

    directory = Path(path).expanduser().resolve() if path else default_lab_dir()
    state_file = directory / "lab.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"no lab in {directory} (no lab.json): run `upgrader lab up`"
                       ) from None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {state_file}: {exc}") from None
    fields = state.get("layout") if isinstance(state, dict) else None
    return directory, fields if isinstance(fields, dict) else {}


def plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on ``port`` now (checked the way servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 49152
    return low


def free_base_port(span: int = PORT_SPAN, attempts: int = 200,
                   low: int = 20000, high: int = 60000) -> int:
    """A random base port B such that B..B+span are free, below the ephemeral range when it
    leaves room (so outgoing connections do not take a lab port)."""
    ceiling = min(high, _ephemeral_low()) - span - 1
    if ceiling <= low:
        ceiling = high - span - 1
    rng = random.SystemRandom()
    for _ in range(attempts):
        base = rng.randrange(low, ceiling)
        if all(port_free(p) for p in range(base, base + span + 1)):
            return base
    raise LabError(f"found no {span + 1} free consecutive ports in {low}-{high}")
