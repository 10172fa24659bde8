"""Engine events adapted for the screens.

The handle calls :class:`EventFeed` for every event; it only files the event into the pending
:class:`Batch` (a flood of host and metrics events collapses: one entry per host, the latest
metrics), so it costs next to nothing on the engine's side. The app's tick takes the batch at
most ten times a second, applies it to the :class:`~upgrader.tui.view.RolloutView` and posts
one :class:`RolloutUpdated` message to each screen; updates that pile up behind a busy screen
merge into the newest (``can_replace``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.message import Message

from ..events import Event
from .view import SERIES_POINTS, RolloutView, fmt_clock, fmt_duration, fmt_metric

HOST_KINDS = frozenset({"host_phase", "host_done", "host_failed", "snapshot_taken"})
#: after these the app re-reads the handle's snapshot (state, step and outcome changes)
SYNC_KINDS = frozenset({"rollout_started", "state", "step_started", "step_finished", "control",
                        "rollback_started", "rollout_finished", "pause_started", "frozen"})
#: per batch; beyond this, events are counted, not kept (the snapshot still tells the state)
MAX_EVENTS = 1000
MAX_LOG = 500
#: the phase a ``host_done`` leaves a host in, by its mode (in service unless listed)
_DONE_PHASE = {"turn_down": "out_of_service", "shutdown": "out_of_service"}


class Batch:
    """Events received since the last tick, collapsed."""

    __slots__ = (
        "_runs",
        "count",
        "dropped_events",
        "dropped_log",
        "events",
        "hosts",
        "last_ts",
        "log",
        "max_events",
        "max_log",
        "metrics",
        "needs_sync",
        "rollout",
        "series",
    )

    def __init__(self, *, bounded: bool = True) -> None:
        #: a batch seeded from the handle's history keeps all of it (the history is bounded)
        self.max_events = MAX_EVENTS if bounded else 1 << 62
        self.max_log = MAX_LOG if bounded else 1 << 62
        #: everything but host and metrics events, in order
        self.events: list[Event] = []
        #: host -> the row fields the host's events set (the last value wins)
        self.hosts: dict[str, dict[str, Any]] = {}
        #: every event but metrics, in order, for the log screen
        self.log: list[Event] = []
        #: the latest ``metrics`` data, and every pool reading for the chart
        self.metrics: Mapping[str, Any] | None = None
        self.series: deque[tuple[float, Mapping[str, Any]]] = deque(maxlen=SERIES_POINTS)
        self.count = 0
        self.dropped_events = 0
        self.dropped_log = 0
        self.needs_sync = False
        self.last_ts = 0.0
        self.rollout = ""
        #: mode -> the data of the ``hosts_done`` summary being filled (see ``_host``)
        self._runs: dict[str, dict[str, Any]] = {}

    def add(self, event: Event) -> None:
        self.count += 1
        self.last_ts = event.ts
        self.rollout = event.rollout
        kind = event.kind
        if kind == "metrics":
            self.metrics = event.data
            pools = event.data.get("pools")
            if pools:
                self.series.append((event.ts, pools))
            return
        if len(self.log) < self.max_log:
            self.log.append(event)
        else:
            self.dropped_log += 1
        if kind in HOST_KINDS:
            self._host(event)
            return
        self._append(event)
        if kind in SYNC_KINDS:
            self.needs_sync = True

    def _append(self, event: Event) -> None:
        if len(self.events) < self.max_events:
            self.events.append(event)
            # hosts done after this event get a summary of their own, placed after it
            self._runs = {}
        else:
            self.dropped_events += 1
            self.needs_sync = True

    def _host(self, event: Event) -> None:
        data = event.data
        name = data.get("host")
        if not name:
            return
        kind = event.kind
        if kind == "host_phase":
            self.hosts.setdefault(name, {}).update(
                phase=data.get("phase", "pending"), heading=data.get("release"),
                mode=data.get("mode") or "", error=None)
        elif kind == "host_done":
            mode = data.get("mode") or "upgrade"
            fields = self.hosts.setdefault(name, {})
            fields.update(release=data.get("release"), phase=_DONE_PHASE.get(mode, "in_service"),
                          heading=None, mode=mode, error=None)
            if data.get("slot") is not None:
                fields["slot"] = data["slot"]
            run = self._runs.get(mode)
            if run is None:
                # one ``hosts_done`` summary per run of host_done events of one mode, in
                # the place of the run's first event
                run = {"mode": mode, "release": data.get("release"), "hosts": [], "count": 0}
                if len(self.events) < self.max_events:
                    self.events.append(Event("hosts_done", event.ts, event.rollout, 0, run))
                    self._runs[mode] = run
            if len(run["hosts"]) < 5:
                run["hosts"].append(name)
            run["count"] += 1
        elif kind == "host_failed":
            self.hosts.setdefault(name, {}).update(phase="failed", error=data.get("error"),
                                                   mode=data.get("mode") or "")
            self._append(event)


class EventFeed:
    """The handle's subscriber. Cheap per event; the app takes a :class:`Batch` per tick."""

    def __init__(self) -> None:
        self._batch = Batch(bounded=False)
        self.last_seq = 0
        self.received = 0

    def __call__(self, event: Event) -> None:
        # history and live events may overlap when the app subscribes: the seq tells
        if event.seq:
            if event.seq <= self.last_seq:
                return
            self.last_seq = event.seq
        self.received += 1
        self._batch.add(event)

    def take(self) -> Batch | None:
        if not self._batch.count:
            return None
        batch, self._batch = self._batch, Batch()
        if batch.dropped_log:
            batch.log.append(Event("log", batch.last_ts, batch.rollout, 0, {
                "level": "info",
                "message": f"... and {batch.dropped_log} more events in this tenth of a second"}))
        return batch


@dataclass
class RolloutUpdated(Message):
    """What changed since the last tick (posted to each screen at most once per tick)."""

    view: RolloutView
    #: hosts whose row changed
    changed: set[str] = field(default_factory=set)
    #: a snapshot was loaded (anything may have changed)
    synced: bool = False
    #: notable events, described for the event log
    lines: list[Text] = field(default_factory=list)
    #: every event but metrics (for the log screen)
    events: list[Event] = field(default_factory=list)

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, RolloutUpdated):
            return False
        # the newer update absorbs this one, so nothing is lost when a screen falls behind
        message.changed |= self.changed
        message.synced = message.synced or self.synced
        message.lines[:0] = self.lines
        message.events[:0] = self.events
        return True


# ---------------------------------------------------------------------- describing events

STATE_STYLES = {
    "PENDING": "dim", "RUNNING": "bold green", "PAUSING": "yellow", "PAUSED": "bold yellow",
    "WAITING": "bold cyan",
    "VERIFYING": "bold blue", "ROLLING BACK": "bold red", "COMPLETED": "bold green",
    "ROLLED BACK": "bold red", "FAILED": "bold white on red", "FROZEN": "bold magenta",
    "SHUT DOWN": "bold red", "FLAGS OFF": "bold yellow",
}
_DONE_WORDS = {"upgrade": "upgraded to", "rollback": "rolled back to", "swap": "swapped to",
               "prepare": "prepared (idle slot)", "turn_down": "turned down",
               "shutdown": "shut down"}
_LEVEL_STYLES = {"info": "dim", "warning": "yellow", "error": "bold red"}


class EventDescriber:
    """Turns a batch into the few lines an operator wants in the event log. Remembers only
    what it showed last (the last verdict per metric, the last traffic line) to show changes."""

    def __init__(self) -> None:
        self._last_result: dict[str, str] = {}
        self._last_traffic = ""
        self._last_failure = ""

    def stamp(self, event_ts: float, view: RolloutView) -> str:
        start = view.started_ts
        return fmt_clock(event_ts - start) if start is not None else "+0:00"

    def lines(self, batch: Batch, view: RolloutView) -> list[Text]:
        out: list[Text] = []
        for event in batch.events:
            text = self.describe(event, view)
            if text is not None:
                out.append(self._stamped(event.ts, view, text))
        if batch.dropped_events:
            out.append(self._stamped(batch.last_ts, view, Text(
                f"{batch.dropped_events} more events not shown", style="dim")))
        return out

    def _stamped(self, ts: float, view: RolloutView, text: Text) -> Text:
        line = Text(f"{self.stamp(ts, view):>9} ", style="dim")
        line.append_text(text)
        return line

    def describe(self, event: Event, view: RolloutView) -> Text | None:
        data = event.data
        kind = event.kind
        if kind == "rollout_started":
            return Text(
                f"rollout {event.rollout}: {data.get('strategy')} {data.get('current')} -> "
                f"{data.get('target')} on {data.get('hosts')} hosts; estimated "
                f"{fmt_duration(data.get('estimated_s'))}, roll-back "
                f"{fmt_duration(data.get('rollback_estimated_s'))}"
                + (" (resumed)" if data.get("resumed") else ""), style="bold")
        if kind == "state":
            state = data.get("state", "?")
            text = Text(state, style=STATE_STYLES.get(state, "bold"))
            reason = data.get("reason") or ""
            if reason and reason == self._last_failure:
                text.append(" (see above)")
            elif reason:
                text.append(f" {reason}")
            return text
        if kind == "step_started":
            total = len(view.plan)
            index = int(data.get("index", 0))
            return Text(f"step {index + 1}{f'/{total}' if total else ''}: "
                        f"{data.get('description', data.get('step', ''))}")
        if kind == "hosts_done":
            mode = data["mode"]
            release = f" {data['release']}" if data.get("release") and mode in (
                "upgrade", "swap", "rollback") else ""
            shown = ", ".join(data["hosts"])
            if data["count"] > len(data["hosts"]):
                shown += f" and {data['count'] - len(data['hosts'])} more"
            style = "green" if mode in ("upgrade", "swap", "prepare") else "yellow"
            return Text(f"{data['count']} host(s) {_DONE_WORDS.get(mode, mode)}{release}: "
                        f"{shown}", style=style)
        if kind == "host_failed":
            return Text(f"{data.get('host')} failed ({data.get('mode', '')}): "
                        f"{data.get('error', '')}", style="bold red")
        if kind == "verdict":
            metric = data.get("metric", "?")
            result = data.get("result", "?")
            before = self._last_result.get(metric)
            self._last_result[metric] = result
            if result == "pass" and before in (None, "pass"):
                return None
            style = {"pass": "green", "fail": "bold red"}.get(result, "yellow")
            unit = data.get("metric_kind")
            text = Text(f"analysis {metric} {result.upper()}: "
                        f"{fmt_metric(metric, data.get('value'), unit)} (limit "
                        f"{fmt_metric(metric, data.get('threshold'), unit)}, "
                        f"{data.get('samples', 0)} samples, old release "
                        f"{fmt_metric(metric, data.get('baseline'), unit)})",
                        style=style)
            if data.get("limit"):
                text.append(f" {data.get('consecutive', 0)}/{data['limit']} in a row")
            if data.get("detail") and result != "pass":
                text.append(f" - {data['detail']}")
            return text
        if kind == "analysis_failed":
            self._last_failure = str(data.get("detail", ""))
            return Text(str(data.get("detail", "analysis failed")), style="bold red")
        if kind == "control":
            action = data.get("action", "?")
            if action == "abort":
                action += " (roll back)" if data.get("rollback", True) else " (no roll-back)"
            actor = f" by {data['actor']}" if data.get("actor") else ""
            return Text(f"operator: {action}{actor}", style="bold magenta")
        if kind == "rollback_started":
            hosts = data.get("hosts") or []
            return Text(f"rolling back {len(hosts)} host(s) ({data.get('mode', '')}), expected "
                        f"{fmt_duration(data.get('estimated_s'))}: {data.get('reason', '')}",
                        style="bold yellow")
        if kind == "flags_first":
            flags = ", ".join(data.get("flags") or ())
            if data.get("phase") == "begin":
                return Text(f"flags off first: {flags}; verifying again for "
                            f"{fmt_duration(data.get('hold_s'))}", style="bold yellow")
            if data.get("cured"):
                return Text(f"flags off, release kept: verifies without {flags}; the operator "
                            "decides", style="bold yellow")
            return Text(f"flags off did not cure it: {data.get('detail', '')}",
                        style="bold red")
        if kind == "frozen":
            # why it froze, and what each answer would do (resume / abort / stop)
            choices = data.get("choices") or {}
            self._last_failure = f"frozen: {data.get('reason', '')}"    # the state line's
            text = Text(f"FROZEN: {data.get('reason', '')}", style="bold magenta")
            for choice, effect in choices.items():
                text.append(f"\n  {choice}: {effect}")
            return text
        if kind == "rollout_finished":
            outcome = str(data.get("outcome", "?"))
            style = "bold green" if outcome == "completed" else "bold red"
            text = Text(f"{outcome.replace('_', ' ').upper()} in "
                        f"{fmt_duration(data.get('duration_s'))}", style=style)
            if data.get("error"):
                text.append(f": {data['error']}")
            return text
        if kind == "log":
            message = str(data.get("message", ""))
            if len(message) > 200:
                message = message[:197] + "..."
            return Text(message, style=_LEVEL_STYLES.get(data.get("level", "info"), ""))
        if kind == "schema":
            if data.get("result") == "begin":
                return None
            return Text(f"schema change {data.get('migration', '')} {data.get('action', '')}: "
                        f"{data.get('result', '')}", style="cyan")
        if kind == "traffic":
            line = describe_traffic(data)
            if line == self._last_traffic:
                return None
            self._last_traffic = line
            return Text(line, style="cyan") if line else None
        return None


def describe_traffic(data: Mapping[str, Any]) -> str:
    """The split, routes and maintenance of a ``traffic`` event in one line ('' if none)."""
    parts = []
    split = data.get("split")
    if split:
        parts.append("split " + " · ".join(f"{pool} {float(w):g}%" for pool, w in split.items()))
    routes = data.get("routes")
    if routes:
        groups = routes.get("groups") or {}
        cohorts = routes.get("cohorts") or []
        shown = [f"{g}->{p}" for g, p in groups.items()]
        shown += [f"{c[0]} {float(c[1]):g}%->{c[2]}" for c in cohorts]
        if routes.get("default"):
            shown.append(f"everyone else->{routes['default']}")
        parts.append("routes " + ", ".join(shown))
    if data.get("maintenance"):
        parts.append("maintenance page ON")
    return "traffic: " + "; ".join(parts) if parts else ""


def log_line(event: Event, view: RolloutView, describer: EventDescriber) -> Text:
    """One event of the full log, every kind, with all its data."""
    kind = event.kind
    stamp = Text(f"{describer.stamp(event.ts, view):>9} ", style="dim")
    style = {"state": "bold", "host_failed": "bold red", "analysis_failed": "bold red",
             "control": "magenta", "rollback_started": "yellow",
             "rollout_finished": "bold"}.get(kind, "")
    if kind == "verdict":
        style = "red" if event.data.get("result") == "fail" else "green"
    stamp.append(f"{kind:<17}", style=style or "cyan")
    body = " ".join(f"{key}={_short(value)}" for key, value in event.data.items())
    if len(body) > 400:
        body = body[:397] + "..."
    stamp.append(body)
    return stamp


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{', '.join(map(str, value[:6]))}, ... {len(value)} items]"
    if isinstance(value, dict) and len(value) > 6:
        items = list(value.items())[:6]
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + f", ... {len(value)} items}}"
    return str(value)
