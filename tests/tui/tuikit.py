"""Helpers for the TUI tests (imported by the tests and by conftest.py).

- a live rollout: an in-process Engine with the no-op providers (short real-time delays) and
  the app, both in one event loop (``run_live``);
- a bounded wait (``wait_until``): ``pilot.pause()`` until a condition holds, a few seconds at
  most, never a fixed sleep;
- a fake handle with a fixed snapshot and history (``FakeHandle``, ``scenario``), so snapshot
  tests render the same screen on every run.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from upgrader import strategies
from upgrader.engine.core import Engine, Providers
from upgrader.events import Event
from upgrader.model import (
    Commands,
    Fleet,
    Host,
    ProviderSpec,
    Releases,
    StrategySpec,
    Timing,
    VerifySpec,
)
from upgrader.providers.base import CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.tui import UpgraderApp, make_app
from upgrader.tui.screens import MainScreen
from upgrader.tui.widgets import RolloutHeader

SIZE = (140, 45)
#: real seconds each host command takes in live tests
DELAY = 0.05
ZONES = ("a", "b", "c")


def make_fleet(n: int, zones: tuple[str, ...] | None = ZONES) -> Fleet:
    """``n`` main hosts web-0001.. (a copy of tests/unit/conftest.py's helper, trimmed)."""
    hosts = []
    for i in range(1, n + 1):
        labels = {"zone": zones[i % len(zones)]} if zones else {}
        hosts.append(Host(name=f"web-{i:04d}", port=9000 + i, labels=labels))
    return Fleet(
        name="shop",
        hosts=tuple(hosts),
        releases=Releases(current="1.0.0", target="1.1.0"),
        commands=Commands(install=("deploy", "{release}"), start=("start",), stop=("stop",)),
        transport=ProviderSpec("noop"),
        balancer=ProviderSpec("noop"),
        health=ProviderSpec("noop"),
        strategy=StrategySpec(kind="canary", params=None),
        verify=VerifySpec(),
        timing=Timing(),
    )


class _Where:
    def error(self, key: str | None, message: str) -> None:
        raise AssertionError(f"{key}: {message}")


def canary_fleet(n: int, steps: list[dict[str, Any]], *, verify: VerifySpec | None = None,
                 on_failure: str = "rollback", rollback_parallel: int = 1) -> Fleet:
    """A canary over ``n`` hosts with short real-time figures; roll-back one host at a time
    (so that ROLLING BACK lasts a few screen updates)."""
    fleet = make_fleet(n)
    params = strategies.get("canary").parse_params(
        {"steps": steps, "rollback_parallel": rollback_parallel}, _Where())
    verify = verify or VerifySpec(for_=0.3, interval=0.1, no_data="pass", min_requests=10,
                                  consecutive_failures=2)
    timing = Timing(host_upgrade=0.2, health_timeout=2.0, drain_timeout=1.0,
                    health_interval=0.05, command_timeout=10.0)
    return dataclasses.replace(fleet, strategy=StrategySpec("canary", params,
                                                            on_failure=on_failure),
                               verify=verify, timing=timing)


class LiveRollout:
    """An engine on no-op providers, plus user traffic recorded on the balancer (the target
    release answers ``error_rate_new`` of its requests with errors)."""

    def __init__(self, fleet: Fleet, *, responder: Callable[..., CommandResult | None] | None
                 = None, error_rate_new: float = 0.0) -> None:
        self.fleet = fleet
        self.providers = Providers(NoopTransport(delay=DELAY, responder=responder),
                                   NoopBalancer(), NoopHealthCheck())
        plan = strategies.get(fleet.strategy.kind).compile(fleet, fleet.strategy.params)
        self.engine = Engine(fleet, plan, self.providers, metrics_interval=0.2)
        self.error_rate_new = error_rate_new
        self.task: asyncio.Task[Any] | None = None
        self._traffic: asyncio.Task[None] | None = None

    async def seed(self) -> None:
        for host in self.fleet.main_hosts:
            await self.providers.balancer.set_backend(host.name, address=host.address,
                                                      port=host.port,
                                                      pool=self.fleet.releases.current)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.engine.run())
        self._traffic = asyncio.create_task(self._users())

    async def _users(self) -> None:
        balancer = self.providers.balancer
        target = self.fleet.releases.target
        while True:
            await asyncio.sleep(0.05)
            for name, backend in (await balancer.state()).backends.items():
                if backend.state == "ready":
                    bad = int(20 * self.error_rate_new) if backend.pool == target else 0
                    balancer.record(name, requests=20, errors=bad, latencies=[0.004] * 20)

    async def stop(self) -> Any:
        if self.task is not None and not self.task.done():
            self.engine.abort(rollback=True)
        result = await asyncio.wait_for(self.task, 15) if self.task is not None else None
        if self._traffic is not None:
            self._traffic.cancel()
        return result

    def controls(self) -> list[str]:
        return [e.data["action"] for e in self.engine.history if e.kind == "control"]


Scenario = Callable[[LiveRollout, UpgraderApp, Any], Awaitable[None]]


def run_live(fleet: Fleet, scenario: Scenario, *, on_quit: Any = None,
             responder: Any = None, error_rate_new: float = 0.0) -> UpgraderApp:
    """Run ``scenario(live, app, pilot)`` with the engine and the app in one event loop."""

    async def main() -> UpgraderApp:
        live = LiveRollout(fleet, responder=responder, error_rate_new=error_rate_new)
        await live.seed()
        app = make_app(live.engine, on_quit=on_quit)
        async with app.run_test(size=SIZE) as pilot:
            await live.start()
            try:
                await scenario(live, app, pilot)
            finally:
                await live.stop()
        return app

    return asyncio.run(main())


async def wait_until(pilot: Any, condition: Callable[[], bool], what: str,
                     timeout: float = 8.0) -> None:
    """``pilot.pause()`` until ``condition()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await pilot.pause(0.02)


def screen_text(app: UpgraderApp) -> str:
    """What the current screen shows, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def main_screen(app: UpgraderApp) -> MainScreen:
    return next(s for s in app.screen_stack if isinstance(s, MainScreen))


class ShownStates:
    """The state words the header has shown, in order (call it to take a reading)."""

    def __init__(self, app: UpgraderApp) -> None:
        self.app = app
        self.seen: list[str] = []

    def __call__(self) -> list[str]:
        state = main_screen(self.app).query_one(RolloutHeader).state_shown
        if state and (not self.seen or self.seen[-1] != state):
            self.seen.append(state)
        return self.seen

    async def wait_for(self, pilot: Any, state: str, timeout: float = 8.0) -> None:
        await wait_until(pilot, lambda: state in self(), f"the header to show {state} "
                         f"(seen {self.seen})", timeout)


# ---------------------------------------------------------------------- fake handle


class FakeHandle:
    """A RolloutHandle with a fixed snapshot and history; records controls."""

    def __init__(self, snapshot: dict[str, Any], history: list[Event]) -> None:
        self._snapshot = snapshot
        self.history = history
        self.calls: list[tuple[str, Any]] = []
        self.subscribers: list[Callable[[Event], None]] = []

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def emit(self, event: Event) -> None:
        self.history.append(event)
        for callback in list(self.subscribers):
            callback(event)

    def pause(self) -> None:
        self.calls.append(("pause", None))

    def resume(self) -> None:
        self.calls.append(("resume", None))

    def promote(self) -> None:
        self.calls.append(("promote", None))

    def promote_all(self) -> None:
        self.calls.append(("promote_all", None))

    def abort(self, rollback: bool = True) -> None:
        self.calls.append(("abort", rollback))


T0 = 1_800_000_000.0
SCENARIO_STEPS = [{"hosts": 1, "pause": "10m"}, {"hosts": "25%", "pause": "promote"},
                  {"rate": "1/min", "until": "100%"}]


def judged_verdicts() -> list[dict[str, Any]]:
    """A round of the statistical judge as the engine emits it (the real judge on fixed
    samples): an error rate that passes, a p95 latency with too few samples (inconclusive), a
    dry-run metric without data; score 100 (pass)."""
    from upgrader.engine.judge import judge, round_score
    from upgrader.model import MetricSpec

    rounds = [
        (MetricSpec("error_rate", "balancer", "error_rate", kind="proportion", max=1.0,
                    max_increase=100.0), {"canary_counts": (1, 900),
                                          "baseline_counts": (6, 6000)}),
        (MetricSpec("p95_latency", "balancer", "p95_latency", kind="value", max=0.3,
                    max_increase=50.0),
         {"canary": [0.04 + 0.001 * (i % 7) for i in range(40)],
          "baseline": [0.04 + 0.001 * (i % 5) for i in range(400)]}),
        (MetricSpec("queue_depth", "prometheus", "sum(queue_depth)", kind="value", max=50.0,
                    dry_run=True), {}),
    ]
    judgements = [judge(metric, **samples) for metric, samples in rounds]
    score, band = round_score(judgements)
    out = []
    for j in judgements:
        out.append({"metric": j.metric, "result": j.result, "value": j.value,
                    "threshold": j.thresholds.get("max"), "samples": j.samples,
                    "baseline": j.baseline, "detail": j.reason, "consecutive": 0, "limit": 3,
                    "judge": "statistical", "stats": j.to_json(), "raw": {},
                    "score": score, "band": band})
    return out


def scenario(kind: str) -> FakeHandle:
    """A canary of 12 hosts, frozen at one moment: ``running`` (the second group upgrading),
    ``waiting`` (the canary's timed pause), ``paused``, ``rolling_back`` (a bad canary caught
    by analysis) or ``completed``; ``judged``: ``waiting`` with the statistical judge's
    verdicts."""
    judged = kind == "judged"
    if judged:
        kind = "waiting"
    fleet = canary_fleet(12, SCENARIO_STEPS,
                         verify=VerifySpec(for_=300.0, interval=10.0, min_requests=200))
    fleet = dataclasses.replace(fleet, timing=Timing())
    plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
    noop = Providers(NoopTransport(), NoopBalancer(), NoopHealthCheck())
    snap = Engine(fleet, plan, noop).snapshot()
    order = [name for step in plan.steps for name in getattr(step, "hosts", ())]
    canary, group = order[:1], order[1:4]
    current, target = "1.0.0", "1.1.0"
    events: list[Event] = []
    seq = 0

    def emit(t: float, kind_: str, **data: Any) -> None:
        nonlocal seq
        seq += 1
        events.append(Event(kind_, T0 + t, "r-20300101-0001", seq, data))

    hosts = {h.name: {"release": current, "phase": "pending", "slot": None, "healthy": None,
                      "error": None} for h in fleet.hosts}
    bad = kind == "rolling_back"
    emit(0, "rollout_started", fleet="shop", strategy="canary", current=current, target=target,
         hosts=12, estimated_s=snap["estimated_s"],
         rollback_estimated_s=snap["rollback_estimated_s"], resumed=False)
    emit(0, "state", state="RUNNING", reason="")

    def step(t: float, index: int) -> None:
        emit(t, "step_started", index=index, step=plan.steps[index].kind,
             description=snap["plan"][index]["description"])

    def upgrade(t: float, name: str) -> None:
        for offset, phase in enumerate(("draining", "stopping", "installing", "starting",
                                        "checking", "enabling")):
            emit(t + offset, "host_phase", host=name, phase=phase, release=target, slot=None,
                 mode="upgrade")
        emit(t + 6, "host_done", host=name, release=target, slot=None, mode="upgrade")
        hosts[name].update(release=target, phase="in_service", healthy=True)

    step(1, 0)
    upgrade(1, canary[0])
    emit(8, "step_finished", index=0, step="upgrade")
    step(8, 1)
    emit(8, "state", state="VERIFYING", reason="for 300s")
    done = [0]
    now = 8.0
    metrics_hosts: dict[str, Any] = {}

    def metrics(t_end: float) -> None:
        nonlocal now, metrics_hosts
        t = now
        while t + 5 <= t_end:
            t += 5
            on_new = sum(1 for h in hosts.values() if h["release"] == target)
            new_rps = 10.0 * on_new
            old_rps = 120.0 - new_rps
            error_new = (25.0 + (t % 10)) if bad and on_new else (0.2 if on_new else None)
            pools = {current: {"requests": int(old_rps * 5), "rps": old_rps,
                               "error_rate": 0.1, "p95": 0.025},
                     target: {"requests": int(new_rps * 5), "rps": new_rps,
                              "error_rate": error_new, "p95": 0.05 if bad else 0.025}}
            metrics_hosts = {
                name: {"requests": 50, "rps": 10.0,
                       "error_rate": (error_new if h["release"] == target else 0.1),
                       "p95": 0.025}
                for name, h in hosts.items() if h["phase"] in ("in_service", "pending")}
            emit(t, "metrics", interval_s=5.0, pools=pools, hosts=metrics_hosts)
        now = t_end

    verdicts: dict[str, Any] = {}

    def verdict(t: float, result: str, value: float, consecutive: int) -> None:
        data = {"metric": "error_rate", "result": result, "value": value, "threshold": 1.0,
                "samples": 240, "baseline": 0.1, "consecutive": consecutive, "limit": 3,
                "detail": f"{round(value * 2.4)} errors in 240 requests"}
        emit(t, "verdict", **data)
        verdicts["error_rate"] = data
        health = {"metric": "health", "result": "pass", "value": 0.0, "threshold": 0.0,
                  "samples": sum(1 for h in hosts.values() if h["release"] == target),
                  "baseline": None, "consecutive": 0, "limit": 3, "detail": ""}
        emit(t, "verdict", **health)
        verdicts["health"] = health
        if judged:
            for data in judged_verdicts():
                emit(t, "verdict", **data)
                verdicts[data["metric"]] = data

    state, reason = "RUNNING", ""
    wait_remaining = None
    step_index = 1
    if bad:
        metrics(40)
        for i, t in enumerate((20, 30, 40)):
            verdict(t, "fail", 30.0 + i, i + 1)
        detail = ("analysis: error_rate FAIL: 32.00% (limit 1.00%, 240 samples, old release "
                  "0.10%) - 77 errors in 240 requests (3 in a row)")
        emit(40, "analysis_failed", metric="error_rate", detail=detail)
        emit(40, "state", state="ROLLING BACK", reason=detail)
        emit(40, "rollback_started", reason=detail, hosts=canary, estimated_s=30.0,
             mode="reinstall")
        for offset, phase in enumerate(("draining", "stopping", "installing")):
            emit(41 + offset, "host_phase", host=canary[0], phase=phase, release=current,
                 slot=None, mode="rollback")
        hosts[canary[0]].update(phase="installing")
        state, reason = "ROLLING BACK", detail
        elapsed = 44.0
    else:
        metrics(308)
        for t in range(18, 308, 10):
            verdict(float(t), "pass", 0.2, 0)
        emit(308, "step_finished", index=1, step="verify")
        done.append(1)
        step(308, 2)
        emit(308, "state", state="WAITING", reason="pause 600s")
        emit(308, "pause_started", index=2, duration=600.0)
        step_index = 2
        state, reason = "WAITING", "pause 600s"
        wait_remaining = 600.0 - 32.0
        elapsed = 340.0
        metrics(340)
        if kind != "waiting":
            emit(908, "step_finished", index=2, step="pause")
            done.append(2)
            step(908, 3)
            emit(908, "state", state="RUNNING", reason="")
            upgrade(909, group[0])
            for offset, phase in enumerate(("draining", "stopping", "installing")):
                emit(916 + offset, "host_phase", host=group[1], phase=phase, release=target,
                     slot=None, mode="upgrade")
            hosts[group[1]]["phase"] = "installing"
            emit(917, "host_phase", host=group[2], phase="draining", release=target,
                 slot=None, mode="upgrade")
            hosts[group[2]]["phase"] = "draining"
            now = 908
            metrics(920)
            verdict(918, "pass", 0.2, 0)
            state, reason, wait_remaining, step_index, elapsed = "RUNNING", "", None, 3, 920.0
        if kind == "paused":
            emit(920, "control", action="pause", actor="tui")
            emit(921, "state", state="PAUSED", reason="paused by operator")
            state, reason, elapsed = "PAUSED", "paused by operator", 935.0
        if kind == "completed":
            for name in order[2:]:
                hosts[name].update(release=target, phase="in_service", healthy=True,
                                   error=None)
            t = 920.0
            for index in range(3, len(plan.steps)):
                emit(t, "step_finished", index=index, step=plan.steps[index].kind)
                done.append(index)
                t += 60
            metrics(t)
            emit(t, "state", state="COMPLETED", reason="")
            emit(t, "rollout_finished", outcome="completed",
                 hosts=dict.fromkeys(hosts, target), duration_s=t, error=None)
            state, reason, step_index, elapsed = "COMPLETED", "", None, t
    on_target = sum(1 for h in hosts.values() if h["release"] == target)
    last_metrics = next(e.data for e in reversed(events) if e.kind == "metrics")
    remaining = sum(p["duration_s"] for p in snap["plan"] if p["index"] not in done)
    snap.update(
        rollout="r-20300101-0001", state=state, reason=reason, step=step_index,
        hosts_on_target=on_target, elapsed_s=elapsed, remaining_s=remaining, hosts=hosts,
        # as the engine keeps them: each verdict as its event said it, raw samples aside
        verdicts={m: {k: v for k, v in d.items() if k != "raw"} for m, d in verdicts.items()},
        done_steps=sorted(done), wait_remaining_s=wait_remaining,
        traffic={"split": None, "routes": None, "maintenance": False,
                 "ready_by_pool": {current: 12 - on_target, target: on_target}},
        metrics=dict(last_metrics),
        # as the engine computes it: the touched hosts, one at a time (rollback_parallel 1)
        rollback_now_s=on_target * fleet.timing.host_upgrade)
    return FakeHandle(snap, events)


def frozen_app(handle: FakeHandle, **kwargs: Any) -> UpgraderApp:
    """The app on a fake handle with a clock that never moves."""
    return make_app(handle, clock=lambda: 1000.0, **kwargs)


def big_handle(n: int) -> FakeHandle:
    """A canary of ``n`` hosts just started (a live-looking snapshot, a short history)."""
    fleet = canary_fleet(n, [{"hosts": 1, "pause": "10m"}, {"rate": "10/s", "until": "100%"}])
    plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
    noop = Providers(NoopTransport(), NoopBalancer(), NoopHealthCheck())
    snap = Engine(fleet, plan, noop).snapshot()
    snap.update(rollout="r-big", state="RUNNING", step=0)
    started = Event("rollout_started", T0, "r-big", 1, {
        "fleet": "shop", "strategy": "canary", "current": "1.0.0", "target": "1.1.0",
        "hosts": n, "estimated_s": snap["estimated_s"],
        "rollback_estimated_s": snap["rollback_estimated_s"], "resumed": False})
    return FakeHandle(snap, [started])
