"""How far a rollout has got: the one piece of mutable state the engine's parts share.

:class:`RolloutProgress` holds what each part reads and changes as the rollout moves: the
hosts' live status, the steps and hosts done, the hosts in doubt after a crash, the live and
original slots, snapshots, hosts turned down, flags turned on, and the backends serving the
target release. The :class:`~upgrader.engine.core.Engine` makes one and hands it to every part;
nothing else keeps a copy. :class:`ResumeState` is what the journal says about an interrupted
rollout (``upgrader.engine.resume.replay``); a progress starts from it on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import Fleet, Host, HostPhase, HostStatus
from ..plan import Plan, PrepareSlots, UpgradeHosts
from ..providers.base import BalancerState

#: the phases after which an interrupted procedure finds its release installed
_INSTALLED_AFTER = frozenset({HostPhase.STARTING.value, HostPhase.CHECKING.value,
                              HostPhase.ENABLING.value})


@dataclass
class ResumeState:
    """What the journal says about a rollout that was interrupted (see ``replay``)."""

    rollout: str
    done_steps: set[int] = field(default_factory=set)
    hosts_done: dict[int, set[str]] = field(default_factory=dict)     # step -> hosts done
    releases: dict[str, str | None] = field(default_factory=dict)
    in_doubt: dict[str, str] = field(default_factory=dict)            # host -> last phase
    #: host -> the release its interrupted procedure was heading for
    in_doubt_release: dict[str, str | None] = field(default_factory=dict)
    turned_down: set[str] = field(default_factory=set)
    flags_on: set[str] = field(default_factory=set)
    live_slots: dict[str, str] = field(default_factory=dict)
    original_slots: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)
    rolling_back: bool = False
    rollback_reason: str = ""
    #: the rollout froze (``frozen`` event) and no operator has answered yet: why
    frozen: str | None = None
    started_wall: float | None = None
    seq: int = 0
    pause_started: dict[int, float] = field(default_factory=dict)
    #: the last traffic state the journal recorded (a ``traffic`` event's data), for reconcile
    traffic: dict[str, Any] | None = None
    #: the step that was started and not finished when the controller died
    step_in_progress: int | None = None
    #: hosts the inventory found done before the rollout's first step (``host_done`` ``ok``)
    already_done: set[str] = field(default_factory=set)
    #: the roll-back's flag step as journaled (``flags_first``): None (not begun), "begun"
    #: (the controller died during it), "cured" or "not cured"
    flags_first: str | None = None
    #: the ``flags_first`` begin event's data: ``flags``, ``was``, ``hold_s``, ``reason``
    flags_first_begin: dict[str, Any] = field(default_factory=dict)
    #: the flag step applies to this roll-back: a verification failed (``analysis_failed``)
    #: and no operator aborted
    flags_first_applies: bool = False
    #: a host moved after the roll-back began: the flag step (if any) was behind it
    hosts_back_begun: bool = False


def backend_name(host: str, slot: str | None) -> str:
    """The balancer's name for ``host``'s ``slot`` (the host's own name without slots)."""
    return host if slot is None else f"{host}@{slot}"


def port_of(host: Host, slot: str | None) -> int | None:
    """The port ``host`` serves ``slot`` on (its own port without slots)."""
    if slot is not None and slot in host.slots:
        return host.slots[slot]
    return host.port


class RolloutProgress:
    """The rollout's shared, mutable state (see the module docstring)."""

    def __init__(self, fleet: Fleet, resume: ResumeState | None = None) -> None:
        self.target = fleet.releases.target
        current = fleet.releases.current
        self.hosts_by_name: dict[str, Host] = {h.name: h for h in fleet.hosts}
        #: every host's live status (release, phase, slot, health), for front ends too
        self.hosts: dict[str, HostStatus] = {
            h.name: HostStatus(h.name, current if h.cluster == "main" else None)
            for h in fleet.hosts}
        self.done_steps: set[int] = set()
        self.hosts_done: dict[int, set[str]] = {}          # step -> hosts done
        #: host -> the phase its interrupted procedure had reached, and the release it was for
        self.in_doubt: dict[str, str] = {}
        self.in_doubt_release: dict[str, str | None] = {}
        self.live_slot: dict[str, str] = {}
        self.original_slot: dict[str, str] = {}
        self.snapshots: dict[str, str] = {}               # host -> snapshot id
        self.turned_down: set[str] = set()
        #: backends in service on the target release, kept in step with every balancer change
        #: the engine makes (read back and asserted), so analysis costs O(pools), not O(hosts)
        self.serving_target: set[str] = set()
        #: called with a backend's name each time the engine changes it (verification
        #: checks a host when it changes and reports its figures for a while)
        self.on_change: list[Callable[[str], None]] = []
        #: called with a backend's name and the result each time the host procedure
        #: health-checks it (verification need not check it again at once)
        self.on_checked: list[Callable[[str, bool], None]] = []
        #: called with each backend found serving the target by a full read of the balancer
        #: (the start of a rollout, a resume): not changed by this rollout, not yet checked
        self.on_found: list[Callable[[str], None]] = []
        #: flags this rollout turned on (a feature roll-out's analysis and roll-back)
        self.flags_on: set[str] = set()
        self.maintenance_on = False
        #: hosts found on the target release and in service before the first step (``ok``):
        #: no upgrade, preparation or swap step touches them
        self.already_done: set[str] = set()
        if resume is not None:
            self.already_done = set(resume.already_done)
            self.done_steps = set(resume.done_steps)
            self.hosts_done = {k: set(v) for k, v in resume.hosts_done.items()}
            for name, release in resume.releases.items():
                if name in self.hosts:
                    self.hosts[name].release = release
            self.in_doubt = dict(resume.in_doubt)
            self.in_doubt_release = dict(resume.in_doubt_release)
            self.turned_down = set(resume.turned_down)
            self.flags_on = set(resume.flags_on)
            self.live_slot = dict(resume.live_slots)
            self.original_slot = dict(resume.original_slots)
            self.snapshots = dict(resume.snapshots)

    # -- hosts in doubt (a procedure interrupted by a crash, or found so by reconcile)

    def put_in_doubt(self, host: str, phase: HostPhase, release: str | None) -> None:
        """``host``'s procedure resumes as if interrupted in ``phase`` on its way to
        ``release`` (None: to no known release, so nothing is skipped)."""
        self.in_doubt[host] = phase.value
        self.in_doubt_release[host] = release

    def take_in_doubt(self, host: str, release: str) -> str | None:
        """The phase ``host``'s interrupted procedure had reached on its way to ``release``,
        or None (not in doubt, or heading for another release: redo it all). Consumed."""
        phase = self.in_doubt.pop(host, None)
        if self.in_doubt_release.pop(host, release) != release:
            return None
        return phase

    @staticmethod
    def installed_after(phase: str | None) -> bool:
        """An interrupted procedure that got past installing (so its release is installed)."""
        return phase in _INSTALLED_AFTER

    # -- what the inventory found before the first step

    def found(self, host: str, release: str | None, slot: str | None, *, done: bool) -> None:
        """The inventory read ``host`` running ``release`` in ``slot``; ``done``: on the
        target release and in service, so the rollout leaves it alone."""
        status = self.hosts[host]
        status.release = release
        if slot is not None:
            status.slot = slot
            self.live_slot.setdefault(host, slot)
            self.original_slot.setdefault(host, slot)
        if done:
            status.phase = HostPhase.IN_SERVICE
            self.already_done.add(host)

    # -- steps

    def hosts_done_in(self, index: int) -> set[str]:
        """The hosts step ``index`` has done (the set itself: the step adds to it)."""
        return self.hosts_done.setdefault(index, set())

    def reopen(self, host: str, steps: Iterable[int]) -> None:
        """Steps the journal calls done, but that must run again for ``host``."""
        for index in steps:
            self.hosts_done.get(index, set()).discard(host)
            self.done_steps.discard(index)

    def host_steps_done(self, plan: Plan, host: str) -> tuple[int, ...]:
        """The upgrade and slot-preparation steps done for ``host``."""
        return tuple(i for i, names in self.hosts_done.items() if host in names
                     and isinstance(plan.steps[i], (UpgradeHosts, PrepareSlots)))

    # -- slots and backends

    def idle_slot(self, host: Host) -> str:
        live = self.live_slot[host.name]
        return next(s for s in host.slots if s != live)

    def track(self, backend: str, pool: str | None, state: str | None) -> None:
        """A backend was set (and read back) as ``pool`` / ``state`` (None: removed)."""
        if pool == self.target and state == "ready":
            self.serving_target.add(backend)
        else:
            self.serving_target.discard(backend)
        for listener in self.on_change:
            listener(backend)

    def checked(self, backend: str, ok: bool) -> None:
        """The host procedure health-checked ``backend``."""
        for listener in self.on_checked:
            listener(backend, ok)

    def read_balancer(self, state: BalancerState) -> None:
        """Start over from a full read of the balancer."""
        self.serving_target = {n for n, b in state.backends.items()
                               if b.pool == self.target and b.state == "ready"}
        for listener in self.on_found:
            for backend in self.serving_target:
                listener(backend)
        self.maintenance_on = state.maintenance
