"""Plain data: the fleet as a fleet file describes it, and the live state of its hosts.

Nothing here does I/O. ``upgrader.config`` builds these from TOML; strategies read them.
The lowest layer: it imports nothing of upgrader. A fleet's lab and its deploy windows belong
to features above (:mod:`upgrader.lab`, :mod:`upgrader.policy`); here they are the protocols
:class:`FleetLab` and :class:`WindowPolicy`, which those features' objects satisfy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

#: Template placeholders every host command may use (besides the host's own ``vars``).
TEMPLATE_FIELDS = ("release", "host", "address", "port", "slot", "previous")


@dataclass(frozen=True, slots=True)
class Host:
    """One machine (or, in the lab, one local service instance)."""

    name: str
    address: str = "127.0.0.1"
    port: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)
    #: "main" for the serving cluster; "new" for the parallel cluster of a shedding rollout.
    cluster: str = "main"
    #: blue-green: slot name -> port, e.g. {"blue": 8101, "green": 8102}
    slots: Mapping[str, int] = field(default_factory=dict)
    #: names of ``vars`` whose values are secret (secret-named, or written in the fleet file
    #: as ``{ env = ... }``, ``{ file = ... }`` or ``secret = true``): masked in every output
    secret_vars: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A provider named by its registered kind, with its own settings table."""

    kind: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Commands:
    """Argument-list templates run on each host through the transport."""

    install: tuple[str, ...]
    start: tuple[str, ...]
    stop: tuple[str, ...]
    system_test: tuple[str, ...] | None = None
    #: prints the release a host (slot) runs now; used to reconcile on resume
    current: tuple[str, ...] | None = None
    #: a system test run once before any host is touched (pre-release gate)
    pre_release_test: tuple[str, ...] | None = None
    #: makes a release that is still installed current again (a symlink move, no
    #: download); used instead of ``install`` where the host ran that release before:
    #: ``upgrader rollback`` inside the roll-back window, and a failed rollout's roll-back
    switch: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Releases:
    current: str
    target: str
    #: the flags that ship with the target release (``[release] flags``): a failed
    #: verification turns them off first and verifies again before any host rolls back
    flags: tuple[str, ...] = ()
    #: how long that second verification holds, in seconds (``[release] flags_hold``)
    flags_hold: float = 30.0


@dataclass(frozen=True, slots=True)
class RollbackWindow:
    """``[release] rollback_window``: how long the previous release stays installed after a
    rollout completes, so ``upgrader rollback`` can go straight back (docs/STATE.md). Exactly
    one of the two is set: a duration in seconds, or a count of later releases."""

    seconds: float | None = None
    releases: int | None = None



@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric the judge compares between the canary (hosts on the target release) and the
    baseline (hosts on the current release) over the same interval: a ``[[verify.metrics]]``
    table. Without any, the judge uses today's two: the balancer's ``error_rate`` and (when
    ``p95_latency_max`` is set) ``p95_latency``."""

    name: str
    source: str = "balancer"       # a metric source registered by ``register_metric_sources``
    #: what the source reads: a balancer figure (``error_rate``, ``p95_latency``, ...), a
    #: PromQL query (templated with ``{host}``, ``{release}``, ``{pool}``, ``{interval}``), a
    #: command (argv), ... Each source validates its own query.
    query: str | tuple[str, ...] = ""
    #: ``proportion`` (events out of trials, e.g. an error rate: a test on counts) or
    #: ``value`` (observations, e.g. latencies: a rank test on samples)
    kind: str = "value"
    direction: str = "increase"    # which way is bad: increase | decrease | either
    max: float | None = None       # absolute limit on the canary's value (None: none)
    #: allowed change against the baseline, in percent of the baseline's value (None: none)
    max_increase: float | None = None
    critical: bool = False         # a failing critical metric fails the round at once
    no_data: str = "inconclusive"  # inconclusive | pass | fail: too few samples to judge
    dry_run: bool = False          # computed, shown, journaled; never decides
    #: source-specific settings (timeout, url, ...), validated by the source's factory
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifySpec:
    """Analysis between waves, over ALL upgraded hosts, compared with the old release."""

    error_rate_max: float = 1.0          # percent of responses that are 5xx (or failed)
    p95_latency_max: float | None = None  # seconds
    min_requests: int = 20               # per analysis interval, across upgraded hosts
    consecutive_failures: int = 3
    interval: float = 10.0               # seconds between analysis runs
    for_: float = 60.0                   # default hold of a Verify step
    no_data: str = "fail"                # fail | pass | wait
    health: bool = True                  # also health-check the upgraded hosts each round:
    health_sample: int = 10              # the hosts least recently checked, this many a round
    health_period: float | None = None   # and every upgraded host at least this often
    #: the metrics the judge compares (``[[verify.metrics]]``); empty: today's defaults
    metrics: tuple[MetricSpec, ...] = ()
    #: ``threshold`` (each interval's value against the limits, N failures in a row) or
    #: ``statistical`` (engine/judge.py: tests against the baseline over ``window`` rounds;
    #: the default when ``[[verify.metrics]]`` is given)
    judge: str = "threshold"
    #: rounds of samples the statistical judge pools: 20 covers a hold and its extension
    #: (three holds) at the defaults and at the demo's; 6 kept a 1-host canary at 1 s
    #: rounds below the samples it needed (bench/analysis.py)
    window: int = 20
    #: what an inconclusive hold does once extended by ``inconclusive_for`` (None: twice
    #: the hold): ``pause`` for an operator, ``fail``, or ``pass``
    inconclusive: str = "pause"
    inconclusive_for: float | None = None


def verify_metrics(verify: VerifySpec) -> tuple[MetricSpec, ...]:
    """The metrics a rollout judges: ``[[verify.metrics]]``, else today's two from the
    balancer (``error_rate`` against ``error_rate_max``; ``p95_latency`` against
    ``p95_latency_max`` when set), whose no-data policy follows ``[verify] no_data``."""
    if verify.metrics:
        return verify.metrics
    no_data = {"fail": "fail", "pass": "pass"}.get(verify.no_data, "inconclusive")
    metrics = [MetricSpec("error_rate", "balancer", "error_rate", kind="proportion",
                          max=verify.error_rate_max, no_data=no_data)]
    if verify.p95_latency_max is not None:
        metrics.append(MetricSpec("p95_latency", "balancer", "p95_latency", kind="value",
                                  max=verify.p95_latency_max, no_data=no_data))
    return tuple(metrics)


@dataclass(frozen=True, slots=True)
class Timing:
    """How long things take (for the plan estimate) and how long they may take (timeouts)."""

    host_upgrade: float = 30.0     # expected seconds for one host's procedure (estimates)
    drain_timeout: float = 30.0
    health_timeout: float = 30.0
    health_interval: float = 0.5
    command_timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class UserGroup:
    """A group of users the balancer can recognise (phased roll-outs).

    Either named (a request carrying ``header: value`` or cookie ``cookie=value``) or a sticky
    cohort: users whose hashed key falls in the first ``percent`` of buckets.
    """

    name: str
    header_values: tuple[str, ...] = ()
    percent: float | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class StrategySpec:
    kind: str
    params: Any                     # the strategy's own frozen params object
    on_failure: str = "rollback"    # rollback | shutdown | freeze | pause
    min_capacity: float = 50.0      # percent of hosts that must stay in service (shutdown)


@dataclass(frozen=True, slots=True)
class FlagsSpec:
    """Where the fleet's feature flags live, for rollouts that switch flags."""

    store: str                     # a SQLite file path or a postgresql:// URL
    environment: str = "production"


@dataclass(frozen=True, slots=True)
class SchemaSpec:
    """The live schema change the target release carries (``[release] migration``) and the
    database it applies to (``[schema] database``)."""

    database: str                  # a SQLite file path or a postgresql:// URL
    migration: Path                # the migration file
    migration_name: str            # its name (as the database records it)


class FleetLab(Protocol):
    """The lab a fleet runs in (``[lab]``), as the fleet sees it: where it lives and what it
    gives a fleet file that names no hosts, commands or providers of its own.
    :class:`upgrader.lab.layout.LabLayout` is one."""

    @property
    def dir(self) -> Path: ...

    @property
    def database_file(self) -> Path: ...

    def host_objects(self) -> tuple[Host, ...]: ...

    def commands(self) -> Commands: ...

    def balancer_spec(self) -> ProviderSpec: ...

    def health_spec(self) -> ProviderSpec: ...

    def transport_spec(self) -> ProviderSpec | None: ...


class OnDuty(Protocol):
    """A team a deploy window names as on duty (:class:`upgrader.policy.Team` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def timezone(self) -> str: ...


class WindowPolicy(Protocol):
    """Deploy windows (``[windows]``), as the engine and the plan's calendar ask them:
    :class:`upgrader.policy.DeployWindows` is one."""

    @property
    def min_remaining(self) -> float: ...

    def is_open(self, at: datetime) -> bool: ...

    def on_duty(self, at: datetime) -> tuple[OnDuty, ...]: ...

    def next_opening(self, after: datetime) -> datetime | None: ...

    def window_end(self, at: datetime) -> datetime | None: ...

    def earliest_start(self, at: datetime, duration: float) -> datetime | None: ...

    def describe_time(self, at: datetime) -> str: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Fleet:
    name: str
    hosts: tuple[Host, ...]
    releases: Releases
    commands: Commands
    transport: ProviderSpec
    balancer: ProviderSpec
    health: ProviderSpec
    strategy: StrategySpec
    environment: str = "production"
    snapshot: ProviderSpec | None = None
    notifiers: tuple[ProviderSpec, ...] = ()
    verify: VerifySpec = field(default_factory=VerifySpec)
    timing: Timing = field(default_factory=Timing)
    groups: tuple[UserGroup, ...] = ()
    #: header and cookie that carry a user's group and key (phased roll-outs)
    group_header: str = "X-User-Group"
    user_header: str = "X-User"
    source: Path | None = None
    #: the lab this fleet runs in, when the fleet file has a ``[lab]`` table
    lab: FleetLab | None = None
    flags: FlagsSpec | None = None
    #: deploy windows (``[windows]``): None means always open
    windows: WindowPolicy | None = None
    schema: SchemaSpec | None = None
    #: ``[release] rollback_window``: None means no window (a roll-back is a rollout)
    rollback_window: RollbackWindow | None = None

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def main_hosts(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.cluster == "main")

    @property
    def new_hosts(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.cluster == "new")


# str, Enum rather than StrEnum: str() of a member stays 'HostPhase.X', as callers expect
class HostPhase(str, enum.Enum):
    """Where a host is in its per-host procedure."""

    PENDING = "pending"
    SNAPSHOT = "snapshot"
    DRAINING = "draining"
    STOPPING = "stopping"
    INSTALLING = "installing"
    STARTING = "starting"
    CHECKING = "checking"
    ENABLING = "enabling"
    IN_SERVICE = "in_service"
    OUT_OF_SERVICE = "out_of_service"
    FAILED = "failed"


@dataclass(slots=True)
class HostStatus:
    """The engine's live view of one host (mutable; owned by the engine)."""

    name: str
    release: str | None
    phase: HostPhase = HostPhase.PENDING
    slot: str | None = None
    healthy: bool | None = None
    error: str | None = None
