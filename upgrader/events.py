"""Events: what the engine announces, to the journal, front ends, plugins and notifiers.

An event is plain data with a ``kind`` and a flat ``data`` mapping of JSON values.
Kinds (``data`` keys in brackets; every event also has kind, ts, rollout and seq):

- ``rollout_started`` [fleet, strategy, current, target, hosts, estimated_s,
  rollback_estimated_s, resumed]
- ``state`` [state, reason]                 RUNNING, PAUSING, PAUSED, WAITING, VERIFYING,
  ROLLING BACK, ...  An operator's pause is PAUSING until the next step boundary (or at once
  inside a timed pause, a verification hold or a window hold, whose countdown then freezes),
  then PAUSED until resumed
- ``step_started`` [index, step, description]; ``step_finished`` [index, step]
- ``pause_started`` [index, duration]       duration None: until promoted
- ``slots`` [live, original]                blue-green: each host's live slot at the start
- ``host_phase`` [host, phase, release, slot, mode]   mode: upgrade | rollback | turn_down
- ``host_done`` [host, release, slot, mode]  mode: upgrade | rollback | prepare | swap |
  turn_down | shutdown | ok (found on the target release and in service before the first step)
- ``inventory`` [hosts, done, target, nothing_to_do]   what the fleet runs, read before the
  first step (not on resume: reconcile does it)
- ``host_failed`` [host, error, mode]
- ``snapshot_taken`` [host, snapshot]
- ``traffic`` [split, routes, maintenance, ready_by_pool]   read back after every balancer change
- ``verdict`` [metric, result, value, threshold, samples, baseline, detail, consecutive, limit]
  (system-test verdicts have no consecutive/limit)
- ``analysis_failed`` [metric, detail]
- ``metrics`` [interval_s, pools, hosts]   traffic per pool and per host: requests, rps,
  error_rate, p95 (not journaled)
- ``control`` [action] (+ rollback for abort)   pause, resume, promote, promote_all, abort
- ``rollback_started`` [reason, hosts, estimated_s, mode]
- ``frozen`` [reason, choices, resumed]   every change stopped (``on_failure = "freeze"``, or a
  schema change that cannot be reverted); ``choices``: what resume / rollback / stop would do
- ``rollout_finished`` [outcome, hosts, duration_s, error]
- ``log`` [level, message] (+ hold_extended: a Verify hold extended on a failing streak)
- ``reconcile`` [about, subject, journal, real, action, detail, (unsafe)]   on resume, one per
  difference between the journal and the real fleet, before its repair
- ``window_closed`` [reason, until, teams]   outside the deploy window: PAUSED until ``until``
  (ISO time; None: no opening within 400 days); ``teams`` on duty then
- ``window_wait`` [reason, until, teams, wave, need_s]   a wave waits (WAITING) for a window
  it fits in
- ``window_opened`` [teams, overridden]; ``window_override`` [reason, open]
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RolloutState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    #: a pause asked for: the rollout goes on to the next step boundary, then PAUSED
    PAUSING = "PAUSING"
    PAUSED = "PAUSED"
    WAITING = "WAITING"
    VERIFYING = "VERIFYING"
    ROLLING_BACK = "ROLLING BACK"
    COMPLETED = "COMPLETED"
    ROLLED_BACK = "ROLLED BACK"
    FAILED = "FAILED"
    FROZEN = "FROZEN"
    SHUT_DOWN = "SHUT DOWN"
    #: a failed release whose flags were turned off, and that verified without them: the
    #: hosts keep the release ("flags off, release kept"); the operator decides
    FLAGS_OFF = "FLAGS OFF"


class Outcome(str, enum.Enum):
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    FROZEN = "frozen"
    SHUT_DOWN = "shut_down"
    FLAGS_OFF = "flags_off"

    @property
    def exit_code(self) -> int:
        return 0 if self is Outcome.COMPLETED else 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """One analysis result that explains itself."""

    metric: str            # error_rate | p95_latency | health
    result: str            # pass | fail | no_data
    value: float | None
    threshold: float | None
    samples: int
    baseline: float | None = None
    detail: str = ""
    metric_kind: str | None = None   # proportion | value ([[verify.metrics]] kind)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "result": self.result, "value": self.value,
                "threshold": self.threshold, "samples": self.samples,
                "baseline": self.baseline, "detail": self.detail,
                "metric_kind": self.metric_kind}

    def describe(self) -> str:
        def fmt(v: float | None) -> str:
            if v is None:
                return "n/a"
            if self.metric == "error_rate" or self.metric_kind == "proportion":
                return f"{v:.2f}%"      # a proportion's figures are percentages
            if self.metric == "p95_latency":
                return f"{v * 1000:.0f}ms"
            return f"{v:g}"
        text = (f"{self.metric} {self.result.upper()}: {fmt(self.value)} "
                f"(limit {fmt(self.threshold)}, {self.samples} samples, "
                f"old release {fmt(self.baseline)})")
        return text + (f" - {self.detail}" if self.detail else "")


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    ts: float
    rollout: str
    seq: int
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ts": round(self.ts, 3), "rollout": self.rollout,
                "seq": self.seq, **self.data}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False, default=str)
