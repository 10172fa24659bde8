"""Resume that reconciles: what the journal says against what the balancer and the hosts
really show, and what to do about each difference.

The comparison is pure (:func:`expectations`, :func:`compare`): journal-derived expectations
and real readings in, a list of :class:`Difference` out, each naming its repair. The engine
reads the real state (:func:`read_hosts`, the balancer's ``state()``), emits one ``reconcile``
event per difference BEFORE it acts, and applies the repairs (:func:`apply`).

Repairs, in words:

* a host whose real release differs from the journal, but is the rollout's current or target
  release, is put in doubt for the release it really runs, so the forward or roll-back pass
  redoes exactly what is needed (it finds the release installed and never installs it twice);
  a step the journal calls done is reopened for that host;
* a host that runs neither release, or whose ``current`` command fails, cannot be repaired
  safely: an interactive controller pauses with the reason; otherwise the host is re-installed;
* a backend that should serve but is drained, in maintenance, at weight 0, missing or in
  another pool is re-enabled after a health check (a host that fails it is restarted by its
  procedure); a backend that should not serve is set as the journal says;
* a traffic split, route table or maintenance switch unlike the last journaled one is set
  again (unless it matches what the step interrupted by the crash was setting).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import Fleet, Host, HostPhase
from ..plan import Maintenance, Plan, PrepareSlots, Route, SetTraffic, UpgradeHosts
from ..providers.base import BalancerState, Cohort, RouteTable
from .progress import ResumeState, backend_name, port_of
from .traffic import routes_json

if TYPE_CHECKING:  # the engine imports this module; nothing here imports the engine
    from .core import Engine

#: hosts whose release is read at once (the ``current`` command through the transport)
READ_PARALLEL = 16

# actions
IN_DOUBT = "in_doubt"          # host: in doubt for the release it really runs
REINSTALL = "reinstall"        # host: cannot be trusted; redo its whole procedure
ENABLE = "enable"              # backend: health check, then ready in the journal's pool
SET_STATE = "set_state"        # backend: set the state the journal says (drain / maint)
REMOVE = "remove"              # backend: the journal removed it (turned down)
REAPPLY = "reapply"            # traffic: set the split / routes / maintenance again
NOTHING = "none"               # reported only: what comes next sets it anyway

_BEFORE_INSTALL = {HostPhase.SNAPSHOT.value, HostPhase.DRAINING.value, HostPhase.STOPPING.value}
_AFTER_INSTALL = {HostPhase.STARTING.value, HostPhase.CHECKING.value, HostPhase.ENABLING.value}
_ANY = "*"                     # an expectation that accepts any release


@dataclass(frozen=True, slots=True)
class Reading:
    """What a host slot really runs: ``release`` (None: the ``current`` command printed
    nothing, which tells nothing), or ``error`` when the command failed."""

    release: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HostExpectation:
    host: str
    slot: str | None                 # None: a host without slots
    allowed: tuple[str | None, ...]  # releases the journal allows (_ANY: any)
    live: bool = True                # the slot users are served from
    #: steps (index) that the journal says are done for this host and must be reopened
    #: when the host turns out not to run what they installed
    steps: tuple[int, ...] = ()

    @property
    def journal(self) -> str | None:
        return self.allowed[-1] if self.allowed else None


@dataclass(frozen=True, slots=True)
class BackendExpectation:
    backend: str
    host: str
    slot: str | None
    serve: bool                      # True: ready in ``pool`` at weight > 0
    pool: str | None = None
    #: when it must not serve: the state the journal left it in ("absent", "maint", "drain")
    state: str = "absent"


@dataclass(frozen=True, slots=True)
class Expectations:
    hosts: tuple[HostExpectation, ...]
    backends: tuple[BackendExpectation, ...]
    #: the last journaled traffic state: {"split", "routes", "maintenance"} (None: none yet)
    traffic: Mapping[str, Any] | None
    #: what the step interrupted by the crash was setting (any of the same keys)
    pending: Mapping[str, Any] = field(default_factory=dict)
    rolling_back: bool = False


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing the journal and the real fleet disagree on, and what is done about it."""

    kind: str                        # "release" | "backend" | "split" | "routes" | "maintenance"
    subject: str                     # host, host@slot, backend name, or the traffic key
    journal: Any                     # what the journal says
    real: Any                        # what is real
    action: str                      # IN_DOUBT, REINSTALL, ENABLE, ...
    detail: str                      # one sentence for people
    host: str | None = None
    slot: str | None = None
    release: str | None = None       # the release the action is for
    steps: tuple[int, ...] = ()      # steps to reopen (host actions)
    unsafe: bool = False             # cannot be repaired safely: an operator may decide

    def to_json(self) -> dict[str, Any]:
        """The ``reconcile`` event's data (``about``: the difference's kind, as ``kind`` is
        the event's own)."""
        data = {"about": self.kind, "subject": self.subject, "journal": self.journal,
                "real": self.real, "action": self.action, "detail": self.detail}
        if self.unsafe:
            data["unsafe"] = True
        return data


# ---------------------------------------------------------------------------------- pure part


def traffic_of(state: BalancerState) -> dict[str, Any]:
    return {"split": dict(state.split) if state.split else None,
            "routes": routes_json(state.routes), "maintenance": bool(state.maintenance)}


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "split":
        a, b = dict(a or {}), dict(b or {})
        # a pool at 0 % and no pool at all send the same users nowhere
        pools = set(a) | set(b)
        return all(math.isclose(float(a.get(p, 0.0)), float(b.get(p, 0.0)), abs_tol=1e-6)
                   for p in pools) and bool(a) == bool(b)
    if key == "routes":
        if a is None or b is None:
            return a is None and b is None
        return (dict(a.get("groups") or {}) == dict(b.get("groups") or {})
                and a.get("default") == b.get("default")
                and [list(c) for c in a.get("cohorts") or ()]
                == [list(c) for c in b.get("cohorts") or ()])
    return bool(a) == bool(b)


def _done_steps_of(plan: Plan, resume: ResumeState, host: str) -> tuple[int, ...]:
    return tuple(sorted(i for i, names in resume.hosts_done.items()
                        if host in names and isinstance(plan.steps[i], (UpgradeHosts,
                                                                         PrepareSlots))))


def _prepared(plan: Plan, resume: ResumeState, host: str) -> tuple[int, ...]:
    return tuple(sorted(i for i, names in resume.hosts_done.items()
                        if host in names and isinstance(plan.steps[i], PrepareSlots)))


def expectations(fleet: Fleet, plan: Plan, resume: ResumeState, *,
                 live_slots: Mapping[str, str], original_slots: Mapping[str, str],
                 pending: Mapping[str, Any] | None = None) -> Expectations:
    """What the journal says the fleet looks like now (pure)."""
    current, target = fleet.releases.current, fleet.releases.target
    hosts: list[HostExpectation] = []
    backends: list[BackendExpectation] = []
    rolling_back = resume.rolling_back
    for host in fleet.hosts:
        name = host.name
        journaled = resume.releases.get(name)
        phase = resume.in_doubt.get(name)
        heading = resume.in_doubt_release.get(name)
        if name in resume.already_done and phase is None:
            continue        # found on the target and in service before the first step: left alone
        if host.slots:
            original = original_slots.get(name) or next(iter(host.slots))
            live = live_slots.get(name, original)
            for slot in host.slots:
                steps: tuple[int, ...] = ()
                if slot == original:
                    allowed: tuple[str | None, ...] = (current,)   # nothing installs there
                elif (prepared := _prepared(plan, resume, name)):
                    allowed, steps = (target,), prepared
                elif phase is not None and heading == target and phase not in _BEFORE_INSTALL:
                    allowed = (target,) if phase in _AFTER_INSTALL else (_ANY,)
                else:
                    allowed = (_ANY,)                              # nothing asked of it yet
                hosts.append(HostExpectation(name, slot, allowed, live=slot == live,
                                             steps=steps))
                backend = backend_name(name, slot)
                if phase is not None:
                    continue                     # its procedure sets its backends again
                if slot == live:
                    pool = current if slot == original else target
                    if not rolling_back or pool == current:
                        backends.append(BackendExpectation(backend, name, slot, True, pool))
                else:
                    state = "drain" if live != original else "maint"
                    backends.append(BackendExpectation(backend, name, slot, False, target,
                                                       state=state))
            continue
        steps = _done_steps_of(plan, resume, name)
        if phase is not None:
            if phase in _BEFORE_INSTALL:
                allowed = (journaled,)
            elif phase in _AFTER_INSTALL:
                allowed = (heading,)
            else:                                # installing: it ran, or it did not
                allowed = (journaled, heading)
            if None in allowed:          # out of service: whatever it has installed
                allowed = (_ANY,)
            hosts.append(HostExpectation(name, None, allowed, steps=steps))
            continue
        if name in resume.turned_down:
            # stopped; its release stays installed, out of service
            backends.append(BackendExpectation(name, name, None, False, state="absent"))
            continue
        if journaled is None:
            continue                             # never in service yet (a new cluster)
        hosts.append(HostExpectation(name, None, (journaled,), steps=steps))
        if not rolling_back or journaled == current:
            backends.append(BackendExpectation(name, name, None, True, journaled))
    return Expectations(tuple(hosts), tuple(backends), resume.traffic, dict(pending or {}),
                        rolling_back)


def compare(expected: Expectations, readings: Mapping[tuple[str, str | None], Reading],
            balancer: BalancerState, *, current: str, target: str) -> list[Difference]:
    """Every difference between ``expected`` and the real fleet, with its repair (pure).

    ``readings`` maps (host, slot) to what the host really runs; a host slot missing from it
    was not read (no ``current`` command) and is not compared."""
    diffs = _release_diffs(expected.hosts, readings, current=current, target=target)
    acted = {d.host for d in diffs if d.host is not None}   # their procedure sets backends
    diffs += _backend_diffs(expected.backends, balancer, acted)
    if expected.traffic is not None:
        diffs += _traffic_diffs(expected, balancer, expected.traffic)
    return diffs


def _release_diffs(hosts: Iterable[HostExpectation],
                   readings: Mapping[tuple[str, str | None], Reading], *, current: str,
                   target: str) -> list[Difference]:
    """Hosts that do not run what the journal says."""
    diffs: list[Difference] = []
    for want in hosts:
        reading = readings.get((want.host, want.slot))
        if reading is None or _ANY in want.allowed:
            continue
        subject = backend_name(want.host, want.slot)
        if reading.error is not None:
            diffs.append(Difference(
                "release", subject, want.journal, None, REINSTALL,
                f"{subject}: cannot read its release ({reading.error}); the journal says "
                f"{want.journal}: re-installing {want.journal}", want.host, want.slot,
                want.journal, want.steps, unsafe=True))
            continue
        real = reading.release
        if real is None or real in want.allowed:
            continue        # an empty answer tells nothing (a `current` that prints nothing)
        # a prepared idle slot can be prepared again; the slot users are served from, or the
        # one a roll-back goes back to, must be put right now
        redo = want.slot is None or (not want.live and bool(want.steps))
        if real in (current, target) and redo:
            diffs.append(Difference(
                "release", subject, want.journal, real, IN_DOUBT,
                f"{subject} runs {real}, the journal says {want.journal}: in doubt for "
                f"{real}; its procedure is redone from there"
                + (" (steps " + ", ".join(map(str, want.steps)) + " reopened)"
                   if want.steps else ""),
                want.host, want.slot, real, want.steps))
        else:
            what = ("neither the current nor the target release" if real not in
                    (current, target) else "another release in a slot that serves or is "
                    "rolled back to")
            diffs.append(Difference(
                "release", subject, want.journal, real, REINSTALL,
                f"{subject} runs {real or 'nothing'} ({what}); the journal says "
                f"{want.journal}: re-installing {want.journal}", want.host, want.slot,
                want.journal, want.steps, unsafe=True))
    return diffs


def _backend_diffs(backends: Iterable[BackendExpectation], balancer: BalancerState,
                   acted: set[str]) -> list[Difference]:
    """Backends that serve when the journal says they should not, or the other way round
    (not those of hosts whose procedure is redone: it sets them)."""
    diffs: list[Difference] = []
    for want in backends:
        if want.host in acted:
            continue
        seen = balancer.backends.get(want.backend)
        real = None if seen is None else {"pool": seen.pool, "state": seen.state,
                                          "weight": seen.weight}
        if want.serve:
            journal: dict[str, object] = {"pool": want.pool, "state": "ready"}
            if seen is not None and seen.state == "ready" and seen.pool == want.pool \
                    and seen.weight > 0:
                continue
            diffs.append(Difference(
                "backend", want.backend, journal, real, ENABLE,
                f"backend {want.backend} should serve {want.pool} but is "
                + ("missing" if seen is None else
                   f"{seen.state} in {seen.pool} at weight {seen.weight}")
                + ": enabled again after a health check", want.host, want.slot, want.pool))
        else:
            if seen is None or seen.state != "ready":
                continue
            journal = {"state": want.state}
            action = REMOVE if want.state == "absent" else SET_STATE
            diffs.append(Difference(
                "backend", want.backend, journal, real, action,
                f"backend {want.backend} serves {seen.pool} but the journal says "
                f"{want.state}: " + ("drained and removed" if action == REMOVE
                                     else f"set to {want.state}"),
                want.host, want.slot, want.pool))
    return diffs


def _traffic_diffs(expected: Expectations, balancer: BalancerState,
                   journaled: Mapping[str, Any]) -> list[Difference]:
    """A split, route table or maintenance switch unlike the last journaled one."""
    diffs: list[Difference] = []
    real_traffic = traffic_of(balancer)
    for key in ("split", "routes", "maintenance"):
        journal = journaled.get(key)
        real = real_traffic[key]
        if _same(key, journal, real):
            continue
        if key in expected.pending and _same(key, expected.pending[key], real):
            continue                 # the interrupted step got as far as this; it reruns
        if expected.rolling_back:
            diffs.append(Difference(key, key, journal, real, NOTHING,
                                    f"{key} is {real}, the journal says {journal}: "
                                    "the roll-back sets it"))
        else:
            diffs.append(Difference(key, key, journal, real, REAPPLY,
                                    f"{key} is {real}, the journal says {journal}: "
                                    "set again as journaled"))
    return diffs


def pending_traffic(plan: Plan, step_index: int | None, fleet: Fleet,
                    routes: RouteTable | None = None) -> dict[str, Any]:
    """What the step interrupted by the crash was setting (pure): its traffic key(s).
    ``routes``: the route table a Route step sets (the engine builds it)."""
    if step_index is None or not 0 <= step_index < len(plan.steps):
        return {}
    step = plan.steps[step_index]
    names = {"current": fleet.releases.current, "target": fleet.releases.target}
    if isinstance(step, SetTraffic):
        return {"split": {names.get(p, p): float(w) for p, w in step.weights}}
    if isinstance(step, Route):
        return {"routes": routes_json(routes)}
    if isinstance(step, Maintenance):
        return {"maintenance": step.on}
    return {}


# ---------------------------------------------------------------------------------- I/O part


async def read_hosts(engine: Engine, hosts: Iterable[tuple[Host, str | None]]
                     ) -> dict[tuple[str, str | None], Reading]:
    """Each host slot's real release, through the fleet's ``current`` command (bounded
    concurrency). Empty when the fleet has no ``current`` command."""
    template = engine.fleet.commands.current
    if template is None:
        return {}
    limit = asyncio.Semaphore(READ_PARALLEL)
    current = engine.fleet.releases.current

    async def one(host: Host, slot: str | None) -> tuple[tuple[str, str | None], Reading]:
        async with limit:
            try:
                result = await engine.procedure.run(host, template, current, slot,
                                                    check=False)
            except Exception as exc:     # unreachable, timed out: the release is unknown
                return (host.name, slot), Reading(error=f"{type(exc).__name__}: {exc}")
            if result.exit_status != 0:
                tail = (result.stderr or "").strip().splitlines()[-1:] or [""]
                return (host.name, slot), Reading(
                    error=f"exit status {result.exit_status} {tail[0][-200:]}".strip())
            return (host.name, slot), Reading(release=result.stdout.strip() or None)

    pairs = await asyncio.gather(*(one(h, s) for h, s in hosts))
    return dict(pairs)


async def reconcile(engine: Engine, resume: ResumeState, *,
                    defer_unsafe: bool = False) -> list[Difference]:
    """Read the real fleet, compare it with the journal, emit a ``reconcile`` event per
    difference and repair it. Returns the differences. With ``defer_unsafe`` the unsafe ones
    are announced but not repaired (an operator decides first: see :func:`apply`)."""
    fleet, plan = engine.fleet, engine.plan
    current, target = fleet.releases.current, fleet.releases.target
    table = None
    step = resume.step_in_progress
    interrupted = plan.steps[step] if step is not None and 0 <= step < len(plan.steps) else None
    if isinstance(interrupted, Route):
        table = engine.traffic.route_table(interrupted.groups, interrupted.default)
    progress = engine.progress
    expected = expectations(fleet, plan, resume, live_slots=progress.live_slot,
                            original_slots=progress.original_slot,
                            pending=pending_traffic(plan, step, fleet, table))
    wanted = {(w.host, w.slot) for w in expected.hosts if _ANY not in w.allowed}
    by_name = {h.name: h for h in fleet.hosts}
    readings = await read_hosts(engine, [(by_name[h], s) for h, s in sorted(
        wanted, key=lambda pair: (pair[0], pair[1] or ""))])
    balancer = await engine.providers.balancer.state()
    diffs = compare(expected, readings, balancer, current=current, target=target)
    if fleet.commands.current is None and wanted:
        await engine.bus.emit("log", level="warning", message="reconcile: the fleet has no "
                           "`current` command, so the hosts' real releases were not checked")
    for diff in diffs:
        data = diff.to_json()
        if diff.unsafe and defer_unsafe:
            data["detail"] += " once the operator resumes (paused)"
        await engine.bus.emit("reconcile", **data)     # journaled before the repair
        if not (diff.unsafe and defer_unsafe):
            await apply(engine, diff, balancer, rolling_back=resume.rolling_back)
    await engine.bus.emit("log", level="info",
                       message=f"reconcile: {len(diffs)} difference(s) between the journal "
                               f"and the fleet ({len(readings)} host slot(s) read)")
    return diffs


async def apply(engine: Engine, diff: Difference, balancer: BalancerState, *,
                rolling_back: bool = False) -> None:
    """Carry out ``diff``'s repair."""
    progress, traffic, procedure = engine.progress, engine.traffic, engine.procedure
    name = diff.host
    if diff.action == IN_DOUBT and name is not None:
        # the journal's phase no longer holds: the host's procedure starts from what it runs
        progress.put_in_doubt(name, HostPhase.INSTALLING, diff.release)
        if diff.slot is None:
            progress.hosts[name].release = diff.release
        progress.reopen(name, diff.steps)
    elif diff.action == REINSTALL and name is not None:
        host = progress.hosts_by_name[name]
        if diff.slot is None:
            progress.put_in_doubt(name, HostPhase.STOPPING, None)   # redo it all
            progress.hosts[name].release = None
            progress.reopen(name, diff.steps)
            if not diff.steps and not rolling_back and diff.release is not None \
                    and diff.release == engine.fleet.releases.current:
                # not reached by the rollout yet, and serving: put its release back now
                await procedure.upgrade(name, diff.release, mode="rollback", drain=True)
        elif diff.release is not None:
            if diff.slot == progress.live_slot.get(name):
                await procedure.upgrade(name, diff.release, mode="upgrade", drain=True,
                                        slot=diff.slot)
            else:
                await procedure.reinstall_idle_slot(host, diff.release, diff.slot)
    elif diff.action == ENABLE and name is not None and diff.release is not None:
        host = progress.hosts_by_name[name]
        result = await engine.providers.health.check(host, port=port_of(host, diff.slot))
        if result.ok:
            await traffic.enable(host, diff.slot, diff.release)
        else:
            await engine.bus.emit("log", level="warning",
                                  message=f"reconcile: {diff.subject} fails its health check "
                                          f"({result.detail}): its procedure restarts it")
            progress.put_in_doubt(name, HostPhase.STARTING, diff.release)
            progress.reopen(name, progress.host_steps_done(engine.plan, name))
    elif diff.action == SET_STATE:
        want = diff.journal["state"]
        if want == "maint":
            await traffic.drain(name or diff.subject, diff.subject)
        await traffic.set_backend_state(diff.subject, want)
    elif diff.action == REMOVE:
        await traffic.drain(name or diff.subject, diff.subject)
        await traffic.remove_backend(diff.subject)
    elif diff.action == REAPPLY:
        if diff.kind == "split":
            await (traffic.set_traffic(diff.journal, check_capacity=False) if diff.journal
                   else traffic.clear_split())
        elif diff.kind == "routes":
            await _set_routes(engine, diff.journal)
        elif diff.kind == "maintenance":
            retry = next((s.retry_after for s in engine.plan.steps
                          if isinstance(s, Maintenance) and s.on), balancer.retry_after)
            await traffic.maintenance(bool(diff.journal), retry)


async def _set_routes(engine: Engine, journal: Mapping[str, Any] | None) -> None:
    """Set the journal's route table again, as journaled."""
    fleet = engine.fleet
    table = None
    if journal is not None:
        table = RouteTable(groups=dict(journal.get("groups") or {}),
                           cohorts=tuple((Cohort(c[0], float(c[1])), c[2])
                                         for c in journal.get("cohorts") or ()),
                           default=journal.get("default"), group_header=fleet.group_header,
                           user_header=fleet.user_header)
    await engine.providers.balancer.set_routes(table)
    await engine.traffic.emit_traffic()
