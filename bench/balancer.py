"""The built-in balancer against direct requests, with HAProxy as the peer, in one run.

Two backends (small aiohttp servers, each a process of its own) answer a few hundred bytes.
Three ways to reach them are measured side by side:

* ``direct``    the client talks to one backend (the floor: no balancer at all);
* ``builtin``   through upgrader's built-in L7 balancer (``upgrader balancer serve``);
* ``haproxy``   through HAProxy (roundrobin over the same two backends), when installed.

Two figures each, medians over ``--runs`` runs:

* throughput: ``wrk -t1 -c50 -d{secs}s`` (when wrk is installed), requests per second;
* added latency at a fixed 1,000 requests a second (an open-loop Python client, one
  request every millisecond whatever the answers do): p50 and p99 of the response time.

    .venv/bin/python bench/balancer.py --runs 5

Prints a markdown table; the results with the command and the machine go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")


BACKEND = """
import sys
from aiohttp import web
body = b'{"host": "backend", "version": "1.0.0", "path": "/", "pad": "' + b'x' * 200 + b'"}'
async def serve(request):
    return web.Response(body=body, content_type="application/json",
                        headers={"X-Version": "1.0.0"})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", serve)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


class Stack:
    """The backends and the balancers under test, stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.backends = [free_port(), free_port()]
        self.urls: dict[str, str] = {}

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        for port in self.backends:
            self.spawn([PY, "-c", BACKEND, str(port)], f"backend-{port}")
        for port in self.backends:
            wait_port(port)
        self.urls["direct"] = f"http://127.0.0.1:{self.backends[0]}/"
        self._builtin()
        if shutil.which("haproxy"):
            self._haproxy()

    def _builtin(self) -> None:
        listen, admin = free_port(), free_port()
        token_file = self.workdir / "token"
        token = secrets.token_urlsafe(24)
        token_file.write_text(token)
        os.chmod(token_file, 0o600)
        ready = self.workdir / "ready.json"
        self.spawn([PY, "-m", "upgrader.balancer", "--listen", f"127.0.0.1:{listen}",
                    "--admin", f"127.0.0.1:{admin}", "--token-file", str(token_file),
                    "--ready-file", str(ready)], "builtin")
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the built-in balancer did not start")
            time.sleep(0.02)

        async def register() -> None:
            from upgrader.providers.builtin_balancer import BuiltinBalancer

            client = BuiltinBalancer(f"http://127.0.0.1:{admin}", token)
            try:
                for i, port in enumerate(self.backends):
                    await client.set_backend(f"b{i}", address="127.0.0.1", port=port,
                                             pool="1.0.0", weight=100, state="ready")
            finally:
                await client.aclose()

        asyncio.run(register())
        self.urls["builtin"] = f"http://127.0.0.1:{listen}/"

    def _haproxy(self) -> None:
        port = free_port()
        servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(self.backends))
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
{servers}
""")
        self.spawn(["haproxy", "-db", "-f", str(cfg)], "haproxy")
        wait_port(port)
        self.urls["haproxy"] = f"http://127.0.0.1:{port}/"

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wrk_rps(url: str, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds}s", url], capture_output=True,
                         text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} failed responses from {url}")
    return float(match.group(1))


async def fixed_rate(url: str, rps: int, seconds: float) -> tuple[float, float, int]:
    """Open loop: one request every 1/rps s; p50 and p99 latency in ms, failures."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            nonlocal failures
            sent = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1
                        return
            except aiohttp.ClientError:
                failures += 1
                return
            latencies.append((time.perf_counter() - sent) * 1000)

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        total = int(rps * seconds)
        for n in range(total):
            delay = start + n / rps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    return p50, p99, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="per throughput run")
    parser.add_argument("--rate-seconds", type=float, default=10.0, help="per latency run")
    parser.add_argument("--rps", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    has_wrk = shutil.which("wrk") is not None
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-balancer-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.up()
            for url in stack.urls.values():        # warm up every path once
                asyncio.run(fixed_rate(url, 200, 1.0))
            for run in range(args.runs):
                for name, url in stack.urls.items():   # interleaved: same conditions
                    row = results.setdefault(name, {"rps": [], "p50": [], "p99": [],
                                                    "failed": []})
                    if has_wrk:
                        row["rps"].append(wrk_rps(url, args.seconds))
                    p50, p99, failed = asyncio.run(fixed_rate(url, args.rps, args.rate_seconds))
                    row["p50"].append(p50)
                    row["p99"].append(p99)
                    row["failed"].append(failed)
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        finally:
            stack.down()
    med = {name: {k: statistics.median(v) if v else None for k, v in row.items()}
           for name, row in results.items()}
    if args.json:
        print(json.dumps({"median": med, "runs": results}))
        return 0
    direct = med["direct"]
    print(f"| path | throughput req/s (wrk -c50, median of {args.runs}) | p50 ms at "
          f"{args.rps}/s | p99 ms at {args.rps}/s | added p50 ms | added p99 ms | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in med.items():
        rps = f"{row['rps']:,.0f}" if row["rps"] is not None else "n/a (no wrk)"
        print(f"| {name} | {rps} | {row['p50']:.2f} | {row['p99']:.2f} | "
              f"{row['p50'] - direct['p50']:+.2f} | {row['p99'] - direct['p99']:+.2f} | "
              f"{sum(results[name]['failed']):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
