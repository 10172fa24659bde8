"""The order of a roll-back, in virtual time (issue 15, point 0): the hosts verification named
as failing leave traffic first, every blue-green host swaps back before any bad slot drains
and stops, and the slow parts run side by side within the capacity rule."""

from __future__ import annotations

import asyncio

from test_engine import DELAY, fleet_with, run_engine  # tests/unit is on sys.path

from upgrader.engine.core import Providers
from upgrader.events import Outcome
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport


class TimedBalancer(NoopBalancer):
    """The no-op balancer, each change stamped with the (virtual) loop time."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[float, str, str]] = []     # (time, backend, state)
        self.splits: list[tuple[float, dict[str, float] | None]] = []

    async def set_backend_state(self, name, state, *, pool=None):
        await super().set_backend_state(name, state, pool=pool)
        self.changes.append((asyncio.get_running_loop().time(), name, state))

    async def set_backend(self, name, **kw):
        await super().set_backend(name, **kw)
        self.changes.append((asyncio.get_running_loop().time(), name, kw.get("state", "ready")))

    async def remove_backend(self, name):
        await super().remove_backend(name)
        self.changes.append((asyncio.get_running_loop().time(), name, "removed"))

    async def set_split(self, split):
        await super().set_split(split)
        self.splits.append((asyncio.get_running_loop().time(),
                            dict(split) if split is not None else None))


def providers(fleet):
    return Providers(NoopTransport(delay=DELAY), TimedBalancer(), NoopHealthCheck())


def stamp(marks):
    async def watch(engine, providers):
        loop = asyncio.get_running_loop()

        def on_event(event):
            if event.kind not in marks:
                marks[event.kind] = loop.time()
        engine.subscribe(on_event)
    return watch


def sick_after(fleet, sick, trigger):
    """A watcher that marks ``sick`` unhealthy once ``trigger`` runs the target release (and
    healthy again once its roll-back begins: the old release is fine)."""
    marks: dict[str, float] = {}

    async def watch(engine, providers):
        await stamp(marks)(engine, providers)

        def on_event(event):
            if (event.kind == "host_done" and event.data.get("host") == trigger
                    and event.data.get("release") == fleet.releases.target):
                providers.health.set_healthy(sick, False)
            if (event.kind == "host_phase" and event.data.get("host") == sick
                    and event.data.get("mode") == "rollback"):
                providers.health.set_healthy(sick, True)
        engine.subscribe(on_event)
    return watch, marks


def test_blue_green_swaps_every_host_back_before_any_bad_slot_drains_or_stops(fleet_factory):
    """Eight hosts swapped; one turns unhealthy during the hold. Every host is back on its
    old slot at the moment the roll-back starts (balancer changes only), the named host
    first; the bad slots drain and stop after that, side by side. Before: host by host
    (swap, drain, stop, next), 7 stop commands between the first swap back and the last."""
    fleet = fleet_with(fleet_factory, "bluegreen", n=8, slots=True)
    sick = fleet.main_hosts[5].name
    watch, marks = sick_after(fleet, sick, fleet.main_hosts[-1].name)
    given = providers(fleet)
    engine, result, events = run_engine(fleet, given, during=watch)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert sick in result.error
    start = marks["rollback_started"]
    balancer = given.balancer
    after = [(t, name, state) for t, name, state in balancer.changes if t >= start]
    originals = {f"{h.name}@{engine.progress.original_slot[h.name]}" for h in fleet.main_hosts}
    back = [(t, name) for t, name, state in after if name in originals and state == "ready"]
    assert {name for _, name in back} == originals
    # the named host first, and all traffic on the old release when the roll-back starts
    assert back[0][1].startswith(sick + "@")
    assert max(t for t, _ in back) - start < 1e-6
    # no bad slot goes to maintenance (nor stops) before every host has swapped back
    last_swap = max(i for i, (_, name, state) in enumerate(after)
                    if name in originals and state == "ready")
    first_maint = min(i for i, (_, name, state) in enumerate(after) if state == "maint")
    assert last_swap < first_maint
    stop = fleet.commands.stop[0]
    assert len([c for c in given.transport.calls if c.argv[0] == stop]) >= 8
    # the stops run side by side (rollback_parallel = the largest batch, 8): one command time
    assert marks["rollout_finished"] - start < 2 * DELAY


def test_canary_roll_back_takes_the_named_failing_host_out_of_traffic_first(fleet_factory):
    """Rolling one host at a time over 8; the first upgraded host turns unhealthy once the
    sixth is on the target. Half the fleet must serve, so the roll-back goes one host at a
    time: the named host leaves traffic (and is reinstalled) first, not last (before: newest
    first, the failing host served until two others were back)."""
    fleet = fleet_with(fleet_factory, "rolling", n=8, table={"batch": [1]})
    sick = fleet.main_hosts[0].name
    watch, marks = sick_after(fleet, sick, fleet.main_hosts[5].name)
    given = providers(fleet)
    engine, result, events = run_engine(fleet, given, during=watch)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert sick in result.error
    start = marks["rollback_started"]
    rolled = [e.data["host"] for e in events
              if e.kind == "host_phase" and e.data.get("mode") == "rollback"]
    assert rolled[0] == sick
    drained = [(t, name) for t, name, state in given.balancer.changes
               if t >= start and state == "drain"]
    assert drained[0] == (start, sick)


def test_shedding_moves_all_traffic_back_before_the_new_hosts_stop(fleet_factory):
    """Shedding over 6 old / 6 new hosts, aborted with roll-back once old hosts were turned
    down: those come back together (one install time, not one each), all traffic moves to
    the old cluster, and only then do the new hosts drain and stop, side by side."""
    fleet = fleet_with(fleet_factory, "shedding", n=6, new=6)
    marks: dict[str, float] = {}

    async def abort_after_turn_downs(engine, given):
        await stamp(marks)(engine, given)
        while len(engine.progress.turned_down) < 3:
            await asyncio.sleep(0.5)
        engine.abort(rollback=True)

    given = providers(fleet)
    engine, result, events = run_engine(fleet, given, during=abort_after_turn_downs)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    start = marks["rollback_started"]
    back_at = next(t for t, split in given.balancer.splits
                   if t >= start and split and split.get(fleet.releases.current) == 100)
    # the turned-down hosts come back in parallel: about one install, not three
    assert back_at - start < 2 * fleet.timing.host_upgrade
    new_names = {h.name for h in fleet.new_hosts}
    gone = [t for t, name, state in given.balancer.changes
            if name in new_names and state in ("drain", "removed") and t >= start]
    assert gone and min(gone) >= back_at
    assert marks["rollout_finished"] - back_at < 3 * DELAY
