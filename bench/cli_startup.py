"""Start-up of the ``upgrader`` command: what every command pays before it does anything.

Each run starts a fresh ``python -m upgrader.cli`` process (the way the ``upgrader`` script
does) for ``--version`` (building the whole parser, nothing else) and for ``plan`` of a
sample fleet (parser, fleet load, plan), and for ``rollback --json`` of that fleet against an
empty journal (parser, plugins, fleet load, the journal opened and read: all that ``rollback``
does before it reads the hosts; it ends refused, exit 3: nothing to roll back). ``--baseline DIR`` runs the same commands on another
checkout's ``upgrader`` package (``git archive REV upgrader | tar -x -C DIR``), interleaved
with this one's in the same runs, so a busy machine shifts both alike; the figures are
medians of ``--runs``: the wall clock, and the CPU time of the process (user + system), which
a busy machine disturbs less. A baseline folder's ``plugins`` folder, when there, goes on the
path too (``git archive REV upgrader plugins``), so that its first-party plugins are its own.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "sample_fleets" / "canary.toml")
#: argv and the exit code expected
COMMANDS = {"--version": (["--version"], 0),
            "plan": (["plan", SAMPLE], 0),
            "rollback --json": (["rollback", SAMPLE, "--headless", "--json"], 3)}
#: a state folder holding an empty journal (rollback opens and reads it)
STATE = Path(tempfile.mkdtemp(prefix="cli-startup-"))


def once(code_dir: Path, argv: list[str], expect: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command."""
    paths = [str(code_dir)] + ([str(code_dir / "plugins")] if code_dir != ROOT
                               and (code_dir / "plugins").is_dir() else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), UPGRADER_STATE_DIR=str(STATE))
    env.pop("UPGRADER_STATE", None)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "upgrader.cli", *argv], cwd=code_dir, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{code_dir}: upgrader {' '.join(argv)} exited {done.returncode}: "
                         f"{done.stderr[-500:]}")
    return elapsed, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


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
    from upgrader.journal import Journal

    journal = Journal(STATE / "journal.sqlite")
    journal.latest("canary")        # creates the (empty) journal
    journal.close()
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for name, (argv, expect) in COMMANDS.items():
            for side, code_dir in sides.items():
                times.setdefault((name, side), []).append(once(code_dir, argv, expect))
    print(f"# upgrader start-up, medians of {args.runs} runs; {platform.python_version()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| command | " + " | ".join(f"{s}: wall | {s}: CPU" for s in sides)
          + (" | this / baseline (wall, CPU) |" if args.baseline else " |"))
    print("| --- | " + " | ".join("---: | ---:" for _ in sides)
          + (" | ---: |" if args.baseline else " |"))
    for name in COMMANDS:
        wall = {side: statistics.median(t[0] for t in times[(name, side)]) for side in sides}
        cpu = {side: statistics.median(t[1] for t in times[(name, side)]) for side in sides}
        row = f"| upgrader {name} | " + " | ".join(f"{wall[s]:.3f} s | {cpu[s]:.3f} s"
                                                    for s in sides)
        if args.baseline:
            row += (f" | {wall['this tree'] / wall['baseline']:.2f}, "
                    f"{cpu['this tree'] / cpu['baseline']:.2f} |")
        else:
            row += " |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
