"""The picture of a rollout that front ends poll (``Engine.snapshot()``): JSON-able, read from
the engine's parts at one instant."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..plan import estimate, step_duration
from .describe import describe_step

if TYPE_CHECKING:   # the engine imports this module
    from .core import Engine


def rollout_status(engine: Engine) -> dict[str, Any]:
    """A JSON-able picture of ``engine``'s rollout now."""
    fleet, plan, clock = engine.fleet, engine.plan, engine.clock
    timing = fleet.timing
    est = estimate(plan, timing)
    done = engine.progress.done_steps
    remaining = sum(step_duration(s, timing) for i, s in enumerate(plan.steps) if i not in done)
    target = fleet.releases.target
    main = [h for h in fleet.hosts if h.cluster == "main"]
    hosts = engine.hosts
    on_target = sum(1 for h in hosts.values() if h.release == target)
    deadline = engine.machine.wait_deadline
    failure = engine.failure
    return {
        "rollout": engine.rollout_id, "fleet": fleet.name, "strategy": plan.strategy,
        "current": fleet.releases.current, "target": target,
        "state": engine.state.value, "reason": engine.state_reason, "step": engine.current_step,
        "steps": len(plan.steps), "hosts_on_target": on_target, "hosts_total": len(main),
        "elapsed_s": clock.monotonic() - engine.started if engine.started else 0.0,
        "estimated_s": est.total_s, "remaining_s": remaining,
        "hosts": {n: {"release": s.release, "phase": s.phase.value, "slot": s.slot,
                      "healthy": s.healthy, "error": s.error,
                      "health_seen": engine.verification.health_seen(n)}
                  for n, s in hosts.items()},
        # each as its event said it (statistics, score and band, failing count), raw
        # samples aside: a front end that connects late shows what a live one does
        "verdicts": {m: dict(engine.verification.verdict_data.get(m) or v.to_json())
                     for m, v in engine.last_verdicts.items()},
        "plan": [{"index": i, "step": s.kind, "wave": s.wave,
                  "description": describe_step(s), "duration_s": step_duration(s, timing)}
                 for i, s in enumerate(plan.steps)],
        "done_steps": sorted(done),
        # an operator's pause freezes a timed pause or hold: what is left then stays put
        "wait_remaining_s": (max(0.0, deadline - clock.monotonic()) if deadline is not None
                             else engine.machine.wait_frozen),
        "wait_frozen": engine.machine.wait_frozen is not None,
        "traffic": engine.last_traffic,
        "metrics": engine.last_metrics,
        "rollback_estimated_s": est.rollback_s,
        "rollback_now_s": failure.rollback_estimate(len(failure.touched())),
        # while frozen: why, and what each answer would do (None otherwise)
        "frozen": failure.frozen,
        # the deploy window (None: the fleet has none): WindowGuard.info()
        "window": engine.window_info(),
        # the roll-back window a completed rollout opened (None: none)
        "rollback_window": engine.rollback_window,
    }
