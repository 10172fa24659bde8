"""Start-up of the ``upgrader`` command: what every command pays before it does anything.

Each run starts a fresh ``python -m upgrader.cli`` process (the way the ``upgrader`` script
does) for ``--version`` (building the whole parser, nothing else) and for ``plan`` of a
sample fleet (parser, fleet load, plan). ``--baseline DIR`` runs the same commands on another
checkout's ``upgrader`` package (``git archive REV upgrader | tar -x -C DIR``), interleaved
with this one's in the same runs, so a busy machine shifts both alike; the figures are
medians of ``--runs``.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"--version": ["--version"],
            "plan": ["plan", str(ROOT / "sample_fleets" / "canary.toml")]}


def once(code_dir: Path, argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "upgrader.cli", *argv], cwd=code_dir, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{code_dir}: upgrader {' '.join(argv)} failed: {done.stderr[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a folder holding another checkout's upgrader package")
    args = parser.parse_args()
    sides = {"this tree": ROOT}
    if args.baseline:
        if not (args.baseline / "upgrader" / "cli.py").exists():
            parser.error(f"--baseline {args.baseline}: no upgrader/cli.py there")
        sides["baseline"] = args.baseline
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            for side, code_dir in sides.items():
                times.setdefault((name, side), []).append(once(code_dir, argv))
    print(f"# upgrader start-up, medians of {args.runs} runs; {platform.python_version()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| command | " + " | ".join(sides) + (" | this / baseline |" if args.baseline
                                                   else " |"))
    print("| --- | " + " | ".join("---:" for _ in sides) + (" | ---: |" if args.baseline
                                                             else " |"))
    for name in COMMANDS:
        medians = {side: statistics.median(times[(name, side)]) for side in sides}
        row = f"| upgrader {name} | " + " | ".join(f"{medians[s]:.3f} s" for s in sides)
        if args.baseline:
            row += f" | {medians['this tree'] / medians['baseline']:.2f} |"
        else:
            row += " |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
