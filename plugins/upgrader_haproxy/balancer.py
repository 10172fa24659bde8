"""The ``Balancer`` contract over HAProxy's Runtime API (layout: docs/HAPROXY.md).

A pool is one HAProxy backend out of ``<backend>_1 .. <backend>_<slots>`` (a "slot"), bound to
the pool's name in the state map. Traffic between pools is chosen in the frontend: a
maintenance switch, the groups map, the cohorts map (sha256 buckets of the user key), the
routes' default pool, then the split map (``rand(10000)`` over bucket ranges). The plugin
keeps all of its state inside HAProxy (servers and maps), so a new controller reads back
exactly what is live, and checks every change by reading it back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from upgrader.errors import BalancerError
from upgrader.providers.base import (
    BACKEND_STATES,
    LATENCY_BUCKETS,
    BackendState,
    BackendStats,
    BalancerState,
    Cohort,
    RouteTable,
)

from .runtime import (
    RuntimeAPI,
    ServerRow,
    check_arg,
    parse_map,
    parse_map_list,
    parse_servers_state,
    parse_stat,
    stat_int,
)

BUCKETS = 10_000                 # split and cohort resolution: 0.01 %
MAP_NAMES = ("state", "groups", "cohorts", "split")
_SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def server_name(name: str) -> str:
    """An upgrader backend name as an HAProxy server name (letters, digits, ``._-``; any
    other byte becomes ``:xx``, so ``web-01@blue`` is ``web-01:40blue``)."""
    if not name:
        raise BalancerError("a backend needs a name")
    return "".join(c if c in _SAFE_NAME else "".join(f":{b:02x}" for b in c.encode())
                   for c in name)


def backend_name(server: str) -> str:
    """The inverse of :func:`server_name`."""
    out = bytearray()
    i = 0
    while i < len(server):
        if server[i] == ":" and i + 2 < len(server):
            out.append(int(server[i + 1:i + 3], 16))
            i += 3
        else:
            out += server[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


def bucket_ranges(shares: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """``[(target, share)]`` -> map entries ``("lo:hi", target)`` over 0..9999, in
    proportion to the shares (largest remainder); targets of share 0 get no range."""
    shares = [(t, s) for t, s in shares if s > 0]
    total = sum(s for _, s in shares)
    if total <= 0:
        return []
    exact = [BUCKETS * s / total for _, s in shares]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i],
                    reverse=True)[:BUCKETS - sum(counts)]:
        counts[i] += 1
    entries, low = [], 0
    for (target, _), count in zip(shares, counts):
        if count:
            entries.append((f"{low}:{low + count - 1}", target))
            low += count
    return entries


def cohort_ranges(cohorts: list[tuple[float, str]]) -> list[tuple[str, str]]:
    """Cohorts in order (percent, target): a user whose bucket is below percent*100 goes to
    the first cohort that holds it, as ``upgrader.hashing.in_percent`` decides."""
    entries, covered = [], 0
    for percent, target in cohorts:
        limit = min(BUCKETS, round(percent * BUCKETS / 100.0))
        if limit > covered:
            entries.append((f"{covered}:{limit - 1}", target))
            covered = limit
    return entries


def latency_index(seconds: float) -> int:
    for index, bound in enumerate(LATENCY_BUCKETS):
        if seconds <= bound:
            return index
    return len(LATENCY_BUCKETS) - 1


# --------------------------------------------------------------------------------------------
# What the state map holds


@dataclass(slots=True)
class Declared:
    """What upgrader set, as kept in the state map (``show map <maps>/state.map``)."""

    split: dict[str, float] | None = None
    routes: RouteTable | None = None
    maintenance: bool = False
    retry_after: int = 0
    bindings: dict[str, str] = field(default_factory=dict)       # slot backend -> pool
    baselines: dict[str, tuple[int, int]] = field(default_factory=dict)   # slot -> req, err

    @classmethod
    def parse(cls, entries: list[tuple[str, str]]) -> Declared:
        declared = cls()
        for key, value in entries:
            text = unquote(value)
            try:
                if key == "maintenance":
                    declared.maintenance = text == "on"
                elif key == "retry_after":
                    declared.retry_after = int(text)
                elif key == "split":
                    declared.split = {p: float(w) for p, w in json.loads(text).items()}
                elif key == "routes":
                    declared.routes = _routes_from_json(json.loads(text))
                elif key.startswith("pool."):
                    declared.bindings[key[5:]] = text
                elif key.startswith("base."):
                    req, err = text.split(",")
                    declared.baselines[key[5:]] = (int(req), int(err))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise BalancerError(f"the state map holds {key} = {value!r}, which upgrader "
                                    f"did not write: {exc}") from exc
        return declared

    def entries(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.maintenance:
            out.append(("maintenance", "on"))
            out.append(("retry_after", str(int(self.retry_after))))
        if self.split is not None:
            out.append(("split", _q(json.dumps(self.split, sort_keys=True,
                                               separators=(",", ":")))))
        if self.routes is not None:
            out.append(("routes", _q(json.dumps(_routes_to_json(self.routes), sort_keys=True,
                                                separators=(",", ":")))))
            if self.routes.default is not None:
                slot = self.slot_of(self.routes.default)
                if slot is not None:
                    out.append(("default", slot))
        for slot, pool in sorted(self.bindings.items()):
            out.append((f"pool.{slot}", _q(pool)))
        for slot, (req, err) in sorted(self.baselines.items()):
            if slot in self.bindings:
                out.append((f"base.{slot}", f"{req},{err}"))
        return out

    def slot_of(self, pool: str) -> str | None:
        return next((s for s, p in self.bindings.items() if p == pool), None)

    def route_pools(self) -> set[str]:
        pools: set[str] = set()
        if self.routes is not None:
            pools.update(self.routes.groups.values())
            pools.update(p for _, p in self.routes.cohorts)
            if self.routes.default is not None:
                pools.add(self.routes.default)
        if self.split is not None:
            pools.update(p for p, w in self.split.items() if w > 0)
        return pools


def _q(text: str) -> str:
    return quote(text, safe="")


def _routes_to_json(routes: RouteTable) -> dict[str, Any]:
    return {"groups": dict(routes.groups),
            "cohorts": [[c.name, c.percent, pool] for c, pool in routes.cohorts],
            "default": routes.default, "group_header": routes.group_header,
            "user_header": routes.user_header}


def _routes_from_json(data: dict[str, Any]) -> RouteTable:
    return RouteTable(groups=dict(data["groups"]),
                      cohorts=tuple((Cohort(n, float(p)), pool) for n, p, pool in data["cohorts"]),
                      default=data["default"], group_header=data["group_header"],
                      user_header=data["user_header"])


@dataclass(slots=True)
class View:
    """One reading of HAProxy: our servers, the state map, and (when asked) ``show stat``."""

    servers: dict[str, ServerRow]            # upgrader backend name -> row
    declared: Declared
    stat: dict[tuple[str, str], dict[str, str]] | None = None

    def pool_of(self, row: ServerRow) -> str:
        # a slot that nobody bound (servers written into haproxy.cfg) is its own pool
        return self.declared.bindings.get(row.backend, row.backend)

    def slot_servers(self, slot: str) -> list[ServerRow]:
        return [r for r in self.servers.values() if r.backend == slot]


@dataclass(slots=True)
class _Latency:
    requests: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))


# --------------------------------------------------------------------------------------------


class HAProxyBalancer:
    """Drives one HAProxy through its Runtime API. Changes are serialised by a lock (the
    engine enables hosts in parallel); waiting for sessions to end happens outside it."""

    def __init__(self, socket: str, *, backend: str = "upgrader", slots: int = 3,
                 maps: str = "/etc/haproxy/upgrader", group_header: str = "X-User-Group",
                 user_header: str = "X-User", server_options: tuple[str, ...] = (),
                 timeout: float = 10.0, delete_timeout: float = 30.0,
                 poll_interval: float = 0.1) -> None:
        self.socket = socket
        self.backend = backend
        self.slots = [f"{backend}_{i}" for i in range(1, slots + 1)]
        self.maps = maps.rstrip("/")
        self.map_files = {name: f"{self.maps}/{name}.map" for name in MAP_NAMES}
        self.group_header = group_header
        self.user_header = user_header
        self.server_options = tuple(server_options)
        self.timeout = timeout
        self.delete_timeout = delete_timeout
        self.poll_interval = poll_interval
        self.api = RuntimeAPI(socket, timeout=timeout)
        self._lock: asyncio.Lock | None = None
        self._checked = False
        #: counters of servers deleted and re-added (moved between pools): kept monotonic
        self._carry: dict[str, tuple[int, int]] = {}
        self._latency: dict[str, _Latency] = {}

    def __repr__(self) -> str:
        return f"HAProxyBalancer({self.socket!r}, backend={self.backend!r})"

    async def __aenter__(self) -> HAProxyBalancer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pass    # no connection outlives a command

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- reading -------------------------------------------------------------------------

    async def _check_layout(self) -> None:
        """Once: the slots and maps the settings name exist in this HAProxy."""
        if self._checked:
            return
        loaded = set(parse_map_list(await self.api.send("show map")))
        missing = [path for path in self.map_files.values() if path not in loaded]
        if missing:
            raise BalancerError(
                f"HAProxy at {self.socket} has no map {', '.join(missing)} loaded: haproxy.cfg "
                f"must reference each map of `maps` = {self.maps!r} by exactly that path "
                "(see docs/HAPROXY.md)")
        text = await self.api.send("show servers state")
        known = {line.split()[1] for line in text.splitlines()[2:] if len(line.split()) > 1}
        stat = parse_stat(await self.api.send("show stat"))
        known |= {px for px, sv in stat if sv == "BACKEND"}
        absent = [slot for slot in self.slots if slot not in known]
        if absent:
            raise BalancerError(f"HAProxy at {self.socket} has no backend "
                                f"{', '.join(absent)}: haproxy.cfg must declare "
                                f"{self.slots[0]} .. {self.slots[-1]} (settings backend, slots)")
        self._checked = True

    async def _map(self, name: str) -> list[tuple[str, str]]:
        return parse_map(await self.api.send(f"show map {self.map_files[name]}"))

    async def _servers(self) -> dict[str, ServerRow]:
        rows = parse_servers_state(await self.api.send("show servers state"))
        slots = set(self.slots)
        return {backend_name(r.server): r for r in rows if r.backend in slots}

    async def _view(self, *, stat: bool = False) -> View:
        await self._check_layout()
        reads: list[Any] = [self._servers(), self._map("state")]
        if stat:
            reads.append(self.api.send("show stat"))
        results = await asyncio.gather(*reads)
        return View(servers=results[0], declared=Declared.parse(results[1]),
                    stat=parse_stat(results[2]) if stat else None)

    def _backend_state(self, view: View, name: str, row: ServerRow) -> BackendState:
        row_stat = view.stat.get((row.backend, row.server)) if view.stat is not None else None
        return BackendState(name=name, address=row.address, port=row.port,
                            pool=view.pool_of(row), weight=row.weight, state=row.state,
                            inflight=stat_int(row_stat, "scur") + stat_int(row_stat, "qcur"))

    async def state(self) -> BalancerState:
        view = await self._view(stat=True)
        await self._verify_maps(view)
        declared = view.declared
        return BalancerState(
            backends={name: self._backend_state(view, name, row)
                      for name, row in view.servers.items()},
            split=dict(declared.split) if declared.split is not None else None,
            routes=declared.routes, maintenance=declared.maintenance,
            retry_after=declared.retry_after if declared.maintenance else 0)

    async def backend_state(self, name: str) -> BackendState | None:
        """One backend, without reading the maps."""
        view = await self._view(stat=True)
        row = view.servers.get(name)
        return self._backend_state(view, name, row) if row is not None else None

    # -- maps ----------------------------------------------------------------------------

    def _render(self, view: View) -> dict[str, list[tuple[str, str]]]:
        """What the four maps must hold for ``view`` (its declared state and servers)."""
        declared = view.declared
        slot = declared.slot_of
        groups: list[tuple[str, str]] = []
        cohorts: list[tuple[str, str]] = []
        if declared.routes is not None:
            routes = declared.routes
            groups = sorted((check_arg(g, "group"), slot(p) or "")
                            for g, p in routes.groups.items())
            cohorts = cohort_ranges([(c.percent, slot(p) or "") for c, p in routes.cohorts])
        if declared.split is not None:
            shares = [(slot(p) or "", w) for p, w in declared.split.items()]
        else:
            # no split set: each pool in proportion to the weights of its ready servers, which
            # is the same as one weighted draw over every ready server
            capacity: dict[str, float] = {}
            for row in view.servers.values():
                if row.state == "ready" and row.weight > 0:
                    capacity[row.backend] = capacity.get(row.backend, 0) + row.weight
            shares = [(s, capacity[s]) for s in self.slots if s in capacity]
        return {"state": declared.entries(), "groups": groups, "cohorts": cohorts,
                "split": bucket_ranges(shares)}

    async def _write_map(self, name: str, want: list[tuple[str, str]],
                         have: list[tuple[str, str]] | None = None) -> None:
        """Replace a map's content atomically (``prepare map`` / ``commit map``) when it
        differs, then read it back."""
        path = self.map_files[name]
        if have is None:
            have = await self._map(name)
        if sorted(have) == sorted(want):
            return
        answer = await self.api.send(f"prepare map {path}")
        try:
            version = int(answer.strip().rsplit(":", 1)[1])
        except (IndexError, ValueError):
            raise BalancerError(f"HAProxy refused `prepare map {path}`: {answer.strip()}") from None
        await self.api.batch([f"add map @{version} {path} {check_arg(k, 'map key')} "
                              f"{check_arg(v, 'map value')}" for k, v in want])
        await self.api.command(f"commit map @{version} {path}")
        seen = await self._map(name)
        if sorted(seen) != sorted(want):
            raise BalancerError(f"map {path} reads back {seen}, expected {want}")

    async def _sync_maps(self, view: View, *, only: tuple[str, ...] = MAP_NAMES) -> None:
        want = self._render(view)
        for name in ("groups", "cohorts", "split", "state"):    # the state map last
            if name in only:
                await self._write_map(name, want[name])

    async def _verify_maps(self, view: View) -> None:
        """The maps hold what the state map declares (nobody edited them behind our back)."""
        want = self._render(view)
        names = ["groups", "cohorts"] + (["split"] if view.declared.split is not None else [])
        seen = await asyncio.gather(*(self._map(n) for n in names))
        for name, entries in zip(names, seen):
            if sorted(entries) != sorted(want[name]):
                raise BalancerError(f"map {self.map_files[name]} holds {entries}, but what "
                                    f"upgrader declared needs {want[name]}")

    async def _bind(self, view: View, pools: set[str]) -> None:
        """Bind every pool of ``pools`` to a slot; free slots nobody uses any more."""
        declared = view.declared
        in_use = {row.backend for row in view.servers.values()}
        wanted = pools | declared.route_pools()
        for slot in list(declared.bindings):
            if slot not in in_use and declared.bindings[slot] not in wanted:
                del declared.bindings[slot]
                declared.baselines.pop(slot, None)
        missing = [p for p in sorted(pools | declared.route_pools())
                   if declared.slot_of(p) is None]
        if not missing:
            return
        stat = view.stat or parse_stat(await self.api.send("show stat"))
        for pool in missing:
            free = next((s for s in self.slots
                         if s not in declared.bindings and s not in in_use), None)
            if free is None:
                raise BalancerError(
                    f"no free HAProxy backend for pool {pool!r}: {', '.join(self.slots)} serve "
                    f"{', '.join(sorted({view.pool_of(r) for r in view.servers.values()}))}"
                    "; declare more slots in haproxy.cfg and raise `slots`")
            declared.bindings[free] = pool
            row = stat.get((free, "BACKEND"))
            declared.baselines[free] = (stat_int(row, "stot"), _errors(row))

    # -- servers -------------------------------------------------------------------------

    async def _resolve(self, address: str) -> str:
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(address, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise BalancerError(f"cannot resolve backend address {address!r}: {exc}") from exc
        return str(infos[0][4][0])

    async def _set_state_cmd(self, row: ServerRow, state: str) -> None:
        await self.api.command(f"set server {row.backend}/{row.server} state {state}")

    async def _add_server(self, slot: str, name: str, address: str, port: int, weight: int,
                          state: str) -> None:
        server = check_arg(server_name(name), "backend name")
        where = f"{slot}/{server}"
        address = f"[{address}]" if ":" in address else address
        options = " ".join(check_arg(o, "server option") for o in self.server_options)
        await self.api.command(f"add server {where} {address}:{port} weight {weight}"
                               + (f" {options}" if options else ""),
                               expect="New server registered.")
        # a dynamic server starts in maintenance
        if state != "maint":
            await self.api.command(f"set server {where} state {state}")
        if "check" in self.server_options:
            await self.api.command(f"enable health {where}")

    async def _wait_sessions(self, row: ServerRow, timeout: float) -> int:
        """Poll ``show stat`` until the server has no session nor queued request."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            stat = parse_stat(await self.api.send(f"show stat {row.backend} 4 -1"))
            entry = stat.get((row.backend, row.server))
            if entry is None:
                return 0        # gone
            left = stat_int(entry, "scur") + stat_int(entry, "qcur")
            if left == 0 or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    async def _retire(self, name: str, row: ServerRow) -> None:
        """Take a server out of HAProxy: maint, wait until its sessions end, delete."""
        if row.state != "maint":
            async with self.lock:
                view = await self._view()
                current = view.servers.get(name)
                if current is None:
                    return
                # the pool loses the capacity first, then the server
                view.servers[name] = replace(current, admin_state=current.admin_state | 0x01)
                if view.declared.split is None:
                    await self._sync_maps(view, only=("split",))
                await self._set_state_cmd(current, "maint")
        left = await self._wait_sessions(row, self.delete_timeout)
        if left:
            raise BalancerError(f"backend {name} still has {left} sessions after "
                                f"{self.delete_timeout:g} s in maintenance; not deleted")
        stat = parse_stat(await self.api.send(f"show stat {row.backend} 4 -1"))
        entry = stat.get((row.backend, row.server))
        await self.api.command(f"del server {row.backend}/{row.server}", expect="Server deleted.")
        if entry is not None:
            req, err = self._carry.get(name, (0, 0))
            self._carry[name] = (req + stat_int(entry, "stot"), err + _errors(entry))

    async def set_backend(self, name: str, *, address: str, port: int, pool: str,
                          weight: int = 100, state: str = "ready") -> None:
        _check_state(state)
        _check_weight(weight)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BalancerError(f"not a TCP port: {port!r}")
        if not pool:
            raise BalancerError("a backend needs a pool")
        check_arg(server_name(name), "backend name")
        ip = await self._resolve(address)
        view = await self._view()
        row = view.servers.get(name)
        if row is not None and view.pool_of(row) != pool:
            # another pool is another HAProxy backend: the server moves (delete, add)
            await self._retire(name, row)
            row = None
        async with self.lock:
            view = await self._view()
            row = view.servers.get(name)
            if row is not None and view.pool_of(row) != pool:
                raise BalancerError(f"backend {name} changed pool while it was being moved")
            await self._bind(view, {pool})
            slot = view.declared.slot_of(pool)
            assert slot is not None
            await self._sync_maps(view, only=("state",))
            if row is None:
                await self._add_server(slot, name, ip, port, weight, state)
            else:
                where = f"{row.backend}/{row.server}"
                if state != "ready":
                    await self._shrink_split_first(view, name, state, weight)
                if (row.address, row.port) != (ip, port):
                    # answers what changed ("IP changed from ..."): the read-back judges
                    await self.api.send(f"set server {where} addr {ip} port {port}")
                if row.weight != weight:
                    await self.api.command(f"set weight {where} {weight}")
                if row.state != state:
                    await self._set_state_cmd(row, state)
            await self._after_change(name, state=state, pool=pool, weight=weight,
                                     address=ip, port=port)

    async def _shrink_split_first(self, view: View, name: str, state: str,
                                  weight: int) -> None:
        """Before a server loses capacity, the split map stops sending its pool the share."""
        if view.declared.split is not None:
            return
        row = view.servers[name]
        flag = 0x01 if state == "maint" else 0x08 if state == "drain" else 0
        view.servers[name] = replace(row, admin_state=row.admin_state | flag,
                                     weight=min(row.weight, weight))
        await self._sync_maps(view, only=("split",))
        view.servers[name] = row

    async def _after_change(self, name: str | None, *, state: str | None = None,
                            pool: str | None = None, weight: int | None = None,
                            address: str | None = None, port: int | None = None,
                            absent: bool = False) -> None:
        """Read back: the server as set, the maps as the declared state needs them."""
        view = await self._view()
        await self._bind(view, set())
        await self._sync_maps(view)
        if name is None:
            return
        row = view.servers.get(name)
        if absent:
            if row is not None:
                raise BalancerError(f"backend {name} is still in HAProxy "
                                    f"({row.backend}/{row.server}) after its removal")
            return
        if row is None:
            raise BalancerError(f"backend {name} is not in HAProxy after it was set")
        seen = {"state": row.state, "pool": view.pool_of(row), "weight": row.weight,
                "address": row.address, "port": row.port}
        want = {"state": state, "pool": pool, "weight": weight, "address": address,
                "port": port}
        wrong = {k: (seen[k], v) for k, v in want.items() if v is not None and seen[k] != v}
        if wrong:
            raise BalancerError(f"backend {name} reads back " + ", ".join(
                f"{k} {s!r} (expected {v!r})" for k, (s, v) in wrong.items()))

    async def remove_backend(self, name: str) -> None:
        view = await self._view()
        row = view.servers.get(name)
        if row is None:
            raise BalancerError(f"no backend named {name!r} in HAProxy")
        await self._retire(name, row)
        async with self.lock:
            await self._after_change(name, absent=True)

    async def set_backend_state(self, name: str, state: str, *, pool: str | None = None) -> None:
        _check_state(state)
        view = await self._view()
        row = view.servers.get(name)
        if row is None:
            raise BalancerError(f"no backend named {name!r} in HAProxy")
        if pool is not None and view.pool_of(row) != pool:
            if row.state == "ready":
                # moving a serving backend: no new requests, let those in flight finish
                await self.set_backend_state(name, "drain")
            await self.set_backend(name, address=row.address, port=row.port, pool=pool,
                                   weight=row.weight, state=state)
            return
        async with self.lock:
            view = await self._view()
            row = view.servers.get(name)
            if row is None:
                raise BalancerError(f"no backend named {name!r} in HAProxy")
            if row.state != state:
                if state != "ready":
                    await self._shrink_split_first(view, name, state, row.weight)
                await self._set_state_cmd(row, state)
            await self._after_change(name, state=state)

    async def wait_drained(self, name: str, timeout: float) -> int:
        view = await self._view()
        row = view.servers.get(name)
        if row is None:
            raise BalancerError(f"no backend named {name!r} in HAProxy")
        return await self._wait_sessions(row, float(timeout))

    # -- traffic -------------------------------------------------------------------------

    async def set_split(self, weights: Mapping[str, float] | None) -> None:
        split = None
        if weights is not None:
            split = {}
            for pool, value in weights.items():
                if (not pool or isinstance(value, bool) or not isinstance(value, (int, float))
                        or not math.isfinite(value) or not 0 <= value <= 100):
                    raise BalancerError(f"split weight of pool {pool!r} must be 0..100, "
                                        f"got {value!r}")
                split[pool] = float(value)
            if sum(split.values()) > 100.0 + 1e-6:
                raise BalancerError(f"split weights must sum to at most 100, got "
                                    f"{sum(split.values()):g}")
        async with self.lock:
            view = await self._view(stat=True)
            view.declared.split = split
            await self._bind(view, set())
            await self._sync_maps(view)
            seen = (await self._view()).declared.split
            if seen != split:
                raise BalancerError(f"split reads back {seen}, expected {split}")

    async def set_routes(self, routes: RouteTable | None) -> None:
        if routes is not None:
            if routes.group_header.lower() != self.group_header.lower():
                raise BalancerError(
                    f"haproxy.cfg reads the group from {self.group_header} (setting "
                    f"group_header); the routes ask for {routes.group_header}")
            if routes.cohorts and routes.user_header.lower() != self.user_header.lower():
                raise BalancerError(
                    f"haproxy.cfg reads the user key from {self.user_header} (setting "
                    f"user_header); the routes ask for {routes.user_header}")
            for group in routes.groups:
                check_arg(group, "group")
            for cohort, _ in routes.cohorts:
                if not 0 <= cohort.percent <= 100:
                    raise BalancerError(f"cohort {cohort.name!r}: percent must be 0..100")
        async with self.lock:
            view = await self._view(stat=True)
            view.declared.routes = routes
            await self._bind(view, set())
            await self._sync_maps(view)
            seen = (await self._view()).declared.routes
            if seen != routes and not (seen is not None and routes is not None
                                       and _routes_to_json(seen) == _routes_to_json(routes)):
                raise BalancerError(f"routes read back {seen}, expected {routes}")

    async def set_maintenance(self, on: bool, retry_after: int = 60) -> None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) \
                or not 0 <= retry_after <= 86400:
            raise BalancerError(f"retry_after must be 0..86400 seconds, got {retry_after!r}")
        async with self.lock:
            view = await self._view()
            view.declared.maintenance = bool(on)
            view.declared.retry_after = retry_after if on else 0
            await self._sync_maps(view, only=("state",))
            seen = (await self._view()).declared
            if seen.maintenance != bool(on) or (on and seen.retry_after != retry_after):
                raise BalancerError(f"maintenance reads back {seen.maintenance} "
                                    f"(Retry-After {seen.retry_after}), expected {bool(on)}")

    # -- statistics ----------------------------------------------------------------------

    def _histogram(self, key: str, requests: int, row: dict[str, str] | None) -> tuple[int, ...]:
        """HAProxy keeps no histogram: the requests since the last reading go into the bucket
        of the average time to the response headers (qtime + ctime + rtime, averages over
        the last 1024 requests) read now."""
        tracked = self._latency.setdefault(key, _Latency())
        new = requests - tracked.requests if requests >= tracked.requests else requests
        if new > 0:
            seconds = (stat_int(row, "qtime") + stat_int(row, "ctime")
                       + stat_int(row, "rtime")) / 1000.0
            tracked.buckets[latency_index(seconds)] += new
        tracked.requests = requests
        return tuple(tracked.buckets)

    async def stats(self) -> Mapping[str, BackendStats]:
        """Per backend: requests (``stot``), errors (``hrsp_5xx`` + ``eresp``) and a latency
        histogram built as :meth:`_histogram` says; cumulative across pool moves."""
        view = await self._view(stat=True)
        assert view.stat is not None
        out: dict[str, BackendStats] = {}
        for name, row in view.servers.items():
            entry = view.stat.get((row.backend, row.server))
            carried_req, carried_err = self._carry.get(name, (0, 0))
            requests = stat_int(entry, "stot") + carried_req
            out[name] = BackendStats(requests=requests, errors=_errors(entry) + carried_err,
                                     latency_buckets=self._histogram(f"s:{name}", requests, entry))
        return out

    async def pool_stats(self) -> Mapping[str, BackendStats]:
        """Per pool: its HAProxy backend's counters since the pool was bound to it (credited
        when each request was served, whatever moved since)."""
        view = await self._view(stat=True)
        assert view.stat is not None
        out: dict[str, BackendStats] = {}
        for slot, pool in view.declared.bindings.items():
            entry = view.stat.get((slot, "BACKEND"))
            base_req, base_err = view.declared.baselines.get(slot, (0, 0))
            requests = max(0, stat_int(entry, "stot") - base_req)
            out[pool] = BackendStats(requests=requests,
                                     errors=max(0, _errors(entry) - base_err),
                                     latency_buckets=self._histogram(f"p:{slot}:{pool}",
                                                                     requests, entry))
        return out


def _errors(row: dict[str, str] | None) -> int:
    return stat_int(row, "hrsp_5xx") + stat_int(row, "eresp")


def _check_state(state: str) -> None:
    if state not in BACKEND_STATES:
        raise BalancerError(f"unknown backend state {state!r} (expected one of "
                            f"{', '.join(BACKEND_STATES)})")


def _check_weight(weight: int) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
        raise BalancerError(f"backend weight must be an integer 0..256, got {weight!r}")
