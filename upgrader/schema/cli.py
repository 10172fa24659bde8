"""``upgrader schema start|complete|rollback|status|plan|check``: live schema changes.

Wiring (upgrader/cli.py): ``add_schema_parser(subparsers)`` adds the ``schema`` command and
``main(args)`` runs a parsed one. Exit codes: 0 done (``check``: safe), 1 the database
refused or failed (``check``: it would break the previous release), 2 bad input
(``ConfigError``: a malformed migration, an unknown table or column); bad input changes
nothing. ``run(argv)`` parses and runs without the top-level CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import db as dbtargets
from ..errors import ConfigError, PolicyRefused, UpgraderError
from .model import SchemaBackend

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED = 0, 1, 2, 3
DB_ENV = "UPGRADER_SCHEMA_DB"

Handler = Callable[[argparse.Namespace], int]


def add_schema_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``schema`` and its subcommands to an argparse subparsers object."""
    schema: argparse.ArgumentParser = subparsers.add_parser(
        "schema", help="live schema changes: a view per release, expand/contract",
        description="Live schema changes on SQLite and PostgreSQL (docs/SCHEMA.md).")
    sub = schema.add_subparsers(dest="schema_command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str, *, db: bool = True,
                json_flag: bool = False) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text,
                                                         description=help_text)
        if db:
            parser.add_argument("--db", metavar="URL",
                                help=f"a SQLite file or a postgresql:// URL (default ${DB_ENV})")
        if json_flag:
            parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(schema_handler=handler)
        return parser

    start = command("start", cmd_start, "expand: create the new release's views beside the "
                                        "old one's, backfill")
    start.add_argument("migration", metavar="MIGRATION", help="the migration file (TOML)")
    for name, handler, text in (("complete", cmd_complete, "contract: drop what only the old "
                                                           "release needed"),
                                ("rollback", cmd_rollback, "undo start: the database as "
                                                           "before")):
        parser = command(name, handler, text)
        parser.add_argument("migration", metavar="MIGRATION",
                            help="the migration's name or its file")
        if name == "complete":
            parser.add_argument("--fleet", metavar="FLEET",
                                help="the fleet file: inside its roll-back window (``[release] "
                                     "rollback_window``) complete is refused (exit 3)")
            parser.add_argument("--force", action="store_true",
                                help="complete inside the roll-back window (needs --reason)")
            parser.add_argument("--reason", help="why the window is cut short (journaled)")
        else:
            parser.add_argument("--flags-store", metavar="SPEC",
                                help="the flag store whose flags that need this schema go off "
                                     "first, audited (default: --fleet's [flags] store, "
                                     "$UPGRADER_FLAG_STORE, or .upgrader/flags.sqlite when "
                                     "it exists)")
            parser.add_argument("--env", metavar="ENV",
                                help="the flags' environment (default: --fleet's [flags] "
                                     "environment, or production)")
            parser.add_argument("--fleet", metavar="FLEET",
                                help="the fleet file: its [schema] database (for a missing "
                                     "--db) and its [flags] store and environment")
    command("status", cmd_status, "the active migration and the live releases (and how an "
                                  "application connects to each)", json_flag=True)
    plan = command("plan", cmd_plan, "the SQL a phase would run, without running it",
                   json_flag=True)
    plan.add_argument("migration", metavar="MIGRATION", help="the migration file (TOML)")
    plan.add_argument("--phase", choices=("start", "complete", "rollback"), default="start",
                      help="the phase whose SQL to print (default start)")
    check = command("check", cmd_check, "would the migration break the previous release? "
                                        "how to split it (expand/contract)", db=False,
                    json_flag=True)
    check.add_argument("migration", metavar="MIGRATION", help="the migration file (TOML)")
    check.add_argument("--views", action="store_true",
                       help="every client of the previous release reads through its views")
    return schema


def main(args: argparse.Namespace) -> int:
    """Run a parsed ``upgrader schema ...`` command; the exit code."""
    handler: Handler = args.schema_handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"upgrader: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PolicyRefused as exc:
        print(f"upgrader: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except UpgraderError as exc:
        print(f"upgrader: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run(argv: Sequence[str]) -> int:
    """``upgrader schema ARGV...`` without the rest of the CLI (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="upgrader")
    sub = parser.add_subparsers(dest="command", required=True)
    add_schema_parser(sub)
    try:
        args = parser.parse_args(["schema", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return main(args)


# --------------------------------------------------------------------------------------------


def _db(args: argparse.Namespace) -> str:
    url = args.db or os.environ.get(DB_ENV)
    if not url:
        raise ConfigError(f"no database: pass --db URL (a SQLite file or a postgresql:// URL) "
                          f"or set ${DB_ENV}")
    return url


def _open(args: argparse.Namespace, *, create: bool = False) -> SchemaBackend:
    from . import open_backend

    return open_backend(_db(args), create=create)


def _migration_name(text: str) -> str:
    """A migration's name, or the name of the migration file ``text`` names."""
    if text.endswith(".toml") or os.sep in text:
        from .loader import load_migration

        return load_migration(text).name
    return text


def start_message(name: str, release: str, beside: list[str]) -> str:
    """What ``schema start`` says: the new release, and the releases live beside it."""
    if not beside:
        return f"started {name}: release {release} is live, the only release"
    return f"started {name}: release {release} is live beside {', '.join(beside)}"


def _missing_sqlite_file(url: str) -> Path | None:
    """The path of a SQLite database that does not exist yet (None: it exists, it is
    ``:memory:`` or a PostgreSQL URL)."""
    target = dbtargets.parse_target(url)
    if isinstance(target, dbtargets.PostgresTarget) or target.path == ":memory:":
        return None
    path = Path(target.path)
    return None if path.exists() else path


def cmd_start(args: argparse.Namespace) -> int:
    from .loader import load_migration

    migration = load_migration(args.migration)
    created = _missing_sqlite_file(_db(args))
    try:
        with _open(args, create=True) as db:
            db.start(migration)
            status = db.status()
    except BaseException:
        # A start that failed on a database it created leaves no empty file behind:
        # bad input changes nothing.
        if created is not None:
            for leftover in (created, Path(f"{created}-wal"), Path(f"{created}-shm"),
                             Path(f"{created}-journal")):
                leftover.unlink(missing_ok=True)
        raise
    beside = [r.release for r in status.live if r.release != migration.release]
    print(start_message(migration.name, migration.release, beside))
    return EXIT_OK


def cmd_complete(args: argparse.Namespace) -> int:
    name = _migration_name(args.migration)
    force, reason = getattr(args, "force", False), getattr(args, "reason", None)
    if force and not (reason or "").strip():
        raise ConfigError("--force needs --reason REASON (it is journaled)", key="--reason")
    if getattr(args, "fleet", None):
        from ..rollback_cli import check_schema_complete

        database = check_schema_complete(args.fleet, name, force=force, reason=reason)
        if not args.db and database:
            args.db = database
    with _open(args) as db:
        db.complete(name)
    print(f"completed {name}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    name = _migration_name(args.migration)
    store, environment = _rollback_flags(args)
    with _open(args) as db:
        db.check_rollback(name)     # refused (not active, irreversible): no flag goes off
        if store is not None:
            release = next((r for n, r, state in db.status().history
                            if n == name and state == "started"), None)
            _flags_off_first(store, environment, name, release, getattr(args, "actor", None),
                             explicit_env=getattr(args, "env", None) is not None)
        db.rollback(name)
    print(f"rolled back {name}")
    return EXIT_OK


def _rollback_flags(args: argparse.Namespace) -> tuple[str | None, str]:
    """The flag store and environment ``schema rollback`` turns flags off in (None: there
    is no store to look in); fills a missing ``--db`` from ``--fleet``."""
    from ..flags.model import DEFAULT_ENV
    from ..flags.store import default_store_spec

    store, environment = getattr(args, "flags_store", None), getattr(args, "env", None)
    if getattr(args, "fleet", None):
        from ..config import load_fleet

        path = Path(args.fleet)
        if not path.exists():
            raise ConfigError("no such fleet file", file=path)
        fleet = load_fleet(path)
        if not args.db and fleet.schema is not None:
            args.db = fleet.schema.database
        if fleet.flags is not None:
            store = store or fleet.flags.store
            environment = environment or fleet.flags.environment
    if store is None:
        default = default_store_spec()
        if "://" in default or Path(default).exists():
            store = default
    return store, environment or DEFAULT_ENV


def _flags_off_first(spec: str, environment: str, migration: str, release: str | None,
                     actor: str | None, *, explicit_env: bool = False) -> None:
    """Turn off in ``environment`` every flag on there whose ``schema`` needs ``migration``
    (its name, number or the release it creates), each audited in the store with the reason,
    before the schema goes: code behind such a flag would meet a schema that is gone."""
    from ..flags.schemaguard import flags_needing
    from ..flags.store import open_store

    versions = (migration,) + ((release,) if release else ())
    with open_store(spec) as store:
        flagset = store.load()
        if explicit_env and environment not in flagset.environments:
            raise ConfigError(f"--env: no environment {environment!r} in the flag store "
                              f"(it has {', '.join(flagset.environments)}); nothing changed",
                              key="--env")
        keys = [k for k in flags_needing(flagset, versions)
                if environment in flagset.environments
                and flagset.flags[k].env(environment).enabled]
        for key in keys:
            store.set_enabled(key, environment, False, actor=actor,
                              reason=f"schema {migration} rolls back: the flag needs it")
            print(f"turned off {key} in {environment} first: it needs schema "
                  f"{flagset.flags[key].schema} (audited in the flag store)")


def cmd_status(args: argparse.Namespace) -> int:
    with _open(args) as db:
        status = db.status()
    if args.json:
        print(json.dumps({
            "active": status.active,
            "live": [{"release": r.release, "connection": r.connection,
                      "migration": r.migration} for r in status.live],
            "history": [{"migration": m, "release": r, "state": s}
                        for m, r, s in status.history],
            "backfill": {t: {"done": d, "total": n} for t, (d, n) in status.backfill.items()},
        }, indent=2))
        return EXIT_OK
    print(f"active migration: {status.active or 'none'}")
    for table, (done, total) in status.backfill.items():
        print(f"  backfill {table}: {done}/{total} rows")
    print("live releases:" if status.live else "live releases: none (no views: every "
                                                "connection reads the tables as they are)")
    for release in status.live:
        via = f" (from {release.migration})" if release.migration else ""
        print(f"  {release.release}{via}: {release.connection}")
    if status.history:
        print("history:")
        for name, release_name, state in status.history:
            print(f"  {name} -> {release_name}: {state}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from .loader import load_migration

    migration = load_migration(args.migration)
    url = _db(args)
    missing = _missing_sqlite_file(url)
    # A database that does not exist yet is planned as the empty one `schema start` would
    # create, and the plan says so (plan and start agree about a missing database).
    note = (f"{missing} does not exist yet: planned against an empty database "
            f"(`upgrader schema start` creates it)" if missing is not None else None)
    from . import open_backend

    with open_backend(":memory:" if missing is not None else url, create=False) as db:
        statements = db.plan(migration, args.phase)
    if args.json:
        out: dict[str, Any] = {"migration": migration.name, "phase": args.phase,
                               "statements": statements}
        if note:
            out["note"] = note
        print(json.dumps(out, indent=2))
    else:
        if note:
            print(f"-- {note}")
        for sql in statements:
            print(sql if sql.startswith("--") else sql.rstrip(";") + ";")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check_migration
    from .loader import load_migration

    result = check_migration(load_migration(args.migration), views=args.views)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.text())
    return result.exit_code
