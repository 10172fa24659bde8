"""``upgrader demo``: the main job with no setup. A real local fleet (app processes, the
built-in balancer, a traffic generator), and an upgrade under live traffic.

The fleet is an ordinary fleet file (embedded below) read by the ordinary loader, so what
the demo shows is exactly what ``upgrader run`` does with ``sample_fleets/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError

STRATEGY_TABLES = {
    "canary": """
kind = "canary"
# one host, watch it; a quarter of the fleet, watch again; then one host a second
steps = [{hosts = 1, pause = "20s"}, {hosts = "25%", pause = "10s"}, {rate = "1/s", until = "100%"}]
""",
    "rolling": """
kind = "rolling"
batch = [1, 2, "25%"]       # the last size repeats
max_unavailable = 2
pause = "3s"
""",
    "takedown": """
kind = "takedown"
retry_after = "5s"
""",
    "phased": """
kind = "phased"
groups = ["internal", "beta", "free", "paid"]
pause = "5s"
""",
    "shedding": """
kind = "shedding"
weights = [5, 25, 50, 100]
pause = "5s"
""",
    "bluegreen": """
kind = "bluegreen"
""",
}

FLEET_TEMPLATE = """
[fleet]
name = "demo-{strategy}"
environment = "lab"

[release]
current = "1.0.0"
target = "{target}"

[lab]
hosts = {hosts}
new_hosts = {new_hosts}
slots = {slots}
base_port = {base_port}
dir = "{lab_dir}"

[verify]
error_rate_max = "2%"
min_requests = 5
consecutive_failures = 2
interval = "1s"
for = "6s"
no_data = "wait"

[timing]
host_upgrade = "2s"
drain_timeout = "10s"
health_timeout = "10s"
health_interval = "100ms"
command_timeout = "30s"

[strategy]
on_failure = "rollback"
{strategy_table}

[[groups]]
name = "internal"
[[groups]]
name = "beta"
[[groups]]
name = "free"
[[groups]]
name = "paid"
"""


def demo_fleet_text(strategy: str, *, hosts: int, bad: bool, base_port: int,
                    lab_dir: Path) -> str:
    return FLEET_TEMPLATE.format(
        strategy=strategy, target="1.1.0-bad" if bad else "1.1.0", hosts=hosts,
        new_hosts=hosts if strategy == "shedding" else 0,
        slots="true" if strategy == "bluegreen" else "false", base_port=base_port,
        lab_dir=str(lab_dir), strategy_table=STRATEGY_TABLES[strategy])


def run_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.hosts <= 60:
        raise ConfigError(f"--hosts must be between 1 and 60, got {args.hosts}", key="--hosts")
    if args.speed <= 0:
        raise ConfigError(f"--speed must be above 0, got {args.speed}", key="--speed")
    if args.rps < 1:
        raise ConfigError(f"--rps must be at least 1, got {args.rps}", key="--rps")
    summary = asyncio.run(_demo(args))
    print(json.dumps(summary))
    return 0 if summary["outcome"] == "completed" else 1


async def _run_with_tui(rollout: Any, title: str, flags_store: str | None = None) -> Any:
    """The TUI on the in-process engine, in the same event loop. Quitting a live demo rolls
    it back (the demo's lab goes away with it, so there is nothing to hand over)."""
    from .frontend import open_flag_store
    from .tui import make_app

    flag_store = open_flag_store(flags_store)
    task = asyncio.get_running_loop().create_task(rollout.run())
    try:
        await make_app(rollout.engine, title=title, flags=flag_store).run_async()
    finally:
        if not task.done():
            rollout.abort(rollback=True)
        if flag_store is not None:
            flag_store.close()
    return await task


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .config import loads_fleet
    from .headless import HeadlessDisplay
    from .lab.layout import LabLayout
    from .lab.manager import Lab, free_base_port
    from .plugins import Plugins
    from .rollout import Rollout, compile_plan, compress

    lab_dir = Path(tempfile.mkdtemp(prefix="upgrader-demo-"))
    plugins = Plugins()
    text = demo_fleet_text(args.strategy, hosts=args.hosts, bad=args.bad_release,
                           base_port=free_base_port(), lab_dir=lab_dir)
    fleet = loads_fleet(text, source="<demo fleet>", registry=plugins)
    plan = compile_plan(fleet)
    fleet, plan = compress(fleet, plan, args.speed)
    # the demo fleet has a [lab] table, which the fleet loader turns into a LabLayout
    assert isinstance(fleet.lab, LabLayout)
    lab = Lab(fleet.lab)
    display = HeadlessDisplay(total_hosts=len(fleet.main_hosts), target=fleet.releases.target,
                              quiet=not args.headless)
    display.line(f"demo: {len(fleet.main_hosts)} hosts on 1.0.0 behind the built-in balancer, "
                 f"{args.rps} user requests/s; {args.strategy} upgrade to "
                 f"{fleet.releases.target} (lab in {lab_dir})", "bold")
    stats: dict[str, Any] = {}
    try:
        await lab.up(traffic_rps=args.rps)
        await _traffic_flowing(lab)
        async with Rollout(fleet, plan, plugins=plugins, state_dir=lab_dir / "state",
                           observers=[display], interactive=not args.headless) as rollout:
            if not args.headless:
                result = await _run_with_tui(rollout, f"demo: {args.strategy}",
                                             getattr(args, "flags_store", None))
            else:
                from .frontend import forward_signals

                forward_signals(rollout)
                with display:
                    result = await rollout.run()
        await asyncio.sleep(1.0)     # users keep being served after the rollout
    finally:
        stats = await lab.down()
        if not args.keep:
            shutil.rmtree(lab_dir, ignore_errors=True)
    summary: dict[str, Any] = {
        "outcome": result.outcome.value, "strategy": args.strategy,
        "hosts": dict(result.hosts),
        "requests": stats.get("requests", 0), "failed_requests": stats.get("failed", 0),
        "duration_s": round(result.duration_s, 3),
    }
    if args.strategy == "takedown" or stats.get("maintenance"):
        summary["maintenance_responses"] = stats.get("maintenance", 0)
        summary["downtime_s"] = stats.get("downtime_s", 0)
    if result.error:
        summary["error"] = result.error
    return summary


async def _traffic_flowing(lab: Any, timeout: float = 10.0) -> None:
    """Wait until the traffic generator reports served requests (a baseline exists)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        stats = await asyncio.to_thread(lab.traffic_stats)
        if stats.get("ok", 0) >= 50:
            return
        await asyncio.sleep(0.1)
    print("upgrader demo: traffic is slow to start", file=sys.stderr)
