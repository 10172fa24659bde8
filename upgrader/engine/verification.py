"""Verification: the loops that watch a rollout's traffic, beside the pure ``analysis.py``.

The analyzer compares the target release's error rate and latency with the current release's
each ``verify.interval`` (and health-checks a bounded sample of the serving hosts: those that
changed, those that failed, the least recently checked; see ``sampling.py``), judges each
verdict against ``consecutive_failures`` and fails the rollout when a metric keeps failing. A
``Verify`` step's hold waits until at least one round has judged the traffic since it began.
The monitor only reports traffic figures to front ends (``metrics`` events: every pool, and
the hosts that changed lately or that a front end watches); it never judges.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from ..clock import Clock
from ..errors import ProviderError, RolloutFailed
from ..events import RolloutState, Verdict
from ..model import Fleet, MetricSpec, verify_metrics
from ..plan import Plan, Verify
from ..providers.base import (
    BackendStats,
    BackendStatsReader,
    Balancer,
    BalancerCounters,
    MetricSamples,
    MetricSource,
    MetricWindow,
    PoolStatsReader,
)
from .analysis import (
    counter_figures,
    health_verdict,
    idle_figures,
    threshold_verdict,
    traffic_figures,
)
from .bus import EventBus
from .judge import MetricJudgement, judge, round_score
from .machine import StateMachine
from .progress import RolloutProgress
from .sampling import FigureScope, HealthSampler
from .traffic import TrafficControl

#: the balancer's cumulative counters (per backend, or per pool)
Counters = Mapping[str, BackendStats]

#: seconds a backend the engine changed keeps its own figures in ``metrics`` events (at
#: least 2.5 intervals: its counters at one reading, its figures at the next ones)
RECENT_CHANGE_S = 3.0
#: a fleet of at most this many backends has every host's figures in each ``metrics`` event
#: (a screenful; front ends that say what they show use ``watch_hosts``, also over the
#: control API's ``POST /v1/watch``)
SMALL_FLEET = 50


#: raw samples per side journaled with each verdict (the pooled test uses all of them)
RAW_LIMIT = 2000


def pooled(pool: Iterable[MetricSamples]) -> tuple[tuple[float, ...], tuple[float, ...],
                                                    tuple[int, int] | None,
                                                    tuple[int, int] | None]:
    """Samples of several rounds as one: observations joined, counts added up."""
    canary: list[float] = []
    baseline: list[float] = []
    counts: list[tuple[int, int] | None] = [None, None]
    for samples in pool:
        canary.extend(samples.canary)
        baseline.extend(samples.baseline)
        for i, c in enumerate((samples.canary_counts, samples.baseline_counts)):
            if c is not None:
                before = counts[i] or (0, 0)
                counts[i] = (before[0] + c[0], before[1] + c[1])
    return tuple(canary), tuple(baseline), counts[0], counts[1]


def _with_reason(judgement: MetricJudgement, reason: str) -> MetricJudgement:
    import dataclasses

    return dataclasses.replace(judgement, reason=f"{judgement.reason}: {reason}")


class Verification:
    def __init__(self, fleet: Fleet, plan: Plan, *, clock: Clock, bus: EventBus,
                 machine: StateMachine, progress: RolloutProgress,
                 traffic: TrafficControl,
                 sources: Mapping[str, MetricSource] | None = None) -> None:
        self.fleet = fleet
        self.plan = plan
        self.clock = clock
        self.bus = bus
        self.machine = machine
        self.progress = progress
        self.traffic = traffic
        self.balancer: Balancer = traffic.balancer
        #: the balancer keeps counters per pool (credited when each request was served)
        self._pools = self.balancer if isinstance(self.balancer, PoolStatsReader) else None
        #: ... and reads the counters of a few named backends without copying them all
        self._some = self.balancer if isinstance(self.balancer, BackendStatsReader) else None
        spec = fleet.verify
        #: the metrics judged each round, and the source each one is read from (none given:
        #: the balancer's counters, read by the contracts' reader)
        self.metrics: tuple[MetricSpec, ...] = verify_metrics(spec)
        if sources is None:
            counters = BalancerCounters(self.balancer)
            sources = {m.name: counters for m in self.metrics if m.source == "balancer"}
        self.sources: dict[str, MetricSource] = dict(sources)
        #: wall time of the last reading of the sources (None: the next round only primes)
        self._window_start: float | None = None
        #: the statistical judge: each metric's samples of the last ``window`` rounds, and
        #: its last judgement
        self._pooled: dict[str, deque[MetricSamples]] = {
            m.name: deque(maxlen=spec.window) for m in self.metrics}
        self.judgements: dict[str, MetricJudgement] = {}
        #: the last round's score (0-100, None: nothing conclusive) and band
        self.score: tuple[float | None, str] = (None, "inconclusive")
        self.health = HealthSampler(spec.health_sample, spec.health_period, spec.interval)
        #: the last health round's coverage: checked, serving, the least recently seen
        self.health_coverage: dict[str, object] = {}
        self.figures = FigureScope(limit=2000, recent=RECENT_CHANGE_S)
        backends = self._backends_of(h.name for h in fleet.hosts)
        if len(backends) <= SMALL_FLEET:
            self.figures.always = tuple(backends)
        progress.on_change.append(self._changed)
        progress.on_checked.append(self._checked)
        progress.on_found.append(lambda backend: self.health.found(backend,
                                                                   self.clock.monotonic()))
        #: the last verdict per metric, and how many times in a row it failed
        self.last_verdicts: dict[str, Verdict] = {}
        #: each last verdict as its event said it, without the raw samples: the statistics
        #: (p-value, effect, samples had and needed), the round's score and band, the failing
        #: count; the snapshot shows these, so a front end that connects late (``status``,
        #: ``attach``) sees what the events said
        self.verdict_data: dict[str, dict[str, Any]] = {}
        self._consecutive: dict[str, int] = {}
        #: the analysis round that last judged each metric (threshold judge)
        self._judged_in: dict[str, int] = {}
        #: the last ``metrics`` event's data (for front ends)
        self.last_metrics: dict[str, object] = {}
        self._rounds = 0
        #: traffic verdicts that passed (for no_data = "wait": health alone is not traffic)
        self._traffic_passes = 0
        #: when the analyzer's next round is due, whether one is under way, and an event set
        #: (then replaced) each time a round ends: a hold that ends with a round waits for it
        self._due: float | None = None
        self._busy = False
        self._ended = asyncio.Event()

    def _changed(self, backend: str) -> None:
        now = self.clock.monotonic()
        self.health.changed(backend, now)
        self.figures.changed(backend, now)

    def _checked(self, backend: str, ok: bool) -> None:
        self.health.record(backend, ok, self.clock.monotonic(), self.clock.wall())

    def watch(self, hosts: Iterable[str]) -> None:
        """Report per-host figures for these hosts (a front end's visible rows) in every
        ``metrics`` event from now on, besides the hosts that changed lately."""
        self.figures.watch(self._backends_of(hosts))

    def _backends_of(self, hosts: Iterable[str]) -> list[str]:
        """The balancer's names for ``hosts`` (a host with slots has one per slot)."""
        backends: list[str] = []
        for name in hosts:
            host = self.progress.hosts_by_name.get(name)
            if host is None:
                continue
            backends.append(name)
            backends.extend(f"{name}@{slot}" for slot in host.slots)
        return backends

    def health_seen(self, host: str) -> float | None:
        """Wall time of ``host``'s last health check by the analyzer (any of its slots)."""
        seen = self.health.last_seen_wall
        known = self.progress.hosts_by_name.get(host)
        if known is None or not known.slots:
            return seen.get(host)
        times = [seen[b] for b in (host, *(f"{host}@{s}" for s in known.slots)) if b in seen]
        return max(times) if times else None

    def forget_failures(self) -> None:
        """The operator accepted a failure: count failing rounds from zero again."""
        self._consecutive.clear()

    # -- the Verify step

    async def hold(self, step: Verify) -> None:
        """Hold for ``step.for_`` seconds while the analyzer judges the upgraded hosts."""
        machine = self.machine
        if machine.promote_all:
            return
        machine.skip.clear()
        await machine.set_state(RolloutState.VERIFYING, f"for {step.for_:g}s")
        rounds = self._rounds
        passes = self._traffic_passes
        skipped = await machine.wait(step.for_, skippable=True)
        if not skipped:
            await self._round_at_hold_end()
        machine.raise_if_interrupted()
        if skipped or machine.promote_all:
            return
        # at least one analysis round must have looked at the traffic since the hold began
        interval = self.fleet.verify.interval
        waited = 0.0
        while self._rounds <= rounds and waited < 3 * interval:
            if await machine.wait(interval / 4, skippable=True):
                break
            waited += interval / 4
        machine.raise_if_interrupted()
        if self._rounds <= rounds and self.fleet.verify.no_data == "fail":
            raise RolloutFailed(f"verification: no analysis round ran in "
                                f"{step.for_ + waited:g}s (no data; no_data = fail)")
        if self.fleet.verify.judge == "statistical":
            await self._until_conclusive(step)
            return
        if self.fleet.verify.no_data == "wait" and not self.traffic.target_at_zero():
            limit = self.clock.monotonic() + 3 * max(step.for_, interval)
            while self._traffic_passes <= passes and self.clock.monotonic() < limit:
                if await machine.wait(interval / 2, skippable=True):
                    return
            if self._traffic_passes <= passes:
                raise RolloutFailed("verification saw no traffic to judge (no_data = wait)")
        await self._until_streaks_end()

    async def recheck(self, hold: float) -> tuple[bool, list[Verdict]]:
        """Judge the target release again for ``hold`` seconds (rounds of ``verify.interval``)
        after its flags went off, apart from the forward run's failure count: cured when no
        round fails and at least one judged traffic (or ``no_data = "pass"``). The first round
        only settles (services read a flag change within their poll interval, so it still
        holds requests served with the flags on) unless it is the only one. Verdicts are
        emitted with ``phase = "flags_off"`` (and ``settling``); returns (cured, the failing
        verdicts)."""
        spec = self.fleet.verify
        interval = max(0.05, min(spec.interval, hold))
        flag_mode = self.plan.rollback_mode == "flag"
        start = self.clock.wall()
        try:        # prime the sources: the first round judges from here on
            await self._collect(await self._window(flag_mode, start, start))
        except ProviderError:
            pass
        end = self.clock.monotonic() + hold
        judged = 0
        failed: list[Verdict] = []
        rounds = 0
        while self.clock.monotonic() < end:
            rounds += 1
            settling = rounds == 1 and hold > interval * 1.5
            await self.clock.sleep(min(interval, max(0.0, end - self.clock.monotonic())))
            verdicts: list[Verdict] = []
            try:
                now = self.clock.wall()
                window = await self._window(flag_mode, start, now)
                start = now
                for metric, samples in await self._collect(window):
                    if isinstance(samples, str):
                        verdicts.append(Verdict(metric.name, "no_data", None, metric.max, 0,
                                                None, samples, metric.kind))
                    else:
                        verdicts.append(threshold_verdict(metric, samples, spec.min_requests))
                if spec.health and self.progress.serving_target:
                    verdicts.append(await self._health_round())
            except Exception as exc:   # analysis that cannot run is "no data", never a pass
                verdicts = [Verdict("analysis", "no_data", None, None, 0, None,
                                    f"analysis could not run: {type(exc).__name__}: {exc}")]
            for verdict in verdicts:
                await self.bus.emit("verdict", **verdict.to_json(), phase="flags_off",
                                    settling=settling)
                if settling:
                    continue
                if verdict.result == "fail" or (verdict.result == "no_data"
                                                and spec.no_data == "fail"):
                    failed.append(verdict)
                elif verdict.result == "pass" and verdict.metric != "health":
                    judged += 1
        return (not failed and (judged > 0 or spec.no_data == "pass")), failed


    async def _until_conclusive(self, step: Verify) -> None:
        """An inconclusive judgement extends the hold (up to ``inconclusive_for``, default
        twice the hold) while rounds pool more samples; then ``inconclusive`` decides:
        ``pause`` for an operator (promote goes on, abort rolls back), ``fail`` or ``pass``
        (said in the log, never silent). A failing judgement (fewer failures in a row than
        the limit) extends it too, until the metric passes again or reaches its limit; one
        still failing when the extension ends fails the rollout: the next step never widens
        the exposure on a failing verdict."""
        spec, machine = self.fleet.verify, self.machine
        if self.traffic.target_at_zero():
            return
        extension = spec.inconclusive_for if spec.inconclusive_for is not None \
            else 2 * max(step.for_, spec.interval)
        limit = self.clock.monotonic() + extension
        while (self.inconclusive() or self.failing() or not self.judgements) and \
                self.clock.monotonic() < limit:
            if await machine.wait(spec.interval / 2, skippable=True):
                machine.raise_if_interrupted()     # a failure ends the wait too: not a skip
                return
            machine.raise_if_interrupted()
        failing = self.failing()
        if failing:      # failing rounds, fewer in a row than the limit: never a pass
            raise RolloutFailed(f"verification: {', '.join(failing)} still failing after "
                                f"{step.for_ + extension:g}s")
        waiting = self.inconclusive() or ([] if self.judgements else ["(no round judged)"])
        if not waiting:
            return
        what = (f"verification inconclusive after {step.for_ + extension:g}s: "
                f"{', '.join(waiting)} (inconclusive = {spec.inconclusive})")
        if spec.inconclusive == "fail":
            raise RolloutFailed(what)
        await self.bus.emit("log", level="warning", message=what)
        if spec.inconclusive == "pause":
            machine.skip.clear()
            await machine.set_state(RolloutState.WAITING,
                                    "inconclusive: promote to go on, abort to roll back")
            await machine.wait(None, skippable=True)
            machine.raise_if_interrupted()

    def streaks(self, keep: Iterable[str] = ()) -> dict[str, int]:
        """The metrics the latest round judged (and those in ``keep``) whose last rounds
        failed, fewer times in a row than ``consecutive_failures`` (threshold judge): a hold
        does not end on them. A counter no round judges any more (``analysis`` after one
        round that could not run) is no streak."""
        limit, latest, kept = self.fleet.verify.consecutive_failures, self._rounds, set(keep)
        return {name: count for name, count in self._consecutive.items()
                if 0 < count < limit and (self._judged_in.get(name) == latest or name in kept)}

    async def _until_streaks_end(self) -> None:
        """A hold that ends with a metric (judged by the latest round) on a failing streak of
        ``k`` rounds (fewer than ``N = consecutive_failures``) goes on judging for at most
        ``N - k`` more rounds (the smallest ``k`` when several fail): a round in which no
        metric is failing any more ends the extension and the rollout goes on; a metric
        reaching ``N`` fails the rollout as ever (the analyzer's ``_judge``); one still
        failing when the rounds are spent (a ``no_data = "wait"`` round neither fails nor
        passes, another metric began failing) fails it too. The next step never widens the
        exposure on a failing verdict. Without a streak at the end of the hold nothing
        waits."""
        spec, machine = self.fleet.verify, self.machine
        streaks = self.streaks()
        if not streaks:
            return
        limit = spec.consecutive_failures
        budget = limit - min(streaks.values())
        why = ", ".join(f"{name} failing {count} of {limit} in a row"
                        for name, count in sorted(streaks.items()))
        await self.bus.emit("log", level="warning",
                            message=f"hold extended: {why}; judging up to {budget} more "
                                    f"round(s): a pass goes on, {limit} in a row fails",
                            hold_extended={"streaks": streaks, "rounds": budget,
                                           "limit": limit})
        await machine.set_state(RolloutState.VERIFYING,
                                f"extended: {why} (up to {budget} more round(s))")
        rounds = self._rounds
        # rounds come every interval; a round that judges nothing (the analyzer paused) does
        # not count, so the time is bounded too
        deadline = self.clock.monotonic() + (budget + 1) * spec.interval
        while self.streaks(streaks) and self._rounds - rounds < budget \
                and self.clock.monotonic() < deadline:
            due = self._due
            wait = spec.interval if due is None else max(0.0, due - self.clock.monotonic())
            if await machine.wait(min(wait, deadline - self.clock.monotonic()),
                                  skippable=True):
                machine.raise_if_interrupted()
                if machine.skip.is_set() or machine.promote_all:
                    return
            await self._round_at_hold_end()
            machine.raise_if_interrupted()
        judged = self._rounds - rounds
        left = self.streaks(streaks)
        if left:
            still = ", ".join(f"{name} ({count} of {limit} in a row)"
                              for name, count in sorted(left.items()))
            raise RolloutFailed(f"verification: {still} still failing after {judged} more "
                                f"round(s) of an extended hold")
        await self.bus.emit("log", level="warning",
                            message=f"hold extension ended: {', '.join(sorted(streaks))} "
                                    f"passing again after {judged} more round(s); going on",
                            hold_extended={"ended": "pass", "rounds": judged})

    async def _round_at_hold_end(self) -> None:
        """A round of analysis due at the very instant a hold ends (or under way) judges the
        end of the hold: wait for its verdict before going on, so that a failure it finds
        stops the rollout before the next step widens the exposure."""
        due = self._due
        if not (self._busy or (due is not None and due <= self.clock.monotonic())):
            return
        waiters = (asyncio.ensure_future(self._ended.wait()),
                   asyncio.ensure_future(self.machine.interrupt.wait()),
                   asyncio.ensure_future(self.clock.sleep(self.fleet.verify.interval)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- the analyzer

    async def analyzer(self) -> None:
        """Analysis rounds every ``verify.interval``, until cancelled."""
        spec = self.fleet.verify
        try:
            while True:
                self._due = self.clock.monotonic() + spec.interval
                await self.clock.sleep(spec.interval)
                self._busy = True
                try:
                    await self._round()
                finally:
                    self._busy = False
                    ended, self._ended = self._ended, asyncio.Event()
                    ended.set()
        finally:
            self._due = None

    async def _window(self, flag_mode: bool, start: float, end: float) -> MetricWindow:
        """Which backends (or pools) are the canary and the baseline this round."""
        target = self.fleet.releases.target
        current = self.fleet.releases.current
        if flag_mode:
            # a feature goes on across the fleet: judge all traffic (no old pool)
            state = await self.balancer.state()
            new = tuple(sorted(n for n, b in state.backends.items() if b.state == "ready"))
            return MetricWindow(start, end, new, (), target, current)
        if self._pools is not None and all(m.source == "balancer" for m in self.metrics):
            # pool counters need no read of every backend's state (big fleets)
            return MetricWindow(start, end, tuple(sorted(self.progress.serving_target)), (),
                                target, current, canary_pool=target, baseline_pool=current)
        state = await self.balancer.state()
        new = tuple(sorted(n for n, b in state.backends.items()
                           if b.pool == target and b.state == "ready"))
        old = tuple(sorted(n for n, b in state.backends.items()
                           if b.pool == current and b.state == "ready"))
        pools = self._pools is not None
        return MetricWindow(start, end, new, old, target, current,
                            canary_pool=target if pools else None,
                            baseline_pool=current if pools else None)

    async def _collect(self, window: MetricWindow
                       ) -> list[tuple[MetricSpec, MetricSamples | str]]:
        """Each metric's samples over ``window``, or why it has none (a source's error)."""
        async def one(metric: MetricSpec) -> tuple[MetricSpec, MetricSamples | str]:
            source = self.sources.get(metric.name)
            if source is None:
                return metric, f"no source {metric.source!r} was opened for it"
            try:
                return metric, await source.collect(metric, window)
            except ProviderError as exc:
                return metric, f"{metric.source}: {exc}"

        return list(await asyncio.gather(*(one(m) for m in self.metrics)))

    async def _round(self) -> None:
        """One round of analysis: the metrics of the canary against the baseline since the
        previous round (the first round after a pause in the analysis only reads), and a
        health sample."""
        spec = self.fleet.verify
        machine, progress = self.machine, self.progress
        if machine.promote_all or machine.state is RolloutState.ROLLING_BACK or machine.failure:
            self._window_start = None
            return
        flag_mode = self.plan.rollback_mode == "flag"
        if progress.maintenance_on or not (progress.serving_target or
                                           (flag_mode and progress.flags_on)):
            self._window_start = None
            return
        now = self.clock.wall()
        start = self._window_start
        try:
            window = await self._window(flag_mode, now if start is None else start, now)
            collected = await self._collect(window)
        except ProviderError as exc:
            await self.bus.emit("log", level="warning", message=f"analysis: {exc}")
            return
        verdicts: list[Verdict] = []
        try:
            if start is not None and not self.traffic.target_at_zero():
                if spec.judge == "statistical":
                    await self._statistical_round(collected, window)
                    collected = []
                for metric, samples in collected:
                    if isinstance(samples, str):
                        verdicts.append(Verdict(metric.name, "no_data", None, metric.max, 0,
                                                None, samples, metric.kind))
                    else:
                        verdicts.append(threshold_verdict(metric, samples, spec.min_requests))
            self._window_start = now
            if spec.health and progress.serving_target:
                verdicts.append(await self._health_round())
        except Exception as exc:   # analysis that cannot run is "no data", never a pass
            self._window_start = None
            verdicts = [Verdict("analysis", "no_data", None, None, 0, None,
                                f"analysis could not run: {type(exc).__name__}: {exc}")]
        if not verdicts and not self._judged_now:
            return
        self._judged_now = False
        self._rounds += 1
        for verdict in verdicts:
            await self._judge(verdict, **(self.health_coverage if verdict.metric == "health"
                                          else {}))

    _judged_now = False

    async def _statistical_round(self, collected: list[tuple[MetricSpec, MetricSamples | str]],
                                 window: MetricWindow) -> None:
        """Judge each metric on its samples pooled over the last ``window`` rounds; emit each
        verdict with its statistics, this round's raw samples and the round's score."""
        judgements: list[tuple[MetricJudgement, MetricSamples | str]] = []
        for metric, samples in collected:
            pool = self._pooled[metric.name]
            if not isinstance(samples, str):
                pool.append(samples)
            judgement = judge(metric, *pooled(pool))
            if isinstance(samples, str) and not pool:
                judgement = _with_reason(judgement, samples)
            self.judgements[metric.name] = judgement
            judgements.append((judgement, samples))
        self.score = round_score([j for j, _ in judgements])
        self._judged_now = True
        for judgement, samples in judgements:
            await self._judge_statistical(judgement, samples, window)

    async def _judge_statistical(self, judgement: MetricJudgement,
                                 samples: MetricSamples | str, window: MetricWindow) -> None:
        spec = self.fleet.verify
        count = self._consecutive.get(judgement.metric, 0)
        if not judgement.dry_run:
            if judgement.result == "fail":
                count += 1
            elif judgement.result == "pass":
                count = 0
                self._traffic_passes += 1
            self._consecutive[judgement.metric] = count
        limit = 1 if judgement.critical else spec.consecutive_failures
        kinds = {m.name: m.kind for m in self.metrics}
        verdict = Verdict(judgement.metric, judgement.result, judgement.value,
                          judgement.thresholds.get("max"), judgement.samples,
                          judgement.baseline, judgement.reason, kinds.get(judgement.metric))
        self.last_verdicts[judgement.metric] = verdict
        raw: dict[str, object] = {"error": samples} if isinstance(samples, str) else {
            "canary": list(samples.canary[:RAW_LIMIT]),
            "baseline": list(samples.baseline[:RAW_LIMIT]),
            "canary_counts": samples.canary_counts,
            "baseline_counts": samples.baseline_counts, "detail": samples.detail}
        score, band = self.score
        data: dict[str, Any] = {
            **verdict.to_json(), "consecutive": count, "limit": limit, "judge": "statistical",
            "stats": judgement.to_json(),
            "window": {"start": window.start, "end": window.end,
                       "canary": len(window.canary), "baseline": len(window.baseline)},
            "score": score, "band": band}
        self.verdict_data[judgement.metric] = data
        await self.bus.emit("verdict", **data, raw=raw)
        if not judgement.dry_run and count >= limit and self.machine.failure is None:
            reason = f"analysis: {verdict.describe()} ({count} in a row" + \
                (", critical)" if judgement.critical else ")")
            await self.bus.emit("analysis_failed", metric=verdict.metric, detail=reason)
            self.machine.fail(reason)

    def failing(self) -> list[str]:
        """The deciding metrics whose last judgement failed, fewer times in a row than their
        limit (statistical judge): a hold does not end on them."""
        return [name for name, j in self.judgements.items()
                if j.decides and j.result == "fail"]

    def inconclusive(self) -> list[str]:
        """The deciding metrics without a conclusion (statistical judge); a failing one is
        :meth:`failing`'s, and keeps the hold too (a hold never ends on a failing verdict)."""
        return [name for name, j in self.judgements.items()
                if j.decides and j.result in ("inconclusive", "no_data")]

    async def _health_round(self) -> Verdict:
        """Check the sample :class:`HealthSampler` picks (bounded), not every serving host."""
        serving = self.progress.serving_target
        backends = self.health.pick(serving)

        async def one(backend: str) -> tuple[str, bool]:
            return backend, await self.traffic.probe(backend)

        results = dict(await asyncio.gather(*(one(b) for b in backends)))
        now, wall = self.clock.monotonic(), self.clock.wall()
        for backend, ok in results.items():
            self.health.record(backend, ok, now, wall)
        oldest = self.health.oldest(serving)
        oldest_age = round(now - oldest[1], 3) if oldest is not None else None
        self.health_coverage = {"checked": len(results), "serving": len(serving),
                                "oldest_seen": oldest[0] if oldest is not None else None,
                                "oldest_seen_s": oldest_age}
        return health_verdict(results, serving=len(serving),
                              oldest=(oldest[0], oldest_age) if oldest is not None and
                              oldest_age is not None else None)

    async def _judge(self, verdict: Verdict, **extra: object) -> None:
        spec = self.fleet.verify
        count = self._consecutive.get(verdict.metric, 0)
        if verdict.result == "fail" or (verdict.result == "no_data" and spec.no_data == "fail"):
            count += 1
        elif verdict.result == "pass" or (verdict.result == "no_data" and spec.no_data == "pass"):
            count = 0
            if verdict.result == "pass" and verdict.metric != "health":
                self._traffic_passes += 1
        self._consecutive[verdict.metric] = count
        self._judged_in[verdict.metric] = self._rounds
        self.last_verdicts[verdict.metric] = verdict
        data = {**verdict.to_json(), "consecutive": count, "limit": spec.consecutive_failures,
                **extra}
        self.verdict_data[verdict.metric] = data
        await self.bus.emit("verdict", **data)
        if count >= spec.consecutive_failures and self.machine.failure is None:
            reason = f"analysis: {verdict.describe()} ({count} in a row)"
            await self.bus.emit("analysis_failed", metric=verdict.metric, detail=reason)
            self.machine.fail(reason)

    # -- the monitor

    async def monitor(self, interval: float, host_limit: int) -> None:
        """Traffic figures for front ends every ``interval`` seconds: per pool always; per
        host for the backends that changed in the last ``RECENT_CHANGE_S`` seconds (at least
        2.5 intervals) and those
        a front end watches (:meth:`watch`), at most ``host_limit``. Read-only; never judges.

        A balancer with the optional summaries (``PoolStatsReader``, ``BackendStatsReader``)
        is read through them: no copy of its whole table each interval."""
        self.figures.limit = host_limit
        self.figures.recent = max(RECENT_CHANGE_S, 2.5 * interval)
        previous: dict[str, BackendStats] = {}
        previous_pools: Counters | None = None
        before = self.clock.monotonic()
        while True:
            await self.clock.sleep(interval)
            now = self.clock.monotonic()
            seconds = now - before
            before = now
            wanted = self.figures.backends(now)
            try:
                pools_now, members, stats = await self._read_figures(wanted)
            except ProviderError:
                previous, previous_pools = {}, None
                continue
            pools: dict[str, object] = {}
            hosts: dict[str, object] = {}
            if pools_now is not None and previous_pools is not None:
                pools = {p: counter_figures(previous_pools.get(p), counts, seconds)
                         for p, counts in pools_now.items()}
            if members is not None and previous:
                pools = {p: traffic_figures(previous, stats, names, seconds)
                         for p, names in members.items()}
            # a backend's first reading has nothing to compare with: figures from the next
            for name in wanted:
                now_stats, before_stats = stats.get(name), previous.get(name)
                if now_stats is None or before_stats is None:
                    continue
                hosts[name] = (idle_figures(seconds) if now_stats is before_stats or
                               now_stats == before_stats else
                               counter_figures(before_stats, now_stats, seconds))
            previous = dict(stats) if members is not None else \
                {n: stats[n] for n in wanted if n in stats}
            previous_pools = pools_now
            if pools or hosts:
                self.last_metrics = {"interval_s": round(seconds, 3), "pools": pools,
                                     "hosts": hosts}
                if not self.figures.always:
                    # figures for some backends only: not the pools' sum (front ends)
                    self.last_metrics["hosts_partial"] = True
                await self.bus.emit("metrics", **self.last_metrics)

    async def _read_figures(self, wanted: list[str]) -> tuple[
            Counters | None, dict[str, list[str]] | None, Counters]:
        """Pool counters (None without ``PoolStatsReader``), the pools' members when pools
        must be added up from every backend (else None), and the backends' counters."""
        balancer = self.balancer
        if self._pools is not None:
            pools = await self._pools.pool_stats()
            if not wanted:
                return pools, None, {}
            if self._some is not None:
                return pools, None, await self._some.backend_stats(wanted)
            if len(self.fleet.hosts) > self.figures.limit:
                return pools, None, {}     # no per-host figures at the price of a full read
            return pools, None, await balancer.stats()
        # no pool counters: add the pools up from every backend (a full read)
        state = await balancer.state()
        members: dict[str, list[str]] = {}
        for name, backend in state.backends.items():
            members.setdefault(backend.pool, []).append(name)
        return None, members, await balancer.stats()
