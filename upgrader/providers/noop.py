"""No-op providers: a transport that records commands, an in-memory balancer, a health check
that is always ok and a snapshot provider that keeps nothing.

They serve ``upgrader plan --estimate``, benchmarks and tests. The balancer is faithful to
the ``Balancer`` protocol: what is set is what reads back, and 10,000 backends are cheap.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import BalancerError, ConfigError, SnapshotError, TransportError
from ..hookspecs import Register, hookimpl
from ..model import Host
from .base import (
    BACKEND_STATES,
    LATENCY_BUCKETS,
    BackendState,
    BackendStats,
    Balancer,
    BalancerState,
    CommandResult,
    HealthCheck,
    HealthResult,
    ProviderContext,
    RouteTable,
    Setting,
    SnapshotProvider,
    Transport,
)

DELAY_SETTING = Setting("delay", float, 0.0, "seconds each call takes (asyncio.sleep)")
TRANSPORT_SETTINGS: tuple[Setting, ...] = (DELAY_SETTING,)
BALANCER_SETTINGS: tuple[Setting, ...] = ()
HEALTH_SETTINGS: tuple[Setting, ...] = (DELAY_SETTING,)
SNAPSHOT_SETTINGS: tuple[Setting, ...] = (DELAY_SETTING,)


def _check_delay(delay: float, category: str) -> float:
    if delay < 0:
        raise ConfigError(f"must be 0 or more seconds, got {delay}", key=f"{category}.delay")
    return delay


async def _pause(delay: float) -> None:
    if delay:
        await asyncio.sleep(delay)


# -------------------------------------------------------------------------------------------
# transport


@dataclass(frozen=True, slots=True)
class RecordedCall:
    host: str
    argv: tuple[str, ...]
    timeout: float | None
    check: bool


class NoopTransport:
    """Runs nothing: records each call and answers exit status 0.

    ``responder(host, argv) -> CommandResult | None`` (tests) may answer differently; a
    non-zero answer with ``check=True`` raises ``TransportError`` like a real transport.
    """

    def __init__(self, *, delay: float = 0.0,
                 responder: Callable[[Host, tuple[str, ...]], CommandResult | None] | None = None
                 ) -> None:
        self.delay = _check_delay(delay, "transport")
        self.responder = responder
        self.calls: list[RecordedCall] = []

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> NoopTransport:
        return cls(delay=settings["delay"])

    async def run(self, host: Host, argv: Sequence[str], *, timeout: float | None = None,
                  check: bool = True) -> CommandResult:
        argv = tuple(argv)
        self.calls.append(RecordedCall(host.name, argv, timeout, check))
        await _pause(self.delay)
        result = self.responder(host, argv) if self.responder is not None else None
        if result is None:
            result = CommandResult(0)
        if check and result.exit_status != 0:
            raise TransportError(f"{argv[0] if argv else '?'} exited with status "
                                 f"{result.exit_status}", host=host.name, argv=argv,
                                 exit_status=result.exit_status, stdout=result.stdout,
                                 stderr=result.stderr)
        return result

    async def aclose(self) -> None:
        pass


# -------------------------------------------------------------------------------------------
# balancer


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    #: a pool's last reading, until traffic changes its counters (read every second; a
    #: backend's is not kept: one per backend of a big fleet is memory for nothing)
    reading: BackendStats | None = None

    def read(self) -> BackendStats:
        if self.reading is None:
            self.reading = self.snapshot()
        return self.reading

    def snapshot(self) -> BackendStats:
        return BackendStats(self.requests, self.errors, tuple(self.buckets))


class NoopBalancer:
    """An in-memory balancer. Nothing is served; stats stay zero unless a test records
    traffic with :meth:`record` or :meth:`set_inflight`."""

    def __init__(self) -> None:
        self._backends: dict[str, BackendState] = {}
        self._counters: dict[str, _Counters] = {}
        #: cumulative counters per pool, credited at request time (HAProxy's BACKEND rows)
        self._pool_counters: dict[str, _Counters] = {}
        self._split: dict[str, float] | None = None
        self._routes: RouteTable | None = None
        self._maintenance = False
        self._retry_after = 0
        self._drained: dict[str, asyncio.Event] = {}
        #: every change, in order: (method, args...)
        self.operations: list[tuple[Any, ...]] = []

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> NoopBalancer:
        return cls()

    def _get(self, name: str) -> BackendState:
        try:
            return self._backends[name]
        except KeyError:
            raise BalancerError(f"no backend named {name!r}") from None

    async def state(self) -> BalancerState:
        return BalancerState(
            backends=dict(self._backends),
            split=dict(self._split) if self._split is not None else None,
            routes=self._routes,
            maintenance=self._maintenance,
            retry_after=self._retry_after,
        )

    async def set_backend(self, name: str, *, address: str, port: int, pool: str,
                          weight: int = 100, state: str = "ready") -> None:
        if not name:
            raise BalancerError("a backend needs a name")
        if state not in BACKEND_STATES:
            raise BalancerError(f"unknown backend state {state!r} (expected one of "
                                f"{', '.join(BACKEND_STATES)})")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
            raise BalancerError(f"backend weight must be an integer 0..256, got {weight!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BalancerError(f"not a TCP port: {port!r}")
        previous = self._backends.get(name)
        inflight = previous.inflight if previous is not None else 0
        self._backends[name] = BackendState(name=name, address=address, port=port, pool=pool,
                                            weight=weight, state=state, inflight=inflight)
        # replacing a backend keeps its counters (as a HAProxy server keeps its stats)
        self._counters.setdefault(name, _Counters())
        self.operations.append(("set_backend", name, address, port, pool, weight, state))

    async def remove_backend(self, name: str) -> None:
        self._get(name)
        del self._backends[name]
        self._counters.pop(name, None)
        event = self._drained.pop(name, None)
        if event is not None:
            event.set()
        self.operations.append(("remove_backend", name))

    async def set_backend_state(self, name: str, state: str, *, pool: str | None = None) -> None:
        backend = self._get(name)
        if state not in BACKEND_STATES:
            raise BalancerError(f"unknown backend state {state!r} (expected one of "
                                f"{', '.join(BACKEND_STATES)})")
        self._backends[name] = replace(backend, state=state,
                                       pool=backend.pool if pool is None else pool)
        self.operations.append(("set_backend_state", name, state, pool))

    async def wait_drained(self, name: str, timeout: float) -> int:
        backend = self._get(name)
        if backend.inflight == 0:
            return 0
        event = self._drained.setdefault(name, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        current = self._backends.get(name)
        return current.inflight if current is not None else 0

    async def set_split(self, weights: Mapping[str, float] | None) -> None:
        if weights is not None:
            for pool, value in weights.items():
                if (isinstance(value, bool) or not isinstance(value, (int, float))
                        or not math.isfinite(value) or not 0 <= value <= 100):
                    raise BalancerError(f"split weight of pool {pool!r} must be 0..100, "
                                        f"got {value!r}")
            self._split = {pool: float(value) for pool, value in weights.items()}
        else:
            self._split = None
        self.operations.append(("set_split", None if weights is None else dict(weights)))

    async def set_routes(self, routes: RouteTable | None) -> None:
        self._routes = routes
        self.operations.append(("set_routes", routes))

    async def set_maintenance(self, on: bool, retry_after: int = 60) -> None:
        self._maintenance = bool(on)
        self._retry_after = int(retry_after) if on else 0
        self.operations.append(("set_maintenance", bool(on), retry_after))

    async def stats(self) -> Mapping[str, BackendStats]:
        return {name: c.snapshot() for name, c in self._counters.items()}

    async def pool_stats(self) -> Mapping[str, BackendStats]:
        """Cumulative counters per pool: O(pools), whatever the fleet's size."""
        return {pool: c.read() for pool, c in self._pool_counters.items()}

    async def backend_stats(self, names: Iterable[str]) -> Mapping[str, BackendStats]:
        """The counters of the named backends only: O(names), whatever the fleet's size."""
        counters = self._counters
        return {name: c.snapshot() for name in names
                if (c := counters.get(name)) is not None}

    async def backend_state(self, name: str) -> BackendState | None:
        """One backend's state (None if absent), without copying the whole table."""
        return self._backends.get(name)

    async def aclose(self) -> None:
        pass

    # -- test and simulation helpers (not part of the protocol) --------------------------------

    def record(self, name: str, *, requests: int = 0, errors: int = 0,
               latencies: Sequence[float] = ()) -> None:
        """Add traffic to a backend's counters: ``requests`` (of which ``errors`` failed)
        and each latency (seconds) into its histogram bucket (latencies also count as
        requests when ``requests`` is 0)."""
        backend = self._get(name)
        pool = self._pool_counters.setdefault(backend.pool, _Counters())
        for counters in (self._counters[name], pool):
            counters.reading = None
            counters.requests += requests or len(latencies)
            counters.errors += errors
            for latency in latencies:
                for index, bound in enumerate(LATENCY_BUCKETS):
                    if latency <= bound:
                        counters.buckets[index] += 1
                        break

    def record_pool(self, pool: str, *, requests: int, errors: int = 0,
                    latency: float | None = None) -> None:
        """Add traffic served by ``pool`` as a whole (simulations of many users: no walk
        over the backends), every request of latency ``latency`` seconds when given."""
        counters = self._pool_counters.setdefault(pool, _Counters())
        counters.reading = None
        counters.requests += requests
        counters.errors += errors
        if latency is not None:
            counters.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += requests

    def set_inflight(self, name: str, inflight: int) -> None:
        """Pretend ``inflight`` requests are in flight on a backend (0 wakes wait_drained)."""
        backend = self._get(name)
        self._backends[name] = replace(backend, inflight=inflight)
        if inflight == 0:
            event = self._drained.pop(name, None)
            if event is not None:
                event.set()


# -------------------------------------------------------------------------------------------
# health and snapshots


class NoopHealthCheck:
    """Always healthy, unless a test says otherwise with :meth:`set_healthy`."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = _check_delay(delay, "health")
        self.unhealthy: set[str] = set()
        self.checks: list[tuple[str, int | None]] = []

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> NoopHealthCheck:
        return cls(delay=settings["delay"])

    def set_healthy(self, host_name: str, healthy: bool) -> None:
        (self.unhealthy.discard if healthy else self.unhealthy.add)(host_name)

    async def check(self, host: Host, *, port: int | None = None) -> HealthResult:
        self.checks.append((host.name, port))
        await _pause(self.delay)
        if host.name in self.unhealthy:
            return HealthResult(False, "noop: marked unhealthy")
        return HealthResult(True, "noop")

    async def aclose(self) -> None:
        pass


class NoopSnapshot:
    """Keeps a list of snapshot ids per host and nothing else."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = _check_delay(delay, "snapshot")
        self.snapshots: dict[str, list[str]] = {}
        self.reverted: list[tuple[str, str]] = []
        self._counter = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> NoopSnapshot:
        return cls(delay=settings["delay"])

    def _check(self, host: Host, snapshot_id: str) -> None:
        if snapshot_id not in self.snapshots.get(host.name, ()):
            raise SnapshotError(f"no snapshot {snapshot_id!r}", host=host.name)

    async def create(self, host: Host, label: str) -> str:
        await _pause(self.delay)
        self._counter += 1
        snapshot_id = f"{label}-{self._counter}"
        self.snapshots.setdefault(host.name, []).append(snapshot_id)
        return snapshot_id

    async def revert(self, host: Host, snapshot_id: str) -> None:
        self._check(host, snapshot_id)
        await _pause(self.delay)
        self.reverted.append((host.name, snapshot_id))

    async def delete(self, host: Host, snapshot_id: str) -> None:
        # deleting what is gone already is fine (as ``rm -f``)
        ids = self.snapshots.get(host.name, [])
        if snapshot_id in ids:
            ids.remove(snapshot_id)

    async def aclose(self) -> None:
        pass


@hookimpl
def register_transports(register: Register[Transport]) -> None:
    register("noop", NoopTransport.from_settings, settings=TRANSPORT_SETTINGS,
             description="runs nothing, records every command, answers exit 0")


@hookimpl
def register_balancers(register: Register[Balancer]) -> None:
    register("noop", NoopBalancer.from_settings, settings=BALANCER_SETTINGS,
             description="an in-memory balancer (estimates, benchmarks, tests)")


@hookimpl
def register_health_checks(register: Register[HealthCheck]) -> None:
    register("noop", NoopHealthCheck.from_settings, settings=HEALTH_SETTINGS,
             description="always healthy")


@hookimpl
def register_snapshot_providers(register: Register[SnapshotProvider]) -> None:
    register("noop", NoopSnapshot.from_settings, settings=SNAPSHOT_SETTINGS,
             description="remembers snapshot ids, saves nothing")
