"""Replay of a past rollout's verdicts through another verify policy (``upgrader analysis
replay``, issue 14): pure. The statistical judge journals each round's raw samples with every
verdict (``raw``: the canary's and the baseline's observations and counts); this module feeds
them, round by round, to the judge a ``VerifySpec`` configures, as the engine would have
(samples pooled over the policy's ``window`` rounds, failing rounds counted against
``consecutive_failures``, ``critical`` at the first, ``dry_run`` never deciding), and sets what
it would have decided next to what was decided.

A policy metric is matched by name with the recorded ones: the samples recorded under that
name are judged again (its source and query are not read again). A recorded round whose
source could not be read (``raw.error``) adds no samples, as in the engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..model import MetricSpec, VerifySpec, verify_metrics
from ..providers.base import MetricSamples
from .analysis import threshold_verdict
from .judge import judge, round_score
from .verification import pooled

#: verdicts of one round are journaled within this many seconds of each other
ROUND_GAP_S = 0.5


@dataclass(frozen=True, slots=True)
class ReplayedRound:
    """One recorded round: the verdicts decided then and the ones the policy gives."""

    number: int
    at: float                                  # seconds since the rollout began
    decided: tuple[dict[str, Any], ...]        # the journaled verdicts' data
    replayed: tuple[dict[str, Any], ...]       # per policy metric: result, reason, ...
    score: float | None = None                 # the replayed round's score and band
    band: str = ""
    #: the metric whose failing rounds reach their limit here (the rollout would stop)
    would_fail: str | None = None
    decided_fail: str | None = None
    #: the replayed policy stopped the rollout at an earlier round (judged all the same)
    stopped: bool = False

    @property
    def decided_score(self) -> tuple[float | None, str]:
        for data in self.decided:
            if data.get("band"):
                score = data.get("score")
                return (float(score) if isinstance(score, (int, float)) else None,
                        str(data["band"]))
        return None, ""

    def differs(self) -> bool:
        """Some metric judged both then and now has another result (or only one side stops
        the rollout here)."""
        then = {str(d.get("metric")): d.get("result") for d in self.decided}
        return any(r["metric"] in then and then[r["metric"]] != r["result"]
                   for r in self.replayed) or \
            (self.would_fail is None) != (self.decided_fail is None)

    def to_json(self) -> dict[str, Any]:
        decided_score, decided_band = self.decided_score
        return {"round": self.number, "at": round(self.at, 3),
                "decided": [{k: d.get(k) for k in ("metric", "result", "value", "samples",
                                                    "consecutive", "limit", "detail")}
                            for d in self.decided],
                "decided_score": decided_score, "decided_band": decided_band or None,
                "decided_fail": self.decided_fail,
                "replayed": list(self.replayed), "score": self.score,
                "band": self.band or None, "would_fail": self.would_fail,
                "after_stop": self.stopped,
                "differs": self.differs()}


@dataclass(frozen=True, slots=True)
class Replay:
    """Every recorded round replayed, and what the two policies concluded."""

    rounds: tuple[ReplayedRound, ...]
    judge: str
    metrics: tuple[str, ...]
    #: policy metrics with no recorded samples (judged without data every round)
    unrecorded: tuple[str, ...] = ()
    recorded: tuple[str, ...] = ()

    def first(self, what: str) -> int | None:
        """The first round the replayed (``would_fail``/``would_pass``) or the recorded
        (``decided_fail``/``decided_pass``) policy stops at; None: never."""
        for r in self.rounds:
            if what == "would_fail" and r.would_fail is not None:
                return r.number
            if what == "decided_fail" and r.decided_fail is not None:
                return r.number
            if what == "would_pass" and r.replayed and all(
                    x["result"] == "pass" for x in r.replayed if not x.get("dry_run")):
                return r.number
            if what == "decided_pass" and r.decided and all(
                    d.get("result") == "pass" for d in r.decided
                    if not (d.get("stats") or {}).get("dry_run")):
                return r.number
        return None

    def summary(self) -> dict[str, Any]:
        return {"rounds": len(self.rounds), "judge": self.judge,
                "metrics": list(self.metrics), "unrecorded": list(self.unrecorded),
                "decided_fail": self.first("decided_fail"),
                "would_fail": self.first("would_fail"),
                "decided_pass": self.first("decided_pass"),
                "would_pass": self.first("would_pass"),
                "differences": [r.number for r in self.rounds if r.differs()]}


def recorded_rounds(verdicts: Iterable[tuple[float, Mapping[str, Any]]]) -> list[
        tuple[float, list[dict[str, Any]]]]:
    """The journaled verdicts (time, data) that hold raw samples, grouped into rounds (the
    verdicts of one round are emitted together). Health verdicts and the threshold judge's
    (no raw samples) are left out."""
    rounds: list[tuple[float, list[dict[str, Any]]]] = []
    for ts, data in verdicts:
        if not isinstance(data.get("raw"), dict) or data.get("phase"):
            continue
        if rounds and abs(ts - rounds[-1][0]) < ROUND_GAP_S and \
                all(d.get("metric") != data.get("metric") for d in rounds[-1][1]):
            rounds[-1][1].append(dict(data))
        else:
            rounds.append((ts, [dict(data)]))
    return rounds


def samples_of(raw: Mapping[str, Any]) -> MetricSamples | str:
    """A journaled ``raw`` back into :class:`MetricSamples` (its error text, when the source
    could not be read that round)."""
    if raw.get("error"):
        return str(raw["error"])

    def counts(value: Any) -> tuple[int, int] | None:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return int(value[0]), int(value[1])
        return None

    return MetricSamples(canary=tuple(float(v) for v in raw.get("canary") or ()),
                         baseline=tuple(float(v) for v in raw.get("baseline") or ()),
                         canary_counts=counts(raw.get("canary_counts")),
                         baseline_counts=counts(raw.get("baseline_counts")),
                         detail=str(raw.get("detail") or ""))


def replay(verdicts: Iterable[tuple[float, Mapping[str, Any]]], started: float,
           policy: VerifySpec) -> Replay:
    """What ``policy`` would have decided on the recorded rounds of ``verdicts`` (the
    journaled verdict events: time, data), the rollout having begun at ``started``."""
    metrics = verify_metrics(policy)
    rounds = recorded_rounds(verdicts)
    recorded = sorted({str(d.get("metric")) for _, group in rounds for d in group})
    unrecorded = tuple(m.name for m in metrics if m.name not in recorded)
    pools: dict[str, deque[MetricSamples]] = {m.name: deque(maxlen=policy.window)
                                              for m in metrics}
    consecutive: dict[str, int] = {}
    out: list[ReplayedRound] = []
    stopped = False
    for number, (ts, group) in enumerate(rounds, 1):
        by_name = {str(d.get("metric")): d for d in group}
        replayed: list[dict[str, Any]] = []
        judgements = []
        would_fail: str | None = None
        for metric in metrics:
            data = by_name.get(metric.name)
            samples: MetricSamples | str = (samples_of(data["raw"]) if data is not None else
                                            "no samples recorded under this name")
            if policy.judge == "statistical":
                entry, judgement = _statistical(metric, samples, pools[metric.name])
                judgements.append(judgement)
            else:
                entry = _threshold(metric, samples, policy)
            count = consecutive.get(metric.name, 0)
            limit = 1 if metric.critical and policy.judge == "statistical" \
                else policy.consecutive_failures
            result = entry["result"]
            deciding = policy.judge == "threshold" or not metric.dry_run
            if deciding:
                if result == "fail" or (result == "no_data" and policy.judge == "threshold"
                                        and policy.no_data == "fail"):
                    count += 1
                elif result == "pass" or (result == "no_data" and policy.judge == "threshold"
                                          and policy.no_data == "pass"):
                    count = 0
                consecutive[metric.name] = count
            entry.update(consecutive=count, limit=limit, kind=metric.kind)
            if deciding and count >= limit and would_fail is None and not stopped:
                would_fail = metric.name
            replayed.append(entry)
        score, band = round_score(judgements) if policy.judge == "statistical" else (None, "")
        decided_fail = next((str(d.get("metric")) for d in group
                             if d.get("result") == "fail" and
                             not (d.get("stats") or {}).get("dry_run") and
                             isinstance(d.get("consecutive"), int) and
                             isinstance(d.get("limit"), int) and
                             d["consecutive"] >= d["limit"]), None)
        out.append(ReplayedRound(number, ts - started, tuple(group), tuple(replayed), score,
                                 band, would_fail, decided_fail, stopped))
        stopped = stopped or would_fail is not None
    return Replay(tuple(out), policy.judge, tuple(m.name for m in metrics), unrecorded,
                  tuple(recorded))


def _statistical(metric: MetricSpec, samples: MetricSamples | str,
                 pool: deque[MetricSamples]) -> tuple[dict[str, Any], Any]:
    if not isinstance(samples, str):
        pool.append(samples)
    judgement = judge(metric, *pooled(pool))
    entry = judgement.to_json()
    if isinstance(samples, str) and not pool:
        entry["reason"] = f"{entry['reason']}: {samples}"
    return entry, judgement


def _threshold(metric: MetricSpec, samples: MetricSamples | str,
               policy: VerifySpec) -> dict[str, Any]:
    if isinstance(samples, str):
        return {"metric": metric.name, "result": "no_data", "value": None,
                "threshold": metric.max, "samples": 0, "baseline": None, "reason": samples,
                "dry_run": False}
    verdict = threshold_verdict(metric, samples, policy.min_requests)
    entry = verdict.to_json()
    entry["reason"] = entry.pop("detail")
    entry["dry_run"] = False
    return entry
