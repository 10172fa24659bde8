"""Provider contracts: the only thing the engine knows about transports, balancers, health
checks, snapshot providers and notifiers.

A provider is created by a factory registered under a name (see ``upgrader.hookspecs``):
``factory(settings, context) -> provider`` (a :data:`Factory`). Every provider has an async
``aclose()``. Settings are declared with :class:`Setting` so that a typo in a fleet file is a
``ConfigError`` naming the key, before anything runs.

Each protocol method says what it returns and which error of ``upgrader.errors`` it raises. A
provider translates its library's errors (``OSError``, ``aiohttp.ClientError``, ...) into
that error at its boundary (``raise BalancerError(...) from exc``): the engine catches the
tree, never a library's exceptions. A factory raises ``ConfigError`` for settings that are
well-typed but invalid.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..errors import BalancerError, ConfigError, MetricSourceError
from ..model import Fleet, Host

if TYPE_CHECKING:  # for annotations only: the contracts sit below events in the layers
    from ..events import Event

# --------------------------------------------------------------------------------------------
# Declared settings (pyinfra's data_meta idea): name, type, default, description.

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    type: type | tuple[type, ...]
    default: Any = _MISSING
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a factory may use besides its settings."""

    fleet: Fleet | None = None
    #: the fleet's transport, for providers that act on hosts (command checks, snapshots)
    transport: Transport | None = None
    state_dir: str | None = None
    #: the fleet's balancer, for providers that read it (the ``balancer`` metric source)
    balancer: Balancer | None = None


ProviderT = TypeVar("ProviderT", covariant=True)

#: ``factory(settings, context) -> provider``: what a plugin registers. ``settings`` holds every
#: declared :class:`Setting`, validated, defaults filled in. ``Factory[Transport]`` builds a
#: transport, and so on; it raises ``ConfigError`` for settings that are well-typed but invalid.
Factory = Callable[[Mapping[str, Any], ProviderContext], ProviderT]


@dataclass(frozen=True, slots=True)
class ProviderFactory:
    """A registered factory: its name (a fleet file's ``kind``), its declared settings and the
    plugin that registered it."""

    name: str
    factory: Factory[Any]
    settings: tuple[Setting, ...] = ()
    description: str = ""
    plugin: str = ""


# --------------------------------------------------------------------------------------------
# Transport


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int
    stdout: str = ""
    stderr: str = ""


#: lines of a failed command's output an error message keeps
OUTPUT_TAIL_LINES = 5


def describe_exit(status: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL`` (a negative status: a signal)."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def output_tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last ``lines`` non-blank lines of a command's output (for error messages)."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def command_text(argv: Sequence[str], limit: int = 200) -> str:
    """``argv`` as a shell would read it, cut at ``limit`` characters (for messages)."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@runtime_checkable
class Transport(Protocol):
    """How commands reach a host (a local subprocess, SSH, ...)."""

    async def run(self, host: Host, argv: Sequence[str], *, timeout: float | None = None,
                  check: bool = True) -> CommandResult:
        """Run ``argv`` (an argument list, never a shell string) on ``host``; return its exit
        status and output.

        :param timeout: seconds before the command is stopped (None: the transport's own).
        :param check: raise on a non-zero exit status; with False, return it instead.
        :raises CommandTimeout: the command ran past ``timeout`` (also a ``TimeoutError``).
        :raises TransportError: the host could not be reached, the command could not be
            started, the transport is closed, or (``check``) the command exited non-zero;
            ``exit_status``, ``stdout`` and ``stderr`` carry what it said.
        """

    async def aclose(self) -> None:
        """Close the connections and processes the transport opened. Raises nothing."""


# --------------------------------------------------------------------------------------------
# Balancer

BACKEND_STATES = ("ready", "drain", "maint")

#: upper bounds (seconds) of the latency histogram buckets every balancer reports
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0, float("inf"),
)


@dataclass(frozen=True, slots=True)
class BackendState:
    name: str
    address: str
    port: int
    pool: str
    weight: int            # 0..256, relative within its pool
    state: str             # ready | drain | maint
    inflight: int = 0


@dataclass(frozen=True, slots=True)
class Cohort:
    """Users whose bucket (0..9999 of hash(user key)) is below ``percent``*100."""

    name: str
    percent: float


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Group routing. A request's group comes from ``group_header`` (or cookie ``group``);
    its user key from ``user_header`` (or cookie ``user``) for cohorts."""

    groups: Mapping[str, str] = field(default_factory=dict)     # group -> pool
    cohorts: tuple[tuple[Cohort, str], ...] = ()                 # (cohort, pool)
    default: str | None = None                                   # pool for everyone else
    group_header: str = "X-User-Group"
    user_header: str = "X-User"


@dataclass(frozen=True, slots=True)
class BalancerState:
    backends: Mapping[str, BackendState]
    split: Mapping[str, float] | None = None     # pool -> weight percent
    routes: RouteTable | None = None
    maintenance: bool = False
    retry_after: int = 0


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Cumulative counters since the backend was added (as HAProxy's ``show stat``)."""

    requests: int
    errors: int                         # 5xx answered + failed to connect / reset
    latency_buckets: tuple[int, ...]    # counts per LATENCY_BUCKETS bound (not cumulative)


@runtime_checkable
class Balancer(Protocol):
    """A load balancer client. Every method raises ``BalancerError`` when the balancer cannot
    be reached, refuses a change, or answers something unreadable; the engine reads the
    state back after each change and treats a difference as a ``BalancerError`` too."""

    async def state(self) -> BalancerState:
        """The balancer's table as it reads back now: backends, split, routes, maintenance.

        :raises BalancerError: unreachable, or an answer that cannot be read.
        """

    async def set_backend(self, name: str, *, address: str, port: int, pool: str,
                          weight: int = 100, state: str = "ready") -> None:
        """Add or replace backend ``name`` at ``address:port`` in ``pool`` (``weight``
        0..256 within the pool, ``state`` one of ``BACKEND_STATES``).

        :raises BalancerError: a bad name, port, weight or state, a refusal, or unreachable.
        """

    async def remove_backend(self, name: str) -> None:
        """Take backend ``name`` out of the balancer.

        :raises BalancerError: no such backend, a refusal, or unreachable.
        """

    async def set_backend_state(self, name: str, state: str, *, pool: str | None = None) -> None:
        """ready | drain (no new requests) | maint. Optionally move it to another pool.

        :raises BalancerError: no such backend, an unknown state, a refusal, or unreachable.
        """

    async def wait_drained(self, name: str, timeout: float) -> int:
        """Wait up to ``timeout`` seconds until backend ``name`` has no request in flight;
        return how many are still in flight (0: drained). Giving up is not an error.

        :raises BalancerError: no such backend, or unreachable.
        """

    async def set_split(self, weights: Mapping[str, float] | None) -> None:
        """Send ``weights`` percent of the traffic to each pool (None: no split, every ready
        backend by its weight).

        :raises BalancerError: a weight outside 0..100 (or a sum above 100), a refusal, or
            unreachable.
        """

    async def set_routes(self, routes: RouteTable | None) -> None:
        """Route groups and cohorts of users to pools (None: no routes).

        :raises BalancerError: a route the balancer cannot hold, a refusal, or unreachable.
        """

    async def set_maintenance(self, on: bool, retry_after: int = 60) -> None:
        """Answer every request with 503 and ``Retry-After: retry_after`` (``on``), or
        serve again.

        :raises BalancerError: a refusal, or unreachable.
        """

    async def stats(self) -> Mapping[str, BackendStats]:
        """Cumulative counters per backend name (requests, errors, latency histogram).

        :raises BalancerError: unreachable, or an answer that cannot be read.
        """

    async def aclose(self) -> None:
        """Close the connections the client opened. Raises nothing."""

    # Optional, for big fleets (the engine uses them when a balancer has them):
    #   async def backend_state(self, name: str) -> BackendState | None
    #       one backend without reading the whole table
    #   async def pool_stats(self) -> Mapping[str, BackendStats]
    #       cumulative counters per pool, credited when each request was served
    #   async def backend_stats(self, names: Iterable[str]) -> Mapping[str, BackendStats]
    #       the counters of a few backends without reading them all


# --------------------------------------------------------------------------------------------
# Health checks, snapshots, notifiers


@dataclass(frozen=True, slots=True)
class HealthResult:
    ok: bool
    detail: str = ""


@runtime_checkable
class HealthCheck(Protocol):
    """Tells whether a host serves. The engine retries a failed check and raises
    ``HealthCheckFailed`` when the host stays unhealthy; the check itself does not."""

    async def check(self, host: Host, *, port: int | None = None) -> HealthResult:
        """One attempt; ``port`` overrides the host's port (blue-green slots). An unhealthy
        or unreachable host is ``HealthResult(False, why)``, never an exception.

        :raises ConfigError: the check cannot be made for this host (no port to check, a
            template naming an unknown placeholder).
        """

    async def aclose(self) -> None:
        """Close the connections the check opened. Raises nothing."""


@runtime_checkable
class SnapshotProvider(Protocol):
    """Takes and restores snapshots of a host (a directory, a VM, ...)."""

    async def create(self, host: Host, label: str) -> str:
        """Take a snapshot of ``host`` named after ``label``; return its id.

        :raises SnapshotError: the snapshot could not be taken (the host, the tool or the
            hypervisor failed; its ``host`` names the host).
        """

    async def revert(self, host: Host, snapshot_id: str) -> None:
        """Put ``host`` back as it was when ``snapshot_id`` was taken.

        :raises SnapshotError: no such snapshot, or the restore failed.
        """

    async def delete(self, host: Host, snapshot_id: str) -> None:
        """Delete snapshot ``snapshot_id`` of ``host``.

        :raises SnapshotError: no such snapshot, or the deletion failed.
        """

    async def aclose(self) -> None:
        """Close the connections the provider opened. Raises nothing."""


@runtime_checkable
class FlagSwitch(Protocol):
    """Feature flags as a rollout step sees them (``upgrader.flags.switch`` over a store)."""

    async def set_flag(self, key: str, *, on: bool, percent: float | None = None,
                       groups: tuple[str, ...] = (), reason: str = "") -> None:
        """Turn ``key`` on (for the users of ``groups`` and/or ``percent`` of users when
        given) or off; audited."""

    async def flag_state(self, key: str) -> dict[str, Any]:
        """``{"on": bool, "percent": float | None, "groups": [...]}`` as stored now."""

    async def flags_needing(self, versions: tuple[str, ...]) -> list[str]:
        """The flags on now whose ``schema`` is one of ``versions`` (a release, a migration's
        name or number): a roll-back of that schema turns them off first."""

    async def aclose(self) -> None: ...


@runtime_checkable
class SchemaSwitch(Protocol):
    """The live schema change a release carries, as a rollout sees it
    (``upgrader.schema.switch`` over a SQLite file or a PostgreSQL database). Each call is
    idempotent, so that a resumed rollout can repeat the one it was in when it died."""

    async def start(self) -> str:
        """Expand (create the new release's views beside the old's). Returns what it did:
        ``started``, ``already started`` or ``already complete``."""

    async def complete(self) -> str:
        """Contract: ``completed`` or ``already complete``."""

    async def rollback(self) -> str:
        """Undo ``start``: ``rolled back``, or ``not started`` when there is nothing to undo
        (a completed migration is never rolled back by a rollout)."""

    async def state(self) -> str | None:
        """``started`` | ``complete`` | ``rolled_back``, or None when never started."""

    async def aclose(self) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Receives every event of a rollout (webhook, chat, ...)."""

    async def notify(self, event: Event) -> None:
        """Hand ``event`` on; return quickly (queue it and send it in the background). A
        notifier that fails must not stop the rollout: the engine logs what ``notify``
        raises and carries on, so it raises nothing on purpose."""

    async def aclose(self) -> None:
        """Close; a notifier that queues sends what is still queued first, within a bounded
        time. Raises nothing."""


# --------------------------------------------------------------------------------------------
# Metric sources: where the judge reads a metric of the canary and of the baseline.


@dataclass(frozen=True, slots=True)
class MetricWindow:
    """One analysis interval of a rollout: what a metric source is asked about."""

    start: float                    # wall-clock epoch seconds (the interval's start)
    end: float                      # ... and its end; ``end - start`` is ``{interval}``
    canary: tuple[str, ...]         # serving hosts (backend names) on the target release
    baseline: tuple[str, ...]       # serving hosts on the current release
    canary_release: str
    baseline_release: str
    canary_pool: str | None = None  # the balancer pool of each side, when pools split them
    baseline_pool: str | None = None


@dataclass(frozen=True, slots=True)
class MetricSamples:
    """What a source read for one metric over one window, for each side.

    ``canary`` / ``baseline``: the observations (e.g. per-host or per-step values, or the
    latency of sampled requests). For a ``proportion`` metric also ``(events, trials)`` of each
    side (e.g. ``(errors, requests)``): the judge tests counts when it has them. Empty samples
    and ``None`` counts mean "no data" for that side."""

    canary: tuple[float, ...] = ()
    baseline: tuple[float, ...] = ()
    canary_counts: tuple[int, int] | None = None
    baseline_counts: tuple[int, int] | None = None
    detail: str = ""                # one line for people: what was read, from where


@runtime_checkable
class MetricSource(Protocol):
    """Reads one kind of metric (a ``[[verify.metrics]] source``): the balancer's counters,
    Prometheus, a command, ... Raises ``MetricSourceError`` when the source cannot be reached
    or answers something unreadable (the judge then treats the metric as without data, and
    says why); a query that can never work (bad PromQL, unknown figure) is a ``ConfigError``
    from ``check`` before the rollout starts."""

    def check(self, metric: Any) -> None:
        """Validate ``metric`` (a ``MetricSpec``) for this source: ``ConfigError`` naming the
        metric when its query or settings cannot work. Called once per metric at start."""

    async def collect(self, metric: Any, window: MetricWindow) -> MetricSamples:
        """The samples of ``metric`` (a ``MetricSpec``) over ``window``."""

    async def aclose(self) -> None:
        """Release connections. Raises nothing."""


# --------------------------------------------------------------------------------------------
# Optional balancer capabilities: a balancer that has them is used through them (big fleets);
# the engine asks ``isinstance(balancer, BackendStateReader)`` instead of probing attributes.


@runtime_checkable
class BackendStateReader(Protocol):
    """A balancer that reads one backend without reading the whole table."""

    async def backend_state(self, name: str) -> BackendState | None:
        """The backend called ``name`` as the balancer has it now; None when it has none."""


@runtime_checkable
class PoolStatsReader(Protocol):
    """A balancer that keeps cumulative counters per pool, credited to the pool that served
    each request (so a backend moved between pools does not carry its history along)."""

    async def pool_stats(self) -> Mapping[str, BackendStats]:
        """Cumulative counters per pool name, as ``Balancer.stats`` per backend."""


@runtime_checkable
class BackendStatsReader(Protocol):
    """A balancer that reads the counters of a few named backends without reading them all
    (the engine's ``metrics`` event carries per-host figures only for the hosts that changed
    lately and those a front end shows; with it, a big fleet is not copied each second)."""

    async def backend_stats(self, names: Iterable[str]) -> Mapping[str, BackendStats]:
        """Cumulative counters of the backends called ``names``, as ``Balancer.stats``; a
        name the balancer does not have is left out."""


# --------------------------------------------------------------------------------------------
# The fleet lock held on the fleet itself (upgrader.fleetlock uses it; docs/STATE.md)


@runtime_checkable
class FleetLockHolder(Protocol):
    """A balancer that keeps the fleet's lock itself, so every controller that reaches the
    balancer sees it (the built-in balancer's ``/admin/lock``). A holder is a JSON object with
    at least ``id`` (a fresh random text per acquisition); the keeper adds ``age``, the seconds
    since the holder last took or renewed it, measured on the keeper's clock. Every call is
    atomic on the keeper's side. Balancers without it are locked through host lock files."""

    async def take_fleet_lock(self, holder: Mapping[str, Any],
                              replace: str | None = None) -> Mapping[str, Any] | None:
        """Take the lock for ``holder`` when nobody holds it, or when the holder's ``id`` is
        ``replace`` (taking over a dead holder); None when taken, else the holder as it is."""

    async def renew_fleet_lock(self, holder: Mapping[str, Any]) -> bool:
        """Refresh the lock's holder (heartbeat, rollout id); False when ``holder['id']`` no
        longer holds it."""

    async def release_fleet_lock(self, lock_id: str | None) -> Mapping[str, Any] | None:
        """Remove the lock when ``lock_id`` holds it (None: whoever holds it, an unlock by
        hand); returns the holder removed, or None."""

    async def read_fleet_lock(self) -> Mapping[str, Any] | None:
        """The holder now (with ``age``), or None."""


# --------------------------------------------------------------------------------------------
# The balancer's counters as metric samples: the reader behind the built-in ``balancer``
# metric source (``providers/balancer_metrics.py`` registers it), and the one the engine uses
# when it was handed no metric sources (a ``Providers`` built by hand, as tests do). It knows a
# balancer only through the protocols above, so it lives with them.

#: the figures the ``balancer`` source reads (``query``), and the kind each one is
FIGURES: dict[str, str] = {"error_rate": "proportion", "p95_latency": "value",
                           "latency": "value"}
#: at most this many latency observations per side and window (one per request, from the
#: histogram's bucket bounds); more are thinned evenly, keeping the distribution's shape
MAX_OBSERVATIONS = 5000


def counter_delta(previous: Mapping[str, BackendStats], current: Mapping[str, BackendStats],
                  names: Iterable[str]) -> tuple[int, int, list[int]]:
    """Requests, errors and latency-bucket counts of ``names`` between two readings."""
    requests = errors = 0
    buckets = [0] * len(LATENCY_BUCKETS)
    for name in names:
        now = current.get(name)
        if now is None:
            continue
        before = previous.get(name)
        if before is None or before.requests > now.requests:   # new or reset backend
            before = BackendStats(0, 0, tuple(0 for _ in LATENCY_BUCKETS))
        requests += now.requests - before.requests
        errors += now.errors - before.errors
        if now.latency_buckets != before.latency_buckets:     # an idle backend costs nothing
            buckets = [total + (a - b if a > b else 0) for total, a, b in
                       zip(buckets, now.latency_buckets, before.latency_buckets)]
    return requests, errors, buckets


def latency_observations(buckets: list[int], limit: int = MAX_OBSERVATIONS) -> tuple[float, ...]:
    """One value per request: the upper bound of its latency bucket (thinned to ``limit``)."""
    total = sum(buckets)
    if total == 0:
        return ()
    step = max(1.0, total / limit)
    values: list[float] = []
    position = 0.0
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, buckets):
        seen += count
        while position < seen:
            values.append(float(bound))
            position += step
    return tuple(values)


class BalancerCounters:
    """``MetricSource`` over a balancer's cumulative counters: each ``collect`` reads them and
    returns what changed since the previous reading (the first reading only primes). Several
    metrics over the same window share one reading."""

    def __init__(self, balancer: Balancer | None) -> None:
        self.balancer = balancer
        self._pools = balancer if isinstance(balancer, PoolStatsReader) else None
        self._readings: dict[bool, Mapping[str, BackendStats]] = {}
        self._window: tuple[Any, ...] | None = None
        self._pair: tuple[Mapping[str, BackendStats] | None, Mapping[str, BackendStats]] | None \
            = None
        self._lock = asyncio.Lock()

    def check(self, metric: Any) -> None:
        query = metric.query
        if not isinstance(query, str) or query not in FIGURES:
            raise ConfigError(f"metric {metric.name!r}: the balancer source reads "
                              f"{', '.join(FIGURES)}, not {query!r}", key="query")
        if FIGURES[query] != metric.kind:
            raise ConfigError(f"metric {metric.name!r}: the balancer's {query} is a "
                              f"{FIGURES[query]} metric, not {metric.kind!r}", key="kind")
        if self.balancer is None:
            raise ConfigError(f"metric {metric.name!r}: the balancer source needs the "
                              f"fleet's balancer", key="source")

    async def _read(self, window: MetricWindow) -> tuple[
            Mapping[str, BackendStats] | None, Mapping[str, BackendStats], bool]:
        # the judge collects its metrics concurrently: a second metric of the same window
        # waits for the first one's reading and shares it (two readings would give the
        # second metric the requests of the few milliseconds between them: none)
        async with self._lock:
            return await self._read_once(window)

    async def _read_once(self, window: MetricWindow) -> tuple[
            Mapping[str, BackendStats] | None, Mapping[str, BackendStats], bool]:
        pools = self._pools is not None and window.canary_pool is not None
        key = (window.start, window.end, window.canary, window.baseline, window.canary_pool,
               window.baseline_pool)
        if key == self._window and self._pair is not None:
            return self._pair[0], self._pair[1], pools
        assert self.balancer is not None
        try:
            if pools:
                assert self._pools is not None
                current = dict(await self._pools.pool_stats())
            else:
                current = dict(await self.balancer.stats())
        except BalancerError as exc:
            raise MetricSourceError(f"balancer counters: {exc}") from exc
        previous = self._readings.get(pools)
        self._readings[pools] = current
        self._window, self._pair = key, (previous, current)
        return previous, current, pools

    async def collect(self, metric: Any, window: MetricWindow) -> MetricSamples:
        previous, current, pools = await self._read(window)
        if previous is None:
            return MetricSamples(detail="first reading of the balancer's counters")
        if pools:
            canary_names: tuple[str, ...] = (window.canary_pool,) if window.canary_pool else ()
            baseline_names: tuple[str, ...] = \
                (window.baseline_pool,) if window.baseline_pool else ()
        else:
            canary_names, baseline_names = window.canary, window.baseline
        n_req, n_err, n_buckets = counter_delta(previous, current, canary_names)
        o_req, o_err, o_buckets = counter_delta(previous, current, baseline_names)
        if metric.query == "error_rate":
            return MetricSamples(
                canary_counts=(n_err, n_req) if n_req else None,
                baseline_counts=(o_err, o_req) if o_req else None,
                detail=f"{n_err} errors in {n_req} requests; old release {o_err} in {o_req}")
        return MetricSamples(
            canary=latency_observations(n_buckets), baseline=latency_observations(o_buckets),
            canary_counts=(0, n_req) if n_req else None,
            baseline_counts=(0, o_req) if o_req else None,
            detail=f"latency of {n_req} requests; old release {o_req}")

    async def aclose(self) -> None:
        return None
