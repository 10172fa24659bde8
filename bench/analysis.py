"""The canary judges side by side (issue 14, point 6): the threshold judge (a fleet without
``[[verify.metrics]]``, the default) against the statistical judge (``[[verify.metrics]]``
for the error rate and the p95 latency against the baseline), on a real lab under the
demo's default load: 8 app processes behind the built-in balancer, 200 user requests a
second from 500 users (``upgrader demo``'s defaults).

Each run is a canary of one host of that fleet: the fleet file drives ``web-01`` only
(``[lab] hosts = 1``; the other seven keep serving the current release and are the
baseline), with the demo's ``[verify]`` table as it is (``error_rate_max = "2%"``,
``min_requests = 5``, ``consecutive_failures = 2``, ``interval = "1s"``, ``for = "6s"``,
``no_data = "wait"``). Releases, one name per seeded run (the lab app draws its failures
from a generator seeded with the release name and host, so both judges meet the same
draws): good (``1.1.0-rN``), +2 %, +5 %, +30 % errors (``-err2``, ``-err5``, ``-err30``,
docs/LAB.md) and slow (``-slow``, 0.3 s a request instead of 2-5 ms). The lab is reset to
1.0.0 after every run.

Figures per judge and release:

* roll-backs: runs the judge failed (analysis_failed); for the good release, false ones;
* inconclusive: runs where the statistical judge was still inconclusive after the hold and
  its extension (the default ``inconclusive = "pause"`` waits for an operator; the bench then
  aborts the run with a roll-back, which is not counted as the judge's roll-back);
* median seconds to detect: the failing verdict's time minus the moment the canary took
  traffic (its ``host_done`` event: enabled in the balancer on the new release);
* failed user requests: requests sent from the start of the run until the roll-back began
  (the whole run for a run without a roll-back) that failed, from the traffic generator's
  per-second timeline; median and total over the runs.

With ``--base-errors N`` the lab's base release (the baseline) is ``1.0.0-errN`` and the
good release ``1.1.0-rK-errN``: both fail N % of requests, as real services do, so a judge
that fires on noise shows it (false roll-backs of the good release). The bad releases fail
N + 5 and N + 30 % (``-err(N+5)``, ``-err(N+30)``; N + 2 with ``--releases``). The failed
requests are then the canary's own (answered by the new release until the roll-back began,
from the timeline's ``failed_versions``) and those above the base rate (minus N % of the
canary's answers): the seven baseline hosts' background failures are no judge's cost.

    .venv/bin/python bench/analysis.py --runs 8 --good-runs 20       # bench/RESULTS.md
    .venv/bin/python bench/analysis.py --base-errors 1 --runs 8 --good-runs 20
    .venv/bin/python bench/analysis.py --quick          # smoke: 1 run of each, short
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOSTS = 8
RPS = 200          # upgrader demo's --rps default
USERS = 500        # Lab.up's default users (the demo's)

#: release -> suffix of its name (run N: 1.1.0-rN<suffix>)
RELEASES = {"good": "", "+2% errors": "-err2", "+5% errors": "-err5",
            "+30% errors": "-err30", "slow": "-slow"}
JUDGES = ("threshold", "statistical")
#: --base-errors N: the points of errors each bad release adds to the base rate
ERROR_POINTS = {"+2% errors": 2, "+5% errors": 5, "+30% errors": 30}
#: --base-errors N: the releases run by default (slow has no name with a base rate)
BASE_ERROR_RELEASES = ("good", "+5% errors", "+30% errors")


def suffix_of(name: str, base_errors: int) -> str:
    """The release-name suffix of release ``name``: with a base error rate of N %, the good
    release fails N % too (``-errN``) and a bad one N + its points (``-err(N+5)``)."""
    if not base_errors:
        return RELEASES[name]
    if name == "good":
        return f"-err{base_errors}"
    return f"-err{base_errors + ERROR_POINTS[name]}"


def label_of(name: str, base_errors: int) -> str:
    if not base_errors:
        return name
    if name == "good":
        return f"good ({base_errors} %)"
    return f"+{ERROR_POINTS[name]} points ({base_errors + ERROR_POINTS[name]} %)"

FLEET = """
[fleet]
name = "analysis-bench-{judge}"
environment = "lab"

[release]
current = "{current}"
target = "{target}"

[lab]
hosts = 1
dir = "{dir}"
base_port = {port}

# upgrader demo's [verify] table, as users get it
[verify]
error_rate_max = "2%"
min_requests = 5
consecutive_failures = 2
interval = "1s"
for = "6s"
no_data = "wait"
{metrics}
[timing]
host_upgrade = "2s"
drain_timeout = "10s"
health_timeout = "10s"
health_interval = "100ms"
command_timeout = "30s"

[strategy]
kind = "canary"
on_failure = "rollback"
steps = [{{hosts = 1}}]
"""

#: the statistical judge: the error rate and the p95 latency against the baseline
STATISTICAL = """
[[verify.metrics]]
name = "error_rate"
max = 2.0
max_increase = "100%"

[[verify.metrics]]
name = "p95_latency"
max_increase = "50%"
"""


def fleet_text(judge: str, target: str, lab_dir: Path, port: int,
               window: int | None = None, critical: bool = False,
               current: str = "1.0.0", inconclusive_for: str | None = None) -> str:
    metrics = STATISTICAL if judge == "statistical" else ""
    if critical:
        metrics = metrics.replace('max_increase = "100%"\n', 'max_increase = "100%"\n'
                                  'critical = true\n').replace(
            'max_increase = "50%"\n', 'max_increase = "50%"\ncritical = true\n')
    if metrics and window is not None:
        metrics = f"window = {window}\n" + metrics
    if metrics and inconclusive_for is not None:
        metrics = f'inconclusive_for = "{inconclusive_for}"\n' + metrics
    return FLEET.format(judge=judge, current=current, target=target, dir=lab_dir, port=port,
                        metrics=metrics)


def failed_between(stats_file: Path, start: float, end: float) -> int:
    """Failed requests sent in the seconds from ``start`` to ``end`` (unix time)."""
    stats = json.loads(stats_file.read_text())
    return sum(int(s.get("failed", 0)) for s in stats.get("timeline", [])
               if int(start) <= int(s["t"]) <= int(end))


def answered_by(stats_file: Path, start: float, end: float, version: str) -> tuple[int, int]:
    """(failed, all) answers of release ``version`` to requests sent from ``start`` to
    ``end`` (the timeline's ``failed_versions`` and ``versions``)."""
    stats = json.loads(stats_file.read_text())
    seconds = [s for s in stats.get("timeline", []) if int(start) <= int(s["t"]) <= int(end)]
    return (sum(int(s.get("failed_versions", {}).get(version, 0)) for s in seconds),
            sum(int(s.get("versions", {}).get(version, 0)) for s in seconds))


async def one_run(work: Path, layout: Any, judge: str, target: str,
                  timeout: float, window: int | None = None,
                  critical: bool = False, base_rate: float = 0.0,
                  inconclusive_for: str | None = None) -> dict[str, Any]:
    import upgrader
    from upgrader.plugins import Plugins

    path = work / f"{judge}.toml"
    path.write_text(fleet_text(judge, target, layout.dir, layout.base_port, window,
                               critical, current=layout.base_release,
                               inconclusive_for=inconclusive_for))
    plugins = Plugins()
    fleet = upgrader.load_fleet(str(path), registry=plugins)
    plan = upgrader.compile_plan(fleet)
    seen: dict[str, float] = {}
    detail: list[str] = []
    last: dict[str, str] = {}
    started = time.time()
    async with upgrader.Rollout(fleet, plan, plugins=plugins,
                                state_dir=work / "state") as rollout:
        async def watch() -> None:
            async for event in rollout.events():
                data = event.data
                if event.kind == "host_done" and data.get("mode") == "upgrade":
                    seen.setdefault("in_service", event.ts)     # back in the balancer
                elif event.kind == "analysis_failed":
                    seen.setdefault("failed", event.ts)
                    detail.append(str(data.get("detail")))
                elif event.kind == "verdict":
                    last[str(data.get("metric"))] = f"{data.get('result')}: {data.get('detail')}"
                elif event.kind == "rollback_started":
                    seen.setdefault("rollback", event.ts)
                elif event.kind == "state" and data.get("state") == "WAITING" and \
                        "inconclusive" in str(data.get("reason")):
                    seen.setdefault("inconclusive", event.ts)
                    rollout.abort(rollback=True)       # the operator says no

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        run = asyncio.create_task(rollout.run())
        try:
            result = await asyncio.wait_for(asyncio.shield(run), timeout=timeout)
        except TimeoutError:
            rollout.abort(rollback=True)
            result = await run
        watcher.cancel()
    ended = time.time()
    await asyncio.sleep(1.5)          # the traffic generator writes its timeline each 0.5 s
    until = seen.get("rollback", ended)
    failed = failed_between(layout.traffic_stats_file, started, until)
    # the canary's own failures: with a baseline that fails too, the run's failed requests
    # are mostly the seven baseline hosts' background; the excess is what the release cost
    canary_failed, canary_answers = answered_by(layout.traffic_stats_file, started, until,
                                                target)
    detect = seen["failed"] - seen["in_service"] \
        if "failed" in seen and "in_service" in seen else None
    return {"judge": judge, "target": target, "outcome": result.outcome.value,
            "rolled_back": "failed" in seen, "inconclusive": "inconclusive" in seen,
            "detect_s": detect, "failed": failed, "seconds": ended - started,
            "canary_failed": canary_failed, "canary_answers": canary_answers,
            "excess_failed": round(canary_failed - base_rate * canary_answers, 1),
            "detail": detail[0] if detail else "", "last_verdicts": last}


def summarize(rows: list[dict[str, Any]], base_errors: int = 0) -> list[str]:
    if base_errors:
        return summarize_base_errors(rows, base_errors)
    out = ["| release | judge | runs | roll-backs | inconclusive (paused) | "
           "time to detect, median | failed requests before the roll-back, median (total) |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in RELEASES:
        for judge in JUDGES:
            mine = [r for r in rows if r["release"] == name and r["judge"] == judge]
            if not mine:
                continue
            back = sum(1 for r in mine if r["rolled_back"])
            paused = sum(1 for r in mine if r["inconclusive"])
            times = [r["detect_s"] for r in mine if r["detect_s"] is not None]
            lost = [r["failed"] for r in mine]
            label = "false roll-backs" if name == "good" else "detected"
            shown = judge + (" (critical)" if judge == "statistical" and
                             mine[0].get("critical") else "")
            out.append(
                f"| {name} | {shown} | {len(mine)} | {back}/{len(mine)} {label} | {paused} | "
                f"{f'{statistics.median(times):.1f} s' if times else '-'} | "
                f"{statistics.median(lost):g} ({sum(lost)}) |")
    return out


def summarize_base_errors(rows: list[dict[str, Any]], base_errors: int) -> list[str]:
    """The --base-errors table: the failed requests are the canary's own (answered by the new
    release until the roll-back began), and those above the base rate (what the release cost
    beyond the background the old release fails too)."""
    out = ["| release | judge | runs | roll-backs | inconclusive (paused) | "
           "time to roll-back verdict, median | canary's failed requests, median (total) | "
           f"above the base {base_errors} %, median (total) | canary's requests, median |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in RELEASES:
        for judge in JUDGES:
            mine = [r for r in rows if r["release"] == name and r["judge"] == judge]
            if not mine:
                continue
            back = sum(1 for r in mine if r["rolled_back"])
            paused = sum(1 for r in mine if r["inconclusive"])
            times = [r["detect_s"] for r in mine if r["detect_s"] is not None]
            lost = [r["canary_failed"] for r in mine]
            excess = [r["excess_failed"] for r in mine]
            seen = [r["canary_answers"] for r in mine]
            label = "false roll-backs" if name == "good" else "detected"
            shown = judge + (" (critical)" if judge == "statistical" and
                             mine[0].get("critical") else "")
            out.append(
                f"| {label_of(name, base_errors)} | {shown} | {len(mine)} | "
                f"{back}/{len(mine)} {label} | {paused} | "
                f"{f'{statistics.median(times):.1f} s' if times else '-'} | "
                f"{statistics.median(lost):g} ({sum(lost)}) | "
                f"{statistics.median(excess):.1f} ({sum(excess):.0f}) | "
                f"{statistics.median(seen):g} |")
    return out


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from upgrader.lab.layout import LabLayout
    from upgrader.lab.manager import Lab, free_base_port

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="analysis-bench-") as tmp:
        work = Path(tmp)
        os.environ["UPGRADER_STATE_DIR"] = str(work / "state")
        base = f"1.0.0-err{args.base_errors}" if args.base_errors else "1.0.0"
        layout = LabLayout(dir=work / "lab", hosts=HOSTS, base_port=free_base_port(),
                           base_release=base)
        lab = Lab(layout)
        await lab.up(traffic_rps=args.rps, users=USERS)
        try:
            await asyncio.sleep(2)                 # the users' first requests
            for run in range(max(args.runs, args.good_runs)):
                for name in RELEASES:
                    if name not in args.releases:
                        continue
                    suffix = suffix_of(name, args.base_errors)
                    wanted = args.good_runs if name == "good" else args.runs
                    if run >= wanted:
                        continue
                    target = f"1.1.0-r{args.seed + run}{suffix}"
                    for judge in args.judges:
                        row = await one_run(work, layout, judge, target, args.timeout,
                                            args.window, args.critical,
                                            base_rate=args.base_errors / 100,
                                            inconclusive_for=args.inconclusive_for)
                        row.update(release=name, run=run, critical=args.critical,
                                   window=args.window, base_errors=args.base_errors,
                                   inconclusive_for=args.inconclusive_for)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        await lab.reset()
        finally:
            await lab.down()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs of each bad release")
    parser.add_argument("--good-runs", type=int, default=20, help="runs of the good release")
    parser.add_argument("--seed", type=int, default=1, help="first run's seed")
    parser.add_argument("--rps", type=int, default=RPS, help="user requests a second")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a run may take before it is aborted")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one run of each release")
    parser.add_argument("--releases",
                        help=(f"which releases, comma-separated (default: {', '.join(RELEASES)}; "
                              f"with --base-errors: {', '.join(BASE_ERROR_RELEASES)})"
                              ).replace("%", "%%"))
    parser.add_argument("--base-errors", type=int, default=0, metavar="N",
                        help="the old release (the baseline) and the good release fail N %% of "
                             "requests (1.0.0-errN, 1.1.0-rK-errN); a bad release N + 2, 5 or "
                             "30 %% (default 0: no background errors)")
    parser.add_argument("--judges", default=",".join(JUDGES),
                        help="which judges, comma-separated (default: both)")
    parser.add_argument("--window", type=int,
                        help="the statistical judge's [verify] window (default: the default)")
    parser.add_argument("--inconclusive-for", metavar="DURATION",
                        help="the statistical judge's [verify] inconclusive_for, e.g. 80s "
                             "(default: the default, twice the hold)")
    parser.add_argument("--critical", action="store_true",
                        help="the statistical judge's metrics are critical = true (fail at the "
                             "first failing round, as FLEET.md's example; default: "
                             "consecutive_failures rounds in a row)")
    parser.add_argument("--json", type=Path, help="also write every run's row here")
    args = parser.parse_args(argv)
    if not 0 <= args.base_errors <= 70:
        parser.error(f"--base-errors: {args.base_errors} is not a percent from 0 to 70")
    if args.releases is None:
        args.releases = ",".join(BASE_ERROR_RELEASES if args.base_errors else RELEASES)
    args.releases = [r.strip() for r in args.releases.split(",") if r.strip()]
    args.judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    for name in args.releases:
        if name not in RELEASES:
            parser.error(f"--releases: unknown release {name!r} (known: {', '.join(RELEASES)})")
        if args.base_errors and name == "slow":
            parser.error("--releases: slow has no name with a base error rate (--base-errors)")
    for judge in args.judges:
        if judge not in JUDGES:
            parser.error(f"--judges: unknown judge {judge!r} (known: {', '.join(JUDGES)})")
    if args.quick:
        args.runs, args.good_runs = 1, 1
    started = time.monotonic()
    rows = asyncio.run(bench(args))
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print()
    print("\n".join(summarize(rows, args.base_errors)))
    print(f"\n{len(rows)} runs in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
