"""Engine overhead at the settings a user gets: a canary over 1,000 / 10,000 / 100,000 hosts
run through ``upgrader.Rollout`` with the default ``[verify]`` (health checks on), the default
``metrics`` event every second and the default 2,000-event history, on the no-op providers in
virtual time (the seed's schedule: 1 host + 10 min pause, 1/min until 1 %, 1/s until 100 %).

Measures CPU seconds and peak RSS of a fresh process per run; reports the median of
``--runs`` runs per size and the growth per host between sizes.

    .venv/bin/python bench/engine.py [--sizes 1000 10000 100000] [--runs 3]
    .venv/bin/python bench/engine.py --pause 30 --watch 40 --sizes 2000 10000   # "real time"
    .venv/bin/python bench/engine.py --bare --sizes 10000            # peer: the engine alone

``--pause MINUTES`` plays what a real-time canary reaches after that long a pause: one host
upgraded, then a pause of MINUTES with the metrics event every second; it reads the process's
RSS every 5 minutes of the pause (memory must stay flat) and counts the per-host figures the
event history keeps; ``--watch ROWS`` has a front end show that many hosts' rows meanwhile.

What differs from a user's run, and why: the balancer, transport and health check are the
in-memory no-op balancer and bench-local transport and health check that keep no record
of their calls (the no-op ones keep a list for tests; the bench measures the engine, not a
network); the rollout keeps no journal (SQLite's cost is the journal's, measured apart); and
a small traffic feed credits ~100 requests a second to the pools (10 % to the new release) so that analysis
judges traffic, as it would on a fleet with users, rather than "no data".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class BenchTransport:
    """Runs nothing and answers exit status 0 (the no-op one keeps a list of its calls)."""

    async def run(self, host, argv, *, timeout=None, check=True):
        from upgrader.providers.base import CommandResult

        return CommandResult(0)

    async def aclose(self) -> None:
        pass


class BenchHealth:
    """Always healthy; counts its checks (the no-op one keeps every call in a list)."""

    def __init__(self) -> None:
        self.count = 0

    async def check(self, host, *, port=None):
        from upgrader.providers.base import HealthResult

        self.count += 1
        return HealthResult(True, "bench")

    async def aclose(self) -> None:
        pass


def _credit(balancer, pool: str, requests: int) -> None:
    """Requests served by ``pool`` (counters per pool, as HAProxy's BACKEND rows)."""
    record_pool = getattr(balancer, "record_pool", None)
    if record_pool is not None:
        record_pool(pool, requests=requests, latency=0.008)
        return
    from upgrader.providers.noop import _Counters  # the base commit has no record_pool

    counters = balancer._pool_counters.setdefault(pool, _Counters())
    counters.requests += requests
    counters.buckets[3] += requests                  # 8 ms: the 10 ms bucket


def one_run(hosts: int, pause_minutes: float | None, bare: bool = False,
            rows: int = 0) -> dict:
    """Runs in a child process: build the fleet, compile, run in virtual time."""
    import asyncio

    from upgrader import strategies
    from upgrader.clock import LoopClock, run_virtual
    from upgrader.engine.core import Providers
    from upgrader.model import (
        Commands,
        Fleet,
        Host,
        ProviderSpec,
        Releases,
        StrategySpec,
        Timing,
        VerifySpec,
    )
    from upgrader.providers.noop import NoopBalancer
    from upgrader.rollout import Rollout
    from upgrader.strategies.canary import CanaryParams, CanaryStep

    start_cpu = time.process_time()
    params = strategies.get("canary").default_params()
    if pause_minutes is not None:
        params = CanaryParams(steps=(CanaryStep(hosts=1, pause=60.0 * pause_minutes,
                                                pause_given=True),))
    fleet = Fleet(
        name="bench",
        hosts=tuple(Host(name=f"h{i:06d}", address="10.0.0.1", port=8000) for i in range(hosts)),
        releases=Releases("1.0.0", "1.1.0"),
        commands=Commands(install=("install", "{release}"), start=("start",), stop=("stop",)),
        transport=ProviderSpec("noop"), balancer=ProviderSpec("noop"), health=ProviderSpec("noop"),
        strategy=StrategySpec("canary", params),
        timing=Timing(host_upgrade=600.0),
        # --bare: the engine alone, as the bench measured it before issue 17
        **({"verify": VerifySpec(health=False)} if bare else {}),
    )
    samples: list[dict] = []
    health = BenchHealth()

    async def main():
        balancer = NoopBalancer()
        for host in fleet.hosts:
            await balancer.set_backend(host.name, address=host.address, port=8000, pool="1.0.0")
        providers = Providers(BenchTransport(), balancer, health)
        with tempfile.TemporaryDirectory() as state_dir:
            async with Rollout(fleet, providers=providers, clock=LoopClock(), journal=False,
                               state_dir=state_dir,
                               metrics_interval=None if bare else 1.0) as rollout:
                async def users():
                    while True:
                        await asyncio.sleep(1.0)
                        _credit(balancer, "1.1.0", 10)
                        _credit(balancer, "1.0.0", 90)

                async def sample_the_pause():
                    loop = asyncio.get_running_loop()
                    begun = loop.time()
                    assert pause_minutes is not None
                    if rows and hasattr(rollout.engine, "watch_hosts"):    # bd21cc4: none
                        rollout.engine.watch_hosts([h.name for h in fleet.hosts[:rows]])
                    for minute in range(5, int(pause_minutes) + 1, 5):
                        await asyncio.sleep(begun + 60.0 * minute - loop.time())
                        history = rollout.engine.history
                        figures = sum(len(e.data.get("hosts") or ()) for e in history
                                      if e.kind == "metrics")
                        samples.append({"minute": minute, "rss_mb": round(_rss_mb(), 1),
                                        "history": len(history), "host_figures": figures,
                                        "health_checks": health.count})
                    rollout.abort(rollback=False)

                feed = asyncio.ensure_future(users())
                watcher = (asyncio.ensure_future(sample_the_pause())
                           if pause_minutes is not None else None)
                try:
                    return await rollout.run()
                finally:
                    for task in (feed, watcher):
                        if task is not None:
                            task.cancel()

    result = run_virtual(main)
    cpu = time.process_time() - start_cpu
    if pause_minutes is None:
        assert result.outcome.value == "completed", result.error
    else:
        assert len(samples) == int(pause_minutes) // 5, "the pause was not sampled"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"hosts": hosts, "cpu_s": cpu, "peak_mb": peak_mb, "virtual_s": result.duration_s,
            "outcome": result.outcome.value, "health_checks": health.count,
            "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pause", type=float, metavar="MINUTES",
                        help="play one host then a pause this long (memory over a pause)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up on a run after this many seconds (reported as such)")
    parser.add_argument("--bare", action="store_true",
                        help="the engine alone: no health checks in analysis, no metrics "
                             "events (a peer: what the defaults add)")
    parser.add_argument("--watch", type=int, default=0, metavar="ROWS",
                        help="with --pause: a front end shows this many hosts' rows")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child, args.pause, args.bare, args.watch)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}", flush=True)
    rows = []
    for size in args.sizes:
        runs = []
        for _ in range(args.runs):
            command = [sys.executable, __file__, "--child", str(size)]
            if args.pause is not None:
                command += ["--pause", str(args.pause)]
            if args.bare:
                command.append("--bare")
            if args.watch:
                command += ["--watch", str(args.watch)]
            try:
                out = subprocess.run(command, capture_output=True, text=True, check=True,
                                     timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{size:>8} hosts: gave up after {args.timeout:g}s CPU+wall", flush=True)
                break
            except subprocess.CalledProcessError as exc:
                print(exc.stderr, file=sys.stderr)
                raise
            runs.append(json.loads(out.stdout))
        if not runs:
            continue
        rows.append({"hosts": size,
                     "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                     "peak_mb": statistics.median(r["peak_mb"] for r in runs),
                     "virtual_days": runs[0]["virtual_s"] / 86400,
                     "checks": runs[0]["health_checks"], "samples": runs[0]["samples"],
                     "runs": len(runs)})
        if args.pause is not None:
            for sample in runs[0]["samples"]:
                print(f"{size:>8} hosts, minute {sample['minute']:>3} of the pause: "
                      f"RSS {sample['rss_mb']:>7.1f} MB, history {sample['history']:>5} "
                      f"events holding {sample['host_figures']:>8} per-host figures, "
                      f"{sample['health_checks']:>8} health checks", flush=True)
    print(f"{'hosts':>8} {'runs':>5} {'cpu s (median)':>15} {'peak MB':>9} "
          f"{'virtual days':>13} {'cpu/host ms':>12} {'health checks':>14}")
    for row in rows:
        print(f"{row['hosts']:>8} {row['runs']:>5} {row['cpu_s']:>15.3f} {row['peak_mb']:>9.1f} "
              f"{row['virtual_days']:>13.2f} {1000 * row['cpu_s'] / row['hosts']:>12.3f} "
              f"{row['checks']:>14}")
    for a, b in itertools.pairwise(rows):
        per_a, per_b = a["cpu_s"] / a["hosts"], b["cpu_s"] / b["hosts"]
        print(f"growth {a['hosts']} -> {b['hosts']}: x{b['hosts'] / a['hosts']:.0f} hosts, "
              f"x{b['cpu_s'] / a['cpu_s']:.1f} cpu (cpu per host x{per_b / per_a:.2f})")


if __name__ == "__main__":
    main()
