"""The lab's service: a tiny aiohttp app that serves the release its slot's ``current`` link
points to, and misbehaves on purpose when the release name asks for it (see ``variant_of``).

Run as ``python -m upgrader.lab.app --root ROOT --slot SLOT --port PORT --host NAME``.

When the lab has a database (``<lab dir>/app.sqlite``, see :func:`lab_database`), every
tenth request also records a visit in its ``visits`` table, through the views of the release
the app runs (``upgrader.schema.connect``), writing the columns its release's schema has:
``host``, ``version`` and ``path`` (or ``url``, after the lab's migration renames it). A
write that fails answers 500, so a schema change that breaks a release shows up as failed
user requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the names, not the layout: layout.py imports upgrader.model, which every host start (and
# hostctl, which imports this module and runs three times a host procedure) would pay for
from .files import LAB_DATABASE, LAB_FLAG_STORE, LAB_FLAG_STORE_SPEC

if TYPE_CHECKING:
    import sqlite3

    from aiohttp import web

#: release-name suffix -> variant. Anything else is "good".
VARIANT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("-bad", "errors"),
    ("-errors", "errors"),
    ("-unhealthy", "unhealthy"),
    ("-crash", "crash"),
    ("-slow", "slow"),
    ("-flagged", "flagged"),
)
VARIANTS = ("good", "errors", "unhealthy", "crash", "slow", "flagged")
#: ``-errN`` (N a whole percent, 0-100): variant ``errN``, 500 on N % of non-health requests,
#: each request drawn at random from a generator seeded with the release, host and slot (the
#: same release name fails the same requests: benchmarks name a release per seeded run)
ERROR_RATE_SUFFIX = re.compile(r"-err(\d{1,3})$")
#: a "-flagged" release fails like "-errors", but only while its flag is on: the flag
#: ``new-path`` in environment ``lab`` of the lab's flag store (``lab up --flag-store SPEC``,
#: recorded in ``<lab dir>/flags.store``; default the SQLite file ``<lab dir>/flags.sqlite``),
#: read as any service reads flags: a FlagWatcher polls the store's version
LAB_FLAG = "new-path"
LAB_FLAG_ENVIRONMENT = "lab"
DEFAULT_CRASH_AFTER = 3.0
DEFAULT_SLOW_LATENCY = 0.3
#: exit status of a "-crash" release when it falls over
CRASH_EXIT_STATUS = 3
#: how long a SIGTERM waits for in-flight requests before closing them
SHUTDOWN_TIMEOUT = 8.0

#: one request in this many writes a visit row
WRITE_EVERY = 10
#: the latency histogram's buckets in seconds (the slow release answers in 0.3 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


def lab_database(root: Path) -> Path:
    """``<lab dir>/app.sqlite`` for a host root ``<lab dir>/hosts/<name>``."""
    return root.parent.parent / LAB_DATABASE


class VisitWriter:
    """Writes visit rows through the release's views, on a thread of its own (a SQLite
    connection stays on the thread that made it; a busy database never blocks the loop)."""

    def __init__(self, path: Path, release: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.path = path
        self.release = release
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visits")
        self._conn: sqlite3.Connection | None = None
        self._columns: tuple[str, ...] = ()

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            from ..schema import connect

            # a release whose views are not live (rolled back, retired) raises SchemaError:
            # its writes fail, as they would in production
            conn: sqlite3.Connection = connect(self.path, self.release, timeout=10.0)
            self._conn = conn
            names = [row[1] for row in conn.execute("PRAGMA table_info(visits)")]
            self._columns = tuple(c for c in ("host", "version", "path", "url") if c in names)
        return self._conn

    def _write(self, host: str, path: str) -> None:
        conn = self._open()
        values = {"host": host, "version": self.release, "path": path, "url": path}
        cols = self._columns
        with conn:
            conn.execute(f"INSERT INTO visits ({', '.join(cols)}) VALUES "
                         f"({', '.join('?' for _ in cols)})", [values[c] for c in cols])

    async def write(self, host: str, path: str) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(self._pool, self._write, host, path)


def variant_of(release: str) -> str:
    """The behaviour a release name asks for: good, errors, unhealthy, crash, slow, flagged
    or ``errN`` (N % errors)."""
    match = ERROR_RATE_SUFFIX.search(release)
    if match and int(match.group(1)) <= 100:
        return f"err{int(match.group(1))}"
    for suffix, variant in VARIANT_SUFFIXES:
        if release.endswith(suffix):
            return variant
    return "good"


def error_rate_of(variant: str) -> float:
    """The share of requests an ``errN`` variant fails (0 for any other variant)."""
    if variant.startswith("err") and variant[3:].isdigit():
        return min(100, int(variant[3:])) / 100
    return 0.0


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 else default


def slot_current_link(root: Path, slot: str) -> Path:
    """Slot ``default`` (or empty) uses ``ROOT/current``; slot S uses ``ROOT/slots/S/current``."""
    if not slot or slot == "default":
        return root / "current"
    return root / "slots" / slot / "current"


def read_release(root: Path, slot: str) -> dict[str, Any]:
    """The ``release.json`` of the release the slot's ``current`` link points to."""
    link = slot_current_link(root, slot)
    try:
        data = json.loads((link / "release.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"no release installed for slot {slot!r}: {link} is missing") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {link / 'release.json'}: {exc}") from None
    version = str(data.get("version") or Path(os.path.realpath(link)).name)
    return {"version": version, "variant": data.get("variant") or variant_of(version)}


class AppMetrics:
    """The app's ``/metrics`` in the Prometheus text format: requests by status and release,
    and their latency, labelled with the host's name (a scraper needs no relabelling). Health
    checks and scrapes are not counted."""

    def __init__(self, host: str, release: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("upgrader_app_requests", "Requests answered, by status",
                                ["host", "release", "status"], registry=self.registry)
        self.latency = Histogram("upgrader_app_request_duration_seconds",
                                 "Seconds to answer a request", ["host", "release"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.host, self.release = host, release
        self._latency = self.latency.labels(host, release)
        self._by_status: dict[int, Any] = {}

    def observe(self, status: int, seconds: float) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.requests.labels(
                self.host, self.release, str(status))
        child.inc()
        self._latency.observe(seconds)

    async def handler(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def lab_flag_store(root: Path) -> str | None:
    """The flag store spec of the lab of host root ``<lab dir>/hosts/<name>``: what
    ``<lab dir>/flags.store`` says (``lab up --flag-store``), else ``<lab dir>/flags.sqlite``.
    None when that spec is a SQLite file that does not exist (yet): no flags to read."""
    lab_dir = root.parent.parent
    try:
        spec = (lab_dir / LAB_FLAG_STORE_SPEC).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        spec = ""
    if not spec:
        spec = str(lab_dir / LAB_FLAG_STORE)
    if spec.startswith(("postgresql://", "postgres://")):
        return spec
    path = spec[len("sqlite:///"):] if spec.startswith("sqlite:///") else spec
    return spec if Path(path).exists() else None


def make_app(*, host: str, slot: str, version: str, variant: str,
             database: Path | None = None,
             flag_store: str | Path | None = None) -> web.Application:
    # imported here, not at module level: hostctl imports this module and must start fast
    import asyncio

    from aiohttp import web

    headers = {"X-Version": version}
    counter = 0
    writer = VisitWriter(database, version) if database is not None else None
    watcher: Any = None
    if variant == "flagged" and flag_store is not None:
        from ..flags.watch import FlagWatcher

        watcher = FlagWatcher(str(flag_store), LAB_FLAG_ENVIRONMENT, interval=0.2,
                              name="lab-app")
        watcher.start()

    def flag_on(user: str) -> bool:
        if watcher is None:
            return False
        return watcher.evaluator.evaluate(LAB_FLAG, {"targetingKey": user}).value is True
    if variant == "slow":
        slow = _env_seconds("UPGRADER_LAB_SLOW_LATENCY", DEFAULT_SLOW_LATENCY)
        latency = (slow, slow)
    else:
        latency = (0.002, 0.005)
    error_rate = error_rate_of(variant)
    draws = random.Random(f"{version}/{host}/{slot}")

    async def healthz(request: web.Request) -> web.Response:
        if variant == "unhealthy":
            return web.json_response({"status": "unhealthy", "version": version},
                                     status=503, headers=headers)
        return web.json_response({"status": "ok", "version": version, "host": host,
                                  "slot": slot}, headers=headers)

    # labelled as the balancer names the backend (``web-01``, ``web-01@blue`` with slots), so
    # one {host} template matches both the app's and the balancer's metrics
    metrics = AppMetrics(host if slot in ("", "default") else f"{host}@{slot}", version)

    async def serve(request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await answer(request)
        metrics.observe(response.status, time.perf_counter() - started)
        return response

    async def answer(request: web.Request) -> web.Response:
        nonlocal counter
        n = counter
        counter += 1
        await asyncio.sleep(random.uniform(*latency))
        if (variant == "errors" or (variant == "flagged" and flag_on(str(n)))) and n % 10 < 3:
            return web.json_response({"error": "simulated failure", "host": host,
                                      "version": version}, status=500, headers=headers)
        if error_rate and draws.random() < error_rate:
            return web.json_response({"error": "simulated failure", "host": host,
                                      "version": version}, status=500, headers=headers)
        if writer is not None and n % WRITE_EVERY == 0:
            try:
                await writer.write(host, request.path)
            except Exception as exc:   # the schema broke this release: users see it
                return web.json_response({"error": f"database: {exc}", "host": host,
                                          "version": version}, status=500, headers=headers)
        return web.json_response({"host": host, "version": version, "slot": slot,
                                  "path": request.path}, headers=headers)

    app = web.Application()
    app.router.add_route("GET", "/healthz", healthz)
    app.router.add_route("GET", "/metrics", metrics.handler)
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgrader.lab.app", description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--slot", default="default")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="web")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (an SSH lab host: its own address)")
    args = parser.parse_args(argv)
    slot = args.slot or "default"

    release = read_release(args.root, slot)
    version, variant = release["version"], release["variant"]

    import asyncio

    from aiohttp import web

    database = lab_database(args.root.resolve())
    app = make_app(host=args.host, slot=slot, version=version, variant=variant,
                   database=database if database.exists() else None,
                   flag_store=lab_flag_store(args.root.resolve()))

    if variant == "crash":
        crash_after = _env_seconds("UPGRADER_LAB_CRASH_AFTER", DEFAULT_CRASH_AFTER)

        async def schedule_crash(_app: web.Application) -> None:
            def crash() -> None:
                print(f"{args.host}/{slot}: release {version} crashes now (simulated)",
                      file=sys.stderr, flush=True)
                os._exit(CRASH_EXIT_STATUS)

            asyncio.get_running_loop().call_later(crash_after, crash)

        app.on_startup.append(schedule_crash)

    print(f"{args.host}/{slot}: serving {version} ({variant}) on {args.bind}:{args.port}",
          file=sys.stderr, flush=True)
    # run_app turns SIGTERM into a graceful stop: close the listener, let in-flight requests
    # finish (up to shutdown_timeout), then exit 0.
    web.run_app(app, host=args.bind, port=args.port, print=None, access_log=None,
                shutdown_timeout=SHUTDOWN_TIMEOUT, handle_signals=True)
    print(f"{args.host}/{slot}: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
