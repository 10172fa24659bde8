"""``upgrader analysis show FLEET [ROLLOUT]``: every verdict a rollout's verification
journaled, round by round, with what the judge based it on (issue 14: explainable verdicts).

A round is the verdicts journaled at one analysis time. For the statistical judge each line
also gives its tests (statistic, p-value, hypothesis), effect size, the samples it had and
the samples it needed, the round's score and band and the raw samples' summary; for the
threshold judge the value, limit, old release's value and samples. Reads the journal only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, JournalError

EXIT_OK = 0


def add_analysis_parser(sub: Any, fleet_args: Any) -> None:
    analysis = sub.add_parser("analysis", help="the verdicts a rollout's verification journaled")
    verbs = analysis.add_subparsers(dest="analysis_command", metavar="COMMAND", required=True)
    show = verbs.add_parser("show", help="every verdict of a rollout, round by round, with "
                                         "its statistics and decision")
    fleet_args(show, strategy=False)
    show.add_argument("rollout", nargs="?", help="the rollout id (default: the fleet's last "
                                                 "rollout; `upgrader status FLEET` names it)")
    show.add_argument("--json", action="store_true",
                      help="one JSON object per verdict on stdout (the journaled event)")


def _fmt(value: Any, metric: str) -> str:
    if value is None:
        return "n/a"
    if not isinstance(value, (int, float)):
        return str(value)
    if metric in ("error_rate",) or metric.endswith("_rate"):
        return f"{value:.2f}%"
    if "latency" in metric:
        return f"{value * 1000:.0f}ms"
    return f"{value:g}"


def describe(data: dict[str, Any]) -> str:
    """One verdict event's data as a line (and, for the statistical judge, a second)."""
    metric = str(data.get("metric", "?"))
    result = str(data.get("result", "?")).upper()
    parts = [f"{metric} {result}", f"value {_fmt(data.get('value'), metric)}"]
    if data.get("threshold") is not None:
        parts.append(f"limit {_fmt(data.get('threshold'), metric)}")
    if data.get("baseline") is not None:
        parts.append(f"old release {_fmt(data.get('baseline'), metric)}")
    parts.append(f"{data.get('samples', 0)} samples")
    if data.get("consecutive") is not None:
        parts.append(f"{data['consecutive']}/{data.get('limit', '?')} failing in a row")
    if data.get("phase"):
        parts.append(f"phase {data['phase']}" + (" (settling)" if data.get("settling") else ""))
    line = " · ".join(parts)
    if data.get("detail"):
        line += f" - {data['detail']}"
    stats = data.get("stats")
    if not isinstance(stats, dict):
        return line
    more = []
    for test in stats.get("tests") or ():
        more.append(f"{test.get('test')}: z {test.get('statistic')}, p {test.get('p_value')} "
                    f"({test.get('hypothesis')})")
    effect = stats.get("effect")
    if isinstance(effect, dict):
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in effect.items()
                          if isinstance(v, (int, float)))
        if shown:
            more.append(f"effect: {shown}")
    elif isinstance(effect, (int, float)):
        more.append(f"effect {effect:.3g}")
    if stats.get("needed") is not None:
        more.append(f"samples needed {stats['needed']} (canary {stats.get('samples')}, "
                    f"baseline {stats.get('baseline_samples')})")
    if stats.get("thresholds"):
        more.append("thresholds " + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float))
                                              else f"{k} {v}"
                                              for k, v in stats["thresholds"].items()
                                              if v is not None))
    if stats.get("dry_run"):
        more.append("dry run: never decides")
    if stats.get("critical"):
        more.append("critical")
    raw = data.get("raw")
    if isinstance(raw, dict) and raw.get("detail"):
        more.append(f"read: {raw['detail']}")
    return line + ("\n      " + "; ".join(more) if more else "")


def cmd_analysis(args: argparse.Namespace, *, load: Any, state_dir_of: Any) -> int:
    from .state import journal_exists, open_journal, resolve_state

    fleet = load(args, None)
    state_dir: Path = state_dir_of(args, fleet)
    state = resolve_state(getattr(args, "state", None))
    if not journal_exists(state, state_dir):
        raise JournalError(f"no rollout of {fleet.name} recorded in {state_dir}")
    journal = open_journal(state, state_dir)
    try:
        record = journal.get(args.rollout) if args.rollout else journal.latest(fleet.name)
        if record is None or record.fleet != fleet.name:
            if args.rollout:
                raise ConfigError(f"no rollout {args.rollout!r} of fleet {fleet.name} in the "
                                  f"journal; `upgrader status {args.fleet}` names the last one",
                                  key="rollout")
            raise JournalError(f"no rollout of {fleet.name} recorded in {state_dir}")
        entries = [e for e in journal.entries(record.id) if e.kind == "verdict"]
    finally:
        journal.close()
    if args.json:
        for entry in entries:
            print(json.dumps({"ts": entry.ts, **entry.data}, default=str))
        return EXIT_OK
    print(f"rollout {record.id} of {record.fleet}: {record.current} -> {record.target}, "
          f"{record.status}; {len(entries)} verdict(s)")
    rounds: list[list[Any]] = []
    for entry in entries:
        if rounds and abs(entry.ts - rounds[-1][0].ts) < 0.5:
            rounds[-1].append(entry)
        else:
            rounds.append([entry])
    start = record.started
    for number, group in enumerate(rounds, 1):
        scores = {(e.data.get("score"), e.data.get("band")) for e in group
                  if e.data.get("score") is not None}
        score = "".join(f" · score {s:g} ({b})" for s, b in scores if isinstance(s, (int, float)))
        print(f"round {number} at +{group[0].ts - start:.1f}s{score}")
        for entry in group:
            print(f"  {describe(dict(entry.data))}")
    if not entries:
        print("no verdicts: verification did not judge this rollout", file=sys.stderr)
    return EXIT_OK
