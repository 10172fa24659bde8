"""A Prometheus server for the lab (``upgrader lab up --prometheus``): Debian's ``prometheus``
binary on a loopback port, its config generated to scrape every app slot and the built-in
balancer each second, its data inside the lab dir."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import LabError
from . import hostctl

#: seconds between scrapes: short, so that a canary's short analysis interval sees data
SCRAPE_INTERVAL = "1s"
READY_TIMEOUT = 30.0
#: scrapes of each serving app ``start`` waits for: ``increase(...[3s])`` needs two samples
SCRAPES_BEFORE_READY = 2
STOP_TIMEOUT = 10.0
BINARY_ENV_HINT = "install Debian's prometheus package (apt-get install prometheus)"


def find_binary() -> str:
    """The ``prometheus`` executable on PATH (or in /usr/bin); LabError naming the package
    when there is none."""
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")
    if not found:
        raise LabError(f"--prometheus needs the prometheus server binary: {BINARY_ENV_HINT}")
    return found


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(app_targets: Iterable[str], admin_target: str | None, token_file: Path | None,
           interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """prometheus.yml's content (JSON is YAML): the apps (their metrics carry ``host`` and
    ``release``) and the balancer's admin port with its bearer token."""
    jobs: list[dict[str, Any]] = [{
        "job_name": "app",
        "honor_labels": True,
        "static_configs": [{"targets": sorted(set(app_targets))}],
    }]
    if admin_target is not None:
        job: dict[str, Any] = {"job_name": "balancer",
                               "static_configs": [{"targets": [admin_target]}]}
        if token_file is not None:
            job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
        jobs.append(job)
    return {"global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "scrape_configs": jobs}


def start(directory: Path, settings: dict[str, Any], log: Path,
          port: int | None = None, serving: int = 0) -> tuple[int, str]:
    """Write ``directory``/prometheus.yml and start the server with its data in
    ``directory``/data; wait until it is ready and has scraped ``serving`` app targets
    :data:`SCRAPES_BEFORE_READY` times each (so a rollout started at once reads both sides of
    its first window, not "no data"). Returns (pid, url). Blocking: run it in a thread.
    LabError (with the log's tail) when it exits or is not ready in time."""
    binary = find_binary()
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    hostctl.write_atomic(config_file, json.dumps(settings, indent=2) + "\n", 0o600)
    port = port or free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, "--config.file", str(config_file),
            "--storage.tsdb.path", str(directory / "data"),
            "--web.listen-address", f"127.0.0.1:{port}",
            "--storage.tsdb.retention.time", "1d", "--log.level", "warn"]
    proc = hostctl.spawn_detached(argv, log)
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            if _ready(url) and _scraped(url, serving, seen):
                return proc.pid, url
        except (urllib.error.URLError, OSError, ValueError):
            pass
        status = proc.poll()
        if status is not None:
            raise LabError(f"prometheus exited with status {status}:\n{hostctl.log_tail(log)}")
        if time.monotonic() > deadline:
            hostctl.terminate(proc.pid, STOP_TIMEOUT)
            raise LabError(f"prometheus was not ready (or had not scraped the {serving} serving "
                           f"apps twice) within {READY_TIMEOUT:g} s:\n"
                           f"{hostctl.log_tail(log)}")
        time.sleep(0.1)


def _ready(url: str) -> bool:
    with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
        return bool(response.status == 200)


def _scraped(url: str, serving: int, seen: dict[str, set[str]]) -> bool:
    """Whether ``serving`` app targets have each been scraped successfully
    :data:`SCRAPES_BEFORE_READY` times, by the ``lastScrape`` times of ``/api/v1/targets``
    gathered into ``seen`` across calls."""
    if serving <= 0:
        return True
    with urllib.request.urlopen(url + "/api/v1/targets?state=active", timeout=2) as response:
        answer = json.loads(response.read())
    for target in answer.get("data", {}).get("activeTargets", []):
        labels = target.get("labels", {})
        if labels.get("job") == "app" and target.get("health") == "up":
            seen.setdefault(str(target.get("scrapeUrl")), set()).add(
                str(target.get("lastScrape")))
    return sum(len(times) >= SCRAPES_BEFORE_READY for times in seen.values()) >= serving


def stop(pid: int | None, config_file: Path) -> None:
    """Stop the lab's server (only if ``pid`` still runs with this config: never a
    recycled pid)."""
    if pid is not None and hostctl.pid_matches(pid, str(config_file)):
        hostctl.terminate(pid, STOP_TIMEOUT)
