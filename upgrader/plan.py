"""A Plan: the ordered steps a strategy compiles a fleet into, and its time estimate.

Steps are few and orthogonal; the engine knows how to run each one. Strategies only emit them.
Traffic targets are symbolic: ``"current"`` and ``"target"`` name the pools of hosts running
the current and the target release; the engine resolves them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .model import Timing


@dataclass(frozen=True, slots=True)
class UpgradeHosts:
    """Per host: snapshot -> drain -> stop -> install -> start -> health -> enable."""

    kind: ClassVar[str] = "upgrade_hosts"
    hosts: tuple[str, ...]
    max_parallel: int | None = None      # None: all hosts of the step at once
    start_interval: float = 0.0          # seconds between host starts (canary rates)
    drain: bool = True                   # False while the balancer is in maintenance
    wave: int = 0
    #: the hosts ran this release before and still have it installed (``upgrader rollback``
    #: inside the roll-back window): the fleet's ``switch`` command, when it has one, makes it
    #: current instead of ``install``
    switch: bool = False


@dataclass(frozen=True, slots=True)
class PrepareSlots:
    """Blue-green: install and start the target release in each host's idle slot, out of service."""

    kind: ClassVar[str] = "prepare_slots"
    hosts: tuple[str, ...]
    max_parallel: int | None = None
    wave: int = 0
    #: an idle slot that already runs the target release and answers its health check is
    #: used as it is (``upgrader rollback`` inside the roll-back window: the old slot kept
    #: the previous release); others are installed as usual
    reuse: bool = False


@dataclass(frozen=True, slots=True)
class SwapSlots:
    """Blue-green: send each host's traffic to the prepared slot; keep the old slot running."""

    kind: ClassVar[str] = "swap_slots"
    hosts: tuple[str, ...]
    wave: int = 0


@dataclass(frozen=True, slots=True)
class SetTraffic:
    """Split traffic between pools by weight, e.g. (("current", 95.0), ("target", 5.0))."""

    kind: ClassVar[str] = "set_traffic"
    weights: tuple[tuple[str, float], ...]
    wave: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """Group routing: requests of ``groups`` go to the target pool; others to ``default``.

    ``default=None`` clears routing (every backend serves everyone). ``share``: percent of
    users the routed groups cover at least (their cohorts), None when unknown; display only
    (blast radius).
    """

    kind: ClassVar[str] = "route"
    groups: tuple[str, ...]
    default: str | None = "current"
    wave: int = 0
    share: float | None = None


@dataclass(frozen=True, slots=True)
class Verify:
    """Hold for ``for_`` seconds while analysis runs over ALL upgraded hosts."""

    kind: ClassVar[str] = "verify"
    for_: float
    wave: int = 0


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``duration`` seconds, or until promoted when ``duration`` is None."""

    kind: ClassVar[str] = "pause"
    duration: float | None
    wave: int = 0


@dataclass(frozen=True, slots=True)
class Gate:
    """A check that must pass before going on.

    kinds: ``system_test`` (against ``hosts``, or their prepared slots when ``slots``),
    ``pre_release_test`` (once, before any host is touched), ``schema_start`` (expand the
    release's live schema change, before any host is touched; ``detail`` names the
    migration) and ``schema_complete`` (contract it, after the last host is verified;
    refused while any host still runs the old release), ``deploy_window`` (before each
    wave: waits until a team is on duty and the wave fits before the window closes).
    """

    kind: ClassVar[str] = "gate"
    gate: str
    hosts: tuple[str, ...] = ()
    slots: bool = False
    wave: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Maintenance:
    """Balancer answers 503 with Retry-After to every user request (take-down upgrades)."""

    kind: ClassVar[str] = "maintenance"
    on: bool
    retry_after: int = 60
    wave: int = 0


@dataclass(frozen=True, slots=True)
class TurnDown:
    """Drain, stop and remove hosts from service (the old cluster after shedding)."""

    kind: ClassVar[str] = "turn_down"
    hosts: tuple[str, ...]
    wave: int = 0


@dataclass(frozen=True, slots=True)
class SetFlag:
    """Turn a feature flag on for ``percent`` of users (None: everyone), or off."""

    kind: ClassVar[str] = "set_flag"
    key: str
    on: bool = True
    percent: float | None = None
    groups: tuple[str, ...] = ()      # users of these groups get it (before any percentage)
    wave: int = 0


Step = (UpgradeHosts | PrepareSlots | SwapSlots | SetTraffic | Route | Verify | Pause | Gate
        | Maintenance | TurnDown | SetFlag)
STEP_TYPES: dict[str, type] = {
    cls.kind: cls
    for cls in (UpgradeHosts, PrepareSlots, SwapSlots, SetTraffic, Route, Verify, Pause, Gate,
                Maintenance, TurnDown, SetFlag)
}


@dataclass(frozen=True, slots=True)
class Wave:
    """A group of steps shown as one line of ``upgrader plan``."""

    index: int
    hosts: int                 # hosts touched in this wave
    hosts_done: int            # hosts on the target release after it (cumulative)
    blast_radius: float        # percent of users exposed to the target release after it
    pause: float | None        # seconds of pause after it (None: until promoted; 0: none)
    start_s: float             # estimated start, seconds from rollout start
    duration_s: float
    label: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    strategy: str
    steps: tuple[Step, ...]
    total_hosts: int
    #: hosts the roll-back may touch at once (the plan's largest batch by default)
    rollback_parallel: int = 1
    #: how roll-back works for this strategy: reinstall | swap | traffic | flag
    rollback_mode: str = "reinstall"
    notes: tuple[str, ...] = ()

    def upgraded_hosts(self) -> Iterator[str]:
        """Every host the plan upgrades (or prepares), in order."""
        for step in self.steps:
            if isinstance(step, (UpgradeHosts, PrepareSlots)):
                yield from step.hosts

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "total_hosts": self.total_hosts,
            "rollback_parallel": self.rollback_parallel,
            "rollback_mode": self.rollback_mode,
            "notes": list(self.notes),
            "steps": [step_to_json(s) for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(
            strategy=data["strategy"],
            total_hosts=data["total_hosts"],
            rollback_parallel=data["rollback_parallel"],
            rollback_mode=data["rollback_mode"],
            notes=tuple(data.get("notes", ())),
            steps=tuple(step_from_json(s) for s in data["steps"]),
        )


def step_to_json(step: Step) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": step.kind}
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        data[f.name] = [list(v) if isinstance(v, tuple) else v for v in value] \
            if isinstance(value, tuple) else value
    return data


def step_from_json(data: dict[str, Any]) -> Step:
    cls = STEP_TYPES[data["kind"]]
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[f.name] = value
    step: Step = cls(**kwargs)
    return step


def dumps(plan: Plan) -> str:
    return json.dumps(plan.to_json(), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Estimates: pure arithmetic over the steps, the same numbers a virtual-time run produces.


@dataclass(frozen=True, slots=True)
class Estimate:
    total_s: float
    rollback_s: float
    step_starts: tuple[float, ...]
    waits_for_promotion: int = 0   # indefinite pauses, counted as zero


SYSTEM_TEST_ESTIMATE_S = 60.0
SWAP_ESTIMATE_S = 1.0
#: a schema start or complete (DDL plus a batched backfill: depends on the table sizes)
SCHEMA_GATE_ESTIMATE_S = 30.0


def with_release_gates(plan: Plan, *, pre_release_test: bool = False,
                       migration: str | None = None) -> Plan:
    """``plan`` with the gates every strategy shares: the pre-release system test and the
    schema change's start before any host is touched, its completion after the last step.
    Pure; the strategies stay unaware of both."""
    before: list[Step] = []
    after: list[Step] = []
    if pre_release_test:
        before.append(Gate("pre_release_test"))
    if migration:
        before.append(Gate("schema_start", detail=migration))
        after.append(Gate("schema_complete", detail=migration))
    if not before and not after:
        return plan
    return dataclasses.replace(plan, steps=(*before, *plan.steps, *after))


def step_duration(step: Step, timing: Timing,
                  system_test_s: float = SYSTEM_TEST_ESTIMATE_S) -> float:
    """Expected seconds for one step, given the per-host procedure time."""
    if isinstance(step, PrepareSlots) and step.reuse:
        return 0.0          # a reused slot costs a `current` and a health check
    if isinstance(step, (UpgradeHosts, PrepareSlots)):
        n = len(step.hosts)
        if n == 0:
            return 0.0
        interval = getattr(step, "start_interval", 0.0)
        parallel = min(n, step.max_parallel or n)
        if interval > 0:
            return _paced_duration(n, parallel, interval, timing.host_upgrade)
        return math.ceil(n / parallel) * timing.host_upgrade
    if isinstance(step, Verify):
        return step.for_
    if isinstance(step, Pause):
        return step.duration or 0.0
    if isinstance(step, Gate):
        if step.gate == "deploy_window":
            return 0.0      # it only waits; upgrader.policy.calendar places it in time
        return SCHEMA_GATE_ESTIMATE_S if step.gate.startswith("schema_") else system_test_s
    if isinstance(step, SwapSlots):
        return SWAP_ESTIMATE_S
    if isinstance(step, TurnDown):
        return timing.drain_timeout if step.hosts else 0.0
    return 0.0


def _paced_duration(n: int, parallel: int, interval: float, host_s: float) -> float:
    """Hosts start ``interval`` seconds after the previous start, and only while fewer than
    ``parallel`` are in flight: start_k = max(start_(k-1) + interval, start_(k-parallel) + host_s).
    """
    if parallel >= n:
        return (n - 1) * interval + host_s
    starts: list[float] = []
    for k in range(n):
        start = 0.0 if k == 0 else starts[k - 1] + interval
        if k >= parallel:
            start = max(start, starts[k - parallel] + host_s)
        starts.append(start)
    return starts[-1] + host_s


def estimate(plan: Plan, timing: Timing) -> Estimate:
    """Total duration of ``plan``, and the worst-case roll-back duration (from its last step).

    Roll-back skips pauses and analysis: reinstall touches every upgraded host,
    ``rollback_parallel`` at a time; a swap or traffic roll-back is near instant.
    """
    starts = []
    t = 0.0
    indefinite = 0
    for step in plan.steps:
        starts.append(t)
        t += step_duration(step, timing)
        if isinstance(step, Pause) and step.duration is None:
            indefinite += 1
    upgraded = sum(1 for _ in plan.upgraded_hosts())
    if plan.rollback_mode == "flag":
        return Estimate(total_s=t, rollback_s=SWAP_ESTIMATE_S, step_starts=tuple(starts),
                        waits_for_promotion=indefinite)
    if plan.rollback_mode in ("swap", "traffic"):
        rollback = SWAP_ESTIMATE_S
        if plan.rollback_mode == "traffic":
            # traffic back at once, then the new cluster is turned down
            rollback += timing.drain_timeout
    else:
        parallel = max(1, plan.rollback_parallel)
        rollback = math.ceil(upgraded / parallel) * timing.host_upgrade if upgraded else 0.0
    return Estimate(total_s=t, rollback_s=rollback, step_starts=tuple(starts),
                    waits_for_promotion=indefinite)


def waves(plan: Plan, timing: Timing) -> tuple[Wave, ...]:
    """Group the steps by their ``wave`` number for display.

    Blast radius is the percent of users (requests) the target release may reach after the
    wave: the share of upgraded (or swapped) hosts while every host serves everyone; the
    target pool's weight once traffic is split by weight (shedding); the routed groups' share
    while group routing is on (phased: ``Route.share``, a lower bound; when unknown, the
    target pool's share of the hosts, which is sized to carry the groups); 0 % in maintenance.
    Prepared idle slots and hosts of a pool that gets no traffic do not count.
    """
    est = estimate(plan, timing)
    result: list[Wave] = []
    by_wave: dict[int, list[int]] = {}
    for i, step in enumerate(plan.steps):
        by_wave.setdefault(step.wave, []).append(i)
    done = 0
    exposure = 0.0
    total = max(1, plan.total_hosts)
    mode = "hosts"            # hosts | traffic | route | maintenance

    def by_hosts() -> float:
        return 100.0 * min(done, total) / total

    for index in sorted(by_wave):
        idxs = by_wave[index]
        touched = 0
        pause: float | None = 0.0
        labels = []
        for i in idxs:
            step = plan.steps[i]
            if isinstance(step, UpgradeHosts):
                touched += len(step.hosts)
                done += len(step.hosts)
                if mode == "hosts":
                    exposure = max(exposure, by_hosts())
                labels.append(f"upgrade {len(step.hosts)}")
            elif isinstance(step, PrepareSlots):
                touched += len(step.hosts)
                labels.append(f"prepare {len(step.hosts)} idle slots")
            elif isinstance(step, SwapSlots):
                touched += len(step.hosts)
                done += len(step.hosts)
                if mode == "hosts":
                    exposure = by_hosts()
                labels.append(f"swap {len(step.hosts)}")
            elif isinstance(step, SetTraffic):
                mode = "traffic"
                exposure = float(dict(step.weights).get("target", 0.0))
                labels.append(f"traffic {exposure:g}% to target")
            elif isinstance(step, Route):
                if step.default is None and not step.groups:
                    # admitted groups stay exposed; everyone else now reaches upgraded hosts
                    mode = "hosts"
                    exposure = max(exposure, by_hosts())
                    labels.append("route everyone")
                elif not step.groups:
                    mode = "route"
                    exposure = 0.0
                    labels.append("route nobody to target")
                else:
                    mode = "route"
                    if step.share is not None:
                        exposure = max(exposure, step.share)
                        share = f" (at least {step.share:g}% of users)"
                    else:
                        # a named group's size is unknown: the target pool is sized to carry
                        # the admitted groups, so its share of the hosts is the estimate
                        exposure = max(exposure, by_hosts())
                        share = " (share of users unknown: estimated by capacity)"
                    labels.append("route " + ", ".join(step.groups) + share)
            elif isinstance(step, Pause):
                if step.duration is None or pause is None:
                    pause = None
                else:
                    pause += step.duration
                labels.append("pause until promoted" if step.duration is None else "pause")
            elif isinstance(step, Verify):
                labels.append("verify")
            elif isinstance(step, Gate):
                labels.append(step.gate.replace("_", " "))
            elif isinstance(step, Maintenance):
                labels.append("maintenance on" if step.on else "maintenance off")
                mode = "maintenance" if step.on else "hosts"
                exposure = 0.0 if step.on else by_hosts()
            elif isinstance(step, SetFlag):
                if step.on and step.groups and step.percent is None:
                    labels.append(f"flag {step.key} on for {', '.join(step.groups)}")
                elif step.on:
                    exposure = 100.0 if step.percent is None else float(step.percent)
                    labels.append(f"flag {step.key} on for {exposure:g}%")
                else:
                    exposure = 0.0
                    labels.append(f"flag {step.key} off")
            elif isinstance(step, TurnDown):
                touched += len(step.hosts)
                labels.append(f"turn down {len(step.hosts)}")
        start = est.step_starts[idxs[0]]
        end = est.step_starts[idxs[-1]] + step_duration(plan.steps[idxs[-1]], timing)
        result.append(Wave(index=index, hosts=touched, hosts_done=min(done, plan.total_hosts),
                           blast_radius=round(exposure, 3), pause=pause, start_s=start,
                           duration_s=end - start, label=", ".join(labels)))
    return tuple(result)


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """What ``upgrader plan --json`` prints."""

    strategy: str
    estimated_s: float
    rollback_estimated_s: float
    waves: tuple[Wave, ...] = field(default_factory=tuple)
