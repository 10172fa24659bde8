"""Loading a big fleet file: upgrader's checked loader against ``tomllib`` parsing the same text.

The checker and the model build must stay linear in the number of hosts, and the locator (run
only when there is an error, to name the line) must cost about one more parse. Each figure is a
ratio against ``tomllib.loads`` of the same text in the same run (median of ``--runs``), so a
busy machine shifts both sides alike. A quadratic step would show as a ratio that grows with
the host count.

    .venv/bin/python bench/config_load.py [--hosts 1000 10000 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from upgrader.config import loads_fleet  # noqa: E402
from upgrader.errors import ConfigError  # noqa: E402

HEAD = """\
[fleet]
name = "shop"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["deploy", "--release", "{release}"]
start = ["systemctl", "start", "shop"]
stop = ["systemctl", "stop", "shop"]

[balancer]
kind = "builtin"
admin_url = "http://127.0.0.1:18001"

[verify]
error_rate_max = "1%"
for = "1m"

[strategy]
kind = "rolling"
batch = 2

"""


def many_hosts(n: int) -> str:
    return HEAD + "".join(
        f'[[hosts]]\nname = "web-{i:06d}"\naddress = "10.{i // 62500}.{i // 250 % 250}.'
        f'{i % 250 + 1}"\nport = 8080\nlabels = {{zone = "{"abc"[i % 3]}"}}\n\n'
        for i in range(n))


def with_duplicate_last_name(text: str, n: int) -> str:
    last = f'name = "web-{n - 1:06d}"'
    at = text.rindex(last)
    return text[:at] + 'name = "web-000000"' + text[at + len(last):]


def timed(function: Callable[[str], Any], text: str) -> float:
    started = time.perf_counter()
    try:
        function(text)
    except ConfigError:
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; median of {args.runs} runs, interleaved")
    print("| hosts | tomllib parse | load (checked) | load / parse | load with an error "
          "on the last host | error / parse |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.hosts:
        text = many_hosts(n)
        bad = with_duplicate_last_name(text, n)
        parse, load, fail = [], [], []
        for _ in range(args.runs):
            parse.append(timed(tomllib.loads, text))
            load.append(timed(loads_fleet, text))
            fail.append(timed(loads_fleet, bad))
        p, ld, f = (statistics.median(x) for x in (parse, load, fail))
        print(f"| {n:,} | {p:.3f} s | {ld:.3f} s | {ld / p:.2f}x | {f:.3f} s | {f / p:.2f}x |")


if __name__ == "__main__":
    main()
