"""What the TUI shows, as plain data: a mirror of the handle's ``snapshot()``, kept current by
events between snapshots. It decides nothing about the rollout; every figure comes from the
engine (snapshot or event), and a periodic snapshot corrects whatever events did not say."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events import Event
from ..units import format_duration

if TYPE_CHECKING:
    from .messages import Batch

FINAL_STATES = frozenset({"COMPLETED", "ROLLED BACK", "FAILED", "FROZEN", "SHUT DOWN",
                          "FLAGS OFF"})
#: states in which the rollout's clock runs
MOVING_STATES = frozenset({"RUNNING", "PAUSING", "PAUSED", "WAITING", "VERIFYING", "ROLLING BACK"})
#: phases of the per-host procedure: the host is between releases
BUSY_PHASES = frozenset({"snapshot", "draining", "stopping", "installing", "starting",
                         "checking", "enabling"})
SERIES_POINTS = 240
LOG_EVENTS = 5000


@dataclass(slots=True)
class HostRow:
    """One line of the fleet table."""

    name: str
    release: str | None = None
    phase: str = "pending"
    slot: str | None = None
    healthy: bool | None = None
    error: str | None = None
    #: the release the host is being moved to, while its procedure runs
    heading: str | None = None
    mode: str = ""
    #: bumped on every change (the table caches rendered lines by it)
    version: int = 0


@dataclass(frozen=True, slots=True)
class HostFigures:
    """A host's traffic over the last ``metrics`` interval (all its backends together)."""

    rps: float | None
    error_rate: float | None
    p95: float | None
    share: float | None


NO_FIGURES = HostFigures(None, None, None, None)


@dataclass(frozen=True, slots=True)
class TrafficPoint:
    """One ``metrics`` reading of the two releases' pools."""

    ts: float
    share_new: float | None
    error_new: float | None
    error_old: float | None
    p95_new: float | None
    p95_old: float | None


def as_clock(clock: Any) -> Callable[[], float]:
    """A callable giving monotonic seconds: ``clock`` itself, its ``monotonic`` method (an
    ``upgrader.clock.Clock``), or ``time.monotonic``."""
    if clock is None:
        import time

        return time.monotonic
    monotonic = getattr(clock, "monotonic", None)
    chosen: Callable[[], float] = monotonic if callable(monotonic) else clock
    return chosen


class RolloutView:
    """The picture the screens render. Owned by the app; screens only read it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.rollout = ""
        self.fleet = ""
        self.strategy = ""
        self.current = ""
        self.target = ""
        self.state = "PENDING"
        self.reason = ""
        self.step: int | None = None
        self.plan: list[Mapping[str, Any]] = []
        self.done: set[int] = set()
        self.hosts: dict[str, HostRow] = {}
        self.order: list[str] = []
        #: bumped when rows are added (the table re-measures)
        self.rows_version = 0
        self.on_target = 0
        self.hosts_total = 0
        self.verdicts: dict[str, dict[str, Any]] = {}
        self.analysis_failure: str | None = None
        self.analysis_failure_metric: str | None = None
        self.traffic: dict[str, Any] = {}
        self.pools: dict[str, Any] = {}
        self.points: deque[TrafficPoint] = deque(maxlen=SERIES_POINTS)
        self.estimated_s: float | None = None
        self.remaining_s: float | None = None
        self.rollback_estimated_s: float | None = None
        #: expected roll-back time for the hosts touched so far (None: not known)
        self.rollback_now_s: float | None = None
        self.elapsed_s = 0.0
        self.wait_remaining_s: float | None = None
        self.synced_at = self.wait_synced_at = clock()
        self.started_ts: float | None = None
        self.pause_requested = False
        #: the deploy window (Engine.window_info(); None: the fleet has none), as of synced_at
        self.window: dict[str, Any] | None = None
        self.rollback: dict[str, Any] | None = None
        #: the roll-back window the completed rollout opened (its ``rollback_window`` event:
        #: previous, release, closes_at, releases, rollback_s); None: none
        self.rollback_window: dict[str, Any] | None = None
        self.finished: dict[str, Any] | None = None
        self.log: deque[Event] = deque(maxlen=LOG_EVENTS)
        #: the latest per-backend figures, as the engine sent them; a host's figures are
        #: worked out when its line is drawn (``figures``), so a reading costs O(1), not O(hosts)
        self.backend_figures: Mapping[str, Mapping[str, Any]] = {}
        #: bumped with every reading (the table caches lines by it)
        self.figures_version = 0
        self._figures_total: float | None = None
        self._slot_backends: dict[str, list[str]] | None = None
        #: the host entries of the last snapshot, to find what changed since at C speed
        self._snap_hosts: dict[str, Mapping[str, Any]] = {}

    # ------------------------------------------------------------------ derived figures

    @property
    def is_finished(self) -> bool:
        return self.finished is not None or self.state in FINAL_STATES

    @property
    def is_paused(self) -> bool:
        """Paused (PAUSED), or a pause asked for that the engine has not reached yet (PAUSING,
        or the request sent and its state not back yet)."""
        return self.state in ("PAUSING", "PAUSED") or (self.pause_requested
                                                       and not self.is_finished)

    def elapsed(self) -> float:
        if self.finished is not None and self.finished.get("duration_s") is not None:
            return float(self.finished["duration_s"])
        if self.state in MOVING_STATES:
            return self.elapsed_s + max(0.0, self.clock() - self.synced_at)
        return self.elapsed_s

    def wait_remaining(self) -> float | None:
        """Seconds left of the current timed pause or verification hold (None: none)."""
        if self.wait_remaining_s is None or self.state not in ("WAITING", "VERIFYING", "PAUSED"):
            return None
        if self.state == "PAUSED":       # an operator's pause freezes the countdown
            return max(0.0, self.wait_remaining_s)
        return max(0.0, self.wait_remaining_s - max(0.0, self.clock() - self.wait_synced_at))

    def window_countdown(self, key: str) -> float | None:
        """Seconds left of the window's ``key`` (``resumes_in_s``, ``opens_in_s``,
        ``closes_in_s``), counted down from the last snapshot."""
        value = (self.window or {}).get(key)
        if value is None:
            return None
        return max(0.0, float(value) - max(0.0, self.clock() - self.synced_at))

    def remaining(self) -> float | None:
        """The engine's estimate of what is left, less what the current wait has used."""
        if self.remaining_s is None:
            return None
        left = float(self.remaining_s)
        wait = self.wait_remaining()
        if wait is not None and self.step is not None and 0 <= self.step < len(self.plan):
            duration = self.plan[self.step].get("duration_s")
            if duration:
                left -= float(duration) - min(wait, float(duration))
        return max(0.0, left)

    def traffic_share(self) -> tuple[float | None, str]:
        """Percent of traffic on the target release, and where the figure comes from."""
        if self.points and self.points[-1].share_new is not None:
            return self.points[-1].share_new, "measured"
        split = self.traffic.get("split")
        if split:
            total = sum(float(v) for v in split.values())
            return (100.0 * float(split.get(self.target, 0.0)) / total if total else 0.0), "split"
        ready = self.traffic.get("ready_by_pool")
        if ready:
            total = sum(ready.values())
            return (100.0 * ready.get(self.target, 0) / total if total else 0.0), "ready backends"
        if self.hosts_total:
            return 100.0 * min(self.on_target, self.hosts_total) / self.hosts_total, "hosts"
        return None, ""

    def failing(self) -> bool:
        """The latest verdict of some metric counted as a failure (or analysis gave up)."""
        return bool(self.analysis_failure) or any(
            v.get("result") == "fail" or (v.get("consecutive") or 0) > 0
            for v in self.verdicts.values())

    def busy_hosts(self) -> int:
        return sum(1 for row in self.hosts.values() if row.phase in BUSY_PHASES)

    # ------------------------------------------------------------------ snapshot

    def load_snapshot(self, snap: Mapping[str, Any]) -> set[str]:
        """Take the handle's snapshot as the truth; return the hosts whose row changed."""
        self.rollout = snap.get("rollout") or self.rollout
        self.fleet = snap.get("fleet") or self.fleet
        self.strategy = snap.get("strategy") or self.strategy
        self.current = snap.get("current") or self.current
        self.target = snap.get("target") or self.target
        state = snap.get("state") or self.state
        if state != self.state and state in FINAL_STATES | {"ROLLING BACK"}:
            self.pause_requested = False
        self.state, self.reason = state, snap.get("reason", self.reason) or ""
        self.step = snap.get("step")
        plan = snap.get("plan")
        if plan is not None and (len(plan) != len(self.plan) or not self.plan):
            self.plan = list(plan)
        self.done = set(snap.get("done_steps") or ())
        self.estimated_s = snap.get("estimated_s", self.estimated_s)
        self.remaining_s = snap.get("remaining_s", self.remaining_s)
        self.rollback_estimated_s = snap.get("rollback_estimated_s", self.rollback_estimated_s)
        self.rollback_now_s = snap.get("rollback_now_s", self.rollback_now_s)
        self.elapsed_s = float(snap.get("elapsed_s") or 0.0)
        self.wait_remaining_s = snap.get("wait_remaining_s")
        self.window = snap.get("window")
        self.rollback_window = snap.get("rollback_window") or self.rollback_window
        self.synced_at = self.wait_synced_at = self.clock()
        self.hosts_total = int(snap.get("hosts_total") or 0)
        changed = self._load_hosts(snap.get("hosts") or {})
        self.on_target = int(snap.get("hosts_on_target", self.on_target) or 0)
        for metric, verdict in (snap.get("verdicts") or {}).items():
            known = self.verdicts.get(metric)
            if known is None or (known.get("result"), known.get("value")) != (
                    verdict.get("result"), verdict.get("value")):
                self.verdicts[metric] = dict(verdict)
        if snap.get("traffic"):
            self.traffic = dict(snap["traffic"])
        metrics = snap.get("metrics")
        if metrics and not self.pools:
            self._apply_metrics(metrics)
        return changed

    def _load_hosts(self, hosts: Mapping[str, Mapping[str, Any]]) -> set[str]:
        changed: set[str] = set()
        rows = self.hosts
        last = self._snap_hosts
        for name, data in hosts.items():
            if last.get(name) == data:
                continue
            # a copy: a handle may update its snapshot's entries in place
            last[name] = dict(data)
            row = rows.get(name)
            if row is None:
                row = self._add_row(name)
            phase = data.get("phase", row.phase)
            heading = row.heading if phase in BUSY_PHASES else None
            values = (data.get("release"), phase, data.get("slot"), data.get("healthy"),
                      data.get("error"), heading)
            if values != (row.release, row.phase, row.slot, row.healthy, row.error, row.heading):
                (row.release, row.phase, row.slot, row.healthy, row.error,
                 row.heading) = values
                row.version += 1
                changed.add(name)
        return changed

    def _add_row(self, name: str) -> HostRow:
        row = HostRow(name)
        self.hosts[name] = row
        self.order.append(name)
        self.rows_version += 1
        return row

    # ------------------------------------------------------------------ events

    def apply(self, batch: Batch) -> set[str]:
        """Apply a batch of events; return the hosts whose row changed."""
        for event in batch.events:
            self._apply_event(event)
        changed = set()
        target = self.target
        snap_hosts = self._snap_hosts
        for name, fields in batch.hosts.items():
            # compare this host afresh at the next snapshot
            snap_hosts.pop(name, None)
            row = self.hosts.get(name) or self._add_row(name)
            before = row.release
            for key, value in fields.items():
                setattr(row, key, value)
            if row.phase not in BUSY_PHASES:
                row.heading = None
            if before != row.release and target:
                self.on_target += (row.release == target) - (before == target)
            row.version += 1
            changed.add(name)
        for ts, pools in batch.series:
            self._add_point(ts, pools)
        if batch.metrics is not None:
            self._apply_metrics(batch.metrics)
        self.log.extend(batch.log)
        return changed

    def _apply_event(self, event: Event) -> None:
        data = event.data
        kind = event.kind
        if kind == "rollout_started":
            self.rollout = event.rollout or self.rollout
            for key in ("fleet", "strategy", "current", "target"):
                setattr(self, key, data.get(key) or getattr(self, key))
            self.estimated_s = data.get("estimated_s", self.estimated_s)
            self.rollback_estimated_s = data.get("rollback_estimated_s",
                                                 self.rollback_estimated_s)
            self.started_ts = event.ts
        elif kind == "state":
            state = data.get("state", self.state)
            if state in FINAL_STATES or state == "ROLLING BACK":
                self.pause_requested = False
            if state != self.state and state not in ("WAITING", "VERIFYING", "PAUSED"):
                self.wait_remaining_s = None
            elif state == "PAUSED" and self.state != "PAUSED":
                self.wait_remaining_s = self.wait_remaining()     # frozen where it stood
            elif state != "PAUSED" and self.state == "PAUSED":
                self.wait_synced_at = self.clock()               # counts on from there
            self.state, self.reason = state, data.get("reason") or ""
        elif kind == "step_started":
            self.step = data.get("index")
            self.wait_remaining_s = None
        elif kind == "step_finished":
            index = data.get("index")
            if index is not None:
                self.done.add(index)
        elif kind == "pause_started":
            duration = data.get("duration")
            self.wait_remaining_s = float(duration) if duration is not None else None
            self.wait_synced_at = self.clock()
        elif kind == "verdict":
            self.verdicts[data.get("metric", "?")] = dict(data)
        elif kind == "analysis_failed":
            self.analysis_failure = data.get("detail") or "analysis failed"
            self.analysis_failure_metric = data.get("metric")
        elif kind == "traffic":
            self.traffic = dict(data)
        elif kind == "control":
            action = data.get("action")
            if action == "pause":
                self.pause_requested = True
            elif action in ("resume", "abort"):
                self.pause_requested = False
        elif kind == "window_override" and self.window is not None:
            self.window = {**self.window, "overridden": data.get("reason"), "held": False}
        elif kind == "window_opened" and self.window is not None:
            self.window = {**self.window, "held": False}
        elif kind == "rollback_started":
            self.rollback = dict(data)
        elif kind == "rollback_window":
            self.rollback_window = dict(data)
        elif kind == "rollout_finished":
            self.finished = dict(data)
            self.pause_requested = False
        if self.started_ts is None:
            self.started_ts = event.ts

    def _add_point(self, ts: float, pools: Mapping[str, Any]) -> None:
        self.pools = dict(pools)
        new = pools.get(self.target) or {}
        old = pools.get(self.current) or {}
        total = sum(float(p.get("rps") or 0.0) for p in pools.values())
        share = 100.0 * float(new.get("rps") or 0.0) / total if total > 0 else None
        self.points.append(TrafficPoint(ts, share, new.get("error_rate"), old.get("error_rate"),
                                        new.get("p95"), old.get("p95")))

    def _apply_metrics(self, metrics: Mapping[str, Any]) -> None:
        if not self.points and metrics.get("pools"):
            self.pools = dict(metrics["pools"])
        figures = metrics.get("hosts")
        # a reading without per-host figures (a fleet beyond the engine's per-host limit)
        # keeps the last ones off the screen rather than showing stale numbers
        self.backend_figures = figures or {}
        self.figures_version += 1
        self._figures_total = None
        if metrics.get("hosts_partial") and metrics.get("pools"):
            # figures for some hosts only (those on screen, those changed lately): a host's
            # share is of all the traffic, the pools' total
            self._figures_total = sum(float(p.get("rps") or 0.0)
                                      for p in metrics["pools"].values())
        self._slot_backends = None

    def figures(self, name: str) -> HostFigures:
        """The host's figures from the latest reading (its backends added up)."""
        figures = self.backend_figures
        if not figures:
            return NO_FIGURES
        fig = figures.get(name)
        if fig is not None:
            parts: list[Mapping[str, Any]] = [fig]
        else:
            if self._slot_backends is None:
                index: dict[str, list[str]] = {}
                for backend in figures:
                    if "@" in backend:
                        index.setdefault(backend.partition("@")[0], []).append(backend)
                self._slot_backends = index
            parts = [figures[b] for b in self._slot_backends.get(name, ())]
            if not parts:
                return NO_FIGURES
        if self._figures_total is None:
            self._figures_total = sum(float(f.get("rps") or 0.0) for f in figures.values())
        requests = rps = errors = 0.0
        p95: float | None = None
        for part in parts:
            count = float(part.get("requests") or 0)
            requests += count
            rps += float(part.get("rps") or 0.0)
            errors += count * float(part.get("error_rate") or 0.0) / 100.0
            if part.get("p95") is not None and (p95 is None or part["p95"] > p95):
                p95 = part["p95"]
        total = self._figures_total
        return HostFigures(rps, round(100.0 * errors / requests, 3) if requests else None, p95,
                           100.0 * rps / total if total > 0 else None)


# ---------------------------------------------------------------------- formatting


def fmt_duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def fmt_clock(seconds: float) -> str:
    """Seconds since the rollout started as ``+M:SS`` or ``+H:MM:SS``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"+{hours}:{minutes:02d}:{secs:02d}" if hours else f"+{minutes}:{secs:02d}"


def fmt_percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


def fmt_rps(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def fmt_metric(metric: str, value: float | None, kind: object = None) -> str:
    """A verdict's value or threshold in the metric's unit: a ``proportion`` (the verdict's
    ``metric_kind``, or ``error_rate`` by its name) in percent."""
    if value is None:
        return "n/a"
    if metric == "error_rate" or kind == "proportion":
        return f"{value:.2f}%"
    if metric == "p95_latency":
        return fmt_ms(value)
    if metric == "health":
        return f"{value:g} unhealthy"
    if metric == "system_test":
        return f"{value:g} failed"
    return f"{value:g}"
