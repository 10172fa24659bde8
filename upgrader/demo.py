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
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .units import plural

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
    "feature": """
kind = "feature"
flag = "demo-feature"
# no host changes: the flag goes on for 1 % of users, a quarter, then everyone
steps = [{percent = 1, pause = "10s"}, {percent = 25, pause = "5s"}, {percent = 100}]
""",
}

#: the flag store of a feature demo: one flag, off, in the demo's environment
DEMO_FLAGS = """
environments = ["lab"]

[flags.demo-feature]
description = "the demo's feature"
kind = "release"

[flags.demo-feature.environments.lab]
enabled = false
default = "on"
"""

FLAGS_TABLE = """
[flags]
store = "{store}"
environment = "lab"
"""

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
{flags_table}

[[groups]]
name = "internal"
[[groups]]
name = "beta"
[[groups]]
name = "free"
[[groups]]
name = "paid"
"""


def demo_flags_store(lab_dir: Path) -> Path:
    """Where a feature demo keeps its flag store (inside the lab folder: it goes with it)."""
    return lab_dir / "flags.sqlite"


def demo_fleet_text(strategy: str, *, hosts: int, bad: bool, base_port: int,
                    lab_dir: Path) -> str:
    flags_table = FLAGS_TABLE.format(store=demo_flags_store(lab_dir)) \
        if strategy == "feature" else ""
    # a feature roll-out changes no release
    target = "1.0.0" if strategy == "feature" else "1.1.0-bad" if bad else "1.1.0"
    return FLEET_TEMPLATE.format(
        strategy=strategy, target=target, hosts=hosts,
        new_hosts=hosts if strategy == "shedding" else 0,
        slots="true" if strategy == "bluegreen" else "false", base_port=base_port,
        lab_dir=str(lab_dir), strategy_table=STRATEGY_TABLES[strategy],
        flags_table=flags_table)


def fill_demo_flags(lab_dir: Path) -> None:
    """A feature demo's flag store, with its one flag (off)."""
    from .flags.loader import loads
    from .flags.store import open_store

    with open_store(demo_flags_store(lab_dir)) as store:
        store.replace(loads(DEMO_FLAGS, source="<demo flags>"), actor="upgrader demo",
                      reason="the demo's flag")


#: after a signal, how long the demo lets its roll-back run before it stops the lab anyway
#: (the lab goes away with the demo: a hung-up demo must not outlive its terminal for long)
HANGUP_GRACE_S = 5.0


def run_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.hosts <= 60:
        raise ConfigError(f"--hosts must be between 1 and 60, got {args.hosts}", key="--hosts")
    if args.speed <= 0:
        raise ConfigError(f"--speed must be above 0, got {args.speed}", key="--speed")
    if args.rps < 1:
        raise ConfigError(f"--rps must be at least 1, got {args.rps}", key="--rps")
    from .frontend import quiet_print

    summary = asyncio.run(_demo(args))
    quiet_print(json.dumps(summary))
    return 0 if summary["outcome"] == "completed" else 1


class _Stop:
    """The signals a demo got (Ctrl-C, SIGTERM, SIGHUP): before the rollout runs they cancel
    the demo (its ``finally`` stops the lab); while it runs they abort it with roll-back and
    close the TUI."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.main: asyncio.Task[Any] | None = asyncio.current_task()
        self.rollout: Any = None
        self.app: Any = None
        self.ttys: tuple[int, ...] = ()
        self.signalled = asyncio.Event()

    def install(self) -> None:
        from .frontend import ABORT_SIGNALS, terminal_fds

        self.ttys = terminal_fds()
        loop = asyncio.get_running_loop()
        for sig in ABORT_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.handle, sig)
            except (NotImplementedError, RuntimeError):
                pass

    def uninstall(self) -> None:
        from .frontend import ABORT_SIGNALS

        loop = asyncio.get_running_loop()
        for sig in ABORT_SIGNALS:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass

    def handle(self, signum: int) -> None:
        from .frontend import silence_terminal

        self.signum = self.signum or signum
        self.signalled.set()
        if signum == signal.SIGHUP:
            silence_terminal(self.ttys)     # the terminal is gone: nothing may stop on a write
        if self.rollout is None:
            if self.main is not None:
                self.main.cancel()           # still setting up: the finally stops the lab
            return
        self.rollout.abort(rollback=True)
        if self.app is not None:
            try:
                self.app.exit()
            except Exception:                # the app may be half torn down already
                pass

    @property
    def hung_up(self) -> bool:
        return self.signum == signal.SIGHUP


async def _finish(task: asyncio.Task[Any], rollout: Any, stop: _Stop) -> Any:
    """The rollout's result. After a hang-up the roll-back gets ``HANGUP_GRACE_S``; then
    the demo goes on to stop its lab anyway (None: no result)."""
    if not task.done():
        rollout.abort(rollback=True)
    if not stop.hung_up:
        return await task
    try:
        return await asyncio.wait_for(asyncio.shield(task), HANGUP_GRACE_S)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None


async def _run_with_tui(rollout: Any, title: str, flags_store: str | None = None,
                        stop: _Stop | None = None) -> Any:
    """The TUI on the in-process engine, in the same event loop. Quitting a live demo rolls
    it back (the demo's lab goes away with it, so there is nothing to hand over); so does a
    signal, also SIGHUP when the terminal closes."""
    from .frontend import open_flag_store
    from .tui import make_app

    stop = stop or _Stop()
    flag_store = open_flag_store(flags_store)
    task = asyncio.get_running_loop().create_task(rollout.run())
    try:
        app = make_app(rollout.engine, title=title, flags=flag_store)
        stop.app = app
        if stop.signum is None:
            try:
                await app.run_async()
            except Exception:
                if stop.signum is None:
                    raise
                # the terminal went away under the app (EIO, EPIPE): the clean-up goes on
    finally:
        stop.app = None
        try:
            result = await _finish(task, rollout, stop)
        finally:
            if flag_store is not None:
                flag_store.close()
    return result


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .config import loads_fleet
    from .headless import HeadlessDisplay
    from .lab.layout import LabLayout
    from .lab.manager import Lab, free_base_port
    from .plugins import Plugins
    from .rollout import Rollout, compile_plan, compress

    stop = _Stop()
    stop.install()
    lab_dir = Path(tempfile.mkdtemp(prefix="upgrader-demo-"))
    plugins = Plugins()
    try:
        text = demo_fleet_text(args.strategy, hosts=args.hosts, bad=args.bad_release,
                               base_port=free_base_port(), lab_dir=lab_dir)
        if args.strategy == "feature":
            fill_demo_flags(lab_dir)
        fleet = loads_fleet(text, source="<demo fleet>", registry=plugins)
        plan = compile_plan(fleet)
        fleet, plan = compress(fleet, plan, args.speed)
    except BaseException:
        # nothing ran yet: the demo leaves no empty lab folder behind
        stop.uninstall()
        shutil.rmtree(lab_dir, ignore_errors=True)
        raise
    # the demo fleet has a [lab] table, which the fleet loader turns into a LabLayout
    assert isinstance(fleet.lab, LabLayout)
    lab = Lab(fleet.lab)
    display = HeadlessDisplay(total_hosts=len(fleet.main_hosts), target=fleet.releases.target,
                              quiet=not args.headless)
    what = ("feature flag demo-feature on for a growing share of users" if
            args.strategy == "feature" else
            f"{args.strategy} upgrade to {fleet.releases.target}")
    display.line(f"demo: {plural(len(fleet.main_hosts), 'host')} on 1.0.0 behind the built-in "
                 f"balancer, {args.rps} user requests/s; {what} (lab in {lab_dir})", "bold")
    stats: dict[str, Any] = {}
    result: Any = None
    try:
        await lab.up(traffic_rps=args.rps)
        await _traffic_flowing(lab)
        async with Rollout(fleet, plan, plugins=plugins, state_dir=lab_dir / "state",
                           observers=[display], interactive=not args.headless) as rollout:
            stop.rollout = rollout
            if not args.headless:
                result = await _run_with_tui(rollout, f"demo: {args.strategy}",
                                             getattr(args, "flags_store", None), stop)
            else:
                with display:
                    task = asyncio.get_running_loop().create_task(rollout.run())
                    signalled = asyncio.ensure_future(stop.signalled.wait())
                    try:
                        await asyncio.wait((task, signalled),
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        signalled.cancel()
                        result = await _finish(task, rollout, stop)
            stop.rollout = None
        if stop.signum is None:
            await asyncio.sleep(1.0)     # users keep being served after the rollout
    except asyncio.CancelledError:
        if stop.signum is None:
            raise
    finally:
        # a signal now must not interrupt the clean-up: the lab's processes live in sessions
        # of their own and outlive the demo unless stopped here
        stop.main = None
        stop.rollout = None
        try:
            stats = await asyncio.shield(lab.down())
        finally:
            stop.uninstall()
            if not args.keep:
                shutil.rmtree(lab_dir, ignore_errors=True)
    if result is None:
        return {"outcome": "aborted", "strategy": args.strategy,
                "signal": signal.Signals(stop.signum).name if stop.signum else None,
                "requests": stats.get("requests", 0),
                "failed_requests": stats.get("failed", 0)}
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
