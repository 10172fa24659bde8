"""Engine overhead: a canary over 1,000 / 10,000 / 100,000 hosts with the no-op providers in
virtual time (the seed's schedule: 1 host + pause, 1/min until 1 %, 1/s until 100 %).

Measures CPU seconds and peak RSS of a fresh process per run; reports the median of
``--runs`` runs per size and the growth ratio between sizes.

    .venv/bin/python bench/engine.py [--sizes 1000 10000 100000] [--runs 3]
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
import time


def one_run(hosts: int) -> dict:
    """Runs in a child process: build the fleet, compile, run in virtual time."""
    from upgrader import strategies
    from upgrader.clock import LoopClock, run_virtual
    from upgrader.engine.core import Engine, Providers
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
    from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

    start_cpu = time.process_time()
    fleet = Fleet(
        name="bench",
        hosts=tuple(Host(name=f"h{i:06d}", address="10.0.0.1", port=8000) for i in range(hosts)),
        releases=Releases("1.0.0", "1.1.0"),
        commands=Commands(install=("install", "{release}"), start=("start",), stop=("stop",)),
        transport=ProviderSpec("noop"), balancer=ProviderSpec("noop"), health=ProviderSpec("noop"),
        strategy=StrategySpec("canary", strategies.get("canary").default_params()),
        # health checks of every upgraded host each interval are a real cost per host; the
        # bench measures the engine itself, so analysis reads traffic only
        verify=VerifySpec(no_data="pass", interval=10.0, health=False),
        timing=Timing(host_upgrade=600.0, health_interval=1.0),
    )
    plan = strategies.get("canary").compile(fleet, fleet.strategy.params)

    async def main():
        balancer = NoopBalancer()
        for host in fleet.hosts:
            await balancer.set_backend(host.name, address=host.address, port=8000, pool="1.0.0")
        providers = Providers(NoopTransport(record=False) if _accepts_record() else NoopTransport(),
                              balancer, NoopHealthCheck())
        engine = Engine(fleet, plan, providers, clock=LoopClock(), history=100)
        return await engine.run()

    result = run_virtual(main)
    cpu = time.process_time() - start_cpu
    assert result.outcome.value == "completed", result.error
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"hosts": hosts, "cpu_s": cpu, "peak_mb": peak_mb,
            "virtual_s": result.duration_s}


def _accepts_record() -> bool:
    import inspect

    from upgrader.providers.noop import NoopTransport

    return "record" in inspect.signature(NoopTransport.__init__).parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child)))
        return
    rows = []
    for size in args.sizes:
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, __file__, "--child", str(size)],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout))
        rows.append({"hosts": size,
                     "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                     "peak_mb": statistics.median(r["peak_mb"] for r in runs),
                     "virtual_days": runs[0]["virtual_s"] / 86400})
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'hosts':>8} {'cpu s (median)':>15} {'peak MB':>9} {'virtual days':>13} {'cpu/host ms':>12}")
    for row in rows:
        print(f"{row['hosts']:>8} {row['cpu_s']:>15.3f} {row['peak_mb']:>9.1f} "
              f"{row['virtual_days']:>13.2f} {1000 * row['cpu_s'] / row['hosts']:>12.3f}")
    for a, b in itertools.pairwise(rows):
        print(f"growth {a['hosts']} -> {b['hosts']}: x{b['hosts'] / a['hosts']:.0f} hosts, "
              f"x{b['cpu_s'] / a['cpu_s']:.1f} cpu")


if __name__ == "__main__":
    main()
