"""``upgrader rollback`` inside the roll-back window against a fresh rollout to the previous
release (issue 15, point 5), on a real lab: 8 app processes, the built-in balancer, live user
traffic.

Each run: a rolling upgrade 1.0.0 -> 1.1.0 (the sample fleet's schedule: one host, then two
at a time, verified 6 s after every batch) completes; then, timed, either ``upgrader rollback``
inside the window, or ``upgrader run`` of a fleet file 1.1.0 -> 1.0.0 with the same strategy
(the fresh rollout an operator runs without the window; inside the window each host switches
back to the release directory it kept, the lab's ``[commands] switch``). Both are timed as the command
(wall clock, Python start-up included) and as the engine's own ``duration_s``; failed user
requests are read from the lab's traffic generator before and after. Medians over --runs.

    .venv/bin/python bench/rollback_window.py --runs 3

``--baseline DIR`` times ``upgrader rollback`` of another checkout's ``upgrader`` package in
the same runs (the forward upgrade and the fresh rollout are always this checkout's); with
``git archive REV upgrader plugins`` its first-party plugins are its own too.
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

from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port

HOSTS = 8
PY = sys.executable

FLEET = """
[fleet]
name = "{name}"
environment = "lab"
[release]
current = "{current}"
target = "{target}"
{window}
[lab]
hosts = {hosts}
dir = "{dir}"
base_port = {port}
[verify]
error_rate_max = "1%"
min_requests = 20
interval = "4s"
for = "6s"
[timing]
host_upgrade = "5s"
drain_timeout = "10s"
[strategy]
kind = "rolling"
on_failure = "rollback"
batch = [1, 2]
max_unavailable = "{max_unavailable}"
"""


def write(path: Path, layout: LabLayout, *, name: str, current: str, target: str,
          window: bool, max_unavailable: str) -> Path:
    path.write_text(FLEET.format(
        name=name, current=current, target=target, hosts=HOSTS, dir=layout.dir,
        port=layout.base_port, max_unavailable=max_unavailable,
        window='rollback_window = "1h"' if window else ""))
    return path


PHASES: list[float] = []     # seconds per host, first phase to back in service, window
#: seconds per host in each phase of the window roll-backs (draining, stopping, installing,
#: starting, checking, enabling: from its host_phase event to the next event of the host)
PHASE_PARTS: dict[str, list[float]] = {}
#: seconds of the window roll-back command outside the engine's events
OUTSIDE: dict[str, list[float]] = {}


def host_seconds(lines: list[dict[str, object]]) -> list[float]:
    """Per host: from its first phase to ``host_done`` (the per-host procedure's own time);
    each phase's share goes to PHASE_PARTS."""
    began: dict[str, float] = {}
    phase: dict[str, tuple[str, float]] = {}
    took = []
    for e in lines:
        host = str(e.get("host"))
        kind = e.get("kind")
        if kind not in ("host_phase", "host_done"):
            continue
        ts = float(e["ts"])  # type: ignore[arg-type]
        if host in phase:
            name, since = phase.pop(host)
            PHASE_PARTS.setdefault(name, []).append(ts - since)
        if kind == "host_phase":
            began.setdefault(host, ts)
            phase[host] = (str(e.get("phase")), ts)
        elif host in began:
            took.append(ts - began.pop(host))
    return took


def upgrader(work: Path, *args: str, code: str | None = None) -> tuple[float, float, str]:
    """(wall seconds, engine duration_s, outcome) of one ``upgrader`` command (``code``: the
    ``upgrader`` package of another checkout, the baseline)."""
    env = {**os.environ, "UPGRADER_STATE_DIR": str(work / "state")}
    env.pop("UPGRADER_STATE", None)
    if code:    # its own first-party plugins too, when the folder has them
        plugins = [os.path.join(code, "plugins")] if os.path.isdir(
            os.path.join(code, "plugins")) else []
        env["PYTHONPATH"] = os.pathsep.join([code, *plugins, env.get("PYTHONPATH", "")])
    started, wall_started = time.monotonic(), time.time()
    out = subprocess.run([PY, "-m", "upgrader.cli", *args, "--headless", "--json"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    wall_ended = time.time()
    if out.returncode != 0:
        raise SystemExit(f"upgrader {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    if args[0] == "rollback" and not code:
        PHASES.extend(host_seconds(lines))
        stamped = [float(e["ts"]) for e in lines if "ts" in e]
        hosts = [float(e["ts"]) for e in lines if e.get("kind") in ("host_phase", "host_done")]
        if stamped:     # the command's own time before its first event and after its last
            OUTSIDE.setdefault("before the first event", []).append(stamped[0] - wall_started)
            OUTSIDE.setdefault("after the last event", []).append(wall_ended - stamped[-1])
        if stamped and hosts:   # the engine's own time around the host procedures
            OUTSIDE.setdefault("engine before the first host", []).append(hosts[0] - stamped[0])
            OUTSIDE.setdefault("engine after the last host", []).append(stamped[-1] - hosts[-1])
    return wall, float(summary["duration_s"]), str(summary["outcome"])


def failed(layout: LabLayout) -> int:
    return int(json.loads(layout.traffic_stats_file.read_text())["failed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-unavailable", default="25%",
                        help="the fleet's max_unavailable (the capacity rule both obey)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time `upgrader rollback` of the upgrader package in DIR "
                             "(another checkout, e.g. `git archive main upgrader | tar -x -C "
                             "DIR`) in the same runs: the before of a before/after")
    args = parser.parse_args()
    baseline = str(Path(args.baseline).resolve()) if args.baseline else None
    kinds = ("window", "baseline", "fresh") if baseline else ("window", "fresh")
    with tempfile.TemporaryDirectory(prefix="rbw-bench-") as tmp:
        work = Path(tmp)
        layout = LabLayout(dir=work / "lab", hosts=HOSTS, base_port=free_base_port(),
                           base_release="1.0.0")
        lab = Lab(layout)
        asyncio.run(lab.up(traffic_rps=100, users=200))
        try:
            forward = write(work / "forward.toml", layout, name="rbw", current="1.0.0",
                            target="1.1.0", window=True,
                            max_unavailable=args.max_unavailable)
            fresh = write(work / "fresh.toml", layout, name="rbw-fresh", current="1.1.0",
                          target="1.0.0", window=False,
                          max_unavailable=args.max_unavailable)
            rows: dict[str, list[tuple[float, float, int]]] = {k: [] for k in kinds}
            for run in range(args.runs):
                for kind in kinds:
                    up_wall, up_engine, _ = upgrader(work, "run", str(forward))
                    before = failed(layout)
                    if kind == "window":
                        wall, engine, outcome = upgrader(work, "rollback", str(forward))
                    elif kind == "baseline":
                        wall, engine, outcome = upgrader(work, "rollback", str(forward),
                                                         code=baseline)
                    else:
                        wall, engine, outcome = upgrader(work, "run", str(fresh))
                    lost = failed(layout) - before
                    assert outcome == "completed", outcome
                    rows[kind].append((wall, engine, lost))
                    print(f"run {run + 1} {kind}: command {wall:.2f} s, engine {engine:.2f} s, "
                          f"{lost} failed requests (the upgrade it undoes: {up_engine:.1f} s)",
                          flush=True)
        finally:
            asyncio.run(lab.down())
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
               max(r[2] for r in v)) for k, v in rows.items()}
    print()
    print("| back to 1.0.0 (8 hosts) | command, median | engine, median | failed requests |")
    print("| --- | --- | --- | --- |")
    names = {"window": "`upgrader rollback` inside the window",
             "baseline": "`upgrader rollback` inside the window, baseline code",
             "fresh": "fresh rollout to the previous release"}
    for kind in kinds:
        wall, engine, lost = med[kind]
        print(f"| {names[kind]} | {wall:.2f} s | {engine:.2f} s | {lost} |")
    if PHASES:
        print(f"\nper host inside the window (first phase -> back in service): median "
              f"{statistics.median(PHASES):.2f} s, max {max(PHASES):.2f} s")
        print("  by phase (median s): " + ", ".join(
            f"{name} {statistics.median(v):.3f}" for name, v in PHASE_PARTS.items()))
        print("  the command outside the engine (median s): " + ", ".join(
            f"{name} {statistics.median(v):.3f}" for name, v in OUTSIDE.items()))
    print(f"\nspeed-up: command {med['fresh'][0] / med['window'][0]:.1f}x, "
          f"engine {med['fresh'][1] / med['window'][1]:.1f}x")
    if baseline:
        print(f"baseline speed-up: command {med['fresh'][0] / med['baseline'][0]:.1f}x, "
              f"engine {med['fresh'][1] / med['baseline'][1]:.1f}x")


if __name__ == "__main__":
    main()
