"""Crash torture harness: a real lab (app processes, the built-in balancer, live traffic), a
controller (`upgrader run --headless --json`) SIGKILLed at seeded random points, `upgrader
resume` (possibly killed again), and the checks a user would make afterwards.

A kill point is "the N-th transition event the controller printed" (transitions are the
journaled kinds below; each is printed after it reached the journal), so a point is chosen
by what the rollout has done, never by a random sleep. N is drawn from the plan's expected
count of transitions. Everything is seeded: ``TORTURE_SEED`` (default 7) reproduces a run,
``TORTURE_POINTS`` sets the kill points per strategy (default 5).

Checks after each point (:meth:`TortureLab.check_completed` / :meth:`check_rolled_back`):
every host on the expected release (its live backend answers with that version, and its
``current`` link says so); each host installed the target exactly once (installs.log); the
balancer as the journal says (every host's backend ready in the expected pool, nothing
ready elsewhere, the split as last journaled); no user request failed (traffic stats).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from upgrader.journal import Journal
from upgrader.lab import hostctl
from upgrader.lab.manager import Lab, free_base_port

#: journaled kinds a kill point counts (each printed after it reached the journal)
TRANSITIONS = frozenset({"step_started", "step_finished", "host_phase", "host_done", "traffic",
                         "pause_started", "slots", "rollback_started", "reconcile"})
RUN_TIMEOUT = 120.0
SPEED = 2.0

STRATEGY_TABLES = {
    "rolling": 'kind = "rolling"\nbatch = [1, 2]\npause = "1s"\n',
    "canary": ('kind = "canary"\n'
               'steps = [{hosts = 1, pause = "2s"}, {rate = "4/s", until = "100%"}]\n'),
    "shedding": 'kind = "shedding"\nweights = [25, 50, 100]\npause = "1s"\n',
    "bluegreen": 'kind = "bluegreen"\nbatch = "50%"\n',
}

FLEET = """
[fleet]
name = "torture-{strategy}"
environment = "lab"

[release]
current = "{current}"
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
interval = "500ms"
for = "1s"
no_data = "pass"

[timing]
host_upgrade = "2s"
drain_timeout = "10s"
health_timeout = "10s"
health_interval = "100ms"
command_timeout = "30s"

[strategy]
on_failure = "rollback"
{table}
"""


def upgrader_argv() -> list[str]:
    script = Path(sys.executable).with_name("upgrader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("UPGRADER_STATE_DIR", None)
    return subprocess.run([*upgrader_argv(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


class TortureError(AssertionError):
    """A check failed; the message names the seed and point to reproduce it."""


class Controller:
    """`upgrader run|resume ... --json` in a session of its own; a thread reads its event
    lines, so the harness can act on an event at once (with a deadline, never a sleep)."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env.pop("UPGRADER_STATE_DIR", None)
        self.proc = subprocess.Popen([*upgrader_argv(), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.events: list[dict] = []
        self.summary: dict | None = None
        self.ended = False
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append),
                         daemon=True).start()

    @staticmethod
    def _read(stream, sink: Callable) -> None:
        for line in stream:
            sink(line)
        sink(None)

    def _take(self, line: str) -> dict | None:
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if "kind" not in data:
            self.summary = data
            return None
        self.events.append(data)
        return data

    def transitions(self) -> int:
        return sum(1 for e in self.events if e["kind"] in TRANSITIONS)

    def run_to(self, predicate: Callable[[dict, Controller], bool],
               timeout: float = RUN_TIMEOUT) -> dict | None:
        """Read events until ``predicate`` holds (return that event) or the controller ends
        (return None)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TortureError(f"controller ran past {timeout}s; last events "
                                   f"{self.events[-3:]}; stderr {self.err()[-1500:]}")
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                self.ended = True
                self.proc.wait(10)
                return None
            event = self._take(line)
            if event is not None and predicate(event, self):
                return event

    def sigkill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.drain()

    def drain(self) -> None:
        while not self.ended:
            line = self.lines.get(timeout=10)
            if line is None:
                self.ended = True
            else:
                self._take(line)

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        self.run_to(lambda e, c: False, timeout)
        self.drain()
        return self.proc.returncode

    def err(self) -> str:
        return "".join(s for s in list(self.stderr) if s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def nth_transition(n: int) -> Callable[[dict, Controller], bool]:
    return lambda event, ctl: event["kind"] in TRANSITIONS and ctl.transitions() == n


def after_rollback_started(k: int) -> Callable[[dict, Controller], bool]:
    def predicate(event: dict, ctl: Controller) -> bool:
        kinds = [e["kind"] for e in ctl.events if e["kind"] in TRANSITIONS]
        if "rollback_started" not in kinds:
            return False
        return len(kinds) - kinds.index("rollback_started") - 1 == k
    return predicate


def expected_transitions(fleet_path: Path) -> int:
    """About how many transition events a clean run of the fleet prints (from its plan)."""
    from upgrader.config import load_fleet
    from upgrader.plan import (
        Maintenance,
        Pause,
        PrepareSlots,
        Route,
        SetTraffic,
        SwapSlots,
        TurnDown,
        UpgradeHosts,
    )
    from upgrader.rollout import compile_plan

    plan = compile_plan(load_fleet(fleet_path))
    total = 0
    for step in plan.steps:
        total += 2
        if isinstance(step, UpgradeHosts):
            total += 7 * len(step.hosts)
        elif isinstance(step, PrepareSlots):
            total += 5 * len(step.hosts)
        elif isinstance(step, SwapSlots):
            total += 2 * len(step.hosts) + 1
        elif isinstance(step, TurnDown):
            total += 3 * len(step.hosts)
        elif isinstance(step, (SetTraffic, Route, Maintenance, Pause)):
            total += 1
    return total


@dataclass
class PointResult:
    """What happened at one kill point (a row of docs/RELIABILITY.md)."""

    label: str
    kills: list[str] = field(default_factory=list)     # "after #N kind host phase"
    outcome: str = ""
    reconcile: list[str] = field(default_factory=list)
    requests: int = 0
    failed: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.label}: killed {' / '.join(self.kills) or 'never (ended first)'}; "
                f"{self.outcome}; reconcile {self.reconcile or 'none'}; "
                f"{self.requests} requests, {self.failed} failed; {self.seconds:.1f}s")


def describe(event: dict | None, n: int) -> str:
    if event is None:
        return f"#{n} (ended before it)"
    extra = " ".join(str(event[k]) for k in ("host", "phase", "mode", "index", "step")
                     if k in event)
    return f"#{n} {event['kind']} {extra}".strip()


class TortureLab:
    """One lab and one fleet file; ``run_point`` runs a rollout with kills and resumes."""

    def __init__(self, tmp: Path, strategy: str, *, hosts: int = 4, rps: int = 100,
                 current: str = "1.0.0", target: str = "1.1.0") -> None:
        self.tmp = tmp
        self.strategy = strategy
        self.hosts = hosts
        self.rps = rps
        self.current, self.target = current, target
        self.lab_dir = tmp / "lab"
        self.state_dir = tmp / "state"
        self.fleet = tmp / "fleet.toml"
        self.base_port = free_base_port()
        self.controllers: list[Controller] = []
        self.write_fleet()

    @property
    def new_hosts(self) -> int:
        return self.hosts if self.strategy == "shedding" else 0

    def write_fleet(self) -> None:
        self.fleet.write_text(FLEET.format(
            strategy=self.strategy, current=self.current, target=self.target, hosts=self.hosts,
            new_hosts=self.new_hosts, slots="true" if self.strategy == "bluegreen" else "false",
            base_port=self.base_port, lab_dir=self.lab_dir,
            table=STRATEGY_TABLES[self.strategy]), encoding="utf-8")

    # -- lab ----------------------------------------------------------------------------------

    def up(self) -> None:
        args = ["lab", "up", "--hosts", str(self.hosts), "--dir", str(self.lab_dir),
                "--base-port", str(self.base_port), "--rps", str(self.rps)]
        if self.new_hosts:
            args += ["--new-hosts", str(self.new_hosts)]
        if self.strategy == "bluegreen":
            args.append("--slots")
        result = cli(*args)
        if result.returncode != 0:
            raise TortureError(f"lab up failed: {result.stderr[-2000:]}")
        lab = self.lab()
        deadline = time.monotonic() + 15
        while lab.traffic_stats().get("ok", 0) < 30:
            if time.monotonic() > deadline:
                raise TortureError(f"no traffic: {lab.traffic_stats()}")
            time.sleep(0.05)

    def lab(self) -> Lab:
        return Lab.from_dir(self.lab_dir)

    def down(self) -> dict:
        return asyncio.run(asyncio.wait_for(self.lab().down(), 60))

    def cleanup(self) -> None:
        for ctl in self.controllers:
            ctl.stop()
        if (self.lab_dir / "lab.json").exists():
            try:
                self.down()
            except Exception:
                pass
            for pid in self.lab().running_pids().values():     # checked against cmdlines
                hostctl.terminate(pid, 5.0)

    def controller(self, command: str) -> Controller:
        args = [command, str(self.fleet), "--headless", "--json", "--state-dir",
                str(self.state_dir)]
        if command == "run":
            args += ["--speed", str(SPEED)]
        ctl = Controller(*args)
        self.controllers.append(ctl)
        return ctl

    # -- one point ----------------------------------------------------------------------------

    def run_point(self, rng: random.Random, label: str, *, bad: bool = False,
                  second_kill: float = 0.5) -> PointResult:
        """Run the rollout, SIGKILL it at a random transition, resume (maybe kill again,
        then resume to the end). ``bad``: kill during the roll-back instead."""
        result = PointResult(label)
        started = time.monotonic()
        total = expected_transitions(self.fleet)
        first = self.controller("run")
        if bad:
            k = rng.randint(0, 6)
            predicate, n = after_rollback_started(k), k
            result.label += f" [kill at roll-back+{k}]"
        else:
            n = rng.randint(1, max(1, int(total * 0.85)))
            predicate = nth_transition(n)
            result.label += f" [kill at #{n} of ~{total}]"
        event = first.run_to(predicate)
        if event is None:
            result.kills.append(describe(None, n))
            code = first.finish()
        else:
            first.sigkill()
            result.kills.append(describe(event, n))
            code = None
            attempts = 0
            while code is None:
                attempts += 1
                again = self.controller("resume")
                if attempts == 1 and rng.random() < second_kill:
                    left = max(1, total - n)
                    n2 = rng.randint(1, 5) if bad else rng.randint(1, max(1, int(left * 0.7)))
                    event = again.run_to(nth_transition(n2))
                    if event is not None:
                        again.sigkill()
                        result.kills.append("resume " + describe(event, n2))
                        result.reconcile += reconcile_lines(again)
                        continue
                code = again.finish()
                result.reconcile += reconcile_lines(again)
                if again.summary is None:
                    raise TortureError(f"{label}: resume printed no summary (exit {code}); "
                                       f"stderr {again.err()[-2000:]}")
                result.outcome = again.summary["outcome"]
        last = self.controllers[-1]
        if not result.outcome:
            result.outcome = (last.summary or {}).get("outcome", f"exit {code}")
        result.seconds = time.monotonic() - started
        return result

    # -- checks -------------------------------------------------------------------------------

    def serving_hosts(self) -> list[str]:
        hosts = self.lab().hosts
        if self.strategy == "shedding":
            return [h.name for h in hosts if h.cluster == "new"]
        return [h.name for h in hosts if h.cluster == "main"]

    def journal_traffic(self) -> dict | None:
        journal = Journal(self.state_dir / "journal.sqlite")
        try:
            record = journal.latest(self.fleet_name)
            entries = journal.entries(record.id)
        finally:
            journal.close()
        traffic = [e.data for e in entries if e.kind == "traffic"]
        return traffic[-1] if traffic else None

    @property
    def fleet_name(self) -> str:
        return f"torture-{self.strategy}"

    def balancer_state(self):
        lab = self.lab()

        async def read():
            client = lab._balancer_client()
            try:
                return await client.state()
            finally:
                await client.aclose()

        return asyncio.run(read())

    def check_hosts(self, hosts: list[str], release: str, problems: list[str]) -> None:
        state = self.balancer_state()
        lab = self.lab()
        ready = {n: b for n, b in state.backends.items() if b.state == "ready"}
        for name in hosts:
            mine = {n: b for n, b in ready.items() if n.split("@")[0] == name}
            if len(mine) != 1:
                problems.append(f"{name}: {len(mine)} ready backends ({sorted(mine)})")
                continue
            backend_name, backend = next(iter(mine.items()))
            if backend.pool != release:
                problems.append(f"{backend_name}: ready in pool {backend.pool}, not {release}")
            slot = backend_name.partition("@")[2] or "default"
            linked = hostctl.current_release(lab.layout.host_root(name), slot)
            if linked != release:
                problems.append(f"{name}/{slot}: current -> {linked}, not {release}")
            version = served_version(backend.port)
            if version != release:
                problems.append(f"{name}: port {backend.port} serves {version}, not {release}")
        others = sorted(n for n, b in ready.items() if b.pool != release)
        if others:
            problems.append(f"ready backends on another release: {others}")

    def check_completed(self, result: PointResult) -> list[str]:
        problems: list[str] = []
        if result.outcome != "completed":
            summary = self.controllers[-1].summary or {} if self.controllers else {}
            problems.append(f"outcome {result.outcome}: {summary.get('error')}")
        hosts = self.serving_hosts()
        self.check_hosts(hosts, self.target, problems)
        lab = self.lab()
        for name in hosts:
            releases = [r["release"] for r in lab.installs(name)]
            if releases.count(self.target) != 1:
                problems.append(f"{name}: installed {self.target} {releases.count(self.target)}"
                                f" times ({releases})")
        journaled = self.journal_traffic()
        split = dict(self.balancer_state().split or {})
        want = dict((journaled or {}).get("split") or {})
        if {k: v for k, v in split.items() if v} != {k: v for k, v in want.items() if v}:
            problems.append(f"split {split}, journal says {want}")
        return problems

    def check_rolled_back(self, result: PointResult) -> list[str]:
        problems: list[str] = []
        if result.outcome != "rolled_back":
            problems.append(f"outcome {result.outcome}")
        hosts = self.serving_hosts()
        self.check_hosts(hosts, self.current, problems)
        lab = self.lab()
        for name in hosts:
            releases = [r["release"] for r in lab.installs(name)]
            if releases.count(self.target) > 1:
                problems.append(f"{name}: installed {self.target} "
                                f"{releases.count(self.target)} times ({releases})")
        split = dict(self.balancer_state().split or {})
        if split.get(self.target):
            problems.append(f"split still sends {split[self.target]}% to {self.target}")
        return problems

    def traffic(self, result: PointResult, stats: dict) -> None:
        result.requests = int(stats.get("requests", 0))
        result.failed = int(stats.get("failed", 0))


def reconcile_lines(ctl: Controller) -> list[str]:
    return [f"{e['action']}: {e['detail']}" for e in ctl.events if e["kind"] == "reconcile"]


def served_version(port: int) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=5) as response:
            response.read()
            return response.headers.get("X-Version")
    except OSError as exc:
        return f"error: {exc}"


def seed() -> int:
    return int(os.environ.get("TORTURE_SEED", "7"))


def points() -> int:
    return int(os.environ.get("TORTURE_POINTS", "5"))
