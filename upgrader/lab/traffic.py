"""The lab's users: a process that sends a steady stream of GET requests (open loop, scheduled
by time) as many distinct users, and writes what they saw to a stats JSON file.

``python -m upgrader.lab.traffic --url URL --rps N --users N --stats FILE [--duration S]``

User i sends ``X-User: user-{i}`` and ``X-User-Group: <group>``; the group is fixed by the
user key (``upgrader.hashing.bucket(key, salt="lab-group")``): internal 2 %, beta 8 %,
free 60 %, paid 30 %. A 503 that carries ``Retry-After`` is the balancer's maintenance page
and is counted apart from failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

from ..hashing import bucket

#: cumulative bucket bounds (of 10,000) of the user groups
GROUPS: tuple[tuple[str, int], ...] = (
    ("internal", 200), ("beta", 1000), ("free", 7000), ("paid", 10000))
GROUP_SALT = "lab-group"
TIMELINE_SECONDS = 600
WRITE_INTERVAL = 0.5
REQUEST_TIMEOUT = 5.0
MAX_CONCURRENCY = 200
#: on SIGTERM, how long in-flight requests may still finish (and be counted)
STOP_GRACE = 1.0


def user_group(key: str) -> str:
    b = bucket(key, GROUP_SALT)
    for name, bound in GROUPS:
        if b < bound:
            return name
    return GROUPS[-1][0]


class Stats:
    """What users saw. Each request is counted exactly once, when its outcome is known, in
    the second it was SENT (a user who asked at t and got nothing was not served at t)."""

    def __init__(self, rps_target: float, url: str, users: int) -> None:
        self.url = url
        self.users = users
        self.rps_target = rps_target
        self.started_ts = time.time()
        self.requests = 0
        self.ok = 0
        self.failed = 0
        self.maintenance = 0
        self.other = 0          # 1xx/3xx/4xx: answered, not served, not an outage
        self.skipped = 0        # not sent: MAX_CONCURRENCY requests were already in flight
        self.versions: dict[str, int] = {}
        self.groups: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.first_failure_ts: float | None = None
        self.last_failure_ts: float | None = None
        self.maintenance_first_ts: float | None = None
        self.maintenance_last_ts: float | None = None
        self.latency_sum = 0.0
        self.seconds: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.downtime_pruned = 0   # down seconds that fell out of the timeline

    def _second(self, t: int) -> dict[str, Any]:
        entry = self.seconds.get(t)
        if entry is None:
            entry = {"t": t, "ok": 0, "failed": 0, "maintenance": 0, "versions": {},
                     "failed_versions": {}}
            self.seconds[t] = entry
            if len(self.seconds) > 1 and next(reversed(self.seconds)) != t:
                # results arrive out of order (a slow request); keep the dict sorted
                self.seconds = OrderedDict(sorted(self.seconds.items()))
            self._prune(t)
        return entry

    def _prune(self, newest: int) -> None:
        while self.seconds:
            oldest = next(iter(self.seconds))
            if oldest > newest - TIMELINE_SECONDS:
                break
            entry = self.seconds.pop(oldest)
            if _is_down(entry):
                self.downtime_pruned += 1

    def record(self, sent: float, outcome: str, version: str | None, group: str,
               latency: float, error: str | None = None) -> None:
        self.requests += 1
        self.groups[group] = self.groups.get(group, 0) + 1
        entry = self._second(int(sent))
        if version:
            self.versions[version] = self.versions.get(version, 0) + 1
            entry["versions"][version] = entry["versions"].get(version, 0) + 1
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
        if outcome == "ok":
            self.ok += 1
            entry["ok"] += 1
            self.latency_sum += latency
        elif outcome == "failed":
            self.failed += 1
            entry["failed"] += 1
            if version:
                failed_by = entry["failed_versions"]
                failed_by[version] = failed_by.get(version, 0) + 1
            if self.first_failure_ts is None:
                self.first_failure_ts = sent
            self.last_failure_ts = max(self.last_failure_ts or sent, sent)
        elif outcome == "maintenance":
            self.maintenance += 1
            entry["maintenance"] += 1
            if self.maintenance_first_ts is None:
                self.maintenance_first_ts = sent
            self.maintenance_last_ts = max(self.maintenance_last_ts or sent, sent)
        else:
            self.other += 1

    def snapshot(self, *, final: bool = False) -> dict[str, Any]:
        timeline = [dict(e, versions=dict(e["versions"]),
                         failed_versions=dict(e["failed_versions"]))
                    for e in self.seconds.values()]
        downtime = self.downtime_pruned + sum(1 for e in timeline if _is_down(e))
        return {
            "url": self.url,
            "users": self.users,
            "rps_target": self.rps_target,
            "started_ts": self.started_ts,
            "updated_ts": time.time(),
            "final": final,
            "pid": os.getpid(),
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "maintenance": self.maintenance,
            "other": self.other,
            "skipped": self.skipped,
            "versions": dict(self.versions),
            "groups": dict(self.groups),
            "errors": dict(self.errors),
            "mean_latency_ms": round(1000 * self.latency_sum / self.ok, 2) if self.ok else None,
            "first_failure_ts": self.first_failure_ts,
            "last_failure_ts": self.last_failure_ts,
            "maintenance_first_ts": self.maintenance_first_ts,
            "maintenance_last_ts": self.maintenance_last_ts,
            "downtime_s": downtime,
            "timeline": timeline,
        }


def _is_down(entry: dict[str, Any]) -> bool:
    return bool(entry["ok"] == 0 and (entry["failed"] > 0 or entry["maintenance"] > 0))


def write_stats(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


class Generator:
    def __init__(self, url: str, rps: float, users: int, stats_file: Path,
                 duration: float | None = None) -> None:
        if rps <= 0:
            raise ValueError("rps must be positive")
        if users <= 0:
            raise ValueError("users must be positive")
        self.url = url
        self.rps = rps
        self.users = [(f"user-{i}", user_group(f"user-{i}")) for i in range(users)]
        self.stats_file = stats_file
        self.duration = duration
        self.stats = Stats(rps, url, users)
        self.stop_event = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()

    async def _one(self, session: aiohttp.ClientSession, sent: float, user: str,
                   group: str) -> None:
        import aiohttp

        version = None
        error = None
        try:
            async with session.get(self.url, headers={"X-User": user,
                                                      "X-User-Group": group}) as resp:
                await resp.read()
                version = resp.headers.get("X-Version")
                status = resp.status
                if 200 <= status < 300:
                    outcome = "ok"
                elif status == 503 and "Retry-After" in resp.headers:
                    outcome = "maintenance"
                elif status >= 500:
                    outcome, error = "failed", f"http_{status}"
                else:
                    outcome, error = "other", f"http_{status}"
        except asyncio.CancelledError:
            raise  # stopped before the outcome was known: not counted at all
        except TimeoutError:
            outcome, error = "failed", "timeout"
        except aiohttp.ClientConnectionError as exc:
            outcome, error = "failed", "connection:" + type(exc).__name__
        except aiohttp.ClientError as exc:
            outcome, error = "failed", "client:" + type(exc).__name__
        except OSError as exc:
            outcome, error = "failed", "os:" + type(exc).__name__
        self.stats.record(sent, outcome, version, group, time.time() - sent, error)

    async def _writer(self) -> None:
        while not self.stop_event.is_set():
            data = self.stats.snapshot()
            await asyncio.to_thread(write_stats, self.stats_file, data)
            try:
                await asyncio.wait_for(self.stop_event.wait(), WRITE_INTERVAL)
            except TimeoutError:
                pass

    async def run(self) -> dict[str, Any]:
        import aiohttp

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        if self.duration is not None:
            loop.call_later(self.duration, self.stop_event.set)

        connector = aiohttp.TCPConnector(limit=MAX_CONCURRENCY, limit_per_host=MAX_CONCURRENCY,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        writer = asyncio.create_task(self._writer())
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         trust_env=False) as session:
            interval = 1.0 / self.rps
            start = loop.time()
            n = 0
            while not self.stop_event.is_set():
                now = loop.time()
                due = int((now - start) / interval) + 1
                if due - n > self.rps:
                    # more than a second behind (the machine stalled): do not burst
                    n = due - 1
                while n < due:
                    n += 1
                    user, group = self.users[n % len(self.users)]
                    if len(self.inflight) >= MAX_CONCURRENCY:
                        self.stats.skipped += 1
                        continue
                    task = asyncio.create_task(self._one(session, time.time(), user, group))
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
                next_at = start + n * interval
                try:
                    await asyncio.wait_for(self.stop_event.wait(),
                                           max(0.0, next_at - loop.time()))
                except TimeoutError:
                    pass
            if self.inflight:
                await asyncio.wait(set(self.inflight), timeout=STOP_GRACE)
            for task in list(self.inflight):
                task.cancel()
            if self.inflight:
                await asyncio.wait(set(self.inflight), timeout=1.0)
        await writer
        final = self.stats.snapshot(final=True)
        await asyncio.to_thread(write_stats, self.stats_file, final)
        return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgrader.lab.traffic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rps", type=float, default=200)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--stats", required=True, type=Path)
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until SIGTERM/SIGINT)")
    args = parser.parse_args(argv)
    if args.rps <= 0 or args.users <= 0:
        parser.error("--rps and --users must be positive")
    args.stats.parent.mkdir(parents=True, exist_ok=True)
    generator = Generator(args.url, args.rps, args.users, args.stats, args.duration)
    final = asyncio.run(generator.run())
    print(f"traffic: {final['requests']} requests, {final['ok']} ok, {final['failed']} failed, "
          f"{final['maintenance']} maintenance, downtime {final['downtime_s']} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
