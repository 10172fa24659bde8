"""Headless front end: a rich progress display on stderr for people, and JSON event lines on
stdout for programs. Holds no upgrade state of its own: it only renders events."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .events import Event
from .units import format_duration

#: ``ok`` hosts named one per line; the rest are counted
OK_LINES = 10

_STYLE = {"info": "dim", "warning": "yellow", "error": "bold red"}


def stderr_console(file: IO[str] | None = None) -> Console:
    """A rich console on ``file`` (default stderr). On a terminal it wraps at the terminal's
    width; piped or redirected (scripts, CI, a log file) it never wraps nor crops a line, so
    one event stays one line for grep."""
    out = file or sys.stderr
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError):     # no isatty, or a closed file
        terminal = False
    # (not ``Console.is_terminal``: FORCE_COLOR, common in CI, makes a pipe look like one)
    return Console(file=out, highlight=False, soft_wrap=not terminal)


class HeadlessDisplay:
    """An event observer. Use as a context manager around the rollout."""

    def __init__(self, *, total_hosts: int, target: str, json_out: IO[str] | None = None,
                 console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or stderr_console()
        self.json_out = json_out
        self.quiet = quiet
        self.target = target
        self._progress = Progress(
            TextColumn("[bold]{task.fields[state]:<13}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(),
            console=self.console, transient=True, disable=quiet)
        self._task = self._progress.add_task("starting", total=max(1, total_hosts),
                                             state="PENDING")
        self._on_target: set[str] = set()
        self._ok = 0          # hosts found done (``ok``) by the inventory

    def __enter__(self) -> HeadlessDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def line(self, text: str, style: str = "") -> None:
        if not self.quiet:
            self._progress.console.print(text, style=style)

    def __call__(self, event: Event) -> None:
        if self.json_out is not None:
            self.json_out.write(event.dumps() + "\n")
            self.json_out.flush()
        data: dict[str, Any] = dict(event.data)
        kind = event.kind
        if kind == "rollout_started":
            self.line(f"rollout {event.rollout}: {data['strategy']} {data['current']} -> "
                      f"{data['target']} on {data['hosts']} hosts; estimated "
                      f"{format_duration(data['estimated_s'])}, roll-back "
                      f"{format_duration(data['rollback_estimated_s'])}"
                      + (" (resumed)" if data.get("resumed") else ""), "bold")
        elif kind == "state":
            self._progress.update(self._task, state=data["state"])
            if data["state"] in ("PAUSING", "PAUSED", "FAILED", "FROZEN", "FLAGS OFF"):
                self.line(f"{data['state']}: {data.get('reason', '')}", "bold yellow")
        elif kind == "step_started":
            self._progress.update(self._task, description=f"step {data['index'] + 1}: "
                                                          f"{data['description']}")
        elif kind == "host_done":
            host = data["host"]
            if data.get("mode") == "ok":
                self._ok += 1
                if self._ok <= OK_LINES:
                    self.line(f"{host}: ok, already on {data.get('release')} and in service",
                              "green")
            if data.get("release") == self.target and data.get("mode") in ("upgrade", "swap",
                                                                              "ok"):
                self._on_target.add(host)
            else:
                self._on_target.discard(host)
            self._progress.update(self._task, completed=len(self._on_target))
        elif kind == "inventory":
            if self._ok > OK_LINES:
                self.line(f"... and {self._ok - OK_LINES} more host(s) ok", "green")
            if data.get("nothing_to_do"):
                self.line(f"nothing to do: all {data['hosts']} hosts already run "
                          f"{data['target']} and serve", "bold green")
            elif data.get("done"):
                self.line(f"{data['done']} of {data['hosts']} hosts already on "
                          f"{data['target']}: left alone", "green")
        elif kind == "host_failed":
            self.line(f"{data['host']}: {data['error']}", "bold red")
        elif kind == "verdict":
            if data["result"] != "pass":
                self.line(f"analysis {data['metric']}: {data['result']} value={_fmt(data)} "
                          f"limit={_fmt(data, 'threshold')} samples={data['samples']} "
                          f"old={_fmt(data, 'baseline')} ({data.get('consecutive', 0)}/"
                          f"{data.get('limit', '-')}) {data.get('detail', '')}", "yellow")
        elif kind == "window_wait":
            self.line(f"deploy window: {data['reason']}", "yellow")
        elif kind == "window_opened":
            self.line("deploy window open: " + (", ".join(data.get("teams") or ())
                                                or "overridden") + " on duty", "dim")
        elif kind == "window_override":
            self.line(f"deploy window overridden: {data['reason']}", "bold yellow")
        elif kind == "analysis_failed":
            self.line(data["detail"], "bold red")
        elif kind == "reconcile":
            self.line(f"reconcile: {data['detail']}", "bold yellow")
        elif kind == "rollback_started":
            self.line(f"rolling back {len(data['hosts'])} host(s) ({data['mode']}), expected "
                      f"{format_duration(data['estimated_s'])}: {data['reason']}", "bold yellow")
        elif kind == "flags_first":
            if data.get("phase") == "begin":
                self.line(f"flags off first: {', '.join(data['flags'])}; verifying again for "
                          f"{format_duration(data['hold_s'])}", "bold yellow")
            elif data.get("cured"):
                self.line("flags off, release kept: the release verifies without "
                          f"{', '.join(data['flags'])}; the operator decides", "bold yellow")
            else:
                self.line(f"flags off did not cure it ({data.get('detail', '')}): rolling "
                          "back the release", "bold red")
        elif kind == "schema":
            if data.get("result") != "begin":
                self.line(f"schema change {data.get('migration', '')} {data.get('action', '')}: "
                          f"{data.get('result', '')}", "cyan")
        elif kind == "log":
            if data.get("level") != "info":
                self.line(data["message"], _STYLE.get(data.get("level", "info"), ""))
        elif kind == "rollout_finished":
            style = "bold green" if data["outcome"] == "completed" else "bold red"
            self.line(f"{data['outcome'].upper()} in {format_duration(data['duration_s'])}"
                      + (f": {data['error']}" if data.get("error") else ""), style)


def _fmt(data: dict[str, Any], key: str = "value") -> str:
    value = data.get(key)
    if value is None:
        return "n/a"
    if data["metric"] == "error_rate" or data.get("metric_kind") == "proportion":
        return f"{value:.2f}%"      # a proportion's figures are percentages
    if data["metric"] == "p95_latency":
        return f"{value * 1000:.0f}ms"
    return f"{value:g}"


def summary_line(result: Any, strategy: str, **extra: Any) -> str:
    payload = {"outcome": result.outcome.value, "strategy": strategy, "hosts": result.hosts,
               "duration_s": round(result.duration_s, 3), "rollout": result.rollout}
    if result.error:
        payload["error"] = result.error
    payload.update(extra)
    return json.dumps(payload)

