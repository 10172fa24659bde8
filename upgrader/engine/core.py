"""The engine: runs any strategy's Plan over a fleet, through providers, on an injected clock.

One engine for every strategy. It knows providers only through the Protocols of
``upgrader.providers.base``; it never imports a concrete provider, the CLI or a front end.
Every transition is written to the journal before the action it announces.

:class:`Engine` runs the step loop and holds the state machine; the work is done by parts,
each in a module of its own and each owning its state: the event bus (``bus``), the host
procedure (``hosts``), traffic control (``traffic``), verification (``verification``), gates
and switches (``gates``), deploy windows (``windows``) and the failure policy (``failure``).
They share one :class:`~upgrader.engine.progress.RolloutProgress`.

Controls (from any task): ``pause()``, ``resume()``, ``promote()``, ``promote_all()``,
``abort(rollback=True)``. Events: ``subscribe(callback)`` or ``async for e in engine.events()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..clock import Clock, SystemClock
from ..errors import PolicyRefused, RolloutFailed, UpgraderError
from ..events import Event, Outcome, RolloutState, Verdict
from ..journal import ROLLBACK_INCOMPLETE, Journal
from ..model import Fleet, Host, HostPhase, HostStatus
from ..plan import (
    Gate,
    Maintenance,
    Pause,
    Plan,
    PrepareSlots,
    Route,
    SetFlag,
    SetTraffic,
    Step,
    SwapSlots,
    TurnDown,
    UpgradeHosts,
    Verify,
    estimate,
)
from ..providers.base import (
    Balancer,
    FlagSwitch,
    HealthCheck,
    MetricSource,
    Notifier,
    SchemaSwitch,
    SnapshotProvider,
    Transport,
)
from ..redact import redact_data, redact_text
from .bus import EventBus
from .describe import describe_error, describe_step
from .failure import FailurePolicy
from .gates import Gates
from .hosts import DEFAULT_SLOT, HostProcedure, render
from .inventory import Assessment, start_from_inventory
from .leftover import report_left_behind
from .machine import ACTIVE, PAUSED_REASON, PAUSING_REASON, Interrupted, StateMachine
from .progress import ResumeState, RolloutProgress, backend_name
from .reconcile import apply as apply_repair
from .reconcile import reconcile as reconcile_with_fleet
from .status import rollout_status
from .traffic import TrafficControl
from .verification import Verification
from .windows import WindowGuard

if TYPE_CHECKING:
    from .windows import Windows

log = logging.getLogger("upgrader.engine")


__all__ = ["DEFAULT_SLOT", "Engine", "Providers", "ResumeState", "RolloutResult",
           "describe_error", "describe_step"]


@dataclass
class Providers:
    transport: Transport
    balancer: Balancer
    health: HealthCheck
    snapshot: SnapshotProvider | None = None
    notifiers: tuple[Notifier, ...] = ()
    flags: FlagSwitch | None = None
    schema: SchemaSwitch | None = None
    #: metric name -> the source that reads it (``[[verify.metrics]]``, created through
    #: ``register_metric_sources``); None: the balancer's counters (``BalancerCounters``)
    metrics: Mapping[str, MetricSource] | None = None

    async def aclose(self) -> None:
        sources = list({id(s): s for s in (self.metrics or {}).values()}.values())
        for provider in (self.transport, self.balancer, self.health, self.snapshot,
                         self.flags, self.schema, *self.notifiers, *sources):
            if provider is not None:
                try:
                    await provider.aclose()
                except Exception:  # closing must not hide the rollout's own outcome
                    log.exception("closing provider %r failed", provider)


@dataclass(frozen=True)
class RolloutResult:
    rollout: str
    outcome: Outcome
    hosts: dict[str, str | None]
    duration_s: float
    error: str | None = None
    verdicts: tuple[Verdict, ...] = ()
    #: the roll-back did not finish: the journal keeps the rollout unfinished (resumable)
    rollback_incomplete: bool = False

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


_FINAL_STATE = {Outcome.COMPLETED: RolloutState.COMPLETED,
                Outcome.ROLLED_BACK: RolloutState.ROLLED_BACK,
                Outcome.FROZEN: RolloutState.FROZEN, Outcome.SHUT_DOWN: RolloutState.SHUT_DOWN,
                Outcome.FLAGS_OFF: RolloutState.FLAGS_OFF}


class Engine:
    def __init__(self, fleet: Fleet, plan: Plan, providers: Providers, *,
                 clock: Clock | None = None, journal: Journal | None = None,
                 observers: Iterable[Callable[[Event], None]] = (),
                 interactive: bool = False, resume: ResumeState | None = None,
                 history: int = 2000, metrics_interval: float | None = None,
                 host_metrics_limit: int = 2000, windows: Windows | None = None,
                 override_window: str | None = None,
                 inventory: Assessment | None = None) -> None:
        """:param inventory: what the fleet really runs, read before the rollout
            (``upgrader.engine.inventory``): hosts already done are marked ``ok`` and never
            touched, and every host's release starts as read. None: as the fleet file says."""
        self.fleet = fleet
        # journaled absolute, so that `upgrader status` finds the file from any directory
        self._fleet_path = os.path.abspath(fleet.source) if fleet.source else None
        self.inventory = inventory
        self._nothing_to_do = False
        #: what ``upgrader rollback`` straight back inside the roll-back window would take
        #: (seconds), set by the front end that compiles that plan; None: not known
        self.rollback_back_s: float | None = None
        #: the roll-back window this rollout opened on completing (the ``rollback_window``
        #: event's data; None: not completed, or the fleet has no window)
        self.rollback_window: dict[str, Any] | None = None
        self.plan = plan
        self.providers = providers
        self.clock: Clock = clock or SystemClock()
        self.journal = journal
        self.interactive = interactive
        self._resume = resume
        self.current_step: int | None = None
        #: seconds between ``metrics`` events for front ends (None: none)
        self.metrics_interval = metrics_interval
        self.host_metrics_limit = host_metrics_limit
        #: when ``run()`` began (the clock's monotonic seconds; 0 before)
        self.started = 0.0
        # the parts, each owning its state; the rollout's progress is shared
        self.bus = EventBus(self.clock, journal, providers.notifiers, observers=observers,
                            history=history, rollout_id=resume.rollout if resume else "",
                            seq=resume.seq if resume else 0)
        self.machine = StateMachine(self.bus, self.clock)
        self.progress = RolloutProgress(fleet, resume)
        # deploy windows (upgrader.policy.WindowPolicy): the fleet's unless given
        self.window_guard = WindowGuard(fleet.windows if windows is None else windows,
                                        override_window, clock=self.clock, bus=self.bus,
                                        machine=self.machine, plan=plan, timing=fleet.timing)
        self.traffic = TrafficControl(fleet, providers.balancer, providers.health, self.bus,
                                      self.progress)
        self.procedure = HostProcedure(fleet, providers.transport, providers.health,
                                       providers.snapshot, clock=self.clock, bus=self.bus,
                                       progress=self.progress, traffic=self.traffic)
        self.verification = Verification(fleet, plan, clock=self.clock, bus=self.bus,
                                         machine=self.machine, progress=self.progress,
                                         traffic=self.traffic, sources=providers.metrics)
        self.gates = Gates(fleet, plan, flags=providers.flags, schema=providers.schema,
                           bus=self.bus, machine=self.machine, progress=self.progress,
                           procedure=self.procedure, windows=self.window_guard)
        self.failure = FailurePolicy(fleet, plan, interactive=interactive, bus=self.bus,
                                     machine=self.machine, progress=self.progress,
                                     traffic=self.traffic, procedure=self.procedure,
                                     gates=self.gates, verification=self.verification)
        self.failure.flag_step.resume = resume

    # ------------------------------------------------------------------ what front ends read

    @property
    def rollout_id(self) -> str:
        return self.bus.rollout_id

    @property
    def history(self) -> deque[Event]:
        """The most recent events, oldest first (bounded)."""
        return self.bus.history

    @history.setter
    def history(self, value: deque[Event]) -> None:
        self.bus.history = value

    @property
    def state(self) -> RolloutState:
        return self.machine.state

    @property
    def state_reason(self) -> str:
        return self.machine.reason

    @property
    def hosts(self) -> dict[str, HostStatus]:
        return self.progress.hosts

    @property
    def last_verdicts(self) -> dict[str, Verdict]:
        return self.verification.last_verdicts

    @property
    def last_traffic(self) -> dict[str, object]:
        return self.traffic.last_traffic

    @property
    def last_metrics(self) -> dict[str, object]:
        return self.verification.last_metrics

    @property
    def windows(self) -> Windows | None:
        return self.window_guard.windows

    @property
    def override_window_reason(self) -> str | None:
        return self.window_guard.override_reason

    def window_info(self) -> dict[str, Any] | None:
        """For front ends: whether the window is open, until when, who is on duty."""
        return self.window_guard.info()

    @staticmethod
    def backend_name(host: str, slot: str | None) -> str:
        return backend_name(host, slot)

    def render(self, argv: Iterable[str], host: Host, release: str, slot: str | None) -> list[str]:
        return render(self.fleet, argv, host, release, slot)

    # ------------------------------------------------------------------ controls (front ends)

    def pause(self) -> None:
        """Stop at the next step boundary: the state is PAUSING until the rollout gets there,
        then PAUSED. Actions under way (a host's procedure) finish first; a timed pause, a
        verification hold or a window hold is a boundary itself: it holds at once and its
        countdown freezes until resumed."""
        machine = self.machine
        if machine.running.is_set() and (self.window_guard.held or machine.state in ACTIVE):
            machine.running.clear()
            machine.pause_requested.set()
            machine.before_pause = (machine.state, machine.reason)
            if self.window_guard.held or machine.wait_deadline is not None \
                    or machine.state is RolloutState.WAITING:
                machine.set_state_now(RolloutState.PAUSED, PAUSED_REASON)
            else:
                machine.set_state_now(RolloutState.PAUSING, PAUSING_REASON)
            self._control("pause")

    def resume(self) -> None:
        """End an operator's pause (PAUSED), cancel one asked for (PAUSING), or go on after a
        failure that paused the rollout."""
        machine = self.machine
        if not machine.running.is_set() or machine.failure:
            machine.pause_requested.clear()
            machine.running.set()
            before, machine.before_pause = machine.before_pause, None
            if before is not None and machine.state in (RolloutState.PAUSED,
                                                        RolloutState.PAUSING):
                machine.set_state_now(*before)
            self._control("resume")

    def promote(self) -> None:
        """Skip the current pause (or verification hold)."""
        self.machine.skip.set()
        self._control("promote")

    def promote_all(self) -> None:
        """Skip every remaining pause and analysis."""
        self.machine.promote_all = True
        self.machine.skip.set()
        self._control("promote_all")

    def abort(self, rollback: bool = True) -> None:
        machine = self.machine
        if machine.abort_rollback is None:
            machine.abort_rollback = rollback
            self._control("abort", rollback=rollback)
        machine.interrupt.set()
        machine.running.set()

    def override_window(self, reason: str) -> None:
        """Go on outside the deploy window from now on (journaled as ``window_override`` with
        ``reason``). Raises ``PolicyRefused`` without a window or a reason."""
        if self.window_guard.windows is None:
            raise PolicyRefused("this rollout has no deploy window to override")
        if not reason.strip():
            raise PolicyRefused("an override of the deploy window needs a reason")
        self.window_guard.override(reason)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.bus.subscribe(callback)

    def watch_hosts(self, hosts: Iterable[str]) -> None:
        """Per-host figures for these hosts in every ``metrics`` event from now on (a front
        end's visible rows); hosts the engine changed lately have them anyway."""
        self.verification.watch(hosts)

    def events(self) -> AsyncIterator[Event]:
        """Every event from the moment of this call on, until the rollout finishes."""
        return self.bus.stream()

    def _control(self, action: str, **data: object) -> None:
        self.bus.spawn(self.bus.emit("control", action=action, **data))

    # ------------------------------------------------------------------ status (front ends)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the rollout now, redacted like the events (its state reason
        quotes a failed command's output, which may hold a secret)."""
        shown: dict[str, Any] = redact_data(rollout_status(self))
        return shown

    # ------------------------------------------------------------------ run

    async def run(self) -> RolloutResult:
        """Run (or resume) the rollout to its end. Never raises for a failed rollout: the
        result's ``outcome`` says how it ended."""
        self.started = self.clock.monotonic()
        loop = asyncio.get_running_loop()
        background: list[asyncio.Task[None]] = []
        error: str | None = None
        begun = False
        try:
            await self._begin()
            begun = True
            background.append(loop.create_task(self.verification.analyzer()))
            if self.metrics_interval:
                background.append(loop.create_task(self.verification.monitor(
                    self.metrics_interval, self.host_metrics_limit)))
            outcome = await self._drive()
        except Exception as exc:   # a bug or an unexpected provider failure in a roll-back
            log.exception("rollout failed")
            error = f"{type(exc).__name__}: {exc}"
            outcome = Outcome.FAILED
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        error = error or self.machine.failure
        # a roll-back (or shut-down) that did not finish leaves the fleet half-way: the
        # rollout stays unfinished in the journal, so ``upgrader resume`` rolls it back
        unfinished = outcome is Outcome.FAILED and self._rolling_back()
        await self.machine.set_state(_FINAL_STATE.get(outcome, RolloutState.FAILED), error or "")
        hosts = {n: s.release for n, s in self.hosts.items()}
        if unfinished:
            hosts = await report_left_behind(self, error or "roll-back incomplete",
                                             hosts)
        duration = self.clock.monotonic() - self.started
        window = self.fleet.rollback_window
        if outcome is Outcome.COMPLETED and window is not None:
            # the previous release stays installed (old slot, release folder, schema views):
            # ``upgrader rollback`` reads this to go straight back while the window is open
            closes = None if window.seconds is None else self.clock.wall() + window.seconds
            self.rollback_window = {"previous": self.fleet.releases.current,
                                    "release": self.fleet.releases.target, "closes_at": closes,
                                    "releases": window.releases,
                                    "rollback_s": self.rollback_back_s}
            await self.bus.emit("rollback_window", **self.rollback_window)
        await self.bus.emit("rollout_finished", outcome=outcome.value, hosts=hosts,
                            duration_s=round(duration, 3), error=error,
                            rollback_incomplete=unfinished)
        if self.journal is not None and not (outcome is Outcome.FAILED and not begun
                                             and self._resume is not None and not unfinished):
            # (a resumed rollout that failed before acting, e.g. on a balancer that does not
            # answer yet, stays as unfinished as it was)
            await self.journal.afinish(self.rollout_id,
                                       ROLLBACK_INCOMPLETE if unfinished else outcome.value,
                                       self.clock.wall())
        await self.bus.close()
        # a program that embeds the engine logs the result: masked like the events
        return RolloutResult(self.rollout_id, outcome, hosts, duration,
                             None if error is None else redact_text(error),
                             tuple(replace(v, detail=redact_text(v.detail))
                                   for v in self.last_verdicts.values()),
                             rollback_incomplete=unfinished)

    def _rolling_back(self) -> bool:
        """The rollout got as far as rolling back (now, or before the crash it resumes)."""
        return (self.machine.state is RolloutState.ROLLING_BACK
                or (self._resume is not None and self._resume.rolling_back))

    async def _begin(self) -> None:
        est = estimate(self.plan, self.fleet.timing)
        releases = self.fleet.releases
        if self._resume is None:
            if self.journal is not None:
                self.bus.rollout_id = await self.journal.abegin(
                    fleet=self.fleet.name,
                    fleet_path=self._fleet_path,
                    strategy=self.plan.strategy, current=releases.current,
                    target=releases.target, plan=self.plan.to_json(), now=self.clock.wall())
            else:
                self.bus.rollout_id = self.bus.rollout_id or "rollout"
        await self.bus.emit("rollout_started", fleet=self.fleet.name, strategy=self.plan.strategy,
                            current=releases.current, target=releases.target,
                            hosts=len(self.fleet.hosts), estimated_s=est.total_s,
                            rollback_estimated_s=est.rollback_s,
                            resumed=self._resume is not None)
        await self.window_guard.announce_override()
        if self.inventory is not None and self._resume is None:
            self._nothing_to_do = await start_from_inventory(self, self.inventory)
        self.progress.read_balancer(await self.providers.balancer.state())
        if any(isinstance(s, (PrepareSlots, SwapSlots)) for s in self.plan.steps):
            await self.procedure.discover_slots()
        if self._resume is not None:
            await self._reconcile(self._resume)
        await self.machine.set_state(RolloutState.RUNNING)

    async def _reconcile(self, resume: ResumeState) -> None:
        """On resume: compare the journal with the real balancer and hosts, and repair
        (``upgrader.engine.reconcile``). What cannot be repaired safely pauses an interactive
        rollout with the reason; otherwise those hosts are re-installed."""
        machine = self.machine
        defer = self.interactive and not resume.rolling_back
        diffs = await reconcile_with_fleet(self, resume, defer_unsafe=defer)
        unsafe = [d for d in diffs if d.unsafe]
        if unsafe and defer:
            reason = ("reconcile: " + "; ".join(d.detail for d in unsafe[:3])
                      + (f" (and {len(unsafe) - 3} more)" if len(unsafe) > 3 else "")
                      + ". Resume to re-install, or abort to roll back")
            machine.running.clear()
            machine.before_pause = (RolloutState.RUNNING, "")
            await machine.set_state(RolloutState.PAUSED, reason)
            await machine.running.wait()
            if not machine.interrupted:
                balancer = await self.providers.balancer.state()
                for diff in unsafe:
                    await apply_repair(self, diff, balancer, rolling_back=False)
        self.progress.read_balancer(await self.providers.balancer.state())

    async def _drive(self) -> Outcome:
        machine = self.machine
        if self._nothing_to_do:     # every host already runs the target and serves
            return Outcome.COMPLETED
        if self._resume is not None and self._resume.rolling_back:
            machine.failure = self._resume.rollback_reason or "roll-back resumed"
            return await self.failure.rollback(machine.failure)
        if self._resume is not None and self._resume.frozen is not None:
            # frozen when the controller stopped: stay frozen until an operator answers
            machine.failure = self._resume.frozen
            machine.interrupt.set()
            outcome = await self.failure.freeze(self._resume.frozen, resumed=True)
            if outcome is not None:
                return outcome
        while True:
            try:
                await self._forward()
                return Outcome.COMPLETED
            except Interrupted:
                pass
            except UpgraderError as exc:
                machine.fail(str(exc))
            outcome = await self.failure.respond()
            if outcome is not None:
                return outcome

    async def _checkpoint(self) -> None:
        """Between actions: stop if interrupted; wait while paused or outside the deploy
        window."""
        machine = self.machine
        while True:
            machine.raise_if_interrupted()
            if not machine.running.is_set():
                await machine.hold_paused()
                machine.raise_if_interrupted()
            if not await self.window_guard.checkpoint():
                return

    async def _forward(self) -> None:
        for index, step in enumerate(self.plan.steps):
            if index in self.progress.done_steps:
                continue
            await self._checkpoint()
            self.current_step = index
            await self.bus.emit("step_started", index=index, step=step.kind,
                                description=describe_step(step))
            await self._run_step(index, step)
            self.progress.done_steps.add(index)
            await self.bus.emit("step_finished", index=index, step=step.kind)
        self.current_step = None

    async def _run_step(self, index: int, step: Step) -> None:
        set_state, traffic, procedure = self.machine.set_state, self.traffic, self.procedure
        if isinstance(step, UpgradeHosts):
            await set_state(RolloutState.RUNNING)
            target = self.fleet.releases.target

            async def upgrade(name: str) -> None:
                await procedure.upgrade(name, target, mode="upgrade", drain=step.drain,
                                        switch=step.switch)

            await self._host_step(index, step.hosts, step.max_parallel, step.start_interval,
                                  upgrade)
        elif isinstance(step, PrepareSlots):
            await set_state(RolloutState.RUNNING)
            reuse = step.reuse

            async def prepare(name: str) -> None:
                await procedure.prepare_slot(name, reuse=reuse)

            await self._host_step(index, step.hosts, step.max_parallel, 0.0, prepare)
        elif isinstance(step, SwapSlots):
            await self._host_step(index, step.hosts, None, 0.0, procedure.swap_slot)
            await traffic.emit_traffic()
        elif isinstance(step, TurnDown):
            await self._host_step(index, step.hosts, None, 0.0, procedure.turn_down,
                                  skip_found_done=False)
        elif isinstance(step, Verify):
            await self.verification.hold(step)
        elif isinstance(step, Pause):
            await self._pause_step(index, step)
        elif isinstance(step, SetTraffic):
            await traffic.set_traffic(dict(step.weights))
        elif isinstance(step, Route):
            await traffic.route(step.groups, step.default)
        elif isinstance(step, Maintenance):
            await traffic.maintenance(step.on, step.retry_after)
        elif isinstance(step, Gate):
            await self.gates.run(index, step)
        elif isinstance(step, SetFlag):
            await self.gates.set_flag(step.key, on=step.on, percent=step.percent,
                                      groups=tuple(step.groups))
        else:  # pragma: no cover - a new step kind without an engine branch is a bug
            raise RolloutFailed(f"engine cannot run step kind {step.kind!r}")

    async def _host_step(self, index: int, names: Iterable[str], max_parallel: int | None,
                         interval: float, action: Callable[[str], Awaitable[None]], *,
                         skip_found_done: bool = True) -> None:
        """Run ``action`` on each host of step ``index`` not done yet (``max_parallel`` at a
        time, one started every ``interval`` seconds); a host that fails fails the rollout.
        Hosts the inventory found done (``ok``) are skipped unless ``skip_found_done`` is
        False (a turn-down takes the old cluster down whatever it runs)."""
        done = self.progress.hosts_done_in(index)
        found = self.progress.already_done if skip_found_done else set()
        todo = [n for n in names if n not in done and n not in found]
        if not todo:
            return
        limit = asyncio.Semaphore(max_parallel or len(todo))
        tasks: list[asyncio.Task[None]] = []

        async def run_one(name: str) -> None:
            try:
                await action(name)
            except Exception as exc:    # a provider's own bug counts as a failed host too
                text = describe_error(exc, name)
                status = self.hosts[name]
                status.phase = HostPhase.FAILED
                status.error = text
                await self.bus.emit("host_failed", host=name, error=text, mode="upgrade")
                self.machine.fail(text, host=name)
                return
            finally:
                limit.release()
            done.add(name)

        try:
            for i, name in enumerate(todo):
                if i and interval > 0 and await self.machine.wait(interval, skippable=False):
                    break
                await limit.acquire()
                try:
                    await self._checkpoint()
                except Interrupted:
                    limit.release()
                    break
                tasks.append(asyncio.get_running_loop().create_task(run_one(name)))
        finally:
            if tasks:
                await asyncio.gather(*tasks)
        self.machine.raise_if_interrupted()

    async def _pause_step(self, index: int, step: Pause) -> None:
        duration = step.duration
        if duration is not None and self._resume and index in self._resume.pause_started:
            # resumed: the pause counts from when the journal says it began
            duration = max(0.0, duration - (self.clock.wall()
                                            - self._resume.pause_started[index]))
        await self.machine.pause_step(index, step.duration, duration)
