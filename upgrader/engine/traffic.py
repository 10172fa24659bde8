"""Traffic control: every change the engine makes to the balancer, each read back and asserted.

Backends (enable, drain, set state, remove), traffic splits with the capacity rule (never send
a pool more traffic than its healthy hosts can carry), group routes, the maintenance page, and
the ``traffic`` event that tells front ends (and the journal, for reconcile) what users see.
Keeps :attr:`RolloutProgress.serving_target` in step with what it sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from ..errors import BalancerError
from ..model import Fleet, Host
from ..providers.base import (
    BackendState,
    BackendStateReader,
    Balancer,
    BalancerState,
    Cohort,
    HealthCheck,
    RouteTable,
)
from .bus import EventBus
from .progress import RolloutProgress, backend_name, port_of


def routes_json(routes: RouteTable | None) -> dict[str, object] | None:
    """A route table as the ``traffic`` event writes it."""
    if routes is None:
        return None
    return {"groups": dict(routes.groups), "default": routes.default,
            "cohorts": [[c.name, c.percent, p] for c, p in routes.cohorts]}


def same_routes(seen: RouteTable | None, want: RouteTable | None) -> bool:
    if seen is None or want is None:
        return seen is None and want is None
    return (dict(seen.groups) == dict(want.groups) and seen.default == want.default
            and [(c.name, c.percent, p) for c, p in seen.cohorts]
            == [(c.name, c.percent, p) for c, p in want.cohorts])


class TrafficControl:
    """The balancer, as the engine changes it."""

    def __init__(self, fleet: Fleet, balancer: Balancer, health: HealthCheck, bus: EventBus,
                 progress: RolloutProgress) -> None:
        self.fleet = fleet
        self.balancer = balancer
        self.health = health
        self.bus = bus
        self.progress = progress
        #: the balancer reads one backend without reading the whole table (big fleets)
        self._reader = balancer if isinstance(balancer, BackendStateReader) else None
        #: the last ``traffic`` event's data (for front ends)
        self.last_traffic: dict[str, object] = {}

    # -- reading

    async def backend(self, backend: str) -> BackendState | None:
        """One backend as the balancer has it now (None: absent)."""
        if self._reader is not None:
            return await self._reader.backend_state(backend)
        return (await self.balancer.state()).backends.get(backend)

    async def expect_backend(self, backend: str, *, state: str | None = None,
                             pool: str | None = None, absent: bool = False) -> None:
        """Read the balancer back and assert what was just set."""
        seen = await self.backend(backend)
        if absent:
            if seen is not None:
                raise BalancerError(f"backend {backend} still present after removal")
            return
        if seen is None:
            raise BalancerError(f"backend {backend} missing after it was set")
        if state is not None and seen.state != state:
            raise BalancerError(f"backend {backend} reads back state {seen.state!r}, "
                                f"expected {state!r}")
        if pool is not None and seen.pool != pool:
            raise BalancerError(f"backend {backend} reads back pool {seen.pool!r}, "
                                f"expected {pool!r}")

    async def probe(self, backend: str) -> bool:
        """Health-check the host behind ``backend`` now (and record it); True for a backend
        that is no host of the fleet."""
        name, _, slot = backend.partition("@")
        host = self.progress.hosts_by_name.get(name)
        if host is None:
            return True
        result = await self.health.check(host, port=port_of(host, slot or None))
        self.progress.hosts[name].healthy = result.ok
        return result.ok

    # -- backends

    async def set_backend_state(self, backend: str, state: str) -> None:
        """Change a backend's state, read it back, keep the progress's index in step."""
        await self.balancer.set_backend_state(backend, state)
        seen = await self.backend(backend)
        if seen is None or seen.state != state:
            raise BalancerError(f"backend {backend} reads back "
                                f"{seen.state if seen else 'absent'!r}, expected {state!r}")
        self.progress.track(backend, seen.pool, seen.state)

    async def remove_backend(self, backend: str) -> None:
        await self.balancer.remove_backend(backend)
        await self.expect_backend(backend, absent=True)
        self.progress.track(backend, None, None)

    async def enable(self, host: Host, slot: str | None, release: str,
                     state: str = "ready") -> None:
        """Register ``host``'s ``slot`` in pool ``release`` (serving unless ``state`` says
        otherwise)."""
        backend = backend_name(host.name, slot)
        port = port_of(host, slot)
        await self.balancer.set_backend(backend, address=host.address, port=port or 80,
                                        pool=release, weight=100, state=state)
        await self.expect_backend(backend, state=state, pool=release)
        self.progress.track(backend, release, state)

    async def drain(self, name: str, backend: str) -> None:
        """No new requests to ``backend``; wait (bounded) for those in flight."""
        state = await self.backend(backend)
        if state is None or state.state == "maint":
            return
        if state.state == "ready":
            await self.set_backend_state(backend, "drain")
        left = await self.balancer.wait_drained(backend, self.fleet.timing.drain_timeout)
        if left:
            await self.bus.emit("log", level="warning",
                                message=f"{name}: {left} requests still in flight after "
                                        f"{self.fleet.timing.drain_timeout:g}s drain")

    # -- splits, routes, maintenance

    def pool(self, symbolic: str | None) -> str | None:
        """``current`` / ``target`` as the release they name (other pools as they are)."""
        if symbolic is None:
            return None
        return {"current": self.fleet.releases.current,
                "target": self.fleet.releases.target}.get(symbolic, symbolic)

    async def healthy_share(self, pool: str) -> float:
        """Percent of the fleet's nominal capacity that ``pool`` can take now: its backends in
        service that pass a health check now, against the size of the serving cluster."""
        state = await self.balancer.state()
        members = [b.name for b in state.backends.values()
                   if b.pool == pool and b.state == "ready" and b.weight > 0]
        results = await asyncio.gather(*(self.probe(b) for b in members))
        nominal = max(1, len(self.fleet.main_hosts))
        return min(100.0, 100.0 * sum(results) / nominal)

    async def set_traffic(self, weights: Mapping[str, float], *,
                          check_capacity: bool = True) -> None:
        """Split traffic between pools (``current`` / ``target`` or release names). With
        ``check_capacity``, refuse to raise a pool's share above what its healthy hosts
        carry."""
        resolved = {self.pool(k) or k: float(v) for k, v in weights.items()}
        if check_capacity:
            before = (await self.balancer.state()).split or {}
            for pool, weight in resolved.items():
                if weight <= 0 or weight <= before.get(pool, 0.0):
                    continue
                share = await self.healthy_share(pool)
                if weight > share + 1e-9:
                    raise BalancerError(
                        f"refusing to send {weight:g}% of traffic to pool {pool}: its healthy "
                        f"hosts carry only {share:.1f}% of the fleet's capacity")
        await self.balancer.set_split(resolved)
        state = await self.balancer.state()
        if dict(state.split or {}) != resolved:
            raise BalancerError(f"traffic split reads back {dict(state.split or {})}, "
                                f"expected {resolved}")
        await self.emit_traffic(state)

    async def clear_split(self) -> None:
        """No split at all (every ready backend by its weight)."""
        await self.balancer.set_split(None)
        await self.emit_traffic()

    def route_table(self, groups: Iterable[str], default: str | None) -> RouteTable | None:
        """The route table that sends ``groups`` to the target and everyone else to
        ``default`` (None: no routing at all)."""
        admitted = set(groups)
        if not admitted and default is None:
            return None
        target = self.fleet.releases.target
        named: dict[str, str] = {}
        cohorts: list[tuple[Cohort, str]] = []
        for group in self.fleet.groups:
            if group.name not in admitted:
                continue
            if group.percent is not None:
                cohorts.append((Cohort(group.name, group.percent), target))
            else:
                for value in group.header_values or (group.name,):
                    named[value] = target
        return RouteTable(groups=named, cohorts=tuple(cohorts), default=self.pool(default),
                          group_header=self.fleet.group_header,
                          user_header=self.fleet.user_header)

    async def route(self, groups: Iterable[str], default: str | None) -> None:
        await self.set_routes(self.route_table(groups, default))

    async def set_routes(self, table: RouteTable | None) -> None:
        """Set ``table``, read it back."""
        await self.balancer.set_routes(table)
        state = await self.balancer.state()
        if not same_routes(state.routes, table):
            raise BalancerError(f"routes read back as {state.routes}, expected {table}")
        await self.emit_traffic(state)

    async def maintenance(self, on: bool, retry_after: int) -> None:
        await self.balancer.set_maintenance(on, retry_after)
        state = await self.balancer.state()
        if state.maintenance != on:
            raise BalancerError(f"maintenance reads back {state.maintenance}, expected {on}")
        self.progress.maintenance_on = on
        await self.emit_traffic(state)

    async def emit_traffic(self, state: BalancerState | None = None) -> None:
        """Announce what users see now (a ``traffic`` event)."""
        state = state or await self.balancer.state()
        pools: dict[str, int] = {}
        for backend in state.backends.values():
            if backend.state == "ready" and backend.weight > 0:
                pools[backend.pool] = pools.get(backend.pool, 0) + 1
        self.last_traffic = {"split": dict(state.split) if state.split else None,
                             "routes": routes_json(state.routes),
                             "maintenance": state.maintenance, "ready_by_pool": pools}
        await self.bus.emit("traffic", **self.last_traffic)

    def target_at_zero(self) -> bool:
        """The target pool is deliberately getting no traffic (shedding before its first
        step): only health can be judged, not traffic."""
        split = self.last_traffic.get("split") if self.last_traffic else None
        return isinstance(split, dict) and bool(split) \
            and not split.get(self.fleet.releases.target, 0)
