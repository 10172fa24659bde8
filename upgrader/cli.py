"""The ``upgrader`` command line. A front end: parses, displays, forwards controls; the upgrade
logic lives in the engine. Exit codes: 0 done, 1 rolled back / failed, 2 bad input,
3 refused by policy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from .errors import ConfigError, ControlError, PolicyRefused, UpgraderError
from .redact import install_log_redaction, redact_text
from .units import format_duration, plural

if TYPE_CHECKING:
    from .control.handle import RolloutHandle

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 already; keep it short
        message = _with_did_you_mean(message)
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"upgrader: error: {message}\n")


def _with_did_you_mean(message: str) -> str:
    """argparse's "invalid choice: 'canery' (choose from ...)" with "(did you mean
    'canary'?)" before the choices, as the fleet file's errors say it (issue 16)."""
    import re

    from .tomlsource import did_you_mean

    found = re.match(r"(argument [^:]+: invalid choice: )'(.*)' \(choose from (.*)\)$", message)
    if not found:
        return message
    head, value, listed = found.groups()
    hint = did_you_mean(value, [name.strip("'") for name in listed.split(", ")])
    return f"{head}{value!r}{hint}; choose from {listed}" if hint else message


def _parser() -> argparse.ArgumentParser:
    from . import strategies

    names = strategies.names()
    p = _Parser(prog="upgrader", description="Upgrade live services without taking them down.")
    p.add_argument("--version", action="version", version=f"upgrader {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def fleet_args(sp: argparse.ArgumentParser, *, strategy: bool = True) -> None:
        sp.add_argument("fleet", help="fleet file (TOML)")
        if strategy:
            sp.add_argument("--strategy", choices=names, help="override the fleet's strategy")
        sp.add_argument("--state-dir", help="journal and lock folder (default "
                        "$UPGRADER_STATE_DIR, else ~/.local/state/upgrader/<fleet>-<id>, the "
                        "same from any directory)")

    run = sub.add_parser("run", help="run a rollout")
    fleet_args(run)
    run.add_argument("--headless", action="store_true", help="no TUI: progress on stderr")
    run.add_argument("--json", action="store_true", help="JSON event lines on stdout")
    run.add_argument("--speed", type=float, default=1.0,
                     help="divide pauses and verification holds by this factor")
    run.add_argument("--detach", action="store_true",
                     help="run in a controller process of its own; "
                          "follow it with `upgrader attach`")
    run.add_argument("--control", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--wait", action="store_true",
                     help="outside the deploy window, wait for the next opening (else exit 3)")
    run.add_argument("--override-window", metavar="REASON",
                     help="run outside the deploy window; the reason goes to the journal")

    plan = sub.add_parser("plan", help="print what a strategy will do and how long it takes")
    fleet_args(plan)
    plan.add_argument("--json", action="store_true", help="the plan as one JSON document")
    plan.add_argument("--all-waves", action="store_true", help="list every wave")
    plan.add_argument("--at", metavar="ISO_TIME",
                      help="start the calendar of waves at this time (default: now)")
    from .analysis_cli import traffic_rate

    plan.add_argument("--traffic", type=traffic_rate, metavar="RPS",
                      help="the fleet's requests per second: how many requests each verify "
                           "hold's canary sees against the samples its metrics need")

    resume = sub.add_parser("resume", help="finish a rollout whose controller died")
    fleet_args(resume, strategy=False)
    resume.add_argument("--headless", action="store_true", help="no TUI: progress on stderr")
    resume.add_argument("--json", action="store_true", help="JSON event lines on stdout")
    resume.add_argument("--detach", action="store_true",
                        help="resume in a controller process of its own; "
                             "follow it with `upgrader attach`")
    resume.add_argument("--control", action="store_true", help=argparse.SUPPRESS)

    attach = sub.add_parser("attach", help="watch and steer a running (detached) rollout")
    fleet_args(attach, strategy=False)
    attach.add_argument("--headless", action="store_true",
                        help="no TUI: the rollout's progress on stderr")
    attach.add_argument("--json", action="store_true", help="JSON event lines on stdout")
    attach.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the controller to answer (default 10)")
    for sp in (run, attach):
        sp.add_argument("--flags-store", help="flag store for the TUI's flags screen (default: "
                                              "the fleet's [flags] store, else "
                                              ".upgrader/flags.sqlite when it exists)")

    from .analysis_cli import add_analysis_parser
    from .rollback_cli import add_rollback_parser

    add_rollback_parser(sub, fleet_args)
    add_analysis_parser(sub, fleet_args)

    status = sub.add_parser("status", help="the fleet's last rollout, from the journal")
    fleet_args(status, strategy=False)
    for action in status._actions:
        if action.dest == "fleet":      # optional here: the only fleet with a journal
            action.nargs = "?"
            action.help = ("fleet file (TOML); without it, the only fleet with a rollout in "
                           "the state folder")
    status.add_argument("--json", action="store_true", help="the status as one JSON document")
    unlock = sub.add_parser("unlock", help="remove a fleet's lock by hand (journaled)")
    fleet_args(unlock, strategy=False)
    unlock.add_argument("--reason", required=True,
                        help="why the lock is removed (journaled; required)")
    for sp in (run, resume, attach, status, unlock):
        sp.add_argument("--state", metavar="URL",
                        help="postgresql:// URL of a journal and fleet lock shared by every "
                             "controller (default $UPGRADER_STATE; unset: SQLite in "
                             "--state-dir); prefer $UPGRADER_STATE or ~/.pgpass for passwords")

    check = sub.add_parser("check", help="read the fleet (releases, balancer, reachability) and "
                                         "say whether a rollout would run; changes nothing")
    fleet_args(check, strategy=False)
    check.add_argument("--json", action="store_true", help="the findings as one JSON document")

    lab = sub.add_parser("lab", help="a real local fleet: app processes, balancer, traffic")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    up = lab_sub.add_parser("up", help="start a lab")
    up.add_argument("--fleet", help="take the lab layout from this fleet file's [lab] table")
    up.add_argument("--hosts", type=int, default=8, help="how many hosts (default 8)")
    up.add_argument("--new-hosts", type=int, default=0, help="parallel cluster (shedding)")
    up.add_argument("--slots", action="store_true", help="two slots per host (blue-green)")
    up.add_argument("--ssh", action="store_true",
                    help="each host its own sshd (in a network namespace where possible), "
                         "HAProxy in front: docs/SSHLAB.md")
    up.add_argument("--network", choices=("auto", "netns", "loopback"), default="auto",
                    help="SSH lab: hosts in network namespaces, or on 127.x.y.z addresses "
                         "(auto: namespaces where the machine allows them)")
    up.add_argument("--subnet", default=None,
                    help="SSH lab: the hosts' network (default 10.231.0.0/24)")
    up.add_argument("--base-port", type=int, default=None,
                    help="first port of the lab's balancer and hosts (default 18000)")
    up.add_argument("--dir", help="lab folder (default .upgrader/lab)")
    up.add_argument("--rps", type=int, default=100, help="user requests per second (0: none)")
    up.add_argument("--database", metavar="MIGRATION",
                    help="give the lab a database (app.sqlite in the lab folder) made by this "
                         "migration; the apps then record visits through their release's views")
    up.add_argument("--prometheus", action="store_true",
                    help="also start a Prometheus server (Debian's prometheus package) scraping "
                         "the apps' and the balancer's /metrics each second")
    up.add_argument("--flag-store", metavar="SPEC",
                    help="the flag store the lab's apps read (a -flagged release fails while "
                         "flag new-path is on in environment lab): a SQLite file or a "
                         "postgresql:// URL, opened before the lab starts; kept for lab reset "
                         "and every restarted app (default: the --fleet's [flags] store, "
                         "else flags.sqlite in the lab folder)")
    for name, text in (("down", "stop the lab: its processes and traffic"),
                       ("status", "the lab's hosts, releases and traffic")):
        sp = lab_sub.add_parser(name, help=text, description=text)
        sp.add_argument("--dir", help="lab folder (default .upgrader/lab)")
        if name == "status":
            sp.add_argument("--json", action="store_true",
                            help="the status as one JSON document")
    reset = lab_sub.add_parser("reset", help="put every host of the running lab back on its "
                                             "base release (drained first: no failed request)")
    reset.add_argument("--dir", help="lab folder (default .upgrader/lab)")

    demo = sub.add_parser("demo", help="a lab, live traffic and a canary upgrade, no setup",
                          description="A real local fleet (app processes, the built-in "
                                      "balancer, live traffic) and an upgrade under that "
                                      "traffic, with no setup; the lab goes away afterwards.")
    demo.add_argument("--headless", action="store_true",
                      help="no TUI: progress on stderr, one JSON summary line on stdout")
    demo.add_argument("--strategy", choices=names, default="canary",
                      help="the upgrade to show (default canary)")
    demo.add_argument("--hosts", type=int, default=8,
                      help="how many hosts the demo's lab has (1-60, default 8)")
    demo.add_argument("--bad-release", action="store_true",
                      help="upgrade to a release that answers 5xx to some requests")
    demo.add_argument("--speed", type=float, default=1.0, help="compress pauses by this factor")
    demo.add_argument("--rps", type=int, default=200, help="user requests per second")
    demo.add_argument("--keep", action="store_true", help="leave the lab folder behind")
    demo.add_argument("--flags-store", help="flag store for the TUI's flags screen")

    bal = sub.add_parser("balancer", help="the built-in load balancer")
    bal_sub = bal.add_subparsers(dest="balancer_command", required=True, parser_class=_Parser)
    serve = bal_sub.add_parser("serve", help="run the balancer (a process of its own)",
                               add_help=False)
    serve.add_argument("args", nargs=argparse.REMAINDER)

    sub.add_parser("plugins", help="list plugins and the providers they register")

    from .flags.cli import add_flags_parser

    add_flags_parser(sub)

    from .schema.cli import add_schema_parser

    add_schema_parser(sub)
    _describe_subcommands(p)
    return p


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """A subcommand without a description of its own shows its help line in its ``--help``
    (argparse shows nothing there otherwise)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            text = helps.get(name)
            if not sub.description and text and text != argparse.SUPPRESS:
                sub.description = text[0].upper() + text[1:] + "."
            _describe_subcommands(sub)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["balancer", "serve"]:
        from .balancer.server import main as serve_main

        return serve_main(argv[2:])
    args = _parser().parse_args(argv)
    install_log_redaction()
    try:
        handler = _COMMANDS[args.command]
        return handler(args)
    except ConfigError as exc:
        print(f"upgrader: error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PolicyRefused as exc:
        print(f"upgrader: refused: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_REFUSED
    except UpgraderError as exc:
        print(f"upgrader: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`upgrader plan --json | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


# ------------------------------------------------------------------------------ commands


def _plugins() -> Any:
    from .plugins import Plugins

    return Plugins()


def _load(args: argparse.Namespace, plugins: Any) -> Any:
    from .config import load_fleet

    path = Path(args.fleet)
    if not path.exists():
        raise ConfigError("no such fleet file", file=path)
    return load_fleet(path, registry=plugins, strategy=getattr(args, "strategy", None))


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import estimate, waves
    from .rollout import compile_plan

    fleet = _load(args, _plugins())
    plan = compile_plan(fleet)
    est = estimate(plan, fleet.timing)
    wave_list = waves(plan, fleet.timing)
    slots = _plan_calendar(args, fleet, plan)
    parts = _rollback_parts(fleet, plan, est.rollback_s)
    from .analysis_cli import print_verify_samples, verify_samples

    samples = verify_samples(fleet, plan, wave_list, args.traffic)
    if args.json:
        print(json.dumps({
            "fleet": fleet.name, "strategy": plan.strategy,
            "current": fleet.releases.current, "target": fleet.releases.target,
            "hosts": plan.total_hosts, "steps": len(plan.steps),
            "estimated_s": est.total_s, "rollback_estimated_s": est.rollback_s,
            "rollback_mode": plan.rollback_mode, "waits_for_promotion": est.waits_for_promotion,
            "estimated": format_duration(est.total_s), "notes": list(plan.notes),
            "calendar": _calendar_json(fleet, slots),
            **({"rollback_plan": [{"step": text, "estimated_s": seconds}
                                  for text, seconds in parts]} if len(parts) > 1 else {}),
            "waves": [{"index": w.index, "hosts": w.hosts, "hosts_done": w.hosts_done,
                       "blast_radius": w.blast_radius, "pause_s": w.pause,
                       "start_s": w.start_s, "duration_s": w.duration_s, "label": w.label}
                      for w in wave_list],
            **({"verify_samples": samples} if samples else {}),
        }))
        return EXIT_OK
    print(f"fleet {fleet.name}: {plan.strategy} {fleet.releases.current} -> "
          f"{fleet.releases.target} on {plural(plan.total_hosts, 'host')}, "
          f"{plural(len(wave_list), 'wave')}")
    print(f"{'wave':>5}  {'starts':>12}  {'hosts':>6}  {'done':>6}  {'exposed':>8}  "
          f"{'pause':>8}  what")
    shown = wave_list if args.all_waves or len(wave_list) <= 30 else \
        wave_list[:20] + (None,) + wave_list[-5:]
    for wave in shown:
        if wave is None:
            print(f"{'...':>5}  ({len(wave_list) - 25} more waves; --all-waves lists them)")
            continue
        pause = ("promote" if wave.pause is None
                 else format_duration(wave.pause) if wave.pause else "-")
        print(f"{wave.index:>5}  {'+' + format_duration(wave.start_s):>12}  {wave.hosts:>6}  "
              f"{wave.hosts_done:>6}  {wave.blast_radius:>7.1f}%  {pause:>8}  {wave.label}")
    print(f"estimated total: {format_duration(est.total_s)}{_human(est.total_s)}"
          + (f" plus {est.waits_for_promotion} wait(s) until promoted"
             if est.waits_for_promotion else ""))
    print(f"roll-back ({plan.rollback_mode}), from the last wave: "
          f"{format_duration(est.rollback_s)}")
    if len(parts) > 1:
        print("roll-back plan after a failed verification, in order:")
        for number, (text, seconds) in enumerate(parts, 1):
            print(f"  {number}. {text}: {format_duration(seconds)}")
    print_verify_samples(samples)
    for note in plan.notes:
        print(f"note: {note}")
    _print_calendar(fleet, slots, args.all_waves)
    return EXIT_OK


def _flags_off_line(entries: Any, target: str) -> str:
    """``status`` of a rollout that stopped "flags off, release kept": which flags went off
    and what the operator may do."""
    flags: list[str] = []
    for entry in entries:
        if entry.kind == "flags_first" and entry.data.get("phase") == "begin":
            flags = list(entry.data.get("flags") or ())
    shown = ", ".join(flags) or "its flags"
    return (f"flags off, release kept: {target} verified without {shown}; the operator "
            "decides (fix forward, turn a flag on again, or roll back)")


def _rollback_parts(fleet: Any, plan: Any, hosts_s: float) -> list[tuple[str, float]]:
    """The roll-back plan in order, each part with its estimate: the release's flags off and
    verify again (``[release] flags_hold``), the hosts, the schema change (one transaction,
    shown as 0 s). One part only when the release has neither flags nor a migration."""
    parts: list[tuple[str, float]] = []
    migration = fleet.schema.migration_name if fleet.schema is not None else None
    if plan.rollback_mode != "flag" and fleet.flags is not None and (
            fleet.releases.flags or migration):
        named = list(fleet.releases.flags)
        if migration:
            named.append(f"those whose schema is {migration}")
        parts.append((f"flags off ({', '.join(named)}) and verify again; cured: stop, "
                      "release kept", fleet.releases.flags_hold))
    parts.append((f"hosts back to {fleet.releases.current} ({plan.rollback_mode})", hosts_s))
    if migration:
        parts.append((f"schema change {migration} rolled back", 0.0))
    return parts


def _plan_calendar(args: argparse.Namespace, fleet: Any, plan: Any) -> Any:
    """When each wave would run given the deploy windows, from ``--at`` or now (None: the
    fleet has no windows and no ``--at`` was given)."""
    from datetime import datetime

    from .policy import calendar

    if fleet.windows is None and not args.at:
        return None
    start = datetime.now(UTC)
    if args.at:
        try:
            start = datetime.fromisoformat(args.at.strip())
        except ValueError:
            raise ConfigError(f"expected a time like 2026-03-30T09:00+02:00, got {args.at!r}",
                              key="--at") from None
        if start.tzinfo is None:
            raise ConfigError(f"{args.at!r} has no offset: add one (+02:00, Z)", key="--at")
    return start, calendar(plan, fleet.timing, fleet.windows, start)


def _calendar_json(fleet: Any, slots: Any) -> Any:
    if slots is None:
        return None
    start, rows = slots
    windows = fleet.windows
    return {"from": start.isoformat(), "waves": [
        {"index": r.index, "start": r.start.isoformat() if r.start else None,
         "end": r.end.isoformat() if r.end else None, "waited_s": r.waited_s,
         "teams": [t.name for t in windows.on_duty(r.start)] if windows and r.start else []}
        for r in rows]}


def _print_calendar(fleet: Any, slots: Any, all_waves: bool) -> None:

    if slots is None:
        return
    start, rows = slots
    windows = fleet.windows

    def when(at: Any) -> str:
        if at is None:
            return "no opening"
        text: str = at.astimezone(UTC).strftime("%a %Y-%m-%d %H:%M UTC")
        teams = windows.on_duty(at) if windows is not None else ()
        if teams:
            local = at.astimezone(teams[0].zone)
            text += f" ({local.strftime('%H:%M %Z')} {teams[0].name})"
        return text

    where = f"deploy windows: {windows.describe()}" if windows is not None else "no deploy windows"
    if windows is not None and windows.min_remaining:
        where += f"; a wave leaves {format_duration(windows.min_remaining)} before a window closes"
    print(f"calendar from {when(start)}, {where}")
    print(f"{'wave':>5}  {'starts':<46}  {'ends':<46}  waits")
    shown = list(rows) if all_waves or len(rows) <= 30 else list(rows[:20]) + [None] + \
        list(rows[-5:])
    for row in shown:
        if row is None:
            print(f"{'...':>5}  ({len(rows) - 25} more waves; --all-waves lists them)")
            continue
        waited = format_duration(row.waited_s) if row.waited_s else "-"
        print(f"{row.index:>5}  {when(row.start):<46}  {when(row.end):<46}  {waited}")
    ends = [r.end for r in rows if r.end is not None]
    if rows and len(ends) == len(rows):
        print(f"finishes {when(ends[-1])}, {format_duration((ends[-1] - start).total_seconds())}"
              " from the start")
    elif rows:
        print("some waves find no opening within the next 400 days (a freeze without end?)")


def _check_window(args: argparse.Namespace, fleet: Any, *, recover: bool) -> None:
    """Outside the deploy window: refuse (exit 3, naming the next opening) unless ``--wait``
    (the engine pauses until it) or ``--override-window REASON``."""
    from datetime import datetime

    from .policy import refusal

    reason = getattr(args, "override_window", None)
    if reason is not None and not reason.strip():
        raise ConfigError("--override-window needs a reason", key="--override-window")
    if fleet.windows is None or recover or reason or getattr(args, "wait", False):
        return
    refused = refusal(fleet.windows, datetime.now(UTC))
    if refused is not None:
        raise refused


def _window_argv(args: argparse.Namespace, *, recover: bool) -> list[str]:
    """The controller process gets the decision already taken here: it waits, or overrides."""
    if recover:
        return []
    reason = getattr(args, "override_window", None)
    return ["--wait"] + (["--override-window", reason] if reason else [])


def _human(seconds: float) -> str:
    days = seconds / 86400
    if 5.5 <= days <= 8.5:
        return " (about a week)"
    if days >= 1:
        return f" (about {days:.0f} days)"
    return ""


@contextlib.contextmanager
def _refusal_on_stdout(args: argparse.Namespace) -> Iterator[list[Any]]:
    """With ``--json``, a rollout refused (exit 3) prints :func:`refusal_line` on stdout, so a
    script that parses stdout gets the end too; main() still says it on stderr. The block
    appends the fleet it loaded to the list it is given."""
    loaded: list[Any] = []
    try:
        yield loaded
    except PolicyRefused as exc:
        if getattr(args, "json", False):
            print(json.dumps(refusal_line(exc, loaded[0] if loaded else None)), flush=True)
        raise


def cmd_run(args: argparse.Namespace, *, recover: bool = False) -> int:
    with _refusal_on_stdout(args) as loaded:
        return _run_command(args, recover=recover, loaded=loaded)


def refusal_line(exc: PolicyRefused, fleet: Any) -> dict[str, Any]:
    """What ``run``/``resume --json`` print on stdout when the rollout is refused (exit 3)
    before it starts: the summary line's shape with the outcome ``refused``, the reason, the
    fix, and the inventory's problems (``upgrader check --json``'s) when it refused."""
    from .policy import WindowRefused
    from .redact import redact_data

    text = redact_text(str(exc))
    problems: list[dict[str, Any]] = redact_data(list(getattr(exc, "problems", ())))
    fixes = dict.fromkeys(str(p["fix"]) for p in problems if p.get("fix"))
    fix: str | None = "; ".join(fixes) or None
    if isinstance(exc, WindowRefused):
        fix = ("push anyway with --override-window REASON" if exc.next_opening is None else
               "wait for the next opening with --wait, or push anyway with "
               "--override-window REASON")
    return {"outcome": "refused", "fleet": fleet.name if fleet is not None else None,
            "strategy": fleet.strategy.kind if fleet is not None else None, "rollout": None,
            "reason": text.splitlines()[0] if text else "", "fix": fix, "problems": problems,
            "error": text}


def _run_command(args: argparse.Namespace, *, recover: bool, loaded: list[Any]) -> int:
    plugins = _plugins()
    fleet = _load(args, plugins)        # bad input fails here (exit 2), before anything starts
    loaded.append(fleet)
    _check_window(args, fleet, recover=recover)
    args.state_dir = str(_state_dir(args, fleet))
    if getattr(args, "detach", False) or (not args.headless and not args.control):
        if not recover:     # the controller would refuse the fleet: say so here, exit 3
            _refuse_unready(fleet, plugins)
        # the engine runs in a controller process of its own, so the rollout outlives this
        # terminal; without --detach the TUI attaches to it at once
        code = _detach(args, fleet, recover=recover)
        if code != EXIT_OK or args.detach:
            return code
        args.timeout = 15.0
        return cmd_attach(args, fleet=fleet)
    return asyncio.run(_run(fleet, plugins, args, recover=recover))


def _state_dir(args: argparse.Namespace, fleet: Any, *, unfinished_only: bool = True) -> Path:
    """``--state-dir``, else the fleet's default; a rollout journaled under the old default
    (``./.upgrader/state``) is still found there (said once)."""
    from .rollout import default_state_dir, legacy_state_dir

    if args.state_dir:
        return Path(args.state_dir).resolve()
    new = default_state_dir(fleet)
    if not (new / "journal.sqlite").exists() or not unfinished_only:
        old = legacy_state_dir(fleet, unfinished_only=unfinished_only)
        if old is not None and not _journals(new, fleet.name):
            print(f"upgrader: found the journal at {old} (the old default; the default is "
                  f"now {new})", file=sys.stderr)
            args.state_dir = str(old)
            return old
    return new


def _journals(state_dir: Path, fleet: str) -> bool:
    """Whether the SQLite journal in ``state_dir`` records a rollout of ``fleet``."""
    if not (state_dir / "journal.sqlite").exists():
        return False
    from .journal import Journal

    journal = Journal(state_dir / "journal.sqlite")
    try:
        return journal.latest(fleet) is not None
    finally:
        journal.close()


def _read_fleet_lock(fleet: Any, plugins: Any) -> tuple[Any, str] | None:
    """(holder, where) of the lock on the fleet itself, or None: nobody holds it, or the
    fleet cannot be reached now (a controller finds out and says so)."""
    from .fleetlock import keeper_for
    from .rollout import open_providers

    async def read() -> Any:
        providers = await open_providers(fleet, plugins, None)
        try:
            keeper = keeper_for(fleet, providers.transport, providers.balancer)
            return await keeper.read(), keeper.where
        finally:
            await providers.aclose()

    try:
        holder, where = asyncio.run(read())
    except UpgraderError:
        return None
    return None if holder is None else (holder, where)


def _fleet_lock_holder(fleet: Any, plugins: Any) -> Any:
    """FleetLocked naming the live holder of the lock on the fleet itself, or None."""
    import time

    from .fleetlock import stale_reason

    found = _read_fleet_lock(fleet, plugins)
    if found is None or stale_reason(found[0], now=time.time()) is not None:
        return None
    return found[0].refused(found[1], fleet.name)


def _fleet_lock_json(fleet: Any) -> dict[str, Any] | None:
    """The lock on the fleet itself for ``status``: holder, where, and whether it looks dead."""
    import time

    from .fleetlock import stale_reason

    found = _read_fleet_lock(fleet, _plugins())
    if found is None:
        return None
    holder, where = found
    return {"text": holder.describe(), "where": where, **holder.to_json(),
            "dead": stale_reason(holder, now=time.time())}


def _detach(args: argparse.Namespace, fleet: Any, *, recover: bool,
            command: str | None = None) -> int:
    """Start the controller process (``command``: ``rollback``; default ``run`` or
    ``resume``) and check that it serves the control API."""
    from .control.controller import connect, start_detached

    state_dir = _state_dir(args, fleet)
    argv = [command or ("resume" if recover else "run"), str(Path(args.fleet).resolve()),
            "--headless", "--control", "--state-dir", str(state_dir)]
    if getattr(args, "strategy", None):
        argv += ["--strategy", args.strategy]
    if getattr(args, "speed", 1.0) != 1.0:
        argv += ["--speed", str(args.speed)]
    if command == "rollback":
        argv += ["--to", args.to] if getattr(args, "to", None) else []
    else:
        argv += _window_argv(args, recover=recover)
    from .journal import ensure_private_dir
    from .state import STATE_VARIABLE, lock_holder, resolve_state

    state = resolve_state(getattr(args, "state", None))
    holder = lock_holder(state, state_dir, fleet.name)
    if holder is not None:      # the controller would be refused: say so here, exit 3
        raise PolicyRefused(f"fleet {fleet.name} is being driven by {holder['text']}; "
                            "one controller per fleet at a time")
    refused = _fleet_lock_holder(fleet, _plugins())
    if refused is not None:
        raise refused
    ensure_private_dir(state_dir)
    log_path = state_dir / f"{fleet.name}.controller.log"
    # the state URL goes through the environment: a password in argv would show in `ps`
    env = {**os.environ, STATE_VARIABLE: state} if state else None
    before = _latest_record(args, fleet, state_dir)
    pid = start_detached(argv, log_path=log_path, env=env)

    async def check() -> None:
        await (await connect(state_dir, fleet.name, timeout=15, pid=pid)).aclose()

    try:
        asyncio.run(check())
        ended = ""
    except UpgraderError as exc:
        # a quick rollout: the controller ran it to its end (success, failure or roll-back)
        # before this command reached it; the journal holds a new record of it that ended
        # (finished, or a roll-back left incomplete for `upgrader resume`), not one "running"
        after = _latest_record(args, fleet, state_dir)
        recorded = after is not None and after.status != "running" and (
            before is None or after.id != before.id)
        if not recorded:
            print(f"upgrader: {exc}; see {log_path}", file=sys.stderr)
            return EXIT_FAILED
        ended = f" and already ended {after.status}"
    if args.detach:     # for scripts: `pid=$(upgrader run F --detach)`, or one JSON object
        if getattr(args, "json", False):
            print(json.dumps({"fleet": fleet.name, "pid": pid, "log": str(log_path),
                              "state_dir": str(state_dir),
                              "attach": f"upgrader attach {args.fleet}"}), flush=True)
        else:
            print(pid, flush=True)
    print(f"rollout of {fleet.name} runs in controller pid {pid}{ended} (log {log_path}); "
          f"follow it with: upgrader attach {args.fleet}", file=sys.stderr)
    return EXIT_OK


def cmd_attach(args: argparse.Namespace, *, fleet: Any = None) -> int:
    fleet = fleet or _load(args, None)
    return asyncio.run(_attach(fleet, _state_dir(args, fleet), args))


async def _controller_gone(args: argparse.Namespace, fleet: Any, state_dir: Path,
                           within: float = 10.0) -> None:
    """Wait (up to ``within`` seconds) for the controller whose rollout just ended to exit,
    when it runs on this machine. It reports the end, lingers for its clients, and only then
    lets go of the fleet lock: a script's next command (``status``, another ``run``) found
    the lock still held by it."""
    import socket

    from .fleetlock import pid_alive

    record = await asyncio.to_thread(_latest_record, args, fleet, state_dir)
    host, _, pid = (record.controller or "").rpartition(":") if record else ("", "", "")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    # another process (not our child): no event tells of its exit, so poll it, bounded
    while loop.time() < deadline and pid_alive(int(pid)):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _attach(fleet: Any, state_dir: Path, args: argparse.Namespace) -> int:
    from .control.controller import connect, controller_running
    from .events import Outcome

    if not await controller_running(state_dir, fleet.name):
        ended = await asyncio.to_thread(_ended_rollout, args, fleet, state_dir)
        if ended is not None:
            return ended
    try:
        remote = await connect(state_dir, fleet.name, timeout=getattr(args, "timeout", 10.0),
                               fleet_file=args.fleet)
    except UpgraderError as exc:
        from .state import lock_holder, resolve_state

        state = resolve_state(getattr(args, "state", None))
        holder = await asyncio.to_thread(lock_holder, state, state_dir, fleet.name) \
            if state else None
        if holder is None:
            raise
        raise ControlError(f"{exc}; the fleet is driven by {holder['text']}: attach on that "
                           "machine") from None
    try:
        if args.headless:
            from .headless import HeadlessDisplay

            display = HeadlessDisplay(total_hosts=len(fleet.main_hosts),
                                      target=fleet.releases.target,
                                      json_out=sys.stdout if args.json else None)
            with display:
                for event in list(remote.history):
                    display(event)
                remote.subscribe(display)
                finished = await remote.wait_finished()
            await _controller_gone(args, fleet, state_dir)
            return Outcome(finished["outcome"]).exit_code
        from .frontend import open_flag_store
        from .tui.app import make_app

        flag_store = open_flag_store(getattr(args, "flags_store", None), fleet)
        # RemoteRollout is a RolloutHandle at run time (runtime_checkable); mypy refuses its
        # deque ``history`` against the Protocol's settable ``Sequence`` attribute, which a
        # read-only property in control/handle.py would accept
        handle = cast("RolloutHandle", remote)
        try:
            app = make_app(handle, title=f"{fleet.name}", on_quit=lambda choice: choice,
                           flags=flag_store)
            choice = await app.run_async()
        finally:
            if flag_store is not None:
                flag_store.close()
        if choice == "abort":
            remote.abort(rollback=True)
            finished = await remote.wait_finished()
            return Outcome(finished["outcome"]).exit_code
        if remote.finished:
            finished = await remote.wait_finished()
            return Outcome(finished["outcome"]).exit_code
        print(detach_message(str(remote.snapshot().get("state") or ""), args.fleet),
              file=sys.stderr)
        return EXIT_OK
    finally:
        await remote.aclose()


def detach_message(state: str, fleet: object) -> str:
    """What leaving an attached rollout says: a paused one stays paused (docs/TUI.md)."""
    if state in ("PAUSING", "PAUSED"):
        return (f"the rollout stays paused; resume it with: upgrader attach {fleet} "
                "(then space)")
    return f"the rollout goes on; attach again with: upgrader attach {fleet}"


def _latest_record(args: argparse.Namespace, fleet: Any, state_dir: Path) -> Any:
    """The journal's latest rollout record of ``fleet`` (None without a journal or record)."""
    from .state import journal_exists, open_journal, resolve_state

    state = resolve_state(getattr(args, "state", None))
    if not journal_exists(state, state_dir):
        return None
    journal = open_journal(state, state_dir)
    try:
        return journal.latest(fleet.name)
    finally:
        journal.close()


def _finisher(record: Any, fleet: Any) -> str:
    """The command that finishes ``record``'s unfinished rollout: ``rollback`` for a roll-back
    that ``upgrader rollback`` started (it runs the other way round from the fleet file, and
    ``resume`` refuses it), else ``resume``."""
    return "rollback" if (record.current, record.target) == (
        fleet.releases.target, fleet.releases.current) else "resume"


def _ended_rollout(args: argparse.Namespace, fleet: Any, state_dir: Path) -> int | None:
    """With no controller answering: when the journal says the fleet's last rollout ended
    (finished, or its roll-back left incomplete), say how (stderr; one JSON object on stdout
    with ``--json``) and return its exit code; None when there is no such record or it is
    running (a controller may be starting)."""
    from .events import Outcome
    from .journal import ROLLBACK_INCOMPLETE

    record = _latest_record(args, fleet, state_dir)
    if record is None or record.status == "running":
        return None
    try:
        code = Outcome(record.status).exit_code
    except ValueError:      # rollback_incomplete, or a status this version does not know
        code = EXIT_FAILED
    if getattr(args, "json", False):
        print(json.dumps({"rollout": record.id, "fleet": record.fleet, "outcome": record.status,
                          "finished": record.finished, "attached": False}), flush=True)
    if record.status == ROLLBACK_INCOMPLETE:
        print(f"nothing to attach to: the last rollout of {fleet.name} ({record.id}) ended "
              f"{record.status}; `upgrader status {args.fleet}` shows what is left and "
              f"`upgrader {_finisher(record, fleet)} {args.fleet}` completes the roll-back",
              file=sys.stderr)
        return code
    print(f"nothing to attach to: the last rollout of {fleet.name} ({record.id}) ended "
          f"{record.status}; `upgrader status {args.fleet}` shows it", file=sys.stderr)
    return code


async def _run(fleet: Any, plugins: Any, args: argparse.Namespace, *, recover: bool) -> int:
    from .frontend import forward_signals, quiet_print
    from .headless import HeadlessDisplay, summary_line
    from .rollout import Rollout, compile_plan, compress

    plan = None if recover else compile_plan(fleet)
    speed = getattr(args, "speed", 1.0) or 1.0
    if plan is not None and speed != 1.0:
        fleet, plan = compress(fleet, plan, speed)
    display = HeadlessDisplay(total_hosts=len(fleet.main_hosts), target=fleet.releases.target,
                              json_out=sys.stdout if args.json else None)
    # a controller serves the control API: on_failure = "pause" can wait for an operator
    interactive = bool(getattr(args, "control", False))
    async with Rollout(fleet, plan, plugins=plugins, state_dir=args.state_dir,
                       recover=recover, observers=[display],
                       interactive=interactive, state=getattr(args, "state", None),
                       override_window=getattr(args, "override_window", None)) as rollout:
        forward_signals(rollout)
        if rollout.engine is not None and fleet.rollback_window is not None:
            # what the window this rollout opens would cost to use (TUI, control API)
            rollout.engine.rollback_back_s = _straight_back_s(fleet)
        with display:
            if getattr(args, "control", False):
                from .control.controller import serve_rollout

                result = await serve_rollout(rollout)
            else:
                result = await rollout.run()
    extra: dict[str, Any] = {}
    if getattr(result, "rollback_incomplete", False):
        # the fleet is half-way: say so, and how to finish (the journal keeps it unfinished)
        extra = {"rollback_incomplete": True, "next": f"upgrader resume {args.fleet}"}
        quiet_print(f"upgrader: roll-back incomplete; the rollout stays unfinished. Fix the "
                    f"fault, then `upgrader resume {args.fleet}` completes the roll-back "
                    f"(`upgrader status {args.fleet}` shows what is left)", file=sys.stderr)
    # after a hang-up stdout may be a terminal that is gone: the summary must not fail the run
    quiet_print(redact_text(summary_line(result, rollout.plan.strategy if rollout.plan else "?",
                                         **extra)))
    return result.exit_code


def _straight_back_s(fleet: Any) -> float | None:
    """The estimate of ``upgrader rollback`` straight back to ``fleet``'s current release
    once its rollout completes (the same figure ``status`` shows then)."""
    from .rollback_cli import rollback_cost
    from .rollback_window import WindowState

    current, target = fleet.releases.current, fleet.releases.target
    try:
        cost = rollback_cost(fleet, WindowState(live=target, previous=current,
                                                open_releases=(current,), closes_at=None))
    except UpgraderError:       # a figure to show: it never stops the rollout itself
        return None
    return None if cost is None else float(cost["estimate_s"])


def cmd_rollback(args: argparse.Namespace) -> int:
    from .rollback_cli import cmd_rollback as rollback

    with _refusal_on_stdout(args) as loaded:
        def load(a: argparse.Namespace, plugins: Any) -> Any:
            loaded.append(_load(a, plugins))
            return loaded[-1]

        return rollback(args, load=load, plugins=_plugins(), run=_run,
                        state_dir_of=lambda a, f: _state_dir(a, f, unfinished_only=False),
                        detach=lambda a, f: _detach(a, f, recover=False, command="rollback"),
                        attach=lambda a, f: cmd_attach(a, fleet=f))


def cmd_analysis(args: argparse.Namespace) -> int:
    from .analysis_cli import cmd_analysis as analysis

    return analysis(args, load=_load,
                    state_dir_of=lambda a, f: _state_dir(a, f, unfinished_only=False))


def cmd_resume(args: argparse.Namespace) -> int:
    return cmd_run(args, recover=True)


def cmd_status(args: argparse.Namespace) -> int:
    from .journal import ROLLBACK_INCOMPLETE, UNFINISHED
    from .state import describe_state, journal_exists, lock_holder, open_journal, resolve_state

    if args.fleet is None:
        found = _only_fleet(args)
        if isinstance(found, int):
            return found
        args.fleet = found
    fleet = _load(args, None)
    state_dir = Path(args.state_dir) if args.state_dir else _state_dir(args, fleet,
                                                                          unfinished_only=False)
    state = resolve_state(getattr(args, "state", None))
    where = describe_state(state, state_dir)
    fleet_lock = _fleet_lock_json(fleet)
    lock_line = "" if fleet_lock is None else (
        f"fleet lock ({fleet_lock['where']}): held by {fleet_lock['text']}"
        + (f"; its holder looks dead ({fleet_lock['dead']}): the next controller takes it "
           "over" if fleet_lock["dead"] else ""))
    if not journal_exists(state, state_dir):
        print(f"no rollout of {fleet.name} recorded in {where}")
        if lock_line:
            print(lock_line)
        return EXIT_OK
    journal = open_journal(state, state_dir)
    try:
        record = journal.latest(fleet.name)
        if record is None:
            print(f"no rollout of {fleet.name} recorded in {where}")
            if lock_line:
                print(lock_line)
            return EXIT_OK
        entries = journal.entries(record.id)
    finally:
        journal.close()
    hosts: dict[str, Any] = {}
    for entry in entries:
        if entry.kind == "host_done":
            hosts[entry.data["host"]] = entry.data.get("release")
    unfinished = record.status in UNFINISHED
    holder = lock_holder(state, state_dir, fleet.name) if unfinished else None
    left = _left_behind(entries) if record.status == ROLLBACK_INCOMPLETE else None
    frozen = _frozen(entries)
    info = {"rollout": record.id, "driven_by": holder["text"] if holder else None,
            "lock_holder": holder, "fleet": record.fleet, "strategy": record.strategy,
            "current": record.current, "target": record.target, "status": record.status,
            "started": record.started, "finished": record.finished,
            "controller": record.controller, "events": len(entries), "hosts_changed": hosts,
            "state": where, "unfinished": unfinished, "left": left, "fleet_lock": fleet_lock,
            "frozen": frozen}
    info["rollback_window"], window_line = _window_status(args, fleet, state_dir)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"rollout {record.id}: {record.strategy} {record.current} -> {record.target}: "
              f"{record.status} ({plural(len(entries), 'event')}, "
              f"{plural(len(hosts), 'host')} changed, "
              f"controller {record.controller})")
        if left is not None:
            _print_left_behind(left, record.current)
        if record.status == "flags_off":
            print(_flags_off_line(entries, record.target))
        if frozen is not None:
            print(f"frozen: {frozen['reason']}")
            for choice, effect in (frozen.get("choices") or {}).items():
                print(f"  {choice}: {effect}")
        finisher = _finisher(record, fleet)
        if unfinished:
            if holder:
                print(f"running: driven by {holder['text']}; follow it with "
                      f"`upgrader attach {args.fleet}`")
            elif left is not None:
                print(f"unfinished: once the fault is fixed, `upgrader {finisher} "
                      f"{args.fleet}` completes the roll-back to {record.current}")
            else:
                print(f"unfinished and no controller drives it: `upgrader {finisher} "
                      f"{args.fleet}` finishes it")
        if window_line:
            print(window_line)
        if lock_line:
            print(lock_line)
    return EXIT_OK


def _window_status(args: argparse.Namespace, fleet: Any,
                   state_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The roll-back window (``[release] rollback_window``) and what a roll-back would cost."""
    from .rollback_cli import read_window, rollback_cost
    from .rollback_window import describe

    if fleet.rollback_window is None:
        return None, ""
    window, _ = read_window(fleet, args, state_dir)
    cost = rollback_cost(fleet, window)
    if cost is None:
        return None, ""
    data = {"live": window.live, "previous": window.previous, "open": window.open,
            "closes_at": window.closes_at, "open_releases": list(window.open_releases),
            "rollback": cost}
    if window.open:
        closes = "" if window.closes_at is None else \
            f", closes in {format_duration(max(0.0, window.closes_at - time.time()))}"
        line = (f"roll-back window open ({describe(fleet.rollback_window)}{closes}): "
                f"`upgrader rollback {args.fleet}` goes straight back to {window.previous}, "
                f"about {format_duration(cost['estimate_s'])}")
    else:
        line = (f"roll-back window closed: `upgrader rollback {args.fleet}` is an ordinary "
                f"rollout to {window.previous}, about {format_duration(cost['estimate_s'])}")
    return data, line


def _journaled_fleets(args: argparse.Namespace) -> tuple[str, dict[str, tuple[str, float]]]:
    """Where ``status`` looks without a fleet file, and the fleet files with a rollout there:
    {fleet file: (fleet name, when its last rollout started)}. Read-only: creates nothing."""
    import sqlite3

    from .rollout import OLD_STATE_DIR, default_state_dir

    if args.state_dir or os.environ.get("UPGRADER_STATE_DIR"):
        home = Path(args.state_dir or default_state_dir()).expanduser()
        folders = [home]
    else:
        home = default_state_dir()
        folders = sorted(p for p in home.iterdir() if p.is_dir()) if home.is_dir() else []
        folders.append(OLD_STATE_DIR)
    fleets: dict[str, tuple[str, float]] = {}
    for folder in folders:
        path = folder / "journal.sqlite"
        if not path.is_file():
            continue
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = conn.execute("SELECT fleet, fleet_path, MAX(started) FROM rollouts "
                                    "GROUP BY fleet, fleet_path").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            continue            # not a journal we can read: status FLEET says why
        for name, fleet_path, started in rows:
            if not fleet_path:
                continue
            fleet_file = fleet_path if os.path.isabs(fleet_path) else str(
                (folder.parent.parent / fleet_path) if folder == OLD_STATE_DIR else fleet_path)
            if fleet_file not in fleets or fleets[fleet_file][1] < started:
                fleets[fleet_file] = (name, started)
    return str(home), fleets


def _only_fleet(args: argparse.Namespace) -> str | int:
    """``upgrader status`` without a fleet: the fleet file of the only fleet with a journaled
    rollout, or an exit code after saying what to type (each command works as printed)."""
    if getattr(args, "state", None) or os.environ.get("UPGRADER_STATE"):
        raise ConfigError("status without a fleet file reads the local state folder only; "
                          "with --state (PostgreSQL), name the fleet: `upgrader status "
                          "FLEET.toml --state URL`", key="fleet")
    where, fleets = _journaled_fleets(args)
    existing = {path: info for path, info in fleets.items() if Path(path).is_file()}
    if len(existing) == 1:
        (only,) = existing
        return only
    if not existing:
        gone = "".join(f"\n  {name}: {path} (the file is gone)"
                       for path, (name, _) in sorted(fleets.items()))
        print(f"no rollout recorded in {where}{gone}\nstart one with `upgrader run "
              f"FLEET.toml`; `upgrader status FLEET.toml` shows a fleet's last rollout")
        return EXIT_OK
    print(f"upgrader: error: {len(existing)} fleets have rollouts in {where}; name one "
          f"(newest first):", file=sys.stderr)
    for path, (name, _) in sorted(existing.items(), key=lambda item: -item[1][1]):
        print(f"  upgrader status {_shell_path(path)}    # {name}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _shell_path(path: str) -> str:
    """``path`` as typed at a shell: relative to the working directory when under it."""
    import shlex

    try:
        shown = os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) \
            else path
    except ValueError:
        shown = path
    return shlex.quote(shown)


def _frozen(entries: list[Any]) -> dict[str, Any] | None:
    """The last ``frozen`` event's data while no operator has answered it (resume, abort, a
    roll-back), else None."""
    frozen: dict[str, Any] | None = None
    for entry in entries:
        if entry.kind == "frozen":
            frozen = dict(entry.data)
        elif entry.kind == "rollback_started" or (
                entry.kind == "control" and entry.data.get("action") in ("resume", "abort")
                and not (entry.data.get("action") == "abort"
                         and entry.data.get("rollback") is False)):
            frozen = None
    return frozen


def cmd_unlock(args: argparse.Namespace) -> int:
    """Remove the lock on the fleet itself by hand, with a reason that goes to the journal."""
    reason = (args.reason or "").strip()
    if not reason:
        raise ConfigError("say why the lock is removed: it is journaled", key="--reason")
    plugins = _plugins()
    fleet = _load(args, plugins)
    return asyncio.run(_unlock(fleet, plugins, args, reason))


async def _unlock(fleet: Any, plugins: Any, args: argparse.Namespace, reason: str) -> int:
    import time

    from .fleetlock import keeper_for, stale_reason
    from .rollout import open_providers
    from .state import describe_state, open_journal, resolve_state

    state = resolve_state(getattr(args, "state", None))
    state_dir = _state_dir(args, fleet, unfinished_only=False)
    providers = await open_providers(fleet, plugins, str(state_dir))
    try:
        keeper = keeper_for(fleet, providers.transport, providers.balancer)
        removed = await keeper.release(None)
    finally:
        await providers.aclose()
    if not removed:
        print(f"fleet {fleet.name}: no lock held ({keeper.where}); nothing to do")
        return EXIT_OK
    journal = await asyncio.to_thread(open_journal, state, state_dir)
    try:
        for holder in removed:
            await asyncio.to_thread(journal.note_lock, fleet.name, "unlocked",
                                    f"{reason} ({keeper.where})", holder.to_json())
    finally:
        await asyncio.to_thread(journal.close)
    for holder in removed:
        print(f"fleet {fleet.name}: removed the lock of {holder.describe()} ({keeper.where}); "
              f"journaled in {describe_state(state, state_dir)}")
        if stale_reason(holder, now=time.time()) is None:
            print(f"upgrader: warning: its holder may still be running ({holder.user}@"
                  f"{holder.machine} pid {holder.pid}): it stops renewing the lock at its "
                  "next heartbeat, but stop it if it still drives the fleet", file=sys.stderr)
    return EXIT_OK


def _left_behind(entries: list[Any]) -> dict[str, Any] | None:
    """The last ``rollback_incomplete`` event's data: what an unfinished roll-back left."""
    for entry in reversed(entries):
        if entry.kind == "rollback_incomplete":
            return dict(entry.data)
    return None


def _print_left_behind(left: dict[str, Any], current: str) -> None:
    """``upgrader status`` of a roll-back that did not finish: why, and what is left."""
    print("roll-back incomplete; what was left when it stopped:")
    print(f"  why: {left.get('error') or 'unknown error'}")
    for name, host in sorted((left.get("hosts") or {}).items()):
        release = host.get("release")
        seen = (f"runs {release}" if release is not None
                else f"release unknown ({host.get('read_error') or 'not read'}); "
                     f"journal says {host.get('journal')}")
        todo = ("" if release == current and host.get("phase") != "failed"
                else f"  <- to roll back to {current}")
        error = f"; {host['error']}" if host.get("error") else ""
        print(f"  host {name}: {seen}, phase {host.get('phase')}{error}{todo}")
    backends = left.get("backends")
    if backends is None:
        print(f"  balancer: not readable ({left.get('balancer_error') or 'no answer'})")
    else:
        for name, backend in backends.items():
            print(f"  backend {name}: {backend.get('state')} in pool {backend.get('pool')}, "
                  f"weight {backend.get('weight')}")


def _refuse_unready(fleet: Any, plugins: Any) -> None:
    """Raise the inventory's refusal (exit 3) when a rollout of ``fleet`` would be refused."""
    from .engine.inventory import refusal_text
    from .errors import InventoryRefused
    from .rollout import inspect_fleet, inventory_applies

    if not inventory_applies(fleet):
        return
    found = asyncio.run(inspect_fleet(fleet, plugins))
    if found.problems:
        raise InventoryRefused(refusal_text(fleet.name, found),
                               [p.to_json() for p in found.problems])


def cmd_check(args: argparse.Namespace) -> int:
    """``upgrader check FLEET``: the inventory, one line per host, then the problems; exit 0
    when a rollout would run, 3 when it would be refused. Changes nothing."""
    from .errors import InventoryRefused
    from .redact import redact_data
    from .rollout import compile_plan, inspect_fleet

    plugins = _plugins()
    fleet = _load(args, plugins)
    try:
        found = asyncio.run(inspect_fleet(fleet, plugins))
    except InventoryRefused as exc:     # not even the providers open (no lab up)
        if not args.json:
            raise
        print(json.dumps(redact_data({"fleet": fleet.name, "ready": False,
                                      "problems": list(exc.problems)})))
        return EXIT_REFUSED
    nothing = found.nothing_to_do(compile_plan(fleet))
    code = EXIT_OK if found.ready else EXIT_REFUSED
    if args.json:
        # a host's reading error is its command's stderr: secret vars masked, as everywhere
        print(json.dumps(redact_data({"fleet": fleet.name, **found.to_json(),
                                      "nothing_to_do": nothing})))
        return code
    releases = fleet.releases
    print(f"fleet {fleet.name}: {releases.current} -> {releases.target} on "
          f"{plural(len(fleet.hosts), 'host')}; balancer {fleet.balancer.kind} "
          + ("answers" if found.balancer_ok else "does not answer"))
    for fact in found.hosts:
        backend = (f"{fact.state} in {fact.pool} w{fact.weight}" if fact.state
                   else "no backend" if found.balancer_ok else "backend ?")
        reach = {True: "reachable", False: "UNREACHABLE", None: "not read"}[fact.reachable]
        print(f"  {fact.host:<12} release {fact.release or '-':<10} slot {fact.slot or '-':<6} "
              f"{backend:<24} {reach}" + ("  ok (done)" if fact.done else ""))
    for note in found.notes:
        print(redact_text(f"note: {note}"))
    if found.problems:
        print(f"refused: {len(found.problems)} problem(s); a rollout would change nothing:")
        for problem in found.problems:
            print(redact_text(f"  {problem.text()}"))
    elif nothing:
        print(f"ready: nothing to do, every host already runs {releases.target} and serves")
    else:
        print(f"ready: {len(found.done)} host(s) already on {releases.target}, "
              f"{len(fleet.hosts) - len(found.done)} to upgrade")
    return code


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab import cli as lab_cli

    return lab_cli.main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_flags(args: argparse.Namespace) -> int:
    from .flags.cli import main as flags_main

    return flags_main(args)


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema.cli import main as schema_main

    return schema_main(args)


def cmd_plugins(args: argparse.Namespace) -> int:
    # one line per plugin: its name, the distribution that ships it and its version, where it
    # came from; then one line per provider it registered, with its description
    plugins = _plugins()
    origin = {"builtin": "built in", "entrypoint": "entry point", "registered": "registered"}
    for plugin in plugins.list_plugins():
        dist = " ".join(p for p in (plugin.get("dist"), plugin.get("version")) if p)
        kind = origin.get(plugin.get("kind"), plugin.get("kind") or "")
        print(f"{plugin['name']}  {dist or 'unknown version'}  ({kind})")
        for category, names in sorted(plugin.get("providers", {}).items()):
            for name in names:
                factory = plugins.lookup(category, name)
                about = f" - {factory.description}" if factory and factory.description else ""
                print(f"  {category}: {name}{about}")
    return EXIT_OK


_COMMANDS = {"plan": cmd_plan, "run": cmd_run, "resume": cmd_resume, "status": cmd_status,
             "attach": cmd_attach, "flags": cmd_flags, "schema": cmd_schema,
             "lab": cmd_lab, "demo": cmd_demo, "plugins": cmd_plugins, "check": cmd_check,
             "unlock": cmd_unlock, "rollback": cmd_rollback,
             "analysis": cmd_analysis}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
