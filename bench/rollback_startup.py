"""The start-up of ``upgrader rollback FLEET --json`` inside the roll-back window (issue 15,
point 5): the command's time before its first event (Python start-up, imports, the fleet
loaded, the journal read, the fleet lock, the inventory of every host), on a real lab of 8
hosts with a completed rolling upgrade to roll back.

Each run: a rolling upgrade 1.0.0 -> 1.1.0 of the lab completes (verified for 1 s, so that
a run is short: this bench times what comes before the roll-back's first event, not the
upgrade), then ``upgrader rollback`` is timed: the wall clock of the command and the time
from its start to its first JSON event. ``--baseline DIR`` times another checkout's code in
the same runs, interleaved (``git archive main upgrader plugins | tar -x -C DIR``: its
``plugins`` folder, when there, goes on the path too, so its first-party plugins are its
own). ``--compile`` first writes the bytecode of both trees (``compileall``), as an
installed package has it; without it the trees are run as they are (a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` compiles every module of its own from source on every start).

    .venv/bin/python bench/rollback_startup.py --runs 5 [--baseline DIR] [--compile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import rollback_window as rw  # noqa: E402  (the same lab fleet, verified for 1 s)

from upgrader.lab.layout import LabLayout  # noqa: E402
from upgrader.lab.manager import Lab, free_base_port  # noqa: E402

FLEET = rw.FLEET.replace('interval = "4s"\nfor = "6s"', 'interval = "1s"\nfor = "1s"')


def pythonpath(code: Path | None) -> str:
    if code is None:
        return os.environ.get("PYTHONPATH", "")
    parts = [str(code)] + ([str(code / "plugins")] if (code / "plugins").is_dir() else [])
    return os.pathsep.join(parts + [os.environ.get("PYTHONPATH", "")])


def upgrader(work: Path, args: list[str], code: Path | None = None) -> tuple[float, float]:
    """(wall seconds, seconds to the first event) of one ``upgrader`` command."""
    env = {**os.environ, "UPGRADER_STATE_DIR": str(work / "state"),
           "PYTHONPATH": pythonpath(code)}
    env.pop("UPGRADER_STATE", None)
    started, wall_started = time.monotonic(), time.time()
    out = subprocess.run([sys.executable, "-m", "upgrader.cli", *args, "--headless", "--json"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"upgrader {' '.join(args)} failed ({out.returncode}): "
                         f"{out.stderr[-2000:]}")
    stamped = [float(json.loads(line)["ts"]) for line in out.stdout.splitlines()
               if line.startswith("{") and '"ts"' in line]
    return wall, stamped[0] - wall_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also time the upgrader package in DIR, interleaved")
    parser.add_argument("--compile", action="store_true",
                        help="write the bytecode of both trees first (compileall)")
    args = parser.parse_args()
    sides: dict[str, Path | None] = {"this tree": None}
    if args.baseline:
        if not (args.baseline / "upgrader" / "cli.py").exists():
            parser.error(f"--baseline {args.baseline}: no upgrader/cli.py there")
        sides["baseline"] = args.baseline.resolve()
    if args.compile:
        for code in [ROOT, *(p for p in sides.values() if p is not None)]:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "upgrader"),
                            *([str(code / "plugins")] if (code / "plugins").is_dir() else [])],
                           check=True)
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="rbs-bench-") as tmp:
        work = Path(tmp)
        layout = LabLayout(dir=work / "lab", hosts=rw.HOSTS, base_port=free_base_port(),
                           base_release="1.0.0")
        lab = Lab(layout)
        asyncio.run(lab.up(traffic_rps=100, users=200))
        try:
            fleet = work / "fleet.toml"
            fleet.write_text(FLEET.format(
                name="rbs", current="1.0.0", target="1.1.0", hosts=rw.HOSTS, dir=layout.dir,
                port=layout.base_port, max_unavailable="25%",
                window='rollback_window = "1h"'))
            for run in range(args.runs):
                for side, code in sides.items():
                    upgrader(work, ["run", str(fleet)])
                    wall, first = upgrader(work, ["rollback", str(fleet)], code)
                    times[side].append((wall, first))
                    print(f"run {run + 1} {side}: command {wall:.2f} s, first event after "
                          f"{first:.3f} s", flush=True)
        finally:
            asyncio.run(lab.down())
    print(f"\n# `upgrader rollback --json` of 8 lab hosts, medians of {args.runs} runs; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
          + (", bytecode compiled" if args.compile else ", trees as they are"))
    print("| code | before the first event | command |")
    print("| --- | ---: | ---: |")
    for side, rows in times.items():
        print(f"| {side} | {statistics.median(r[1] for r in rows):.3f} s | "
              f"{statistics.median(r[0] for r in rows):.2f} s |")


if __name__ == "__main__":
    main()
