"""The engine: runs any strategy's Plan over a fleet, through providers, on an injected clock.

One engine for every strategy. It knows providers only through the Protocols of
``upgrader.providers.base``; it never imports a concrete provider, the CLI or a front end.
Every transition is written to the journal before the action it announces.

Controls (from any task): ``pause()``, ``resume()``, ``promote()``, ``promote_all()``,
``abort(rollback=True)``. Events: ``subscribe(callback)`` or ``async for e in engine.events()``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import (
    BalancerError,
    HealthCheckFailed,
    ProviderError,
    RolloutFailed,
    UpgraderError,
)
from ..events import Event, Outcome, RolloutState, Verdict
from ..journal import Journal
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
    step_duration,
)
from ..providers.base import (
    BackendState,
    Balancer,
    Cohort,
    FlagSwitch,
    HealthCheck,
    Notifier,
    RouteTable,
    SchemaSwitch,
    SnapshotProvider,
    Transport,
)
from ..redact import redact_data
from .analysis import analyze, health_verdict, traffic_figures
from .windows import WindowGates

log = logging.getLogger("upgrader.engine")

DEFAULT_SLOT = "default"
#: observations, not transitions: front ends get them, the journal does not
_NOT_JOURNALED = frozenset({"metrics"})


@dataclass
class Providers:
    transport: Transport
    balancer: Balancer
    health: HealthCheck
    snapshot: SnapshotProvider | None = None
    notifiers: tuple[Notifier, ...] = ()
    flags: FlagSwitch | None = None
    schema: SchemaSwitch | None = None

    async def aclose(self) -> None:
        for provider in (self.transport, self.balancer, self.health, self.snapshot,
                         self.flags, self.schema, *self.notifiers):
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

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


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
    started_wall: float | None = None
    seq: int = 0
    pause_started: dict[int, float] = field(default_factory=dict)
    #: the last traffic state the journal recorded (a ``traffic`` event's data), for reconcile
    traffic: dict[str, Any] | None = None
    #: the step that was started and not finished when the controller died
    step_in_progress: int | None = None


class _Interrupted(Exception):
    """The forward run stopped cooperatively (failure or abort)."""


class Engine(WindowGates):
    def __init__(self, fleet: Fleet, plan: Plan, providers: Providers, *,
                 clock: Clock | None = None, journal: Journal | None = None,
                 observers: Iterable[Callable[[Event], None]] = (),
                 interactive: bool = False, resume: ResumeState | None = None,
                 history: int = 2000, metrics_interval: float | None = None,
                 host_metrics_limit: int = 2000, windows: Any = None,
                 override_window: str | None = None) -> None:
        # deploy windows (upgrader.policy.WindowPolicy): the fleet's unless given
        self._init_windows(fleet.windows if windows is None else windows, override_window)
        self.fleet = fleet
        self.plan = plan
        self.providers = providers
        self.clock: Clock = clock or SystemClock()
        self.journal = journal
        self.interactive = interactive
        self._resume = resume
        self._observers: list[Callable[[Event], None]] = list(observers)
        self._queues: list[asyncio.Queue[Event | None]] = []
        self.history: deque[Event] = deque(maxlen=history)
        self.rollout_id = resume.rollout if resume else ""
        self._seq = resume.seq if resume else 0
        self.state = RolloutState.PENDING
        self.state_reason = ""
        self.current_step: int | None = None
        self.last_verdicts: dict[str, Verdict] = {}
        self._consecutive: dict[str, int] = {}
        self._hosts_by_name = {h.name: h for h in fleet.hosts}
        current = fleet.releases.current
        self.hosts: dict[str, HostStatus] = {
            h.name: HostStatus(h.name, current if h.cluster == "main" else None)
            for h in fleet.hosts}
        self._live_slot: dict[str, str] = {}
        self._original_slot: dict[str, str] = {}
        self._snapshots: dict[str, str] = {}
        self._done_steps: set[int] = set()
        self._hosts_done: dict[int, set[str]] = {}
        self._in_doubt: dict[str, str] = {}
        self._in_doubt_release: dict[str, str | None] = {}
        self._turned_down: set[str] = set()
        #: backends in service on the target release, kept in step with every balancer change
        #: the engine makes (read back and asserted), so analysis costs O(pools), not O(hosts)
        self._serving_target: set[str] = set()
        #: flags this rollout turned on (a feature roll-out's analysis and roll-back)
        self._flags_on: set[str] = set()
        self._maintenance_on = False
        # controls
        self._running = asyncio.Event()
        self._running.set()
        self._interrupt = asyncio.Event()
        self._skip = asyncio.Event()
        self._promote_all = False
        self._abort_rollback: bool | None = None
        self._failure: str | None = None
        self._failed_host: str | None = None
        self._before_pause: tuple[RolloutState, str] | None = None
        self._analysis_rounds = 0
        #: when the analyzer's next round is due, whether one is under way, and an event set
        #: (then replaced) each time a round ends: a hold that ends with a round waits for it
        self._analysis_due: float | None = None
        self._analysis_busy = False
        self._analysis_ended = asyncio.Event()
        #: traffic verdicts that passed (for no_data = "wait": health alone is not traffic)
        self._traffic_passes = 0
        self._analysis_enabled = False
        self._notify_tasks: set[asyncio.Task[None]] = set()
        self._started = 0.0
        #: seconds between ``metrics`` events for front ends (None: none)
        self.metrics_interval = metrics_interval
        self.host_metrics_limit = host_metrics_limit
        self.last_metrics: dict[str, Any] = {}
        self.last_traffic: dict[str, Any] = {}
        self._wait_deadline: float | None = None
        if resume:
            self._done_steps = set(resume.done_steps)
            self._hosts_done = {k: set(v) for k, v in resume.hosts_done.items()}
            for name, release in resume.releases.items():
                if name in self.hosts:
                    self.hosts[name].release = release
            self._in_doubt = dict(resume.in_doubt)
            self._in_doubt_release = dict(resume.in_doubt_release)
            self._turned_down = set(resume.turned_down)
            self._flags_on = set(resume.flags_on)
            self._live_slot = dict(resume.live_slots)
            self._original_slot = dict(resume.original_slots)
            self._snapshots = dict(resume.snapshots)

    # ------------------------------------------------------------------ controls (front ends)

    def pause(self) -> None:
        """Stop before the next action. Actions under way (a host's procedure) finish; a
        timed pause or hold keeps counting, but the rollout goes no further until resumed."""
        if (self._running.is_set() and (self._window_held or self.state in
                (RolloutState.RUNNING, RolloutState.WAITING, RolloutState.VERIFYING))):
            self._running.clear()
            self._before_pause = (self.state, self.state_reason)
            self._state_now(RolloutState.PAUSED, "paused by operator")
            self._control("pause")

    def resume(self) -> None:
        if not self._running.is_set() or self._failure:
            self._running.set()
            before, self._before_pause = self._before_pause, None
            if before is not None and self.state is RolloutState.PAUSED:
                self._state_now(*before)
            self._control("resume")

    def promote(self) -> None:
        """Skip the current pause (or verification hold)."""
        self._skip.set()
        self._control("promote")

    def promote_all(self) -> None:
        """Skip every remaining pause and analysis."""
        self._promote_all = True
        self._skip.set()
        self._control("promote_all")

    def abort(self, rollback: bool = True) -> None:
        if self._abort_rollback is None:
            self._abort_rollback = rollback
            self._control("abort", rollback=rollback)
        self._interrupt.set()
        self._running.set()

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self._observers.append(callback)
        return lambda: self._observers.remove(callback)

    def events(self) -> AsyncIterator[Event]:
        """Every event from the moment of this call on, until the rollout finishes."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues.append(queue)
        return self._drain_queue(queue)

    async def _drain_queue(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._queues.remove(queue)

    def _state_now(self, state: RolloutState, reason: str) -> None:
        """Change the state at once (controls run outside the engine's task); announce it."""
        self.state, self.state_reason = state, reason
        self._spawn(self._emit("state", state=state.value, reason=reason))

    def _control(self, action: str, **data: Any) -> None:
        self._spawn(self._emit("control", action=action, **data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._notify_tasks.add(task)
        task.add_done_callback(self._notify_tasks.discard)

    # ------------------------------------------------------------------ status (front ends)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the rollout now."""
        est = estimate(self.plan, self.fleet.timing)
        remaining = sum(step_duration(s, self.fleet.timing) for i, s in enumerate(self.plan.steps)
                        if i not in self._done_steps)
        target = self.fleet.releases.target
        main = [h for h in self.fleet.hosts if h.cluster == "main"]
        on_target = sum(1 for h in self.hosts.values() if h.release == target)
        return {
            "rollout": self.rollout_id, "fleet": self.fleet.name, "strategy": self.plan.strategy,
            "current": self.fleet.releases.current, "target": target,
            "state": self.state.value, "reason": self.state_reason, "step": self.current_step,
            "steps": len(self.plan.steps), "hosts_on_target": on_target, "hosts_total": len(main),
            "elapsed_s": self.clock.monotonic() - self._started if self._started else 0.0,
            "estimated_s": est.total_s, "remaining_s": remaining,
            "hosts": {n: {"release": s.release, "phase": s.phase.value, "slot": s.slot,
                          "healthy": s.healthy, "error": s.error} for n, s in self.hosts.items()},
            "verdicts": {m: v.to_json() for m, v in self.last_verdicts.items()},
            "plan": [{"index": i, "step": s.kind, "wave": s.wave,
                      "description": describe_step(s),
                      "duration_s": step_duration(s, self.fleet.timing)}
                     for i, s in enumerate(self.plan.steps)],
            "done_steps": sorted(self._done_steps),
            "wait_remaining_s": (max(0.0, self._wait_deadline - self.clock.monotonic())
                                 if self._wait_deadline is not None else None),
            "traffic": self.last_traffic,
            "metrics": self.last_metrics,
            "rollback_estimated_s": est.rollback_s,
            "rollback_now_s": self._rollback_estimate(len(self._touched())),
        }

    def _rollback_estimate(self, touched: int) -> float:
        """Expected seconds to roll back ``touched`` hosts now (no pauses, no analysis)."""
        timing = self.fleet.timing
        if self.plan.rollback_mode in ("swap", "traffic", "flag"):
            return estimate(self.plan, timing).rollback_s
        if touched == 0:
            return 0.0
        return math.ceil(touched / max(1, self.plan.rollback_parallel)) * timing.host_upgrade

    # ------------------------------------------------------------------ events

    async def _emit(self, kind: str, /, **data: Any) -> Event:
        self._seq += 1
        if kind not in _NOT_JOURNALED:      # secrets never reach events or the journal
            data = redact_data(data)
        event = Event(kind, self.clock.wall(), self.rollout_id, self._seq, data)
        if self.journal is not None and self.rollout_id and kind not in _NOT_JOURNALED:
            await self.journal.aappend(self.rollout_id, event.seq, event.ts, kind, dict(data))
        self.history.append(event)
        for callback in list(self._observers):
            try:
                callback(event)
            except Exception:
                log.exception("event observer failed")
        for queue in self._queues:
            queue.put_nowait(event)
        for notifier in self.providers.notifiers:
            task = asyncio.get_running_loop().create_task(self._notify(notifier, event))
            self._notify_tasks.add(task)
            task.add_done_callback(self._notify_tasks.discard)
        return event

    async def _notify(self, notifier: Notifier, event: Event) -> None:
        try:
            await notifier.notify(event)
        except Exception:
            log.exception("notifier failed")

    async def _set_state(self, state: RolloutState, reason: str = "") -> None:
        if (self._before_pause is not None and not self._running.is_set()
                and state in (RolloutState.RUNNING, RolloutState.WAITING,
                              RolloutState.VERIFYING)):
            # paused by the operator: stay PAUSED, and return to this state on resume
            self._before_pause = (state, reason)
            return
        if state != self.state or reason != self.state_reason:
            self.state, self.state_reason = state, reason
            await self._emit("state", state=state.value, reason=reason)

    async def _host_phase(self, host: str, phase: HostPhase, release: str | None,
                          slot: str | None, mode: str) -> None:
        status = self.hosts[host]
        status.phase = phase
        await self._emit("host_phase", host=host, phase=phase.value, release=release, slot=slot,
                         mode=mode)

    # ------------------------------------------------------------------ run

    async def run(self) -> RolloutResult:
        """Run (or resume) the rollout to its end. Never raises for a failed rollout: the
        result's ``outcome`` says how it ended."""
        self._started = self.clock.monotonic()
        loop = asyncio.get_running_loop()
        background: list[asyncio.Task[None]] = []
        error: str | None = None
        try:
            await self._begin()
            background.append(loop.create_task(self._analyzer()))
            if self.metrics_interval:
                background.append(loop.create_task(self._monitor()))
            outcome = await self._drive()
        except Exception as exc:   # a bug or an unexpected provider failure in a roll-back
            log.exception("rollout failed")
            error = f"{type(exc).__name__}: {exc}"
            outcome = Outcome.FAILED
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        error = error or self._failure
        final_state = {Outcome.COMPLETED: RolloutState.COMPLETED,
                       Outcome.ROLLED_BACK: RolloutState.ROLLED_BACK,
                       Outcome.FROZEN: RolloutState.FROZEN,
                       Outcome.SHUT_DOWN: RolloutState.SHUT_DOWN}.get(outcome, RolloutState.FAILED)
        await self._set_state(final_state, error or "")
        hosts = {n: s.release for n, s in self.hosts.items()}
        duration = self.clock.monotonic() - self._started
        await self._emit("rollout_finished", outcome=outcome.value, hosts=hosts,
                         duration_s=round(duration, 3), error=error)
        if self.journal is not None:
            await self.journal.afinish(self.rollout_id, outcome.value, self.clock.wall())
        if self._notify_tasks:
            await asyncio.gather(*list(self._notify_tasks), return_exceptions=True)
        for queue in self._queues:
            queue.put_nowait(None)
        return RolloutResult(self.rollout_id, outcome, hosts, duration, error,
                             tuple(self.last_verdicts.values()))

    async def _begin(self) -> None:
        est = estimate(self.plan, self.fleet.timing)
        if self._resume is None:
            if self.journal is not None:
                self.rollout_id = await self.journal.abegin(
                    fleet=self.fleet.name,
                    fleet_path=str(self.fleet.source) if self.fleet.source else None,
                    strategy=self.plan.strategy, current=self.fleet.releases.current,
                    target=self.fleet.releases.target, plan=self.plan.to_json(),
                    now=self.clock.wall())
            else:
                self.rollout_id = self.rollout_id or "rollout"
        await self._emit("rollout_started", fleet=self.fleet.name, strategy=self.plan.strategy,
                         current=self.fleet.releases.current, target=self.fleet.releases.target,
                         hosts=len(self.fleet.hosts), estimated_s=est.total_s,
                         rollback_estimated_s=est.rollback_s, resumed=self._resume is not None)
        await self._announce_window_override()
        state = await self.providers.balancer.state()
        target = self.fleet.releases.target
        self._serving_target = {n for n, b in state.backends.items()
                                if b.pool == target and b.state == "ready"}
        self._maintenance_on = state.maintenance
        if any(isinstance(s, (PrepareSlots, SwapSlots)) for s in self.plan.steps):
            await self._discover_slots()
        if self._resume is not None:
            await self._reconcile(self._resume)
        await self._set_state(RolloutState.RUNNING)

    async def _reconcile(self, resume: ResumeState) -> None:
        """On resume: compare the journal with the real balancer and hosts, and repair
        (``upgrader.engine.reconcile``). What cannot be repaired safely pauses an interactive
        rollout with the reason; otherwise those hosts are re-installed."""
        from .reconcile import apply, reconcile

        defer = self.interactive and not resume.rolling_back
        diffs = await reconcile(self, resume, defer_unsafe=defer)
        unsafe = [d for d in diffs if d.unsafe]
        if unsafe and defer:
            reason = ("reconcile: " + "; ".join(d.detail for d in unsafe[:3])
                      + (f" (and {len(unsafe) - 3} more)" if len(unsafe) > 3 else "")
                      + ". Resume to re-install, or abort to roll back")
            self._running.clear()
            self._before_pause = (RolloutState.RUNNING, "")
            await self._set_state(RolloutState.PAUSED, reason)
            await self._running.wait()
            if not self._interrupt.is_set():
                balancer = await self.providers.balancer.state()
                for diff in unsafe:
                    await apply(self, diff, balancer, rolling_back=False)
        state = await self.providers.balancer.state()
        target = self.fleet.releases.target
        self._serving_target = {n for n, b in state.backends.items()
                                if b.pool == target and b.state == "ready"}
        self._maintenance_on = state.maintenance

    async def _drive(self) -> Outcome:
        if self._resume is not None and self._resume.rolling_back:
            self._failure = self._resume.rollback_reason or "roll-back resumed"
            return await self._rollback(self._failure)
        while True:
            try:
                await self._forward()
                return Outcome.COMPLETED
            except _Interrupted:
                pass
            except UpgraderError as exc:
                self._fail(str(exc))
            if self._abort_rollback is not None:
                reason = self._failure or "aborted by operator"
                if self._abort_rollback:
                    return await self._rollback(reason)
                self._failure = reason
                return Outcome.FROZEN
            policy = self.fleet.strategy.on_failure
            reason = self._failure or "failed"
            if policy == "rollback":
                return await self._rollback(reason)
            if policy == "shutdown":
                return await self._shutdown(reason)
            if policy == "pause" and self.interactive:
                self._running.clear()
                await self._set_state(RolloutState.PAUSED, f"failure: {reason}")
                await self._running.wait()
                if self._abort_rollback is not None:
                    continue
                # the operator resumed: accept the failure and go on
                self._failure = None
                self._failed_host = None
                self._interrupt.clear()
                self._consecutive.clear()
                await self._set_state(RolloutState.RUNNING)
                continue
            return Outcome.FROZEN

    def _fail(self, reason: str, host: str | None = None) -> None:
        if self._failure is None:
            self._failure = reason
            self._failed_host = host
        self._interrupt.set()
        # an operator's pause must not hold back the failure policy
        self._before_pause = None
        self._running.set()

    async def _checkpoint(self) -> None:
        """Between actions: stop if interrupted; wait while paused or outside the deploy
        window."""
        while True:
            if self._interrupt.is_set():
                raise _Interrupted
            if not self._running.is_set():
                await self._running.wait()
                if self._interrupt.is_set():
                    raise _Interrupted
            if not await self._window_checkpoint():
                return

    async def _wait(self, seconds: float | None, *, skippable: bool) -> bool:
        """Wait up to ``seconds`` (None: forever). True if skipped or interrupted early."""
        waiters = [asyncio.ensure_future(self._interrupt.wait())]
        if skippable:
            waiters.append(asyncio.ensure_future(self._skip.wait()))
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds)) if seconds is not None else None
        if sleeper is not None:
            waiters.append(sleeper)
        if skippable and seconds is not None:
            self._wait_deadline = self.clock.monotonic() + seconds
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if skippable:
                self._wait_deadline = None
            for waiter in waiters:
                waiter.cancel()
        return sleeper is None or sleeper not in done

    async def _forward(self) -> None:
        for index, step in enumerate(self.plan.steps):
            if index in self._done_steps:
                continue
            await self._checkpoint()
            self.current_step = index
            await self._emit("step_started", index=index, step=step.kind,
                             description=describe_step(step))
            await self._run_step(index, step)
            self._done_steps.add(index)
            await self._emit("step_finished", index=index, step=step.kind)
        self.current_step = None

    async def _run_step(self, index: int, step: Step) -> None:
        if isinstance(step, UpgradeHosts):
            await self._set_state(RolloutState.RUNNING)
            await self._upgrade_step(index, step)
        elif isinstance(step, PrepareSlots):
            await self._set_state(RolloutState.RUNNING)
            await self._host_step(index, step.hosts, step.max_parallel, 0.0, self._prepare_slot)
        elif isinstance(step, SwapSlots):
            await self._host_step(index, step.hosts, None, 0.0, self._swap_slot)
            await self._emit_traffic()
        elif isinstance(step, TurnDown):
            await self._host_step(index, step.hosts, None, 0.0, self._turn_down)
        elif isinstance(step, Verify):
            await self._verify_step(step)
        elif isinstance(step, Pause):
            await self._pause_step(index, step)
        elif isinstance(step, SetTraffic):
            await self._set_traffic(dict(step.weights))
        elif isinstance(step, Route):
            await self._route(step.groups, step.default)
        elif isinstance(step, Maintenance):
            await self._maintenance(step.on, step.retry_after)
        elif isinstance(step, Gate):
            await self._gate(step)
        elif isinstance(step, SetFlag):
            await self._set_flag(step.key, on=step.on, percent=step.percent,
                                 groups=tuple(step.groups))
        else:  # pragma: no cover - a new step kind without an engine branch is a bug
            raise RolloutFailed(f"engine cannot run step kind {step.kind!r}")

    # ------------------------------------------------------------------ host steps

    async def _upgrade_step(self, index: int, step: UpgradeHosts) -> None:
        target = self.fleet.releases.target

        async def one(name: str) -> None:
            await self._upgrade_host(name, target, mode="upgrade", drain=step.drain)

        await self._host_step(index, step.hosts, step.max_parallel, step.start_interval, one)

    async def _host_step(self, index: int, names: Iterable[str], max_parallel: int | None,
                         interval: float, action: Callable[[str], Any]) -> None:
        done = self._hosts_done.setdefault(index, set())
        todo = [n for n in names if n not in done]
        if not todo:
            return
        limit = asyncio.Semaphore(max_parallel or len(todo))
        tasks: list[asyncio.Task[None]] = []

        async def run_one(name: str) -> None:
            try:
                await action(name)
            except Exception as exc:    # a provider's own bug counts as a failed host too
                text = describe_error(exc, name)
                self.hosts[name].phase = HostPhase.FAILED
                self.hosts[name].error = text
                await self._emit("host_failed", host=name, error=text, mode="upgrade")
                self._fail(text, host=name)
                return
            finally:
                limit.release()
            done.add(name)

        try:
            for i, name in enumerate(todo):
                if i and interval > 0:
                    if await self._wait(interval, skippable=False):
                        break
                await limit.acquire()
                try:
                    await self._checkpoint()
                except _Interrupted:
                    limit.release()
                    break
                tasks.append(asyncio.get_running_loop().create_task(run_one(name)))
        finally:
            if tasks:
                await asyncio.gather(*tasks)
        if self._interrupt.is_set():
            raise _Interrupted

    def _port(self, host: Host, slot: str | None) -> int | None:
        if slot is not None and slot in host.slots:
            return host.slots[slot]
        return host.port

    @staticmethod
    def backend_name(host: str, slot: str | None) -> str:
        return host if slot is None else f"{host}@{slot}"

    def render(self, argv: Iterable[str], host: Host, release: str, slot: str | None) -> list[str]:
        port = self._port(host, slot)
        values = {"release": release, "host": host.name, "address": host.address,
                  "port": "" if port is None else str(port), "slot": slot or DEFAULT_SLOT,
                  "previous": self.fleet.releases.current, **host.vars}
        return [arg.format_map(values) for arg in argv]

    async def _command(self, host: Host, which: str, release: str, slot: str | None,
                       *, check: bool = True) -> str:
        template = getattr(self.fleet.commands, which)
        if template is None:
            return ""
        result = await self.providers.transport.run(
            host, self.render(template, host, release, slot),
            timeout=self.fleet.timing.command_timeout, check=check)
        return result.stdout

    async def _installed_release(self, host: Host, slot: str | None) -> str | None:
        if self.fleet.commands.current is None:
            return None
        out = await self._command(host, "current", self.fleet.releases.current, slot, check=False)
        return out.strip() or None

    async def _wait_healthy(self, host: Host, slot: str | None) -> None:
        timing = self.fleet.timing
        deadline = self.clock.monotonic() + timing.health_timeout
        detail = ""
        while True:
            result = await self.providers.health.check(host, port=self._port(host, slot))
            if result.ok:
                self.hosts[host.name].healthy = True
                return
            detail = result.detail
            if self.clock.monotonic() >= deadline:
                self.hosts[host.name].healthy = False
                raise HealthCheckFailed(
                    f"not healthy after {timing.health_timeout:g}s: {detail}", host=host.name)
            await self.clock.sleep(timing.health_interval)

    async def _drain(self, name: str, backend: str) -> None:
        balancer = self.providers.balancer
        state = await self._backend(backend)
        if state is None or state.state == "maint":
            return
        if state.state == "ready":
            await self._set_backend_state(backend, "drain")
        left = await balancer.wait_drained(backend, self.fleet.timing.drain_timeout)
        if left:
            await self._emit("log", level="warning",
                             message=f"{name}: {left} requests still in flight after "
                                     f"{self.fleet.timing.drain_timeout:g}s drain")

    def _track(self, backend: str, pool: str | None, state: str | None) -> None:
        if pool == self.fleet.releases.target and state == "ready":
            self._serving_target.add(backend)
        else:
            self._serving_target.discard(backend)

    async def _set_backend_state(self, backend: str, state: str) -> None:
        """Change a backend's state, read it back, keep the engine's index in step."""
        await self.providers.balancer.set_backend_state(backend, state)
        seen = await self._backend(backend)
        if seen is None or seen.state != state:
            raise BalancerError(f"backend {backend} reads back "
                                f"{seen.state if seen else 'absent'!r}, expected {state!r}")
        self._track(backend, seen.pool, seen.state)

    async def _remove_backend(self, backend: str) -> None:
        await self.providers.balancer.remove_backend(backend)
        await self._expect_backend(backend, absent=True)
        self._track(backend, None, None)

    async def _backend(self, backend: str) -> BackendState | None:
        getter = getattr(self.providers.balancer, "backend_state", None)
        if getter is not None:
            return await getter(backend)
        return (await self.providers.balancer.state()).backends.get(backend)

    async def _expect_backend(self, backend: str, *, state: str | None = None,
                              pool: str | None = None, absent: bool = False) -> None:
        """Read the balancer back and assert what was just set."""
        seen = await self._backend(backend)
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

    async def _enable(self, host: Host, slot: str | None, release: str,
                      state: str = "ready") -> None:
        backend = self.backend_name(host.name, slot)
        port = self._port(host, slot)
        await self.providers.balancer.set_backend(backend, address=host.address,
                                                  port=port or 80, pool=release, weight=100,
                                                  state=state)
        await self._expect_backend(backend, state=state, pool=release)
        self._track(backend, release, state)

    async def _upgrade_host(self, name: str, release: str, *, mode: str, drain: bool,
                            slot: str | None = None) -> None:
        """snapshot -> drain -> stop -> install -> start -> health -> enable."""
        host = self._hosts_by_name[name]
        status = self.hosts[name]
        status.error = None
        backend = self.backend_name(name, slot)
        in_doubt = self._in_doubt.pop(name, None)
        if self._in_doubt_release.pop(name, release) != release:
            in_doubt = None      # interrupted on its way to another release: redo it all
        if mode == "upgrade" and self.providers.snapshot is not None and name not in self._snapshots:
            await self._host_phase(name, HostPhase.SNAPSHOT, release, slot, mode)
            snapshot_id = await self.providers.snapshot.create(host, f"pre-{release}")
            self._snapshots[name] = snapshot_id
            await self._emit("snapshot_taken", host=name, snapshot=snapshot_id)
        if drain:
            await self._host_phase(name, HostPhase.DRAINING, release, slot, mode)
            await self._drain(name, backend)
        await self._host_phase(name, HostPhase.STOPPING, release, slot, mode)
        await self._command(host, "stop", release, slot)
        skip_install = False
        if in_doubt == HostPhase.INSTALLING.value:
            skip_install = await self._installed_release(host, slot) == release
        elif in_doubt in (HostPhase.STARTING.value, HostPhase.CHECKING.value,
                          HostPhase.ENABLING.value):
            skip_install = True
        await self._host_phase(name, HostPhase.INSTALLING, release, slot, mode)
        if skip_install:
            await self._emit("log", level="info",
                             message=f"{name}: {release} already installed (resumed)")
        elif mode == "rollback" and name in self._snapshots and self.providers.snapshot:
            await self.providers.snapshot.revert(host, self._snapshots[name])
        else:
            await self._command(host, "install", release, slot)
        await self._host_phase(name, HostPhase.STARTING, release, slot, mode)
        await self._command(host, "start", release, slot)
        await self._host_phase(name, HostPhase.CHECKING, release, slot, mode)
        await self._wait_healthy(host, slot)
        await self._host_phase(name, HostPhase.ENABLING, release, slot, mode)
        await self._enable(host, slot, release)
        status.release = release
        status.phase = HostPhase.IN_SERVICE
        await self._emit("host_done", host=name, release=release, slot=slot, mode=mode)

    # blue-green ---------------------------------------------------------------------------

    async def _discover_slots(self) -> None:
        state = await self.providers.balancer.state()
        for host in self.fleet.main_hosts:
            if host.name in self._live_slot or not host.slots:
                continue
            names = list(host.slots)
            live = next((s for s in names
                         if (b := state.backends.get(self.backend_name(host.name, s)))
                         and b.state == "ready"), names[0])
            self._live_slot[host.name] = live
            self._original_slot.setdefault(host.name, live)
            self.hosts[host.name].slot = live
        await self._emit("log", level="info", message="live slots: " + ", ".join(
            f"{h}={s}" for h, s in sorted(self._live_slot.items())))
        await self._emit("slots", live=dict(self._live_slot),
                         original=dict(self._original_slot))

    def _idle_slot(self, host: Host) -> str:
        live = self._live_slot[host.name]
        return next(s for s in host.slots if s != live)

    async def _prepare_slot(self, name: str) -> None:
        host = self._hosts_by_name[name]
        slot = self._idle_slot(host)
        release = self.fleet.releases.target
        mode = "upgrade"
        # resumed half-way (or found so by reconcile): never install the idle slot twice
        in_doubt = self._in_doubt.pop(name, None)
        if self._in_doubt_release.pop(name, release) != release:
            in_doubt = None
        await self._host_phase(name, HostPhase.STOPPING, release, slot, mode)
        await self._command(host, "stop", release, slot)
        skip_install = False
        if in_doubt == HostPhase.INSTALLING.value:
            skip_install = await self._installed_release(host, slot) == release
        elif in_doubt in (HostPhase.STARTING.value, HostPhase.CHECKING.value,
                          HostPhase.ENABLING.value):
            skip_install = True
        await self._host_phase(name, HostPhase.INSTALLING, release, slot, mode)
        if skip_install:
            await self._emit("log", level="info",
                             message=f"{name}: {release} already installed in {slot} (resumed)")
        else:
            await self._command(host, "install", release, slot)
        await self._host_phase(name, HostPhase.STARTING, release, slot, mode)
        await self._command(host, "start", release, slot)
        await self._host_phase(name, HostPhase.CHECKING, release, slot, mode)
        await self._wait_healthy(host, slot)
        # registered with the balancer, but no user reaches it until the swap
        await self._enable(host, slot, release, state="maint")
        self.hosts[name].phase = HostPhase.IN_SERVICE
        await self._emit("host_done", host=name, release=self.hosts[name].release,
                         slot=self._live_slot[name], mode="prepare", prepared=slot)

    async def _swap_slot(self, name: str, *, back: bool = False) -> None:
        host = self._hosts_by_name[name]
        old = self._live_slot[name]
        new = self._original_slot[name] if back else self._idle_slot(host)
        if old == new:
            return
        release = self.fleet.releases.current if back else self.fleet.releases.target
        balancer = self.providers.balancer
        await self._host_phase(name, HostPhase.ENABLING, release, new, "rollback" if back else "upgrade")
        new_backend = self.backend_name(name, new)
        if await self._backend(new_backend) is None:
            await self._enable(host, new, release, state="ready")
        else:
            await self._set_backend_state(new_backend, "ready")
        old_backend = self.backend_name(name, old)
        if await self._backend(old_backend) is not None:
            # the old slot drains (swap back: the bad slot's requests finish, then maint)
            await self._set_backend_state(old_backend, "drain")
        self._live_slot[name] = new
        status = self.hosts[name]
        status.slot = new
        status.release = release
        status.phase = HostPhase.IN_SERVICE
        await self._emit("host_done", host=name, release=release, slot=new,
                         mode="rollback" if back else "swap")

    async def _turn_down(self, name: str) -> None:
        host = self._hosts_by_name[name]
        release = self.hosts[name].release or self.fleet.releases.current
        await self._host_phase(name, HostPhase.DRAINING, release, None, "turn_down")
        await self._drain(name, name)
        await self._host_phase(name, HostPhase.STOPPING, release, None, "turn_down")
        await self._command(host, "stop", release, None)
        if await self._backend(name) is not None:
            await self._remove_backend(name)
        self._turned_down.add(name)
        self.hosts[name].phase = HostPhase.OUT_OF_SERVICE
        self.hosts[name].release = None
        await self._emit("host_done", host=name, release=None, slot=None, mode="turn_down")

    # ------------------------------------------------------------------ traffic steps

    def _pool(self, symbolic: str | None) -> str | None:
        if symbolic is None:
            return None
        return {"current": self.fleet.releases.current,
                "target": self.fleet.releases.target}.get(symbolic, symbolic)

    async def _healthy_share(self, pool: str) -> float:
        """Percent of the fleet's nominal capacity that ``pool`` can take now: its backends in
        service that pass a health check now, against the size of the serving cluster."""
        state = await self.providers.balancer.state()
        members = [b for b in state.backends.values()
                   if b.pool == pool and b.state == "ready" and b.weight > 0]

        async def healthy(backend: BackendState) -> bool:
            name, _, slot = backend.name.partition("@")
            host = self._hosts_by_name.get(name)
            if host is None:
                return True
            result = await self.providers.health.check(host, port=self._port(host, slot or None))
            self.hosts[name].healthy = result.ok
            return result.ok

        results = await asyncio.gather(*(healthy(b) for b in members))
        nominal = max(1, len(self.fleet.main_hosts))
        return min(100.0, 100.0 * sum(results) / nominal)

    async def _set_traffic(self, weights: Mapping[str, float], *, check_capacity: bool = True) -> None:
        resolved = {self._pool(k) or k: float(v) for k, v in weights.items()}
        if check_capacity:
            before = (await self.providers.balancer.state()).split or {}
            for pool, weight in resolved.items():
                if weight <= 0 or weight <= before.get(pool, 0.0):
                    continue
                share = await self._healthy_share(pool)
                if weight > share + 1e-9:
                    raise BalancerError(
                        f"refusing to send {weight:g}% of traffic to pool {pool}: its healthy "
                        f"hosts carry only {share:.1f}% of the fleet's capacity")
        await self.providers.balancer.set_split(resolved)
        state = await self.providers.balancer.state()
        if dict(state.split or {}) != resolved:
            raise BalancerError(f"traffic split reads back {dict(state.split or {})}, "
                                f"expected {resolved}")
        await self._emit_traffic(state)

    def _route_table(self, groups: Iterable[str], default: str | None) -> RouteTable | None:
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
        return RouteTable(groups=named, cohorts=tuple(cohorts), default=self._pool(default),
                          group_header=self.fleet.group_header, user_header=self.fleet.user_header)

    async def _route(self, groups: Iterable[str], default: str | None) -> None:
        table = self._route_table(groups, default)
        await self.providers.balancer.set_routes(table)
        state = await self.providers.balancer.state()
        if not _same_routes(state.routes, table):
            raise BalancerError(f"routes read back as {state.routes}, expected {table}")
        await self._emit_traffic(state)

    async def _maintenance(self, on: bool, retry_after: int) -> None:
        await self.providers.balancer.set_maintenance(on, retry_after)
        state = await self.providers.balancer.state()
        if state.maintenance != on:
            raise BalancerError(f"maintenance reads back {state.maintenance}, expected {on}")
        self._maintenance_on = on
        await self._emit_traffic(state)

    async def _emit_traffic(self, state: Any = None) -> None:
        state = state or await self.providers.balancer.state()
        pools: dict[str, int] = {}
        for backend in state.backends.values():
            if backend.state == "ready" and backend.weight > 0:
                pools[backend.pool] = pools.get(backend.pool, 0) + 1
        routes = None
        if state.routes is not None:
            routes = {"groups": dict(state.routes.groups), "default": state.routes.default,
                      "cohorts": [[c.name, c.percent, p] for c, p in state.routes.cohorts]}
        self.last_traffic = {"split": dict(state.split) if state.split else None,
                             "routes": routes, "maintenance": state.maintenance,
                             "ready_by_pool": pools}
        await self._emit("traffic", **self.last_traffic)

    async def _set_flag(self, key: str, *, on: bool, percent: float | None,
                        groups: tuple[str, ...] = ()) -> None:
        switch = self.providers.flags
        if switch is None:
            raise RolloutFailed(f"step needs flag {key!r} but the fleet has no [flags] store")
        await switch.set_flag(key, on=on, percent=percent, groups=groups,
                              reason=f"rollout {self.rollout_id}")
        seen = await switch.flag_state(key)
        if bool(seen.get("on")) != on or (on and percent is not None
                                         and seen.get("percent") not in (None, percent)) \
                or (on and groups and sorted(seen.get("groups") or ()) != sorted(groups)):
            raise RolloutFailed(f"flag {key} reads back {seen}, expected on={on} "
                                f"percent={percent}")
        if on:
            self._flags_on.add(key)
        await self._emit("flag", key=key, on=on, percent=percent, groups=list(groups))

    # ------------------------------------------------------------------ gates and holds

    async def _schema_gate(self, step: Gate) -> None:
        switch = self.providers.schema
        if switch is None:
            raise RolloutFailed(f"step {describe_step(step)} needs the release's database, but "
                                "the rollout has no schema switch ([schema] database)")
        if step.gate == "schema_start":
            await self._set_state(RolloutState.RUNNING, f"schema change {step.detail}: start")
            await self._emit("schema", migration=step.detail, action="start", result="begin")
            result = await switch.start()
        else:
            old = sorted(n for n, s in self.hosts.items()
                         if self._hosts_by_name[n].cluster == "main"
                         and s.release != self.fleet.releases.target)
            if old:
                raise RolloutFailed(
                    f"schema change {step.detail} cannot complete: {len(old)} host(s) still "
                    f"run a release other than {self.fleet.releases.target} "
                    f"(first: {old[0]} on {self.hosts[old[0]].release})")
            await self._set_state(RolloutState.RUNNING, f"schema change {step.detail}: complete")
            await self._emit("schema", migration=step.detail, action="complete", result="begin")
            result = await switch.complete()
        await self._emit("schema", migration=step.detail,
                         action=step.gate.removeprefix("schema_"), result=result)

    async def _schema_rollback(self, errors: list[str]) -> None:
        """After the hosts are back on the old release: undo the schema change's start. The
        switch reads the database's own record, so this is right on a resumed roll-back too
        (and a no-op when the change never started or was completed)."""
        switch = self.providers.schema
        if switch is None or not any(isinstance(s, Gate) and s.gate == "schema_start"
                                     for s in self.plan.steps):
            return
        if errors:
            errors.append("schema change left started: hosts did not all roll back")
            return
        migration = next((s.detail for s in self.plan.steps
                          if isinstance(s, Gate) and s.gate == "schema_start"), "")
        await self._emit("schema", migration=migration, action="rollback", result="begin")
        try:
            result = await switch.rollback()
        except UpgraderError as exc:
            errors.append(f"schema change {migration} roll-back failed: {exc}")
            return
        await self._emit("schema", migration=migration, action="rollback", result=result)

    async def _gate(self, step: Gate) -> None:
        if step.gate == "deploy_window":
            return await self._window_gate(self.current_step or 0)
        if step.gate.startswith("schema_"):
            return await self._schema_gate(step)
        await self._set_state(RolloutState.VERIFYING, step.gate.replace("_", " "))
        template = (self.fleet.commands.system_test if step.gate == "system_test"
                    else self.fleet.commands.pre_release_test)
        if template is None:
            await self._emit("log", level="warning",
                             message=f"no {step.gate} command configured: gate passes")
            return
        release = self.fleet.releases.target
        hosts = step.hosts or tuple(h.name for h in self.fleet.main_hosts[:1])

        async def one(name: str) -> None:
            host = self._hosts_by_name[name]
            slot = self._idle_slot(host) if step.slots else self._live_slot.get(name)
            await self.providers.transport.run(host, self.render(template, host, release, slot),
                                               timeout=self.fleet.timing.command_timeout)

        results = await asyncio.gather(*(one(n) for n in hosts), return_exceptions=True)
        failures = [(n, r) for n, r in zip(hosts, results) if isinstance(r, BaseException)]
        for name, exc in failures:
            if not isinstance(exc, Exception):
                raise exc
        if failures:
            name, exc = failures[0]
            detail = describe_error(exc, name)
            await self._emit("verdict", metric="system_test", result="fail",
                             value=float(len(failures)), threshold=0.0, samples=len(hosts),
                             baseline=None, detail=detail[-500:])
            raise RolloutFailed(f"{step.gate} failed on {len(failures)} of {len(hosts)} hosts "
                                f"(first: {detail[-500:]})")
        await self._emit("verdict", metric="system_test", result="pass", value=0.0,
                         threshold=0.0, samples=len(hosts), baseline=None, detail="")

    async def _analysis_at_hold_end(self) -> None:
        """A round of analysis due at the very instant a hold ends (or under way) judges the
        end of the hold: wait for its verdict before going on, so that a failure it finds
        stops the rollout before the next step widens the exposure."""
        due = self._analysis_due
        if not (self._analysis_busy or (due is not None and due <= self.clock.monotonic())):
            return
        waiters = (asyncio.ensure_future(self._analysis_ended.wait()),
                   asyncio.ensure_future(self._interrupt.wait()),
                   asyncio.ensure_future(self.clock.sleep(self.fleet.verify.interval)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _verify_step(self, step: Verify) -> None:
        if self._promote_all:
            return
        self._skip.clear()
        await self._set_state(RolloutState.VERIFYING, f"for {step.for_:g}s")
        rounds = self._analysis_rounds
        passes = self._traffic_passes
        skipped = await self._wait(step.for_, skippable=True)
        if not skipped:
            await self._analysis_at_hold_end()
        if self._interrupt.is_set():
            raise _Interrupted
        if skipped or self._promote_all:
            return
        # at least one analysis round must have looked at the traffic since the hold began
        interval = self.fleet.verify.interval
        waited = 0.0
        while self._analysis_rounds <= rounds and waited < 3 * interval:
            if await self._wait(interval / 4, skippable=True):
                break
            waited += interval / 4
        if self._interrupt.is_set():
            raise _Interrupted
        if self._analysis_rounds <= rounds and self.fleet.verify.no_data == "fail":
            raise RolloutFailed(f"verification: no analysis round ran in "
                                f"{step.for_ + waited:g}s (no data; no_data = fail)")
        if self.fleet.verify.no_data == "wait" and not self._target_at_zero():
            limit = self.clock.monotonic() + 3 * max(step.for_, interval)
            while self._traffic_passes <= passes and self.clock.monotonic() < limit:
                if await self._wait(interval / 2, skippable=True):
                    return
            if self._traffic_passes <= passes:
                raise RolloutFailed("verification saw no traffic to judge (no_data = wait)")

    async def _pause_step(self, index: int, step: Pause) -> None:
        if self._promote_all:
            return
        self._skip.clear()
        duration = step.duration
        if duration is not None and self._resume and index in self._resume.pause_started:
            elapsed = self.clock.wall() - self._resume.pause_started[index]
            duration = max(0.0, duration - elapsed)
        reason = "until promoted" if duration is None else f"pause {duration:g}s"
        await self._set_state(RolloutState.WAITING, reason)
        await self._emit("pause_started", index=index, duration=step.duration)
        await self._wait(duration, skippable=True)
        if self._interrupt.is_set():
            raise _Interrupted
        await self._set_state(RolloutState.RUNNING)

    # ------------------------------------------------------------------ analysis


    async def _analyzer(self) -> None:
        spec = self.fleet.verify
        previous: Mapping[str, Any] | None = None
        try:
            while True:
                self._analysis_due = self.clock.monotonic() + spec.interval
                await self.clock.sleep(spec.interval)
                self._analysis_busy = True
                try:
                    previous = await self._analysis_round(previous)
                finally:
                    self._analysis_busy = False
                    ended, self._analysis_ended = self._analysis_ended, asyncio.Event()
                    ended.set()
        finally:
            self._analysis_due = None

    async def _analysis_round(self, previous: Mapping[str, Any] | None
                              ) -> Mapping[str, Any] | None:
        """One round of analysis; returns the counters the next round compares with."""
        spec = self.fleet.verify
        target = self.fleet.releases.target
        current = self.fleet.releases.current
        balancer = self.providers.balancer
        if self._promote_all or self.state in (RolloutState.ROLLING_BACK,) or self._failure:
            return None
        flag_mode = self.plan.rollback_mode == "flag"
        if self._maintenance_on or not (self._serving_target or
                                        (flag_mode and self._flags_on)):
            return None
        try:
            pool_stats = getattr(balancer, "pool_stats", None)
            if flag_mode:
                # a feature goes on across the fleet: judge all traffic (no old pool)
                state = await balancer.state()
                new = [n for n, b in state.backends.items() if b.state == "ready"]
                old = []
                stats = await balancer.stats()
            elif pool_stats is not None:
                stats = await pool_stats()
                new, old = [target], [current]
            else:
                state = await balancer.state()
                new = [n for n, b in state.backends.items()
                       if b.pool == target and b.state == "ready"]
                old = [n for n, b in state.backends.items()
                       if b.pool == current and b.state == "ready"]
                stats = await balancer.stats()
        except ProviderError as exc:
            await self._emit("log", level="warning", message=f"analysis: {exc}")
            return previous
        verdicts: list[Verdict] = []
        try:
            if previous is not None and not self._target_at_zero():
                verdicts = analyze(previous, stats, new, old, spec)
            previous = stats
            if spec.health and self._serving_target:
                verdicts.append(await self._health_round(sorted(self._serving_target)))
        except Exception as exc:   # analysis that cannot run is "no data", never a pass
            previous = None
            verdicts = [Verdict("analysis", "no_data", None, None, 0, None,
                                f"analysis could not run: {type(exc).__name__}: {exc}")]
        if not verdicts:
            return previous
        self._analysis_rounds += 1
        for verdict in verdicts:
            await self._judge(verdict)
        return previous

    async def _monitor(self) -> None:
        """Traffic figures for front ends: per pool always, per host for fleets up to
        ``host_metrics_limit`` backends. Read-only; never judges."""
        balancer = self.providers.balancer
        previous: Mapping[str, Any] | None = None
        previous_pools: Mapping[str, Any] | None = None
        before = self.clock.monotonic()
        while True:
            await self.clock.sleep(self.metrics_interval or 1.0)
            now = self.clock.monotonic()
            seconds = now - before
            before = now
            try:
                state = await balancer.state()
                per_host = len(state.backends) <= self.host_metrics_limit
                stats = await balancer.stats() if per_host else None
                pool_stats = getattr(balancer, "pool_stats", None)
                pools_now = await pool_stats() if pool_stats is not None else None
            except ProviderError:
                previous = previous_pools = None
                continue
            members: dict[str, list[str]] = {}
            for name, backend in state.backends.items():
                members.setdefault(backend.pool, []).append(name)
            pools: dict[str, Any] = {}
            hosts: dict[str, Any] = {}
            if pools_now is not None and previous_pools is not None:
                pools = {p: traffic_figures(previous_pools, pools_now, [p], seconds)
                         for p in pools_now}
            if stats is not None and previous is not None:
                hosts = {n: traffic_figures(previous, stats, [n], seconds) for n in stats}
                if not pools:
                    pools = {p: traffic_figures(previous, stats, names, seconds)
                             for p, names in members.items()}
            previous, previous_pools = stats, pools_now
            if pools or hosts:
                self.last_metrics = {"interval_s": round(seconds, 3), "pools": pools,
                                     "hosts": hosts}
                await self._emit("metrics", **self.last_metrics)

    def _target_at_zero(self) -> bool:
        """The target pool is deliberately getting no traffic (shedding before its first
        step): only health can be judged, not traffic."""
        split = self.last_traffic.get("split") if self.last_traffic else None
        return bool(split) and not split.get(self.fleet.releases.target, 0)

    async def _health_round(self, backends: list[str]) -> Verdict:
        async def one(backend: str) -> tuple[str, bool]:
            name, _, slot = backend.partition("@")
            host = self._hosts_by_name.get(name)
            if host is None:
                return backend, True
            result = await self.providers.health.check(host, port=self._port(host, slot or None))
            self.hosts[name].healthy = result.ok
            return backend, result.ok

        results = dict(await asyncio.gather(*(one(b) for b in backends)))
        return health_verdict(results)

    async def _judge(self, verdict: Verdict) -> None:
        spec = self.fleet.verify
        count = self._consecutive.get(verdict.metric, 0)
        if verdict.result == "fail" or (verdict.result == "no_data" and spec.no_data == "fail"):
            count += 1
        elif verdict.result == "pass" or (verdict.result == "no_data" and spec.no_data == "pass"):
            count = 0
            if verdict.result == "pass" and verdict.metric != "health":
                self._traffic_passes += 1
        self._consecutive[verdict.metric] = count
        self.last_verdicts[verdict.metric] = verdict
        await self._emit("verdict", **verdict.to_json(), consecutive=count,
                         limit=spec.consecutive_failures)
        if count >= spec.consecutive_failures and self._failure is None:
            reason = f"analysis: {verdict.describe()} ({count} in a row)"
            await self._emit("analysis_failed", metric=verdict.metric, detail=reason)
            self._fail(reason)

    # ------------------------------------------------------------------ failure handling

    def _touched(self) -> list[str]:
        """Hosts not on the current release (or in doubt), most recently upgraded first."""
        current = self.fleet.releases.current
        order = list(self.plan.upgraded_hosts())
        names = [n for n in order
                 if self._hosts_by_name[n].cluster == "main"
                 and (self.hosts[n].release != current or n in self._in_doubt
                      or self.hosts[n].phase not in (HostPhase.PENDING, HostPhase.IN_SERVICE))]
        return list(reversed(names))

    async def _rollback(self, reason: str) -> Outcome:
        self._interrupt.clear()
        self._running.set()
        timing = self.fleet.timing
        mode = self.plan.rollback_mode
        touched = self._touched()
        await self._set_state(RolloutState.ROLLING_BACK, reason)
        await self._emit("rollback_started", reason=reason, hosts=touched,
                         estimated_s=self._rollback_estimate(len(touched)), mode=mode)
        errors: list[str] = []
        try:
            if mode == "flag":
                for key in sorted(self._flags_on):
                    await self._set_flag(key, on=False, percent=None)
            elif mode == "swap":
                await self._rollback_slots(errors)
            elif mode == "traffic":
                await self._rollback_traffic(errors)
            else:
                await self._rollback_reinstall(touched, errors)
            await self._assert_rolled_back()
        except UpgraderError as exc:
            errors.append(str(exc))
        await self._schema_rollback(errors)
        if errors:
            self._failure = f"{reason}; roll-back incomplete: {'; '.join(errors[:5])}"
            return Outcome.FAILED
        return Outcome.ROLLED_BACK

    async def _rollback_reinstall(self, touched: list[str], errors: list[str]) -> None:
        current = self.fleet.releases.current
        target = self.fleet.releases.target
        balancer = self.providers.balancer
        state = await balancer.state()
        if state.routes is not None:
            await self._route((), "current" if any(
                b.pool == current and b.state == "ready" for b in state.backends.values()) else None)
        if state.split:
            await self._set_traffic({"current": 100.0}, check_capacity=False)
        # take the target release out of traffic at once, as far as capacity allows, and
        # again each time a host is back on the old release (so a bad release stops
        # answering users as soon as the old one can carry them)
        main_total = len(self.fleet.main_hosts)
        need = math.ceil(main_total * self.fleet.strategy.min_capacity / 100.0)
        drain_lock = asyncio.Lock()

        async def drain_target(seen: Any = None) -> None:
            async with drain_lock:
                now = seen if seen is not None else await balancer.state()
                ready_old = sum(1 for b in now.backends.values()
                                if b.pool == current and b.state == "ready")
                drained = False
                for name, backend in now.backends.items():
                    if backend.pool == target and backend.state == "ready" and ready_old >= need:
                        await self._set_backend_state(name, "drain")
                        drained = True
                if drained or seen is not None:
                    await self._emit_traffic()

        await drain_target(state)
        drain = not state.maintenance
        limit = asyncio.Semaphore(max(1, self.plan.rollback_parallel))
        in_flight: set[str] = set()
        came_back = asyncio.Condition()

        async def leave_a_server(name: str) -> None:
            """Never drain the last backend that serves users while another host's roll-back
            can still bring one back: wait for it instead (the plan's roll-back parallelism
            knows nothing of hosts a failure took out of service)."""
            own = self.backend_name(name, None)
            while True:
                now = await balancer.state()
                if any(n != own and b.state == "ready" and b.weight > 0
                       for n, b in now.backends.items()) or not in_flight:
                    return
                async with came_back:
                    await came_back.wait()

        async def one(name: str) -> None:
            async with limit:
                try:
                    if drain:
                        await leave_a_server(name)
                    in_flight.add(name)
                    await self._upgrade_host(name, current, mode="rollback", drain=drain,
                                             slot=None)
                    if drain:
                        await drain_target()
                except Exception as exc:
                    text = describe_error(exc, name)
                    self.hosts[name].phase = HostPhase.FAILED
                    self.hosts[name].error = text
                    await self._emit("host_failed", host=name, error=text, mode="rollback")
                    errors.append(text)
                finally:
                    in_flight.discard(name)
                    async with came_back:
                        came_back.notify_all()

        await asyncio.gather(*(one(n) for n in touched))
        if state.maintenance:
            await self._maintenance(False, 0)
        if state.routes is not None:
            await self._route((), None)

    async def _rollback_slots(self, errors: list[str]) -> None:
        for host in self.fleet.main_hosts:
            name = host.name
            if name not in self._live_slot:
                continue
            try:
                if self._live_slot[name] != self._original_slot[name]:
                    await self._swap_slot(name, back=True)
                idle = self._idle_slot(host)
                backend = self.backend_name(name, idle)
                seen = await self._backend(backend)
                if seen is not None and seen.state != "maint":
                    await self._drain(name, backend)       # let its requests finish first
                    await self._set_backend_state(backend, "maint")
                if seen is not None or self.hosts[name].phase != HostPhase.PENDING:
                    await self._command(host, "stop", self.fleet.releases.target, idle)
                self.hosts[name].release = self.fleet.releases.current
                self.hosts[name].phase = HostPhase.IN_SERVICE
            except UpgraderError as exc:
                errors.append(f"{name}: {exc}")
        await self._emit_traffic()

    async def _rollback_traffic(self, errors: list[str]) -> None:
        current = self.fleet.releases.current
        # old hosts that were already turned down come back first
        for name in sorted(self._turned_down):
            try:
                await self._upgrade_host(name, current, mode="rollback", drain=False)
            except Exception as exc:
                errors.append(describe_error(exc, name))
        share = await self._healthy_share(self.fleet.releases.current)
        if share <= 0:
            # nowhere to send the users: keep the new cluster serving rather than nothing
            errors.append(f"the old cluster has no healthy host to take the traffic back "
                          f"(pool {current} at {share:.0f}% of capacity)")
            return
        await self._set_traffic({"current": 100.0, "target": 0.0}, check_capacity=False)
        for host in self.fleet.new_hosts:
            name = host.name
            if self.hosts[name].release is None and self.hosts[name].phase == HostPhase.PENDING:
                continue
            try:
                if await self._backend(name) is not None:
                    await self._drain(name, name)
                    await self._remove_backend(name)
                await self._command(host, "stop", self.fleet.releases.target, None)
                self.hosts[name].release = None
                self.hosts[name].phase = HostPhase.OUT_OF_SERVICE
                await self._emit("host_done", host=name, release=None, slot=None,
                                 mode="turn_down")
            except UpgraderError as exc:
                errors.append(f"{name}: {exc}")
        await self._emit_traffic()

    async def _assert_rolled_back(self) -> None:
        """An abort ends with the target pool at 0 % and drained."""
        if self.plan.rollback_mode == "flag":
            return      # no release changed; each flag read back off as it was turned off
        target = self.fleet.releases.target
        state = await self.providers.balancer.state()
        serving = [n for n, b in state.backends.items() if b.pool == target and b.state == "ready"]
        if serving:
            raise BalancerError("after roll-back the target release still serves on "
                                + ", ".join(sorted(serving)[:10]))
        if state.split and state.split.get(target, 0) > 0:
            raise BalancerError(f"after roll-back {state.split[target]:g}% of traffic still "
                                f"goes to {target}")
        if state.routes is not None and target in (
                list(state.routes.groups.values()) + [p for _, p in state.routes.cohorts]
                + [state.routes.default]):
            raise BalancerError("after roll-back routes still send users to " + target)

    async def _shutdown(self, reason: str) -> Outcome:
        """Take upgraded hosts out of service while capacity allows; roll back the rest."""
        if self.plan.rollback_mode != "reinstall":
            # a swap or a traffic move IS taking the new release out of service, at once
            return await self._rollback(reason)
        self._interrupt.clear()
        self._running.set()
        # journaled like a roll-back, so a crash now resumes by rolling back, never forward
        await self._emit("rollback_started", reason=reason, hosts=self._touched(),
                         estimated_s=self._rollback_estimate(len(self._touched())),
                         mode="shutdown")
        target = self.fleet.releases.target
        main = self.fleet.main_hosts
        need = math.ceil(len(main) * self.fleet.strategy.min_capacity / 100.0)
        in_service = sum(1 for h in main if self.hosts[h.name].phase in
                         (HostPhase.PENDING, HostPhase.IN_SERVICE))
        await self._set_state(RolloutState.ROLLING_BACK, f"shutting down upgraded hosts: {reason}")
        rest: list[str] = []
        errors: list[str] = []
        for name in self._touched():
            host = self._hosts_by_name[name]
            if self.hosts[name].release == target and in_service - 1 >= need:
                try:
                    await self._drain(name, name)
                    await self._command(host, "stop", target, None)
                    await self._set_backend_state(name, "maint")
                    self.hosts[name].phase = HostPhase.OUT_OF_SERVICE
                    in_service -= 1
                    await self._emit("host_done", host=name, release=target, slot=None,
                                     mode="shutdown")
                except UpgraderError as exc:
                    errors.append(f"{name}: {exc}")
            else:
                rest.append(name)
        if rest:
            await self._emit("log", level="warning",
                             message=f"capacity allows no more shut-downs; rolling back {len(rest)}")
            await self._rollback_reinstall(rest, errors)
        if errors:
            self._failure = f"{reason}; shut-down incomplete: {'; '.join(errors[:5])}"
            return Outcome.FAILED
        return Outcome.SHUT_DOWN


def describe_error(exc: BaseException, host: str | None = None) -> str:
    """One line naming the host, what failed and the tail of its stderr."""
    text = str(exc)
    if host and not text.startswith(host):
        text = f"{host}: {text}"
    stderr = getattr(exc, "stderr", "") or ""
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    if tail and tail[0] not in text:
        text += f": {tail[0][-300:]}"
    return text


def _same_routes(seen: RouteTable | None, want: RouteTable | None) -> bool:
    if seen is None or want is None:
        return seen is None and want is None
    return (dict(seen.groups) == dict(want.groups) and seen.default == want.default
            and [(c.name, c.percent, p) for c, p in seen.cohorts]
            == [(c.name, c.percent, p) for c, p in want.cohorts])


def describe_step(step: Step) -> str:
    if isinstance(step, UpgradeHosts):
        extra = f", one every {step.start_interval:g}s" if step.start_interval else ""
        par = f", {step.max_parallel} at a time" if step.max_parallel else ""
        return f"upgrade {len(step.hosts)} host(s){par}{extra}" + ("" if step.drain else " (no drain)")
    if isinstance(step, PrepareSlots):
        return f"prepare idle slot on {len(step.hosts)} host(s)"
    if isinstance(step, SwapSlots):
        return f"swap slots on {len(step.hosts)} host(s)"
    if isinstance(step, SetTraffic):
        return "traffic " + ", ".join(f"{p} {w:g}%" for p, w in step.weights)
    if isinstance(step, Route):
        return ("route " + ", ".join(step.groups) + " to target" if step.groups
                else "route everyone " + ("to current" if step.default else "everywhere"))
    if isinstance(step, Verify):
        return f"verify all upgraded hosts for {step.for_:g}s"
    if isinstance(step, Pause):
        return "pause until promoted" if step.duration is None else f"pause {step.duration:g}s"
    if isinstance(step, Gate):
        if step.gate == "schema_start":
            return f"start schema change {step.detail}"
        if step.gate == "schema_complete":
            return f"complete schema change {step.detail}"
        return step.gate.replace("_", " ") + (" on idle slots" if step.slots else "")
    if isinstance(step, Maintenance):
        return "maintenance page on" if step.on else "maintenance page off"
    if isinstance(step, TurnDown):
        return f"turn down {len(step.hosts)} old host(s)"
    return step.kind
