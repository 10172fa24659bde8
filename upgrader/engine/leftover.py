"""What a roll-back that did not finish leaves behind: read from the fleet itself (each host's
``current`` release, the balancer's backends) and journaled as a ``rollback_incomplete`` event
that ``upgrader status`` shows, so an operator and ``upgrader resume`` know what is left."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .describe import describe_error
from .reconcile import read_hosts as read_host_releases

if TYPE_CHECKING:
    from .core import Engine

log = logging.getLogger("upgrader.engine")

#: seconds to read the hosts and the balancer after an incomplete roll-back (what is left)
LEFT_BEHIND_READ_S = 10.0


async def report_left_behind(engine: Engine, error: str,
                             hosts: dict[str, str | None]) -> dict[str, str | None]:
    """What an incomplete roll-back leaves, read from the fleet itself where it answers
    (each host's ``current`` release, the balancer's backends), as a journaled
    ``rollback_incomplete`` event that ``upgrader status`` shows. Returns the hosts'
    releases as really read (the journal's where a host did not answer)."""
    main = [h for h in engine.fleet.hosts if h.cluster == "main"
            or engine.hosts[h.name].release is not None]
    try:
        readings = await asyncio.wait_for(read_host_releases(
            engine, [(h, engine.progress.live_slot.get(h.name)) for h in main]),
            LEFT_BEHIND_READ_S)
    except Exception as exc:   # a dead host or balancer: reported, not raised
        readings = {}
        log.warning("reading the hosts after an incomplete roll-back failed: %s", exc)
    report: dict[str, dict[str, Any]] = {}
    real = dict(hosts)
    for host in main:
        status = engine.hosts[host.name]
        reading = readings.get((host.name, engine.progress.live_slot.get(host.name)))
        entry: dict[str, Any] = {"journal": status.release, "phase": status.phase.value}
        if reading is not None and reading.release is not None:
            entry["release"] = reading.release
            real[host.name] = reading.release
        elif reading is not None and reading.error:
            entry["read_error"] = reading.error
        if status.error:
            entry["error"] = status.error
        report[host.name] = entry
    backends: dict[str, dict[str, Any]] | None = None
    balancer_error: str | None = None
    try:
        state = await asyncio.wait_for(engine.providers.balancer.state(), LEFT_BEHIND_READ_S)
        backends = {n: {"pool": b.pool, "state": b.state, "weight": b.weight}
                    for n, b in sorted(state.backends.items())}
    except Exception as exc:   # a dead host or balancer: reported, not raised
        balancer_error = describe_error(exc, "balancer")
    await engine.bus.emit("rollback_incomplete", error=error, hosts=report,
                        backends=backends, balancer_error=balancer_error,
                        target=engine.fleet.releases.target,
                        current=engine.fleet.releases.current)
    return real
