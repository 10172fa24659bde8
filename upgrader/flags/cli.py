"""``upgrader flags ...``: list, show, change, evaluate and audit feature flags in a store.

Wiring (upgrader/cli.py): ``add_flags_parser(subparsers)`` adds the ``flags`` command and
``main(args)`` runs a parsed one. Exit codes: 0 done, 1 the store failed, 2 bad input
(``ConfigError``: an unknown flag, environment or variant, an invalid change, a broken flags
file); bad input changes nothing. ``run(argv)`` parses and runs without the top-level CLI.

Hooks for subcommands that live in other modules of this package: ``serve`` (ofrep.py) and
``bisect`` (bisect.py). Each module provides ``add_<name>_parser(subparsers)``, which adds its
parser to the ``flags`` subparsers, may call :func:`add_common_arguments` on it, and sets
``parser.set_defaults(flags_handler=function)`` with ``function(args) -> int`` (exit code).
:func:`open_store_from` opens the store that ``--store`` names. A module or function that
does not exist yet is skipped; a module that fails to import for another reason is an error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UpgraderError
from .describe import targeting

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_ENV = "production"

#: (module in this package, function adding its subcommand): see the module docstring
EXTRA_COMMANDS = (("ofrep", "add_serve_parser"), ("bisect", "add_bisect_parser"))

Handler = Callable[[argparse.Namespace], int]


def add_common_arguments(parser: argparse.ArgumentParser, *, changes: bool = True) -> None:
    """``--env`` and ``--store`` (and ``--actor``, ``--reason`` for commands that change)."""
    parser.add_argument("--env", default=DEFAULT_ENV, metavar="ENV",
                        help=f"environment (default {DEFAULT_ENV})")
    parser.add_argument("--store", metavar="SPEC",
                        help="SQLite file or postgresql:// URL (default $UPGRADER_FLAG_STORE "
                             "or .upgrader/flags.sqlite)")
    if changes:
        parser.add_argument("--actor", help="who makes the change (default $USER@hostname)")
        parser.add_argument("--reason", default="", help="why (kept in the audit trail)")


def open_store_from(args: argparse.Namespace) -> Any:
    """The :class:`~upgrader.flags.store.FlagStore` that ``args.store`` names."""
    from .store import open_store

    return open_store(getattr(args, "store", None))


def add_flags_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``flags`` and its subcommands to an argparse subparsers object."""
    flags = subparsers.add_parser("flags", help="feature flags: list, change, evaluate, audit",
                                  description="Feature flags in a store (docs/FLAGS.md).")
    sub = flags.add_subparsers(dest="flags_command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str, *,
                changes: bool = False) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        add_common_arguments(parser, changes=changes)
        parser.set_defaults(flags_handler=handler)
        return parser

    command("list", cmd_list, "the flags and their state in one environment")
    show = command("show", cmd_show, "one flag's definition (TOML)")
    show.add_argument("key", metavar="KEY")
    for name, handler, verb in (("enable", cmd_enable, "turn a flag on"),
                                ("disable", cmd_disable, "turn a flag off (its off variant)")):
        parser = command(name, handler, f"{verb} in one environment", changes=True)
        parser.add_argument("key", metavar="KEY")
    rollout = command("rollout", cmd_rollout, "set a flag's roll-out percentage", changes=True)
    rollout.add_argument("key", metavar="KEY")
    rollout.add_argument("percent", metavar="PCT", type=_percent_argument,
                         help="0 to 100 (two decimals at most; '25%%' works too)")
    rollout.add_argument("--rule", help="the percentage rule to change (when there are several)")
    rollout.add_argument("--variant", help="the variant the roll-out serves "
                                           "(default: the one whose value is true)")
    set_ = command("set", cmd_set, "set the variant served by default", changes=True)
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("--variant", required=True)
    eval_ = command("eval", cmd_eval, "evaluate a flag for a user")
    eval_.add_argument("key", metavar="KEY")
    eval_.add_argument("--user", help="the user key (targetingKey)")
    eval_.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    eval_.add_argument("--tier", help="the membership tier")
    eval_.add_argument("--attr", action="append", default=[], metavar="K=V",
                       help="an attribute (repeatable); V is read as JSON if it parses "
                            "(42, true), else as a string")
    eval_.add_argument("--json", action="store_true",
                       help='print {"value", "variant", "reason", "rule"}')
    history = command("history", cmd_history, "the audit trail, newest first")
    history.add_argument("key", metavar="KEY", nargs="?")
    history.add_argument("--limit", type=int, default=50)
    import_ = command("import", cmd_import, "replace the store's flags by a flags file",
                      changes=True)
    import_.add_argument("file", metavar="FILE")
    export = command("export", cmd_export, "write the store's flags as a flags file")
    export.add_argument("file", metavar="FILE", nargs="?", help="default: standard output")
    register_extra_commands(sub)
    return flags


def register_extra_commands(subparsers: Any) -> None:
    """The hooks: ``serve`` and ``bisect`` from their own modules, when they exist."""
    for module_name, function_name in EXTRA_COMMANDS:
        qualified = f"{__package__}.{module_name}"
        try:
            module = importlib.import_module(qualified)
        except ImportError as exc:
            if exc.name == qualified:
                continue               # not written yet
            raise
        add_parser = getattr(module, function_name, None)
        if add_parser is not None:
            add_parser(subparsers)


def main(args: argparse.Namespace) -> int:
    """Run a parsed ``upgrader flags ...`` command; the exit code."""
    handler: Handler = args.flags_handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"upgrader: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UpgraderError as exc:          # StoreError and the rest
        print(f"upgrader: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run(argv: Sequence[str]) -> int:
    """``upgrader flags ARGV...`` without the rest of the CLI (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="upgrader")
    add_flags_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["flags", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return main(args)


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
    return open_store_from(args)


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
        print(f"# {len(flagset.flags)} flags in {args.env}, store version {flagset.version}")
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
    print(f"imported {args.file}: {len(flagset.flags)} flags, {changed} changed "
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
    print(f"exported {len(flagset.flags)} flags (store version {flagset.version}) to {args.file}",
          file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
