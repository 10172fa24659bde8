"""``upgrader analysis show FLEET [ROLLOUT]``: every verdict a rollout's verification
journaled, round by round, with what the judge based it on (issue 14: explainable verdicts).

A round is the verdicts journaled at one analysis time. For the statistical judge each line
also gives its tests (statistic, p-value, hypothesis), effect size, the samples it had and
the samples it needed, the round's score and band and the raw samples' summary; for the
threshold judge the value, limit, old release's value and samples. A hold extended on a
failing streak (threshold judge) is printed where it happened. Reads the journal only.
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
    replay = verbs.add_parser("replay", help="what another verify policy would have decided "
                                             "on a past rollout's recorded samples")
    fleet_args(replay, strategy=False)
    replay.add_argument("rollout", nargs="?", help="the rollout id (default: the fleet's "
                                                   "last rollout)")
    replay.add_argument("--verify", required=True, metavar="FILE.toml",
                        help="the policy to replay: a TOML file with [verify] and its "
                             "[[verify.metrics]] (a fleet file will do)")
    replay.add_argument("--json", action="store_true",
                        help="one JSON object per round on stdout, then a summary object")


def _fmt(value: Any, metric: str, kind: str | None = None) -> str:
    """A verdict's figure: a proportion (``kind``, journaled as ``metric_kind``, or a metric
    named ``*_rate``) in percent, a latency in milliseconds, else as it is."""
    if value is None:
        return "n/a"
    if not isinstance(value, (int, float)):
        return str(value)
    if kind == "proportion" or metric in ("error_rate",) or metric.endswith("_rate"):
        return f"{value:.2f}%"
    if "latency" in metric:
        return f"{value * 1000:.0f}ms"
    return f"{value:g}"


def describe(data: dict[str, Any]) -> str:
    """One verdict event's data as a line (and, for the statistical judge, a second)."""
    metric = str(data.get("metric", "?"))
    result = str(data.get("result", "?")).upper()
    kind = data.get("metric_kind")
    parts = [f"{metric} {result}", f"value {_fmt(data.get('value'), metric, kind)}"]
    if data.get("threshold") is not None:
        parts.append(f"limit {_fmt(data.get('threshold'), metric, kind)}")
    if data.get("baseline") is not None:
        parts.append(f"old release {_fmt(data.get('baseline'), metric, kind)}")
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


def _rollout(args: argparse.Namespace, load: Any, state_dir_of: Any, *,
             extensions: bool = False) -> tuple[Any, Any, list[Any]]:
    """The rollout ``args`` name (the fleet's last without an id) and its verdict entries
    (with ``extensions``, also the ``log`` entries of holds extended on a failing streak)."""
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
        entries = [e for e in journal.entries(record.id) if e.kind == "verdict" or
                   (extensions and e.kind == "log" and e.data.get("hold_extended"))]
    finally:
        journal.close()
    return fleet, record, entries


def cmd_analysis(args: argparse.Namespace, *, load: Any, state_dir_of: Any) -> int:
    if args.analysis_command == "replay":
        return cmd_replay(args, load=load, state_dir_of=state_dir_of)
    _, record, entries = _rollout(args, load, state_dir_of, extensions=not args.json)
    notes = [e for e in entries if e.kind == "log"]
    entries = [e for e in entries if e.kind == "verdict"]
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
        while notes and notes[0].seq < group[0].seq:
            print(f"  {notes.pop(0).data['message']}")
        scores = {(e.data.get("score"), e.data.get("band")) for e in group
                  if e.data.get("score") is not None}
        score = "".join(f" · score {s:g} ({b})" for s, b in scores if isinstance(s, (int, float)))
        print(f"round {number} at +{group[0].ts - start:.1f}s{score}")
        for entry in group:
            print(f"  {describe(dict(entry.data))}")
    for note in notes:
        print(f"  {note.data['message']}")
    if not entries:
        print("no verdicts: verification did not judge this rollout", file=sys.stderr)
    return EXIT_OK


def _result(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not judged"
    text = str(entry.get("result", "?")).upper()
    if isinstance(entry.get("consecutive"), int) and entry.get("limit"):
        text += f" ({entry['consecutive']}/{entry['limit']})"
    return text


def describe_replayed(entry: dict[str, Any], decided: dict[str, Any] | None) -> str:
    """One policy metric of a replayed round: what was decided, what would be, and why."""
    metric = str(entry["metric"])
    def fmt(value: Any) -> str:
        if entry.get("kind") == "proportion" and isinstance(value, (int, float)):
            return f"{value:.3g}%"
        return _fmt(value, metric)

    parts = [f"{metric}: decided {_result(decided)} -> replayed {_result(entry)}",
             f"value {fmt(entry.get('value'))}"]
    if entry.get("baseline") is not None:
        parts.append(f"baseline {fmt(entry.get('baseline'))}")
    tests = [t for t in entry.get("tests") or () if isinstance(t.get("p_value"), (int, float))]
    if tests:
        parts.append(f"p {min(t['p_value'] for t in tests):.2g}")
    effect = entry.get("effect")
    if isinstance(effect, dict):
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in effect.items()
                          if isinstance(v, (int, float)))
        if shown:
            parts.append(shown)
    samples = f"{entry.get('samples', 0)} samples"
    if entry.get("needed") is not None:
        samples += f" (needed {entry['needed']})"
    parts.append(samples)
    if entry.get("dry_run"):
        parts.append("dry run")
    line = " · ".join(parts)
    return line + (f" - {entry['reason']}" if entry.get("reason") else "")


def _round_at(number: int | None, what: str) -> str:
    return f"{what} at round {number}" if number is not None else f"never {what}"


def cmd_replay(args: argparse.Namespace, *, load: Any, state_dir_of: Any) -> int:
    """``upgrader analysis replay FLEET [ROLLOUT] --verify FILE.toml``."""
    from .config import load_verify
    from .engine.judge_replay import replay

    policy = load_verify(args.verify)     # bad input: exit 2 before the journal is read
    fleet, record, entries = _rollout(args, load, state_dir_of)
    result = replay(((e.ts, e.data) for e in entries), record.started, policy)
    if not result.rounds:
        raise JournalError(f"rollout {record.id} of {fleet.name} journaled no raw samples "
                           f"({len(entries)} verdict(s)): replay needs a rollout judged by "
                           f"the statistical judge ([[verify.metrics]] in the fleet file)")
    if not set(result.metrics) & set(result.recorded):
        raise ConfigError(f"no metric of this policy was recorded in rollout {record.id} "
                          f"(recorded: {', '.join(result.recorded)}; the policy's: "
                          f"{', '.join(result.metrics)}); metrics are matched by name",
                          file=args.verify, key="verify.metrics")
    summary = result.summary()
    if args.json:
        for replayed in result.rounds:
            print(json.dumps(replayed.to_json(), default=str))
        print(json.dumps({"summary": {"rollout": record.id, "fleet": record.fleet,
                                      "status": record.status, "policy": str(args.verify),
                                      **summary}}, default=str))
        return EXIT_OK
    how = (f"statistical judge, window {policy.window}" if policy.judge == "statistical"
           else f"threshold judge, min_requests {policy.min_requests}")
    print(f"replay of rollout {record.id} of {record.fleet}: {record.current} -> "
          f"{record.target}, {record.status}; {len(result.rounds)} round(s) through "
          f"{args.verify} ({how}, {policy.consecutive_failures} failing round(s) in a row "
          f"fail)")
    for name in result.unrecorded:
        print(f"warning: no samples of {name} were recorded (recorded: "
              f"{', '.join(result.recorded)}): it is judged without data", file=sys.stderr)
    for replayed in result.rounds:
        decided_score, decided_band = replayed.decided_score
        head = f"round {replayed.number} at +{replayed.at:.1f}s"
        if decided_band:
            head += f" · decided score {_score(decided_score)} ({decided_band})"
        if replayed.band:
            head += f" · replayed score {_score(replayed.score)} ({replayed.band})"
        if replayed.differs():
            head += " · DIFFERS"
        if replayed.stopped:
            head += " · after the replayed failure"
        print(head)
        decided = {str(d.get("metric")): d for d in replayed.decided}
        for entry in replayed.replayed:
            print(f"  {describe_replayed(entry, decided.get(str(entry['metric'])))}")
        if replayed.decided_fail:
            print(f"  decided: the rollout failed here ({replayed.decided_fail})")
        if replayed.would_fail:
            print(f"  replayed: the rollout would fail here ({replayed.would_fail})")
    differences = summary["differences"]
    print(f"decided: {_round_at(summary['decided_fail'], 'failed')}, "
          f"{_round_at(summary['decided_pass'], 'every metric passed')}; "
          f"replayed: {_round_at(summary['would_fail'], 'would fail')}, "
          f"{_round_at(summary['would_pass'], 'every metric would pass')}; "
          f"{len(differences)} of {len(result.rounds)} round(s) differ"
          + (f" ({', '.join(map(str, differences))})" if differences else ""))
    return EXIT_OK


def _score(score: float | None) -> str:
    return f"{score:g}" if score is not None else "n/a"


# ------------------------------------------------------------------ the plan's sample sizes


def traffic_rate(text: str) -> float:
    """``upgrader plan --traffic RPS``: requests per second across the fleet (> 0)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected requests per second (a number > 0), "
                                         f"got {text!r}")
    return value


def _per_request(metric: Any) -> bool:
    """Whether a metric's canary samples are requests (the balancer's counters, or an
    events/trials pair of queries): then the traffic rate says how many a hold sees."""
    return bool(metric.source == "balancer" or (metric.kind == "proportion" and
                                                isinstance(metric.query, tuple) and
                                                len(metric.query) == 2))


def verify_samples(fleet: Any, plan: Any, wave_list: Any, rps: float | None) -> dict[str, Any]:
    """For ``upgrader plan``: the canary samples each judged metric needs before it may pass
    (``judge.samples_needed``: enough to detect its configured limits), and, per ``Verify``
    step, the share of requests on the target release, the hold (and its extension while
    inconclusive), the pooled span, and what ``rps`` gives there or the rate it needs.
    Empty without ``[[verify.metrics]]`` or with the threshold judge."""
    from .engine.judge import samples_needed
    from .plan import Verify

    spec = fleet.verify
    if not spec.metrics or spec.judge != "statistical":
        return {}
    metrics = [{"metric": m.name, "needed": samples_needed(m), "per_request": _per_request(m),
                "dry_run": m.dry_run, "kind": m.kind,
                "limits": {"max": m.max, "max_increase": m.max_increase}}
               for m in spec.metrics]
    exposure = {w.index: w.blast_radius for w in wave_list}
    pooled_s = spec.window * spec.interval
    steps = []
    for step in plan.steps:
        if not isinstance(step, Verify):
            continue
        share = exposure.get(step.wave, 0.0)
        extension = spec.inconclusive_for if spec.inconclusive_for is not None \
            else 2 * max(step.for_, spec.interval)
        hold_s = min(step.for_, pooled_s)
        longest_s = min(step.for_ + extension, pooled_s)
        row: dict[str, Any] = {"wave": step.wave, "share_pct": round(share, 2),
                               "hold_s": step.for_, "extended_s": step.for_ + extension,
                               "pooled_s": pooled_s}
        needed = max((m["needed"] for m in metrics if m["per_request"] and m["needed"]),
                     default=None)
        if needed is not None and share > 0:
            row["rps_needed"] = round(needed / (share / 100 * hold_s), 2)
            row["rps_needed_extended"] = round(needed / (share / 100 * longest_s), 2)
        if rps is not None:
            row["requests"] = int(rps * share / 100 * hold_s)
            row["requests_extended"] = int(rps * share / 100 * longest_s)
        steps.append(row)
    return {"rps": rps, "inconclusive": spec.inconclusive, "metrics": metrics,
            "steps": steps}


def print_verify_samples(info: dict[str, Any]) -> None:
    """The plan's sample-size lines (see :func:`verify_samples`)."""
    from .units import format_duration

    if not info:
        return
    print("sample sizes (statistical judge: a metric passes once its canary has them):")
    counted = [m for m in info["metrics"] if m["per_request"] and m["needed"]]
    for m in info["metrics"]:
        unit_of_max = "%" if m["kind"] == "proportion" else ""
        limits = [f"max {m['limits']['max']:g}{unit_of_max}" if m["limits"]["max"] is not None
                  else "",
                  f"+{m['limits']['max_increase']:g}% over the baseline"
                  if m["limits"]["max_increase"] is not None else ""]
        what = " or ".join(x for x in limits if x) or "no limit"
        if m["needed"] is None:
            print(f"  {m['metric']}: no limit to detect; passes on any sample")
            continue
        unit = "canary requests" if m["per_request"] else "canary samples from its source"
        print(f"  {m['metric']}: {m['needed']} {unit} to detect {what}"
              + (" (dry run: never decides)" if m["dry_run"] else ""))
    rps = info["rps"]
    for row in info["steps"]:
        head = (f"  wave {row['wave']} verify ({row['share_pct']:g}% of requests on the "
                f"target, hold {format_duration(row['hold_s'])}, extended up to "
                f"{format_duration(row['extended_s'])} while inconclusive): ")
        if not row["share_pct"]:
            print(head + "no request reaches the target: nothing to judge")
            continue
        if not counted:
            print(head + "samples come from the metrics' sources, not from requests")
            continue
        pooled = row["pooled_s"] <= row["hold_s"]
        if rps is None:
            more = ("" if pooled else
                    f" ({row['rps_needed_extended']:.3g} with the extension)")
            print(head + f"needs {row['rps_needed']:.3g} requests/s across the fleet{more}; "
                         f"--traffic RPS says what yours gives")
            continue
        verdicts = []
        for m in counted:
            if row["requests"] >= m["needed"]:
                verdicts.append(f"enough for {m['metric']}")
            elif row["requests_extended"] >= m["needed"]:
                verdicts.append(f"{m['metric']} needs the extension")
            else:
                verdicts.append(f"too few for {m['metric']} (then inconclusive = "
                                f"{info['inconclusive']})")
        more = "" if pooled else f" ({row['requests_extended']} extended)"
        print(head + f"at {rps:g} requests/s about {row['requests']}{more}: "
              + "; ".join(verdicts))
    if any(row["pooled_s"] <= row["hold_s"] for row in info["steps"]):
        print(f"  (the judge pools the last {format_duration(info['steps'][0]['pooled_s'])} "
              f"of samples, [verify] window x interval: a longer hold adds none)")
