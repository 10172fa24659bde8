"""Feature flags: evaluations per second against UnleashClient and GrowthBook, in one run, and
the OFREP server's throughput and p99 latency.

1. One rule, the same in all three: a 30 % roll-out sticky on the user id AND tier in
   [gold, silver], over 100,000 distinct users (tiers gold/silver/bronze/free in turn, so
   15 % end up on). upgrader: ``compile_flags(...).evaluate(key, context)``; UnleashClient
   bootstrapped from a dict (no server, no metrics, no registration): a ``flexibleRollout``
   strategy with an IN constraint on ``tier``; GrowthBook: a feature whose force rule has a
   ``tier $in`` condition and ``coverage`` 0.3 hashed on ``id``. The contexts are built
   before timing, in each SDK's own shape; the runs interleave; median of ``--runs``.
2. ``upgrader flags serve`` in a process of its own; aiohttp clients in another process post
   single evaluations (``POST /ofrep/v1/evaluate/flags/{key}``, a random user each) at 1, 10
   and 50 concurrent clients for ``--seconds`` each: requests per second and p50 / p99.

    .venv/bin/python bench/flags.py [--users 100000] [--runs 5] [--seconds 5]
                                    [--concurrency 1 10 50] [--profile] [--skip-server]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAG = "new-checkout"
TIERS = ("gold", "silver", "bronze", "free")
PERCENT = 30
FLAGS_TOML = f"""
environments = ["production"]

[flags.{FLAG}]
description = "the new checkout: 30 % of gold and silver members"
[flags.{FLAG}.environments.production]
enabled = true
rules = [{{ name = "members-30", variant = "on", percent = {PERCENT}, conditions = [
    {{ attribute = "tier", op = "in", values = ["gold", "silver"] }} ] }}]
"""


# --------------------------------------------------------------------------------------------
# 1. Evaluations per second


def users(count: int) -> list[tuple[str, str]]:
    return [(f"user-{i}", TIERS[i % len(TIERS)]) for i in range(count)]


def upgrader_runner(population: list[tuple[str, str]]) -> tuple[Callable[[], int], str]:
    from upgrader.flags.evaluate import compile_flags
    from upgrader.flags.loader import loads

    evaluator = compile_flags(loads(FLAGS_TOML), "production")
    contexts = [{"targetingKey": user, "tier": tier} for user, tier in population]

    def run() -> int:
        evaluate = evaluator.evaluate
        on = 0
        for context in contexts:
            if evaluate(FLAG, context).value:
                on += 1
        return on

    from importlib.metadata import version
    return run, f"upgrader {version('upgrader')}"


def unleash_runner(population: list[tuple[str, str]]) -> tuple[Callable[[], int], str, Any]:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    features = {"version": 1, "features": [{
        "name": FLAG, "enabled": True, "strategies": [{
            "name": "flexibleRollout",
            "parameters": {"rollout": str(PERCENT), "stickiness": "userId", "groupId": FLAG},
            "constraints": [{"contextName": "tier", "operator": "IN",
                             "values": ["gold", "silver"]}],
        }]}]}
    folder = tempfile.mkdtemp(prefix="unleash-bench-")     # removed after destroy()
    cache = FileCache("upgrader-bench", directory=folder)
    cache.bootstrap_from_dict(features)
    client = UnleashClient(url="http://127.0.0.1:9", app_name="upgrader-bench",
                           disable_metrics=True, disable_registration=True, cache=cache)
    client.initialize_client(fetch_toggles=False)
    contexts = [{"userId": user, "properties": {"tier": tier}} for user, tier in population]

    def run() -> int:
        is_enabled = client.is_enabled
        on = 0
        for context in contexts:
            if is_enabled(FLAG, context):
                on += 1
        return on

    from importlib.metadata import version
    return run, f"UnleashClient {version('UnleashClient')}", (client, folder)


def growthbook_runner(population: list[tuple[str, str]]) -> tuple[Callable[[], int], str]:
    from growthbook import GrowthBook

    features = {FLAG: {"defaultValue": False, "rules": [{
        "condition": {"tier": {"$in": ["gold", "silver"]}},
        "force": True, "coverage": PERCENT / 100, "hashAttribute": "id"}]}}
    gb = GrowthBook(features=features)
    contexts = [{"id": user, "tier": tier} for user, tier in population]

    def run() -> int:
        set_attributes, is_on = gb.set_attributes, gb.is_on
        on = 0
        for context in contexts:
            set_attributes(context)
            if is_on(FLAG):
                on += 1
        return on

    from importlib.metadata import version
    return run, f"growthbook {version('growthbook')}"


def bench_evaluations(count: int, runs: int) -> list[dict[str, Any]]:
    population = users(count)
    ours = upgrader_runner(population)
    unleash_run, unleash_name, (unleash_client, unleash_folder) = unleash_runner(population)
    growthbook = growthbook_runner(population)
    contenders = [ours, (unleash_run, unleash_name), growthbook]
    timings: dict[str, list[float]] = {name: [] for _, name in contenders}
    shares: dict[str, float] = {}
    try:
        for run, _name in contenders:          # warm up (and check they agree on the share)
            run()
        for _ in range(runs):
            for run, name in contenders:
                started = time.perf_counter()
                on = run()
                timings[name].append(time.perf_counter() - started)
                shares[name] = on / count
    finally:
        unleash_client.destroy()
        shutil.rmtree(unleash_folder, ignore_errors=True)
    rows = []
    for _run, name in contenders:
        median = statistics.median(timings[name])
        rows.append({"name": name, "evals_per_s": count / median,
                     "best_per_s": count / min(timings[name]),
                     "worst_per_s": count / max(timings[name]), "share_on": shares[name]})
    return rows


def profile_evaluations(count: int) -> None:
    import cProfile
    import pstats

    run, _ = upgrader_runner(users(count))
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


# --------------------------------------------------------------------------------------------
# 2. The OFREP server


def load_client(url: str, concurrency: int, seconds: float, users_count: int,
                server_pid: int | None = None) -> dict[str, Any]:
    """Runs in the load process: ``concurrency`` clients posting back to back."""
    import aiohttp

    endpoint = f"{url}/ofrep/v1/evaluate/flags/{FLAG}"
    latencies: list[float] = []
    errors = 0

    async def client(session: aiohttp.ClientSession, seed: int, stop_at: float) -> None:
        nonlocal errors
        rng = random.Random(seed)
        perf = time.perf_counter
        while perf() < stop_at:
            i = rng.randrange(users_count)
            body = json.dumps({"context": {"targetingKey": f"user-{i}",
                                           "tier": TIERS[i % len(TIERS)]}}).encode()
            started = perf()
            async with session.post(endpoint, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(perf() - started)

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            # warm up the connections
            await asyncio.gather(*(client(session, -i, time.perf_counter() + 0.3)
                                   for i in range(concurrency)))
            latencies.clear()
            cpu_before = _cpu_seconds(server_pid) if server_pid else None
            own_before = time.process_time()
            started = time.perf_counter()
            stop_at = started + seconds
            await asyncio.gather(*(client(session, i, stop_at) for i in range(concurrency)))
            elapsed = time.perf_counter() - started
            client_cpu.append((time.process_time() - own_before) / elapsed)
            cpu_after = _cpu_seconds(server_pid) if server_pid else None
            if cpu_before is not None and cpu_after is not None:
                server_cpu.append((cpu_after - cpu_before) / elapsed)
            return elapsed

    server_cpu: list[float] = []
    client_cpu: list[float] = []
    elapsed = asyncio.run(main())
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"concurrency": concurrency, "requests": len(ordered), "errors": errors,
            "rps": len(ordered) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": ordered[-1] * 1000, "client_cpu": client_cpu[0],
            **({"server_cpu": server_cpu[0]} if server_cpu else {})}


def bench_server(concurrencies: list[int], seconds: float, users_count: int,
                 processes: int = 1) -> list[dict[str, Any]]:
    from upgrader.flags.loader import loads
    from upgrader.flags.store import open_store

    with tempfile.TemporaryDirectory(prefix="upgrader-ofrep-bench-") as folder:
        spec = str(Path(folder) / "flags.sqlite")
        with open_store(spec) as store:
            store.replace(loads(FLAGS_TOML), actor="bench")
        server = subprocess.Popen(
            [sys.executable, "-c", "import sys; from upgrader.flags.ofrep import serve; "
             "sys.exit(serve(sys.argv[1], 'production', '127.0.0.1:0', None))", spec],
            cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            url = _announced_url(server)
            rows = []
            for concurrency in concurrencies:
                shares = [concurrency // processes + (1 if i < concurrency % processes else 0)
                          for i in range(min(processes, concurrency))]
                loads_ = [subprocess.Popen(
                    [sys.executable, __file__, "--load", url, "--concurrency", str(share),
                     "--seconds", str(seconds), "--users", str(users_count),
                     "--server-pid", str(server.pid)],
                    cwd=ROOT, stdout=subprocess.PIPE, text=True) for share in shares]
                parts = [json.loads(load.communicate()[0].strip().splitlines()[-1])
                         for load in loads_]
                rows.append(_merge(parts, concurrency))
            return rows
        finally:
            server.terminate()
            server.wait(10)
            assert server.stderr is not None
            server.stderr.close()


def _merge(parts: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """One row from the load processes' rows (percentiles: the worst process's)."""
    return {"concurrency": concurrency, "requests": sum(p["requests"] for p in parts),
            "errors": sum(p["errors"] for p in parts), "rps": sum(p["rps"] for p in parts),
            "p50_ms": max(p["p50_ms"] for p in parts), "p99_ms": max(p["p99_ms"] for p in parts),
            "max_ms": max(p["max_ms"] for p in parts),
            "client_cpu": sum(p["client_cpu"] for p in parts),
            **({"server_cpu": parts[0]["server_cpu"]} if "server_cpu" in parts[0] else {})}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _announced_url(server: subprocess.Popen[str]) -> str:
    assert server.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if "http://" in line:
            return line[line.index("http://"):].split("/ofrep")[0]
        if not line and server.poll() is not None:
            break
    raise SystemExit("the OFREP server did not start")


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--profile", action="store_true",
                        help="profile upgrader's evaluator over the users, then stop")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--load-processes", type=int, default=1,
                        help="client processes sharing the concurrent clients (default 1)")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    if args.load:
        concurrency = args.concurrency[0]
        print(json.dumps(load_client(args.load, concurrency, args.seconds, args.users,
                                     args.server_pid)))
        return
    if args.profile:
        profile_evaluations(args.users)
        return

    command = "python bench/flags.py " + " ".join(sys.argv[1:])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"command: {command.strip()}")
    print()
    print(f"## evaluations per second: 1 rule (30 % sticky on user id AND tier in "
          f"[gold, silver]), {args.users:,} users, median of {args.runs}")
    rows = bench_evaluations(args.users, args.runs)
    ours = rows[0]
    faster_peer = max(rows[1:], key=lambda row: row["evals_per_s"])
    print(f"| SDK | evals/s (median) | best | worst | share on | vs {faster_peer['name']} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['name']} | {row['evals_per_s']:,.0f} | {row['best_per_s']:,.0f} | "
              f"{row['worst_per_s']:,.0f} | {row['share_on']:.2%} | "
              f"{row['evals_per_s'] / faster_peer['evals_per_s']:.2f}x |")
    ratio = ours["evals_per_s"] / faster_peer["evals_per_s"]
    print(f"\nupgrader vs the faster peer ({faster_peer['name']}): {ratio:.1f}x "
          f"(goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})")

    if args.skip_server:
        return
    print()
    print(f"## OFREP server: POST /ofrep/v1/evaluate/flags/{FLAG}, {args.seconds:g} s per "
          f"level; the server and {args.load_processes} aiohttp client process(es)")
    print("| concurrent clients | requests/s | p50 ms | p99 ms | max ms | requests | errors "
          "| server CPU | client CPU |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in bench_server(args.concurrency, args.seconds, args.users, args.load_processes):
        print(f"| {row['concurrency']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | "
              f"{row['p99_ms']:.2f} | {row['max_ms']:.1f} | {row['requests']:,} | "
              f"{row['errors']} | {row.get('server_cpu', float('nan')):.0%} | "
              f"{row['client_cpu']:.0%} |")


if __name__ == "__main__":
    main()
