"""The built-in balancer against HAProxy (the peer) and direct requests, in one run.

Two backends answer a few hundred bytes. By default they are cheap (two frontends of one
HAProxy process answering with ``http-request return``: a few microseconds each), so the
balancer under test is the bottleneck, not the backends; ``--backends python`` uses two small
aiohttp apps instead (the setting of the first version of this bench). The ways to reach them
are measured side by side, taking turns within each run:

* ``direct``          the client talks to one backend (the floor: no balancer at all);
* ``builtin``         upgrader's built-in balancer (``python -m upgrader.balancer``), on
                      uvloop when it is installed (``--loop auto``);
* ``builtin-asyncio`` the same on asyncio's own event loop (``--loop asyncio``);
* ``base``            the built-in balancer of another checkout (``--base DIR``: a tree with
                      ``upgrader/`` in it, e.g. ``git archive bd21cc4 upgrader | tar -x -C DIR``),
                      to compare before and after in the same run;
* ``haproxy``         HAProxy (roundrobin over the same two backends), when installed.

Figures, medians over ``--runs`` runs:

* throughput and latency under load: ``wrk -t1 -c{connections} -d{secs}s --latency``
  (closed loop, as fast as each path allows): requests per second, p50 and p99;
* latency at a fixed rate (``--rate``, default 1,000 requests a second, an open-loop Python
  client sending one request every 1/rate s whatever the answers do): p50 and p99
  (``--rate-seconds 0`` leaves it out).

    .venv/bin/python bench/balancer.py --runs 5 --base /tmp/balbase

Prints a markdown table, with each path's throughput and p99 as a ratio to HAProxy's in the
same run; the results with the command and the machine go to bench/RESULTS.md.
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
from typing import Any

PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")


PY_BACKEND = """
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

BODY = '{"host": "backend", "version": "1.0.0", "path": "/", "pad": "' + "x" * 200 + '"}'

def haproxy_config(nbthread: int | None) -> str:
    threads = f"    nbthread {nbthread}\n" if nbthread else ""
    return f"""global
    maxconn 4096
{threads}defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
"""


class Stack:
    """The backends and the balancers under test, stopped on exit."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.backends = [free_port(), free_port()]
        self.urls: dict[str, str] = {}

    def spawn(self, argv: list[str], name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        has_haproxy = shutil.which("haproxy") is not None
        if self.args.backends == "haproxy" and has_haproxy:
            body = BODY.replace('"', '\\"')
            frontends = "".join(f"""
frontend backend{i}
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json hdr X-Version 1.0.0 string "{body}"
""" for i, port in enumerate(self.backends))
            cfg = self.workdir / "backends.cfg"
            cfg.write_text(haproxy_config(1) + frontends)
            self.spawn(["haproxy", "-db", "-f", str(cfg)], "backends")
        else:
            for port in self.backends:
                self.spawn([PY, "-c", PY_BACKEND, str(port)], f"backend-{port}")
        for port in self.backends:
            wait_port(port)
        self.urls["direct"] = f"http://127.0.0.1:{self.backends[0]}/"
        if has_haproxy:
            self._haproxy()
        self._builtin("builtin", ["--loop", "auto"])
        if self.args.asyncio:
            self._builtin("builtin-asyncio", ["--loop", "asyncio"])
        if self.args.base:
            self._builtin("base", [], root=self.args.base)

    def _builtin(self, name: str, extra: list[str], root: str | None = None) -> None:
        listen, admin = free_port(), free_port()
        token_file = self.workdir / f"{name}.token"
        token = secrets.token_urlsafe(24)
        token_file.write_text(token)
        os.chmod(token_file, 0o600)
        ready = self.workdir / f"{name}.ready.json"
        env = dict(os.environ)
        if root:
            env["PYTHONPATH"] = str(Path(root).resolve())
        self.spawn([PY, "-m", "upgrader.balancer", "--listen", f"127.0.0.1:{listen}",
                    "--admin", f"127.0.0.1:{admin}", "--token-file", str(token_file),
                    "--ready-file", str(ready), *extra], name, env=env,
                   cwd=root or None)
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the built-in balancer {name} did not start: "
                                 + (self.workdir / f"{name}.log").read_text())
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
        self.urls[name] = f"http://127.0.0.1:{listen}/"

    def _haproxy(self) -> None:
        port = free_port()
        servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(self.backends))
        cfg = self.workdir / "haproxy.cfg"
        # HAProxy as it comes: one thread per core (2 here), as the issue measured it
        cfg.write_text(haproxy_config(None) + f"""frontend fe
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


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float, float]:
    """requests per second, p50 and p99 in ms, from ``wrk --latency``."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} failed responses from {url}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if found is None:
            raise SystemExit(f"no {label}% latency in wrk's output:\n{out}")
        return float(found.group(1)) * _UNIT[found.group(2)]

    return rps, percentile("50"), percentile("99")


def ab(url: str, seconds: int, connections: int) -> tuple[float, float, float]:
    """The same from ``ab -k`` (HTTP/1.0 keep-alive) for ``seconds``: ab's percentiles are
    whole milliseconds."""
    out = subprocess.run(["ab", "-k", "-q", "-c", str(connections), "-t", str(seconds),
                          "-n", "10000000", url], capture_output=True, text=True,
                         check=True).stdout
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if (failed and int(failed.group(1))) or non2xx:
        raise SystemExit(f"ab saw failed responses from {url}:\n{out}")
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        found = re.search(rf"^\s+{label}%\s+(\d+)", out, re.M)
        if found is None:
            raise SystemExit(f"no {label}% latency in ab's output:\n{out}")
        return float(found.group(1))

    return rps, percentile("50"), percentile("99")


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
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c")
    parser.add_argument("--rate-seconds", type=float, default=5.0,
                        help="per fixed-rate run (0: none)")
    parser.add_argument("--rate", type=int, default=1000, help="requests a second, fixed rate")
    parser.add_argument("--backends", choices=("haproxy", "python"), default="haproxy",
                        help="cheap static backends (HAProxy) or two small aiohttp apps")
    parser.add_argument("--base", metavar="DIR",
                        help="also measure the built-in balancer of this checkout")
    parser.add_argument("--no-asyncio", dest="asyncio", action="store_false",
                        help="leave out the built-in balancer on asyncio's loop")
    parser.add_argument("--client", choices=("wrk", "ab"), default="wrk",
                        help="the closed-loop load generator (ab -k: whole-ms percentiles)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which(args.client) is None:
        raise SystemExit(f"bench/balancer.py --client {args.client}: {args.client} is not "
                         "installed (apt-get install wrk, or apache2-utils for ab)")
    load = wrk if args.client == "wrk" else ab
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-balancer-") as tmp:
        stack = Stack(Path(tmp), args)
        try:
            stack.up()
            for url in stack.urls.values():        # warm up every path once
                load(url, 1, args.connections)
            for run in range(args.runs):
                for name, url in stack.urls.items():   # interleaved: same conditions
                    row = results.setdefault(name, {"rps": [], "p50": [], "p99": [],
                                                    "rate_p50": [], "rate_p99": [],
                                                    "failed": []})
                    rps, p50, p99 = load(url, args.seconds, args.connections)
                    row["rps"].append(rps)
                    row["p50"].append(p50)
                    row["p99"].append(p99)
                    if args.rate_seconds > 0:
                        rp50, rp99, failed = asyncio.run(
                            fixed_rate(url, args.rate, args.rate_seconds))
                        row["rate_p50"].append(rp50)
                        row["rate_p99"].append(rp99)
                        row["failed"].append(failed)
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        finally:
            stack.down()
    # ratios to HAProxy within each run, then their median: the machine's load cancels out
    ratios: dict[str, dict[str, float | None]] = {}
    for name, row in results.items():
        peer = results.get("haproxy")
        ratios[name] = {
            "rps": statistics.median(a / b for a, b in zip(row["rps"], peer["rps"]))
            if peer else None,
            "p99": statistics.median(a / b for a, b in zip(row["p99"], peer["p99"]))
            if peer else None,
        }
    med = {name: {k: statistics.median(v) if v else None for k, v in row.items()}
           for name, row in results.items()}
    if args.json:
        print(json.dumps({"median": med, "ratio_to_haproxy": ratios, "runs": results}))
        return 0
    c = args.connections
    tool = args.client
    print(f"| path | req/s ({tool} -c{c}) | x HAProxy | p50 ms (-c{c}) | p99 ms (-c{c}) | "
          f"p99 x HAProxy | p50 ms at {args.rate:,}/s | p99 ms at {args.rate:,}/s | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for name, m in med.items():
        print(f"| {name} | {m['rps']:,.0f} | {fmt(ratios[name]['rps'], '.2f')} | "
              f"{fmt(m['p50'], '.2f')} | {fmt(m['p99'], '.2f')} | "
              f"{fmt(ratios[name]['p99'], '.2f')} | "
              f"{fmt(m['rate_p50'], '.2f')} | {fmt(m['rate_p99'], '.2f')} | "
              f"{sum(results[name]['failed']):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
