"""The inventory read before the first step of every rollout: what each host really runs, and
what the balancer really has, against what the fleet file says.

Two halves, as in ``reconcile``: :func:`read_inventory` reads (each host's release through the
fleet's ``current`` command, each host slot's reachability, the balancer's table), through the
provider Protocols only and at most the transport's ``max_parallel`` hosts at once;
:func:`assess` compares (pure: an :class:`Inventory` and the fleet in, an :class:`Assessment`
out: one :class:`HostFact` per host, the hosts already done, and the problems that refuse the
rollout, each naming the host, what was expected, what was found and the fix).

The rules, in words:

* a main host must answer its ``current`` command (reachable) and run the fleet's current or
  target release; a host whose ``current`` prints nothing runs no release we know;
* a main host must have its backend in the balancer (for blue-green: one of its slots);
* a host on the target release whose backend is ready in the target pool at a weight above 0
  is done (``ok``): the rollout does not touch it;
* hosts of a parallel cluster (``cluster = "new"``, shedding) must only be reachable; a main
  host of such a fleet may be missing from the balancer once every new host is done (it was
  turned down);
* the balancer must answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UpgraderError
from ..model import Fleet, Host, HostPhase
from ..plan import Plan, PrepareSlots, SetFlag, SwapSlots, TurnDown, UpgradeHosts
from ..providers.base import Balancer, BalancerState, Transport
from .hosts import render
from .progress import backend_name
from .reconcile import Reading

if TYPE_CHECKING:
    from .core import Engine

#: hosts read at once when the transport does not say how many commands it runs at once
DEFAULT_PARALLEL = 32
#: the longest a ``current`` command may take during the inventory (an unreachable host must
#: not hold the rollout for the fleet's whole command timeout)
READ_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Inventory:
    """What was read: each host slot's release (or error), the balancer's table (or why it
    did not answer). ``releases_read`` is False when the fleet has no ``current`` command."""

    readings: Mapping[tuple[str, str | None], Reading]
    balancer: BalancerState | None
    balancer_error: str | None = None
    releases_read: bool = True


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the rollout is refused."""

    host: str | None                 # None: the balancer itself
    expected: str
    found: str
    fix: str

    def text(self) -> str:
        return (f"{self.host or 'balancer'}: expected {self.expected}, found {self.found}; "
                f"fix: {self.fix}")

    def to_json(self) -> dict[str, str | None]:
        return {"host": self.host, "expected": self.expected, "found": self.found,
                "fix": self.fix, "text": self.text()}


@dataclass(frozen=True, slots=True)
class HostFact:
    """One host as the inventory found it."""

    host: str
    cluster: str
    release: str | None              # what its live slot runs (None: nothing, or unknown)
    slot: str | None                 # its live slot (blue-green), None without slots
    reachable: bool | None           # None: not read (no ``current`` command)
    error: str | None = None
    backend: str | None = None       # the backend name looked at
    state: str | None = None         # ready | drain | maint, None: absent (or not read)
    pool: str | None = None
    weight: int | None = None
    done: bool = False               # on the target release and in service: ``ok``

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "cluster": self.cluster, "release": self.release,
                "slot": self.slot, "reachable": self.reachable, "error": self.error,
                "backend": self.backend, "state": self.state, "pool": self.pool,
                "weight": self.weight, "done": self.done}


@dataclass(frozen=True, slots=True)
class Assessment:
    """The inventory judged against the fleet file."""

    current: str
    target: str
    hosts: tuple[HostFact, ...]
    problems: tuple[Problem, ...] = ()
    balancer_ok: bool = True
    releases_read: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def done(self) -> frozenset[str]:
        return frozenset(f.host for f in self.hosts if f.done)

    def fact(self, host: str) -> HostFact | None:
        return next((f for f in self.hosts if f.host == host), None)

    def nothing_to_do(self, plan: Plan) -> bool:
        """Every host the plan upgrades is done, every host it turns down is out of the
        balancer, and it switches no flag: running it would change nothing."""
        if any(isinstance(s, SetFlag) for s in plan.steps):
            return False
        done = self.done
        upgraded = {n for s in plan.steps if isinstance(s, (UpgradeHosts, PrepareSlots, SwapSlots))
                    for n in s.hosts}
        turned = {n for s in plan.steps if isinstance(s, TurnDown) for n in s.hosts}
        if not upgraded or not upgraded <= done:
            return False
        return all((f := self.fact(n)) is not None and f.state is None for n in turned)

    def to_json(self) -> dict[str, Any]:
        return {"current": self.current, "target": self.target, "ready": self.ready,
                "balancer": self.balancer_ok, "releases_read": self.releases_read,
                "hosts": [f.to_json() for f in self.hosts],
                "done": sorted(self.done), "problems": [p.to_json() for p in self.problems],
                "notes": list(self.notes)}


# ---------------------------------------------------------------------------------- pure part


@dataclass(frozen=True, slots=True)
class Fixes:
    """What to tell the operator for each kind of problem (a lab fleet gets lab commands)."""

    balancer: str
    unreachable: str
    release: str
    missing: str

    @classmethod
    def for_fleet(cls, fleet: Fleet) -> Fixes:
        current = fleet.releases.current
        if fleet.lab is not None:
            where = ("start the lab with `upgrader lab up` (a lab started with `--base-port` "
                     "or elsewhere: give the fleet's `[lab]` table the same `base_port`/`dir`)")
            return cls(
                balancer=where,
                unreachable=where,
                release=("`upgrader lab reset` puts the lab back on its base release, or set "
                         "`[release] current` to what the hosts run"),
                missing=("the fleet names more hosts than the lab has: `upgrader lab up "
                         "--hosts N` with the fleet's size, or set the fleet's `[lab] hosts` "
                         "to the lab's"))
        return cls(
            balancer=f"start the balancer, or correct the fleet's `[balancer]` table "
                     f"({fleet.balancer.kind})",
            unreachable=f"make the host reachable through the `{fleet.transport.kind}` "
                        "transport, or correct its `[[hosts]]` entry",
            release=(f"bring the host to {current}, or set `[release] current` to what the "
                     "hosts run"),
            missing="register the host's backend in the balancer, or remove the host from "
                    "the fleet file")


def _live_slot(host: Host, balancer: BalancerState | None) -> str | None:
    """The slot of ``host`` users reach: the one whose backend is ready, else one with a
    backend, else the first (the same choice as the engine's slot discovery)."""
    if not host.slots:
        return None
    names = list(host.slots)
    if balancer is None:
        return names[0]
    backends = balancer.backends
    ready = [s for s in names if (b := backends.get(backend_name(host.name, s)))
             and b.state == "ready"]
    present = [s for s in names if backend_name(host.name, s) in backends]
    return (ready or present or names)[0]


def assess(fleet: Fleet, inventory: Inventory, fixes: Fixes | None = None) -> Assessment:
    """Judge ``inventory`` against ``fleet`` (pure): facts per host, done hosts, problems."""
    fixes = fixes or Fixes.for_fleet(fleet)
    current, target = fleet.releases.current, fleet.releases.target
    allowed = (current, target) if current != target else (current,)
    want = " or ".join(allowed)
    balancer = inventory.balancer
    problems: list[Problem] = []
    if balancer is None:
        problems.append(Problem(None, f"the `{fleet.balancer.kind}` balancer to answer",
                                inventory.balancer_error or "no answer", fixes.balancer))
    facts: list[HostFact] = []
    for host in fleet.hosts:
        slot = _live_slot(host, balancer)
        reading = inventory.readings.get((host.name, slot))
        reachable: bool | None = None if reading is None else reading.error is None
        release = reading.release if reading is not None else None
        name = backend_name(host.name, slot)
        seen = balancer.backends.get(name) if balancer is not None else None
        done = (release == target and current != target and seen is not None
                and seen.state == "ready" and seen.pool == target and seen.weight > 0)
        facts.append(HostFact(host.name, host.cluster, release, slot, reachable,
                              reading.error if reading is not None else None, name,
                              seen.state if seen else None, seen.pool if seen else None,
                              seen.weight if seen else None, done))
    new_done = all(f.done for f in facts if f.cluster != "main")
    has_new = any(f.cluster != "main" for f in facts)
    for fact in facts:
        if fact.reachable is False:
            problems.append(Problem(fact.host, "its `current` command to answer",
                                    fact.error or "an error", fixes.unreachable))
            continue
        if fact.cluster != "main":
            continue
        if inventory.releases_read and fact.release is None:
            problems.append(Problem(fact.host, f"release {want}",
                                    "no release installed" + (f" in slot {fact.slot}"
                                                              if fact.slot else ""),
                                    fixes.missing if balancer is not None and fact.state is None
                                    else fixes.release))
        elif inventory.releases_read and fact.release not in allowed:
            problems.append(Problem(fact.host, f"release {want}", f"release {fact.release}",
                                    fixes.release))
        if balancer is not None and fact.state is None and not (has_new and new_done):
            problems.append(Problem(fact.host, f"backend {fact.backend} in the balancer",
                                    "no such backend", fixes.missing))
    notes: list[str] = []
    if not inventory.releases_read:
        notes.append("the fleet has no `current` command: the hosts' releases were not read")
    return Assessment(current, target, tuple(facts), tuple(problems),
                      balancer_ok=balancer is not None, releases_read=inventory.releases_read,
                      notes=tuple(notes))


def refusal_text(fleet_name: str, assessment: Assessment) -> str:
    """The refusal, one line per problem (what the CLI prints after ``refused:``)."""
    count = len(assessment.problems)
    head = (f"fleet {fleet_name} is not what its fleet file says ({count} problem"
            f"{'s' if count != 1 else ''}); nothing was touched")
    return "\n".join([head] + ["  " + p.text() for p in assessment.problems])


# ---------------------------------------------------------------------------------- I/O part


def _parallel(transport: Transport) -> int:
    """How many commands the transport runs at once (its ``max_parallel`` when it has one)."""
    value = getattr(transport, "max_parallel", None)
    return value if isinstance(value, int) and value > 0 else DEFAULT_PARALLEL


async def read_inventory(fleet: Fleet, transport: Transport, balancer: Balancer
                         ) -> Inventory:
    """Read the balancer's table and the release of each host's live slot, at
    most the transport's ``max_parallel`` hosts at once. Never raises for an unreachable
    host or balancer: the :class:`Inventory` says what did not answer."""
    try:
        state: BalancerState | None = await balancer.state()
        balancer_error = None
    except UpgraderError as exc:
        state, balancer_error = None, str(exc)
    template = fleet.commands.current
    if template is None:
        return Inventory({}, state, balancer_error, releases_read=False)
    limit = asyncio.Semaphore(_parallel(transport))
    timeout = min(fleet.timing.command_timeout, READ_TIMEOUT)

    async def one(host: Host, slot: str | None) -> tuple[tuple[str, str | None], Reading]:
        async with limit:
            argv = render(fleet, template, host, fleet.releases.current, slot)
            try:
                result = await transport.run(host, argv, timeout=timeout, check=False)
            except Exception as exc:     # unreachable, timed out: the release is unknown
                return (host.name, slot), Reading(error=f"{type(exc).__name__}: {exc}")
            if result.exit_status != 0:
                tail = (result.stderr or "").strip().splitlines()[-1:] or [""]
                return (host.name, slot), Reading(
                    error=f"exit status {result.exit_status} {tail[0][-200:]}".strip())
            return (host.name, slot), Reading(release=result.stdout.strip() or None)

    pairs: Iterable[tuple[Host, str | None]] = ((h, _live_slot(h, state)) for h in fleet.hosts)
    readings = await asyncio.gather(*(one(h, s) for h, s in pairs))
    return Inventory(dict(readings), state, balancer_error)


async def take_inventory(fleet: Fleet, transport: Transport, balancer: Balancer
                         ) -> Assessment:
    """Read the fleet and judge it (:func:`read_inventory`, then :func:`assess`)."""
    return assess(fleet, await read_inventory(fleet, transport, balancer))


async def start_from_inventory(engine: Engine, inventory: Assessment) -> bool:
    """Start from what the hosts run: each host's release as read; a host on the target
    release and in service is done (``host_done`` mode ``ok``); one on the target release
    but out of service runs its procedure without installing again. Returns whether nothing
    is left to do (every host already runs the target and serves)."""
    progress, target = engine.progress, engine.fleet.releases.target
    for fact in inventory.hosts:
        if fact.host not in progress.hosts:
            continue
        if inventory.releases_read:
            progress.found(fact.host, fact.release, fact.slot, done=fact.done)
        if fact.done:
            await engine.bus.emit("host_done", host=fact.host, release=fact.release,
                                  slot=fact.slot, mode="ok")
        elif inventory.releases_read and fact.release == target and fact.slot is None \
                and fact.release != engine.fleet.releases.current:
            progress.put_in_doubt(fact.host, HostPhase.INSTALLING, target)
    nothing_to_do = inventory.nothing_to_do(engine.plan)
    await engine.bus.emit("inventory", hosts=len(inventory.hosts),
                          done=len(progress.already_done), target=target,
                          nothing_to_do=nothing_to_do)
    return nothing_to_do
