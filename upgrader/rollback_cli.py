"""``upgrader rollback FLEET [--to RELEASE]``: back to an earlier release. Inside the roll-back
window it goes straight back (no pauses, no analysis holds, hosts in parallel up to the capacity
rule); outside it, it is an ordinary rollout of the fleet's strategy, and says so."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, PolicyRefused
from .rollback_window import Completed, WindowState, describe, window_state


def add_rollback_parser(sub: Any, fleet_args: Any) -> None:
    rollback = sub.add_parser(
        "rollback", help="go back to the previous release (straight back inside the "
                         "roll-back window)")
    fleet_args(rollback, strategy=False)
    rollback.add_argument("--to", metavar="RELEASE",
                          help="the release to go back to (default: the one before the live "
                               "release)")
    rollback.add_argument("--headless", action="store_true", help="no TUI: progress on stderr "
                          "(rollback always runs headless today)")
    rollback.add_argument("--json", action="store_true", help="JSON event lines on stdout")


def read_window(fleet: Any, args: argparse.Namespace, state_dir: Path,
                now: float | None = None) -> tuple[WindowState, bool]:
    """The fleet's window from its journal, and whether a rollout is unfinished."""
    from .state import journal_exists, open_journal, resolve_state

    state = resolve_state(getattr(args, "state", None))
    if not journal_exists(state, state_dir):
        return window_state(fleet.rollback_window, [], time.time() if now is None else now), False
    journal = open_journal(state, state_dir)
    try:
        records = journal.completed(fleet.name)
        unfinished = journal.unfinished(fleet.name) is not None
    finally:
        journal.close()
    done = [Completed(r.id, r.current, r.target, r.finished or r.started) for r in records]
    return window_state(fleet.rollback_window, done,
                        time.time() if now is None else now), unfinished


def fast_fleet(fleet: Any, previous_plan: Any) -> Any:
    """``fleet`` with a straight-back plan. Blue-green: every host swaps back to its old
    slot, which still runs the previous release (reinstalled only where it does not), no
    system test, no hold. Otherwise one rolling batch of every host, no verification
    hold, no pauses, as many hosts at once as the capacity rule lets out of service: the
    fleet's ``min_capacity`` (never fewer than its own roll-back parallelism), capped by the
    strategy's ``max_unavailable`` when it sets one."""
    from . import units
    from .model import StrategySpec
    from .strategies.bluegreen import BlueGreenParams
    from .strategies.rolling import RollingParams

    if fleet.strategy.kind == "bluegreen":
        params = fleet.strategy.params
        spec = dataclasses.replace(fleet.strategy, params=BlueGreenParams(
            batch=(100.0,), max_parallel=getattr(params, "max_parallel", None), pause=0.0,
            verify_for=0.0, rollback_parallel=getattr(params, "rollback_parallel", None),
            straight_back=True))
        return dataclasses.replace(fleet, strategy=spec, schema=None)

    total = len(fleet.main_hosts)
    capacity = math.floor(total * (100.0 - fleet.strategy.min_capacity) / 100.0)
    parallel = max(1, previous_plan.rollback_parallel, capacity)
    limit = getattr(fleet.strategy.params, "max_unavailable", None)
    if limit is not None:        # the operator's own cap on hosts out of service wins
        parallel = max(1, min(parallel, units.resolve_count(limit, total)))
    params = RollingParams(batch=(total,), max_unavailable=parallel, verify=False, pause=0.0,
                           rollback_parallel=parallel)
    spec = StrategySpec(kind="rolling", params=params, on_failure=fleet.strategy.on_failure,
                        min_capacity=fleet.strategy.min_capacity)
    return dataclasses.replace(fleet, strategy=spec, schema=None)


def rollback_cost(fleet: Any, window: WindowState) -> dict[str, Any] | None:
    """What a roll-back now would take (the estimate of its plan), for ``status``."""
    from .plan import estimate
    from .rollout import compile_plan

    if window.previous is None or window.live is None:
        return None
    back = dataclasses.replace(fleet, releases=dataclasses.replace(
        fleet.releases, current=window.live, target=window.previous), schema=None)
    if window.open:
        back = fast_fleet(back, compile_plan(back))
    est = estimate(compile_plan(back), back.timing)
    return {"to": window.previous, "in_window": window.open,
            "estimate_s": round(float(est.total_s), 1)}


def cmd_rollback(args: argparse.Namespace, *, load: Any, state_dir_of: Any, run: Any,
                 plugins: Any) -> int:
    from .config import _RELEASE_RE
    from .rollout import compile_plan

    fleet = load(args, plugins)
    if args.to is not None and not _RELEASE_RE.fullmatch(args.to):
        raise ConfigError(f"--to: invalid release name {args.to!r}", key="--to")
    state_dir = state_dir_of(args, fleet)
    window, unfinished = read_window(fleet, args, state_dir)
    if unfinished:
        raise PolicyRefused(f"a rollout of {fleet.name} is unfinished: `upgrader status "
                            f"{args.fleet}` shows it, `upgrader resume {args.fleet}` ends it")
    if window.live is None:
        raise PolicyRefused(f"no completed rollout of {fleet.name} in the journal: nothing to "
                            "roll back")
    to = args.to or window.previous
    assert to is not None
    if to == window.live:
        raise ConfigError(f"--to: {to} is the live release already", key="--to")
    back = dataclasses.replace(fleet, releases=dataclasses.replace(
        fleet.releases, current=window.live, target=to))
    inside = window.is_open_for(to)
    if inside:
        back = fast_fleet(back, compile_plan(back))
        if back.strategy.kind == "bluegreen":
            how = (f"inside the roll-back window: straight back from {window.live} to {to} "
                   f"(every host swaps back to its old slot, which still runs {to}; no "
                   "pauses, no analysis holds)")
        else:
            how = (f"inside the roll-back window: straight back from {window.live} to {to} "
                   f"(no pauses, no analysis holds, up to "
                   f"{back.strategy.params.max_unavailable} hosts at once)")
        if fleet.schema is not None:
            how += (f"; then schema change {fleet.schema.migration_name} is rolled back (the "
                    f"views of {to} were kept for the window)")
    else:
        if fleet.rollback_window is None:
            why = "the fleet has no rollback_window"
        elif window.closes_at is not None and to == window.previous:
            why = f"the window closed at {_when(window.closes_at)}"
        else:
            why = f"{to} is outside the window ({describe(fleet.rollback_window)})"
        how = (f"outside the roll-back window ({why}): an ordinary {fleet.strategy.kind} "
               f"rollout from {window.live} to {to}, with its pauses and analysis")
        if fleet.schema is not None:
            how += (f"; schema change {fleet.schema.migration_name} is left as it is (once "
                    "completed, a contract cannot be undone)")
        back = dataclasses.replace(back, schema=None)
    print(f"upgrader: rollback: {how}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rollback": {"from": window.live, "to": to, "in_window": inside}}),
              flush=True)
    args.state_dir = str(state_dir)
    args.headless = True
    code: int = asyncio.run(run(back, plugins, args, recover=False))
    if code == 0 and inside and fleet.schema is not None:
        _schema_back(fleet.schema)
    return code


def _schema_back(spec: Any) -> None:
    """Undo the start of the release's schema change when it is still active (the window kept
    the old release's views, so the hosts now back on it never noticed)."""
    from .schema import open_backend

    with open_backend(spec.database, create=False) as db:
        if db.status().active != spec.migration_name:
            print(f"upgrader: schema change {spec.migration_name} is not active: nothing to "
                  "roll back", file=sys.stderr)
            return
        db.rollback(spec.migration_name)
    print(f"upgrader: schema change {spec.migration_name} rolled back", file=sys.stderr)


def _when(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_schema_complete(fleet_path: str, migration: str, *, force: bool,
                          reason: str | None) -> str | None:
    """``upgrader schema complete --fleet FLEET``: refuse (exit 3) inside the fleet's roll-back
    window unless forced with a reason, which is journaled on the rollout that opened the
    window. Returns the fleet's schema database (for a missing ``--db``)."""
    from .config import load_fleet
    from .rollout import default_state_dir
    from .state import open_journal, resolve_state

    path = Path(fleet_path)
    if not path.exists():
        raise ConfigError("no such fleet file", file=path)
    fleet = load_fleet(path)
    database = fleet.schema.database if fleet.schema is not None else None
    state_dir = default_state_dir(fleet)
    args = argparse.Namespace(state=None)
    window, _ = read_window(fleet, args, state_dir)
    if not window.open:
        return database
    closes = f" (it closes at {_when(window.closes_at)})" if window.closes_at else ""
    if not force:
        raise PolicyRefused(
            f"schema change {migration}: complete drops the views {window.previous} needs, and "
            f"{fleet.name} is inside its roll-back window{closes}: `upgrader rollback "
            f"{fleet_path}` still goes straight back to {window.previous}. Wait for the window "
            f"to close, or pass --force --reason REASON")
    if window.rollout is not None:
        journal = open_journal(resolve_state(None), state_dir)
        try:
            entries = journal.entries(window.rollout)
            seq = (entries[-1].seq if entries else 0) + 1
            journal.append(window.rollout, seq, time.time(), "schema_complete_forced",
                           {"migration": migration, "reason": reason or "",
                            "previous": window.previous})
        finally:
            journal.close()
    print(f"upgrader: completing {migration} inside the roll-back window ({reason}): "
          f"{window.previous} can no longer be rolled back to straight away", file=sys.stderr)
    return database
