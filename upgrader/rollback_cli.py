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
                          "(without a terminal, rollback runs headless anyway)")
    rollback.add_argument("--json", action="store_true", help="JSON event lines on stdout")
    rollback.add_argument("--detach", action="store_true",
                          help="roll back in a controller process of its own; follow it (the "
                               "TUI, or --headless) with `upgrader attach`")
    rollback.add_argument("--control", action="store_true", help=argparse.SUPPRESS)


def read_window(fleet: Any, args: argparse.Namespace, state_dir: Path,
                now: float | None = None) -> tuple[WindowState, Any]:
    """The fleet's window from its journal, and its unfinished rollout (None: none)."""
    from .state import journal_exists, open_journal, resolve_state

    state = resolve_state(getattr(args, "state", None))
    if not journal_exists(state, state_dir):
        return window_state(fleet.rollback_window, [], time.time() if now is None else now), None
    journal = open_journal(state, state_dir)
    try:
        records = journal.completed(fleet.name)
        unfinished = journal.unfinished(fleet.name)
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
                           rollback_parallel=parallel, straight_back=True)
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


def on_terminal() -> bool:
    """Both ends of the command are a terminal (a script's ``rollback`` stays headless)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def cmd_rollback(args: argparse.Namespace, *, load: Any, state_dir_of: Any, run: Any,
                 plugins: Any, detach: Any = None, attach: Any = None) -> int:
    from .config import _RELEASE_RE
    from .rollout import compile_plan

    fleet = load(args, plugins)
    if args.to is not None and not _RELEASE_RE.fullmatch(args.to):
        raise ConfigError(f"--to: invalid release name {args.to!r}", key="--to")
    state_dir = state_dir_of(args, fleet)
    window, unfinished = read_window(fleet, args, state_dir)
    releases = fleet.releases
    reversed_ = unfinished is not None and (unfinished.current, unfinished.target) == (
        releases.target, releases.current)
    if reversed_ and args.to not in (None, unfinished.target):
        raise PolicyRefused(f"the unfinished roll-back {unfinished.id} of {fleet.name} goes to "
                            f"{unfinished.target}: `upgrader rollback {args.fleet}` (without "
                            "--to) finishes it first")
    if reversed_:
        # a roll-back that `upgrader rollback` started and did not finish (its controller
        # died, or a fault stopped it): the fleet file says the other way round, so `resume`
        # cannot take it; this command finishes it, from its journal
        back = dataclasses.replace(fleet, schema=None, releases=dataclasses.replace(
            releases, current=unfinished.current, target=unfinished.target))
        print(f"upgrader: rollback: finishing the unfinished roll-back {unfinished.id} from "
              f"{unfinished.current} to {unfinished.target} (resumed from its journal)",
              file=sys.stderr, flush=True)
        args.state_dir = str(state_dir)
        elsewhere = _elsewhere(args, fleet, detach, attach)
        if elsewhere is not None:
            return elsewhere
        args.headless = True
        resumed: int = asyncio.run(run(back, plugins, args, recover=True))
        if resumed == 0 and window.is_open_for(unfinished.target) and fleet.schema is not None:
            _schema_back(fleet.schema)
        return resumed
    if unfinished is not None:
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
                   f"{back.strategy.params.max_unavailable} hosts at once"
                   + (f"; each switches back to {to}, still installed" if
                      fleet.commands.switch is not None else "") + ")")
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
    elsewhere = _elsewhere(args, fleet, detach, attach)
    if elsewhere is not None:
        return elsewhere
    args.headless = True
    code: int = asyncio.run(run(back, plugins, args, recover=False))
    if code == 0 and inside and fleet.schema is not None:
        _schema_back(fleet.schema)
    return code


def _elsewhere(args: argparse.Namespace, fleet: Any, detach: Any, attach: Any) -> int | None:
    """With ``--detach``, or on a terminal without ``--headless``: start the controller
    process (``rollback --control``, which decides again from the journal, runs the
    roll-back and serves the control API) and, for the TUI, attach to it at once, as ``run``
    does. None: run here, headless."""
    tui = not (args.headless or args.control or args.detach) and on_terminal()
    if not (args.detach or tui) or detach is None:
        return None
    detached: int = detach(args, fleet)
    if detached != 0 or args.detach or attach is None:
        return detached
    args.timeout = 15.0
    attached: int = attach(args, fleet)
    return attached


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
