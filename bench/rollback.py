"""Roll-back speed on the lab (issue 15, point 5, first half): the time from the failing
verdict (``analysis_failed``) to 100 % of traffic on the old release, for blue-green, shedding
and canary, on a real lab (``upgrader.lab``: one process per host and slot, the built-in
balancer, a traffic generator at ``--rps`` requests a second) with a bad release: the demo's
``1.1.0-bad`` (30 % errors) for shedding and canary (their holds divided by ``--speed``); for
blue-green, whose system test of the idle slots stops an erroring release before any user
reaches it, ``1.1.0-flagged``: it errors like ``-bad`` only while the lab's flag ``new-path``
is on; the flag is off for the system test and this script turns it on as the swap step
finishes (users are on the new slots), so verification fails within its 6 s hold (kept
uncompressed: the apps see the flag within 0.2 s, the judge needs two failing 1 s rounds).

"All traffic on the old release" is read from the balancer itself, every 10 ms, by a client
of its own (not from the engine's events): no backend of the target release is ready with a
weight, and a split (if any) gives the target 0 %.

Each run is a fresh process and a fresh lab. ``--baseline DIR`` runs the same measurement
against another checkout's ``upgrader`` package (DIR holds its ``upgrader`` folder), e.g. the
roll-back order before issue 15 point 0 (1760d42^; it has no ``-flagged`` release, so
shedding and canary only):

    git archive 1760d42^ upgrader | tar -x -C /tmp/pre15
    .venv/bin/python bench/rollback.py --strategies shedding canary --baseline /tmp/pre15

A run whose rollout fails without a failing verdict (under load, "verification saw no traffic
to judge") is not the case measured: it is run again, at most ``--runs`` times, and the table
says so.

Reports, per strategy and code, the median (and the runs) of the seconds from the verdict to
all traffic on the old release, from the verdict to the end of the rollout, and the requests
that failed once all traffic was on the old release (the bad release's own errors before that
are what the verdict is about).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
STRATEGIES = ("bluegreen", "shedding", "canary")
#: the lab's flag new-path, off: a "-flagged" release behaves until it is turned on
FLAG = """
environments = ["lab"]

[flags.new-path]
description = "the bad code path of 1.1.0-flagged"
default = "on"

[flags.new-path.environments.lab]
enabled = false
"""


def one(strategy: str, hosts: int, rps: int, speed: float) -> dict[str, object]:
    """One rollout of the bad release on a fresh lab; the measurement as a dict."""
    import asyncio

    from upgrader.config import loads_fleet
    from upgrader.demo import _traffic_flowing, demo_fleet_text
    from upgrader.lab.manager import Lab, free_base_port
    from upgrader.plugins import Plugins
    from upgrader.rollout import Rollout, compile_plan, compress

    async def main() -> dict[str, object]:
        lab_dir = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
        plugins = Plugins()
        text = demo_fleet_text(strategy, hosts=hosts, bad=True, base_port=free_base_port(),
                               lab_dir=lab_dir)
        if strategy == "bluegreen":
            # blue-green system-tests the idle slots: an erroring release never reaches users.
            # A "-flagged" release errors only while the lab's flag new-path is on: off for
            # the system test, turned on by this script once every host has swapped
            # (imported here: a --baseline checkout older than the flagged release can
            # still measure shedding and canary)
            from upgrader.flags.loader import loads as loads_flags
            from upgrader.flags.store import open_store
            from upgrader.lab.app import LAB_FLAG
            from upgrader.lab.layout import LAB_FLAG_STORE

            text = text.replace("1.1.0-bad", "1.1.0-flagged")
            with open_store(str(lab_dir / LAB_FLAG_STORE)) as flags:
                flags.replace(loads_flags(FLAG, source="<bench flags>"), actor="bench",
                              reason="blue-green bench: off until the swap")
        fleet = loads_fleet(text, source="<bench fleet>", registry=plugins)
        # blue-green has no pause to compress; its hold must outlast the flag's way to the
        # apps (their watcher polls at 0.2 s) and two failing 1 s rounds: the fleet's own 6 s
        fleet, plan = compress(fleet, compile_plan(fleet),
                               1.0 if strategy == "bluegreen" else speed)
        target = fleet.releases.target
        lab = Lab(fleet.lab)
        marks: dict[str, float] = {}

        def observe(event) -> None:
            if event.kind in ("analysis_failed", "rollback_started", "rollout_finished") \
                    and event.kind not in marks:
                marks[event.kind] = time.time()
            if strategy == "bluegreen" and event.kind == "step_finished" \
                    and event.data.get("step") == "swap_slots" and "flag_on" not in marks:
                marks["flag_on"] = time.time()      # users are on the new slots: it fails now
                with open_store(str(lab_dir / LAB_FLAG_STORE)) as flags:
                    flags.set_enabled(LAB_FLAG, "lab", True, actor="bench",
                                      reason="the release's bad path, after the swap")

        async def watch_balancer(balancer) -> None:
            while "old_at" not in marks:
                state = await balancer.state()
                serving = [b for b in state.backends.values()
                           if b.pool == target and b.state == "ready" and b.weight > 0]
                split_ok = not state.split or state.split.get(target, 0) <= 0
                if "analysis_failed" in marks and not serving and split_ok:
                    marks["old_at"] = time.time()
                    return
                await asyncio.sleep(0.01)

        stats: dict[str, object] = {}
        try:
            await lab.up(traffic_rps=rps)
            await _traffic_flowing(lab)
            balancer = lab.balancer()
            watcher = asyncio.ensure_future(watch_balancer(balancer))
            async with Rollout(fleet, plan, plugins=plugins, state_dir=lab_dir / "state",
                               observers=[observe]) as rollout:
                result = await rollout.run()
            if "analysis_failed" not in marks:
                # failed for another reason (under load: "verification saw no traffic to
                # judge"), or not at all: not the case measured; the parent runs it again
                watcher.cancel()
                await balancer.aclose()
                return {"strategy": strategy, "skipped": f"{result.outcome.value}: "
                                                          f"{(result.error or '')[:200]}"}
            try:
                await asyncio.wait_for(watcher, 10.0)
            except TimeoutError:
                state = await balancer.state()
                raise RuntimeError(f"never all on the old release: {marks} {result.outcome} "
                                   f"{result.error} {state}") from None
            await balancer.aclose()
            await asyncio.sleep(1.0)              # users keep being served after it
        finally:
            stats = await lab.down()
        seconds = stats.get("seconds") or []
        after = int(marks["old_at"]) + 1 if "old_at" in marks else None
        failed_after = sum(s.get("failed", 0) for s in seconds
                           if after is not None and s.get("t", 0) >= after) \
            if isinstance(seconds, list) else None
        verdict = marks.get("analysis_failed")
        return {"strategy": strategy, "outcome": result.outcome.value,
                "to_old_s": round(marks["old_at"] - verdict, 3)
                if verdict and "old_at" in marks else None,
                "to_end_s": round(marks["rollout_finished"] - verdict, 3)
                if verdict and "rollout_finished" in marks else None,
                "requests": stats.get("requests", 0), "failed": stats.get("failed", 0),
                "failed_after_old": failed_after}

    return asyncio.run(main())


def run_child(strategy: str, code: str | None, args: argparse.Namespace) -> dict[str, object]:
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, __file__, "--one", strategy, "--hosts", str(args.hosts),
            "--rps", str(args.rps), "--speed", str(args.speed)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                          cwd=code or str(HERE))
    if done.returncode != 0:
        return {"strategy": strategy, "error": done.stderr[-800:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values: list[object]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return round(statistics.median(numbers), 3) if numbers else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rps", type=int, default=100)
    parser.add_argument("--speed", type=float, default=5.0,
                        help="pauses and holds divided by this (as the demo's --speed)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure the upgrader package in DIR (main's order)")
    args = parser.parse_args()
    if args.one:
        try:
            print(json.dumps(one(args.one, args.hosts, args.rps, args.speed)))
        except Exception as exc:      # the parent reports it: the head says what went wrong
            print(json.dumps({"strategy": args.one, "error": f"{type(exc).__name__}: "
                                                             f"{str(exc)[:300]}"}))
        return 0
    codes: list[tuple[str, str | None]] = [("this branch", None)]
    if args.baseline:
        codes.insert(0, ("baseline", str(Path(args.baseline).resolve())))
    print(f"{args.hosts} hosts, {args.rps} req/s, speed {args.speed:g}, {args.runs} runs; "
          f"{os.cpu_count()} CPUs")
    print("| strategy | code | to 100 % old (median s) | runs | verdict to end (median s) "
          "| failed after | outcomes |")
    print("|---|---|---|---|---|---|---|")
    lost = errored = 0
    for strategy in args.strategies:
        for label, code in codes:
            runs = []
            skipped: list[str] = []
            while len(runs) < args.runs and len(skipped) < args.runs:
                run = run_child(strategy, code, args)
                if "skipped" in run:     # no failing verdict to measure from: again
                    skipped.append(str(run["skipped"]))
                else:
                    runs.append(run)
            errors = [r["error"] for r in runs if "error" in r]
            ok = [r for r in runs if "error" not in r]
            lost += sum(int(r["failed_after_old"] or 0) for r in ok)
            errored += len(errors)
            print(f"| {strategy} | {label} | {median([r['to_old_s'] for r in ok])} | "
                  f"{', '.join(str(r['to_old_s']) for r in ok)} | "
                  f"{median([r['to_end_s'] for r in ok])} | "
                  f"{sum(int(r['failed_after_old'] or 0) for r in ok)} | "
                  f"{', '.join(sorted({str(r['outcome']) for r in ok}))}"
                  + (f" ({len(errors)} runs errored: {errors[0][:300]!r})" if errors else "")
                  + (f" ({len(skipped)} runs without a failing verdict, run again: "
                     f"{skipped[0][:120]!r})" if skipped else "")
                  + " |", flush=True)
    if lost or errored:
        print(f"FAILED: {lost} requests failed after all traffic was on the old release; "
              f"{errored} runs errored")
        return 1
    print("0 requests failed once all traffic was on the old release")
    return 0


if __name__ == "__main__":
    sys.exit(main())
