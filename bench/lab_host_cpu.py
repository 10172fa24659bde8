"""CPU time of one lab host procedure's processes: each ``hostctl`` call (stop, install,
switch, start: a Python process each) and the lab app's own start-up (its CPU from spawn to
listening, read from /proc), the per-host cost left in ``upgrader rollback`` inside the
roll-back window (bench/rollback_window.py). CPU, not wall clock: it holds on a loaded box.

    .venv/bin/python bench/lab_host_cpu.py --runs 8
    .venv/bin/python bench/lab_host_cpu.py --runs 8 --baseline /tmp/base   # interleaved

``--baseline DIR`` measures the ``upgrader`` package in DIR (another checkout, e.g.
``git archive main upgrader | tar -x -C DIR``) in the same runs (its hostctl has no
``switch`` when it predates it: that column stays empty).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from upgrader.lab.manager import free_base_port

COLUMNS = ("stop", "install", "switch", "start", "app start-up")


def child_cpu_ms(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # cwd: not this checkout (``-m`` puts the working directory first on sys.path, ahead of
    # the baseline's PYTHONPATH)
    done = subprocess.run(argv, env=env, capture_output=True, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    return used, done.returncode


def process_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") * 1000


def one_run(code: str | None, root: Path, port: int, cpu: dict[str, list[float]]) -> None:
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")

    def ctl(*args: str) -> tuple[float, int]:
        return child_cpu_ms([sys.executable, "-m", "upgrader.lab.hostctl", *args, "--root",
                             str(root), "--port", str(port)], env, root)

    for release in ("1.0.0", "1.1.0"):
        ctl("install", "--release", release)
    ctl("start")
    cpu["stop"].append(ctl("stop")[0])
    cpu["install"].append(ctl("install", "--release", "1.1.0")[0])
    used, status = ctl("switch", "--release", "1.0.0")
    if status == 0:
        cpu["switch"].append(used)
    cpu["start"].append(ctl("start")[0])
    pid = int((root / "run" / "default.pid").read_text())
    cpu["app start-up"].append(process_cpu_ms(pid))
    ctl("stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--baseline", metavar="DIR")
    args = parser.parse_args()
    sides = {"this tree": None}
    if args.baseline:
        sides["baseline"] = str(Path(args.baseline).resolve())
    cpu = {side: {c: [] for c in COLUMNS} for side in sides}
    port = free_base_port() + 101
    with tempfile.TemporaryDirectory(prefix="hostcpu-") as tmp:
        for run in range(args.runs):
            for side, code in sides.items():
                root = Path(tmp) / f"{side}-{run}" / "hosts" / "web-01"
                root.mkdir(parents=True)
                one_run(code, root, port, cpu[side])
    print("| median CPU per call | " + " | ".join(COLUMNS) + " |")
    print("| --- |" + " ---: |" * len(COLUMNS))
    for side, columns in cpu.items():
        print(f"| {side} | " + " | ".join(
            f"{statistics.median(v):.0f} ms" if v else "-" for v in columns.values()) + " |")


if __name__ == "__main__":
    main()
