"""``upgrader flags ...``: list, show, change, evaluate and audit feature flags in a store.

Wiring (upgrader/cli.py): ``add_flags_parser(subparsers)`` adds the ``flags`` command and
``main(args)`` runs a parsed one. Exit codes: 0 done, 1 the store failed, 2 bad input
(``ConfigError``: an unknown flag, environment or variant, an invalid change, a broken flags
file), 3 refused (a flag whose ``schema`` is not live in ``--schema-db``); bad input and a
refusal change nothing. ``run(argv)`` parses and runs without the top-level CLI.

``serve`` and ``bisect`` are the front ends of two parts of the flag library, the OFREP
server (ofrep.py) and the flag bisection (bisect.py): their argparse parsers and handlers live
here (:func:`add_serve_parser`, :func:`serve_command`, :func:`add_bisect_parser`,
:func:`bisect_command`), so the library never imports its command line. Each handler is set
with ``parser.set_defaults(flags_handler=function)``, ``function(args) -> int`` (exit code).
:func:`open_store_from` opens the store that ``--store`` names.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PolicyRefused, UpgraderError
from ..units import plural
from .describe import targeting
from .model import DEFAULT_ENV, DEFAULT_LISTEN

if TYPE_CHECKING:
    from .bisect import Result, Step, TestCommand

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED = 0, 1, 2, 3
#: the schema database `--schema-db` defaults to
SCHEMA_DB_VARIABLE = "UPGRADER_SCHEMA_DB"
#: ``upgrader flags bisect``: 0 found a culprit, 1 nothing to find, 2 bad input, 3 the test
#: command is broken (it fails the same way with every flag on and with none)
EXIT_FOUND, EXIT_NOTHING, EXIT_BROKEN_TEST = 0, 1, 3

__all__ = ["DEFAULT_ENV", "add_bisect_parser", "add_common_arguments", "add_flags_parser",
           "add_serve_parser", "bisect_command", "main", "open_store_from",
           "resolve_store_and_env", "run", "serve_command"]

Handler = Callable[[argparse.Namespace], int]


def add_common_arguments(parser: argparse.ArgumentParser, *, changes: bool = True,
                         schema: bool = False) -> None:
    """``--env`` and ``--store`` (and ``--actor``, ``--reason`` for commands that change;
    ``--schema-db`` for those that can turn a flag on)."""
    parser.add_argument("--env", default=None, metavar="ENV",
                        help="environment (default: the --fleet's [flags] environment, else "
                             f"{DEFAULT_ENV})")
    parser.add_argument("--store", metavar="SPEC",
                        help="SQLite file or postgresql:// URL (default: the --fleet's [flags] "
                             "store, else $UPGRADER_FLAG_STORE or .upgrader/flags.sqlite)")
    parser.add_argument("--fleet", metavar="FILE", dest="fleet_file",
                        help="a fleet file: its [flags] store and environment"
                             + (" and its [schema] database" if schema else "")
                             + " are the defaults of --store, --env"
                             + (" and --schema-db" if schema else ""))
    if changes:
        parser.add_argument("--actor", help="who makes the change (default $USER@hostname)")
        parser.add_argument("--reason", default="", help="why (kept in the audit trail)")
    if schema:
        parser.add_argument("--schema-db", metavar="SPEC",
                            default=os.environ.get(SCHEMA_DB_VARIABLE) or None,
                            help="the fleet's schema database ([schema] database: a SQLite "
                                 "file or postgresql:// URL): a flag whose `schema` is not "
                                 "live there is not turned on (exit 3); default "
                                 f"${SCHEMA_DB_VARIABLE}")


def open_store_from(args: argparse.Namespace) -> Any:
    """The :class:`~upgrader.flags.store.FlagStore` that ``args.store`` names."""
    from .store import open_store

    return open_store(getattr(args, "store", None))


def add_flags_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``flags`` and its subcommands to an argparse subparsers object."""
    flags: argparse.ArgumentParser = subparsers.add_parser(
        "flags", help="feature flags: list, change, evaluate, audit",
        description="Feature flags in a store (docs/FLAGS.md).")
    sub = flags.add_subparsers(dest="flags_command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str, *,
                changes: bool = False) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text,
                                                         description=help_text)
        add_common_arguments(parser, changes=changes, schema=changes)
        parser.set_defaults(flags_handler=handler)
        return parser

    command("list", cmd_list, "the flags and their state in one environment")
    show = command("show", cmd_show, "one flag's definition (TOML)")
    show.add_argument("key", metavar="KEY", help="the flag's key")
    for name, handler, verb in (("enable", cmd_enable, "turn a flag on"),
                                ("disable", cmd_disable, "turn a flag off (its off variant)")):
        parser = command(name, handler, f"{verb} in one environment", changes=True)
        parser.add_argument("key", metavar="KEY", help="the flag's key")
    rollout = command("rollout", cmd_rollout, "set a flag's roll-out percentage", changes=True)
    rollout.add_argument("key", metavar="KEY", help="the flag's key")
    rollout.add_argument("percent", metavar="PCT", type=_percent_argument,
                         help="0 to 100 (two decimals at most; '25%%' works too)")
    rollout.add_argument("--rule", help="the percentage rule to change (when there are several)")
    rollout.add_argument("--variant", help="the variant the roll-out serves "
                                           "(default: the one whose value is true)")
    set_ = command("set", cmd_set, "set the variant served by default", changes=True)
    set_.add_argument("key", metavar="KEY", help="the flag's key")
    set_.add_argument("--variant", required=True,
                      help="the variant served by default (required)")
    eval_ = command("eval", cmd_eval, "evaluate a flag for a user")
    eval_.add_argument("key", metavar="KEY", help="the flag's key")
    eval_.add_argument("--user", help="the user key (targetingKey)")
    eval_.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    eval_.add_argument("--tier", help="the membership tier")
    eval_.add_argument("--attr", action="append", default=[], metavar="K=V",
                       help="an attribute (repeatable); V is read as JSON if it parses "
                            "(42, true), else as a string")
    eval_.add_argument("--json", action="store_true",
                       help='print {"value", "variant", "reason", "rule"}')
    history = command("history", cmd_history, "the audit trail, newest first")
    history.add_argument("key", metavar="KEY", nargs="?",
                         help="only this flag's changes (default: every flag)")
    history.add_argument("--limit", type=int, default=50,
                         help="at most this many entries, newest first (default 50)")
    import_ = command("import", cmd_import, "replace the store's flags by a flags file",
                      changes=True)
    import_.add_argument("file", metavar="FILE", help="the flags file (TOML)")
    export = command("export", cmd_export, "write the store's flags as a flags file")
    export.add_argument("file", metavar="FILE", nargs="?", help="default: standard output")
    add_serve_parser(sub)
    add_bisect_parser(sub)
    return flags


def main(args: argparse.Namespace) -> int:
    """Run a parsed ``upgrader flags ...`` command; the exit code."""
    handler: Handler = args.flags_handler
    try:
        _fleet_defaults(args)
        return handler(args)
    except ConfigError as exc:
        print(f"upgrader: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PolicyRefused as exc:          # a flag whose schema is not live
        print(f"upgrader: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except UpgraderError as exc:          # StoreError and the rest
        print(f"upgrader: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _fleet_defaults(args: argparse.Namespace) -> None:
    """Fill ``--store``, ``--env`` and ``--schema-db`` the command line left out from the
    ``--fleet`` file (its ``[flags]`` and ``[schema]`` tables), then ``--env``'s default: the
    flags an operator flips are then those the fleet's rollouts read, in their environment,
    guarded by their schema. ConfigError (file, key, line) for a bad fleet file."""
    path = getattr(args, "fleet_file", None)
    if path:
        from ..config import load_fleet

        if not Path(path).exists():
            raise ConfigError("no such fleet file", file=path)
        fleet = load_fleet(path)
        if getattr(args, "store", None) is None and fleet.flags is not None:
            args.store = fleet.flags.store
        if getattr(args, "env", None) is None:
            args.env = fleet.flags.environment if fleet.flags is not None else fleet.environment
        if (hasattr(args, "schema_db") and args.schema_db is None
                and fleet.schema is not None):
            args.schema_db = fleet.schema.database
    if hasattr(args, "env") and args.env is None:
        args.env = DEFAULT_ENV


def run(argv: Sequence[str]) -> int:
    """``upgrader flags ARGV...`` without the rest of the CLI (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="upgrader")
    add_flags_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["flags", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return main(args)


# --------------------------------------------------------------------------------------------
# `upgrader flags serve` and `upgrader flags bisect`


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``upgrader flags serve``: the OFREP server (:mod:`upgrader.flags.ofrep`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve the flags over OFREP (OpenFeature Remote Evaluation Protocol)",
        description="Serve one environment's flags over OFREP: POST /ofrep/v1/evaluate/flags"
                    "/{key} and the bulk POST /ofrep/v1/evaluate/flags (ETag, If-None-Match).")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where to listen (default {DEFAULT_LISTEN}; port 0 picks one)")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", metavar="T",
                      help="require 'Authorization: Bearer T' or 'X-API-Key: T' (prefer "
                           "--token-file: arguments are visible in ps; without either, a "
                           "token is generated and its file printed)")
    auth.add_argument("--token-file", metavar="FILE",
                      help="read the token from FILE (mode 0600, else refused)")
    add_common_arguments(parser, changes=False)
    parser.set_defaults(func=serve_command, flags_handler=serve_command)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    import logging

    from ..tokens import read_token_file
    from .ofrep import serve

    token = args.token
    if args.token is not None and not args.token.strip():
        print("upgrader flags serve: --token is empty", file=sys.stderr)
        return 2
    if args.token_file:
        try:
            # mode 0600 or refused: a token others can read protects nothing
            token = read_token_file(args.token_file, key="--token-file")
        except ConfigError as exc:
            print(f"upgrader flags serve: {exc}", file=sys.stderr)
            return 2
    store, env = resolve_store_and_env(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s flags %(levelname)s %(message)s")
    return serve(store, env, args.listen, token)


def resolve_store_and_env(args: argparse.Namespace) -> tuple[str, str]:
    """The store spec (``--store``, ``$UPGRADER_FLAG_STORE``, the default file) and the
    environment (``--env``) a flags subcommand works on."""
    from .store import default_store_spec

    return (getattr(args, "store", None) or default_store_spec(),
            getattr(args, "env", None) or DEFAULT_ENV)


def add_bisect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``upgrader flags bisect``: the flag bisection (:mod:`upgrader.flags.bisect`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bisect", help="find the flag (or combination of flags) that breaks a test",
        description="Run a test command with subsets of the candidate flags on (the others "
                    "off) and find the flag that makes it fail by binary search, or the "
                    "smallest combination that fails only together (delta debugging). The "
                    "test sees the flag store in $UPGRADER_FLAG_STORE and the environment in "
                    "$UPGRADER_FLAG_ENV; it runs against a scratch copy unless --live. "
                    "Exit 0: found; 1: nothing to find; 2: bad input; 3: the test command is "
                    "broken (it fails the same way, not with exit 1, with none and with all "
                    "of the flags on).")
    parser.add_argument("--test", required=True, metavar="CMD",
                        help="the test command (split like a shell would; exit 0 = pass)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--flags", metavar="A,B,C", help="the candidate flags")
    which.add_argument("--changed-since", metavar="T",
                       help="the flags enabled in the environment since T (from the audit): "
                            "an ISO time like 2026-11-29T08:00 or an age like 2h, 3d")
    parser.add_argument("--live", action="store_true",
                        help="flip the flags in the real store (restored afterwards) instead "
                             "of a scratch copy: for tests that read a running service")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="seconds one test run may take (a run past it counts as a fail)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the test's own output")
    add_common_arguments(parser, changes=True)
    parser.set_defaults(func=bisect_command, flags_handler=bisect_command)
    return parser


def bisect_command(args: argparse.Namespace) -> int:
    from .bisect import FlagSandbox, TestCommand, find_culprits, parse_since
    from .store import default_store_spec

    out = sys.stdout
    try:
        argv = shlex.split(args.test)
    except ValueError as exc:
        print(f"upgrader flags bisect: --test: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not argv:
        print("upgrader flags bisect: --test is empty", file=sys.stderr)
        return EXIT_BAD_INPUT
    store_spec, env = args.store or default_store_spec(), args.env
    try:
        with FlagSandbox(store_spec, env, live=args.live, actor=getattr(args, "actor", None),
                         reason=getattr(args, "reason", "") or "") as sandbox:
            if args.flags is not None:
                candidates = list(dict.fromkeys(key.strip() for key in args.flags.split(",")
                                                if key.strip()))
                if not candidates:
                    print("upgrader flags bisect: --flags names no flag", file=sys.stderr)
                    return EXIT_BAD_INPUT
                sandbox.check_known(candidates)
            else:
                since = parse_since(args.changed_since)
                candidates = sandbox.enabled_since(since)
                print(f"flags enabled in {env} since {since.isoformat(timespec='seconds')}: "
                      f"{', '.join(candidates) or '(none)'}", file=out)
                if not candidates:
                    print("nothing to find: no flag was turned on since then", file=out)
                    return EXIT_NOTHING
            where = "the LIVE store" if args.live else "a scratch copy of the flag set"
            print(f"bisecting {len(candidates)} flag(s) in {env} on {where}; "
                  f"test: {shlex.join(argv)}", file=out, flush=True)
            runner = TestCommand(argv, sandbox, candidates, timeout=args.timeout,
                                 verbose=args.verbose)
            result = find_culprits(candidates, runner,
                                   on_step=lambda step: print_step(step, candidates, runner,
                                                                   out))
            broken = _broken_test(result, runner, candidates, out)
    except ConfigError as exc:
        print(f"upgrader flags bisect: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if broken is not None:
        print(f"the test command is broken, not a flag: it fails the same way with none and "
              f"with all of the {len(candidates)} flags on ({broken}); run it by hand: "
              f"{shlex.join(argv)}", file=out)
        return EXIT_BROKEN_TEST
    print_result(result, len(candidates), out)
    return EXIT_FOUND if result.found else EXIT_NOTHING


def _broken_test(result: Result, runner: TestCommand, candidates: Sequence[str],
                 out: Any) -> str | None:
    """When no run passed: run the ends not run yet (no flag on, all on) and say why the
    test command looks broken (the same non-test failure everywhere), else None."""
    from .bisect import Step

    if any(step.passed for step in result.steps) or runner.broken(result) is None:
        return None
    steps = list(result.steps)
    for on in runner.both_ends():
        step = Step(len(steps) + 1, on, runner(on), "check")
        steps.append(step)
        print_step(step, candidates, runner, out)
        if step.passed:
            return None
    return runner.broken(result)


def print_step(step: Step, candidates: Sequence[str], runner: TestCommand, out: Any) -> None:
    on = [key for key in candidates if key in step.on]
    off = [key for key in candidates if key not in step.on]
    if len(on) <= 8:
        which = ", ".join(on) or "(none)"
    elif len(off) <= 8:
        which = "all but " + ", ".join(off) if off else "all"
    else:
        which = f"{', '.join(on[:6])}, ... ({len(on)} flags)"
    verdict = "pass" if step.passed else "FAIL"
    detail = runner.last_detail
    print(f"step {step.number:>2} [{step.phase}] {len(on)}/{len(candidates)} on: {which}"
          f" -> {verdict}{f' ({detail})' if detail else ''}", file=out, flush=True)


def print_result(result: Result, total: int, out: Any) -> None:
    from .bisect import Outcome

    runs = f"{result.runs} run{'s' if result.runs != 1 else ''}"
    if result.outcome is Outcome.CULPRIT:
        print(f"culprit: {result.culprits[0]} (the test fails with only it on; {runs} for "
              f"{total} flags)", file=out)
    elif result.outcome is Outcome.COMBINATION:
        print(f"failing combination: {', '.join(result.culprits)} (the test fails with all "
              f"of them on and passes with any one of them off; {runs} for {total} flags)",
              file=out)
    elif result.outcome is Outcome.PASSES_WITH_ALL:
        print(f"nothing to find: the test passes with all {total} flags on ({runs})", file=out)
    elif result.outcome is Outcome.FAILS_WITHOUT_FLAGS:
        print(f"nothing to find: the test fails with none of the flags on ({runs}); "
              "the cause is elsewhere", file=out)
    else:
        print("nothing to find: no candidate flags", file=out)


# ------------------------------------------------------------------------------ helpers


def _percent_argument(text: str) -> float:
    value = text.strip().removesuffix("%").strip()
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 25 or 12.5, "
                                         f"got {text!r}") from None
    return int(number) if number.is_integer() else number


def _store(args: argparse.Namespace) -> Any:
    store = open_store_from(args)
    schema_db = getattr(args, "schema_db", None)
    if schema_db:
        from .schemaguard import SchemaGuard

        store.guard = SchemaGuard(schema_db, args.env)
    return store


def _evaluator(store: Any, environment: str) -> Any:
    return store.evaluator(environment)


def _state(flag: Any, environment: str) -> str:
    return "on" if flag.env(environment).enabled else "off"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _summary(flag: Any, environment: str) -> str:
    return targeting(flag, environment) or "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


# ------------------------------------------------------------------------------ commands


def cmd_list(args: argparse.Namespace) -> int:
    from . import edit

    with _store(args) as store:
        flagset = store.load()
        edit.check_environment(flagset, args.env)
        rows = [["KEY", "KIND", "STATE", "SERVES", "TARGETING", "DESCRIPTION"]]
        for flag in flagset.flags.values():
            on = flag.env(args.env).enabled
            serves = flag.default_in(args.env) if on else flag.off_in(args.env)
            rows.append([flag.key, str(flag.kind), "on" if on else "off", serves,
                         _summary(flag, args.env) if on else "-", flag.description])
        print(f"# {plural(len(flagset.flags), 'flag')} in {args.env}, "
              f"store version {flagset.version}")
        if flagset.flags:
            print(_table(rows))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from . import edit
    from .loader import dump_flag

    with _store(args) as store:
        flagset = store.load()
        flag = edit.get_flag(flagset, args.key)
        print(f"# store version {flagset.version}")
        for tier in flagset.tiers.values():
            if args.key in tier.flags:
                print(f"# tier {tier.name}: {tier.flags[args.key]}")
        sys.stdout.write(dump_flag(flag))
    return EXIT_OK


def _changed(before: int, after: int) -> str:
    return f"version {after}" if after != before else f"unchanged, version {after}"


def _set_enabled(args: argparse.Namespace, on: bool) -> int:
    with _store(args) as store:
        before = store.version()
        after = store.set_enabled(args.key, args.env, on, actor=args.actor, reason=args.reason)
        print(f"{args.key}: {'on' if on else 'off'} in {args.env} ({_changed(before, after)})")
    return EXIT_OK


def cmd_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def cmd_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def cmd_rollout(args: argparse.Namespace) -> int:
    with _store(args) as store:
        before = store.version()
        after = store.set_rollout(args.key, args.env, args.percent, rule=args.rule,
                                  variant=args.variant, actor=args.actor, reason=args.reason)
        flag = store.load().flags[args.key]
        print(f"{args.key}: roll-out {args.percent:g} % in {args.env} "
              f"({_changed(before, after)})")
        if not flag.env(args.env).enabled:
            print(f"note: {args.key} is off in {args.env}; the roll-out applies once it is on "
                  f"(upgrader flags enable {args.key} --env {args.env})", file=sys.stderr)
    return EXIT_OK


def cmd_set(args: argparse.Namespace) -> int:
    with _store(args) as store:
        before = store.version()
        after = store.set_default(args.key, args.env, args.variant, actor=args.actor,
                                  reason=args.reason)
        print(f"{args.key}: serves {args.variant} by default in {args.env} "
              f"({_changed(before, after)})")
    return EXIT_OK


def _attribute(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"expected --attr KEY=VALUE, got {text!r}", key="--attr")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def context_from(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation context ``eval`` builds from --user, --group, --tier, --attr."""
    context: dict[str, Any] = dict(_attribute(item) for item in args.attr)
    if args.user is not None:
        context["targetingKey"] = args.user
    if args.group:
        context["groups"] = list(args.group)
    if args.tier is not None:
        context["tier"] = args.tier
    return context


def cmd_eval(args: argparse.Namespace) -> int:
    from . import edit

    context = context_from(args)
    with _store(args) as store:
        evaluator = _evaluator(store, args.env)
        edit.get_flag(evaluator.flagset, args.key)
        result = evaluator.evaluate(args.key, context)
    if args.json:
        print(json.dumps({"value": result.value, "variant": result.variant,
                          "reason": str(result.reason), "rule": result.rule},
                         ensure_ascii=False))
    else:
        rule = f", rule {result.rule}" if result.rule else ""
        print(f"{args.key} = {_json(result.value)} (variant {result.variant}, "
              f"reason {result.reason}{rule})")
    if result.error_code is not None:
        print(f"upgrader: {result.error_code}: {result.error_message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _short(value: Any, limit: int = 60) -> str:
    text = _json(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cmd_history(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.key is not None:
            from . import edit

            flagset = store.load()
            if args.key not in flagset.flags and not store.history(args.key, 1):
                edit.get_flag(flagset, args.key)
        entries = store.history(args.key, args.limit)
    for entry in entries:
        where = entry.flag or "(flag set)"
        if entry.environment:
            where += f" [{entry.environment}]"
        line = (f"{entry.ts}  v{entry.version}  {entry.actor}  {entry.action}  {where}  "
                f"{_short(entry.old)} -> {_short(entry.new)}")
        if entry.reason:
            line += f"  # {entry.reason}"
        print(line)
    if not entries:
        print("# no changes recorded", file=sys.stderr)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from .loader import load

    flagset = load(args.file)
    with _store(args) as store:
        current = store.load()
        after = store.replace(flagset, actor=args.actor, reason=args.reason)
        before = current.version
        most = len(current.flags) + len(flagset.flags) + 1       # audit rows one import writes
        changed = sum(1 for entry in store.history(None, most) if entry.version == after
                      and entry.flag is not None) if after != before else 0
    print(f"imported {args.file}: {plural(len(flagset.flags), 'flag')}, {changed} changed "
          f"({_changed(before, after)})")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .loader import dump

    with _store(args) as store:
        flagset = store.load()
    text = dump(flagset)
    if args.file is None or args.file == "-":
        sys.stdout.write(text)
        return EXIT_OK
    target = Path(args.file)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the flags file: {exc}", file=args.file) from exc
    print(f"exported {plural(len(flagset.flags), 'flag')} (store version {flagset.version}) "
          f"to {args.file}",
          file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
