"""An operator's pause, one truth (issue 16): PAUSING until the next step boundary, then PAUSED;
a timed pause's countdown and the remaining-time estimate freeze while PAUSED; resume while
PAUSING cancels the request. All on the virtual clock."""

from __future__ import annotations

import asyncio

from test_engine import fleet_with, providers_for, run_engine

from upgrader.events import Outcome


def test_pause_during_a_host_step_is_pausing_until_the_boundary_then_paused(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=4)
    seen: list[object] = []

    async def operator(engine, providers):
        while engine.state.value != "RUNNING" or engine.current_step is None:
            await asyncio.sleep(0.5)
        engine.pause()
        seen.append((engine.state.value, engine.state_reason))
        while engine.state.value == "PAUSING":
            await asyncio.sleep(0.5)
        seen.append(engine.state.value)
        done = engine.snapshot()["done_steps"]
        await asyncio.sleep(3600)
        seen.append((engine.state.value, engine.snapshot()["done_steps"] == done))
        engine.resume()

    engine, result, events = run_engine(fleet, providers_for(fleet), during=operator)
    assert result.outcome is Outcome.COMPLETED
    assert seen[0] == ("PAUSING", "pause requested: holds at the next step boundary")
    assert seen[1] == "PAUSED"
    assert seen[2] == ("PAUSED", True)          # nothing moved for an hour
    states = [e.data["state"] for e in events if e.kind == "state"]
    assert states[states.index("PAUSING") + 1] == "PAUSED"


def test_a_timed_pause_is_frozen_while_paused_and_finishes_after_resume(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=4,
                       table={"steps": [{"hosts": 1, "pause": "2m"}, {"hosts": "100%"}]})
    seen: dict[str, object] = {}

    async def operator(engine, providers):
        loop = asyncio.get_running_loop()
        while engine.state.value != "WAITING":
            await asyncio.sleep(1)
        await asyncio.sleep(30)
        engine.pause()
        for _ in range(50):         # the wait's task sees the pause within a few loop turns
            if engine.snapshot()["wait_frozen"]:
                break
            await asyncio.sleep(0.1)
        first = engine.snapshot()
        await asyncio.sleep(600)
        later = engine.snapshot()
        seen["first"] = (first["state"], first["wait_remaining_s"], first["wait_frozen"])
        seen["later"] = (later["state"], later["wait_remaining_s"], later["remaining_s"]
                         == first["remaining_s"])
        engine.resume()
        seen["resumed_at"] = loop.time()
        while engine.state.value == "WAITING":
            await asyncio.sleep(1)
        seen["waited"] = loop.time() - seen["resumed_at"]

    engine, result, events = run_engine(fleet, providers_for(fleet), during=operator)
    assert result.outcome is Outcome.COMPLETED
    state, left, frozen = seen["first"]
    assert state == "PAUSED" and frozen is True
    assert 85 <= left <= 91                       # 2 minutes less the 30 s before the pause
    assert seen["later"] == ("PAUSED", left, True)    # ten minutes on: not a second less
    assert left - 2 <= seen["waited"] <= left + 2     # the rest of the pause, after resume


def test_resume_while_pausing_cancels_the_request(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=4)
    seen: list[str] = []

    async def operator(engine, providers):
        while engine.state.value != "RUNNING" or engine.current_step is None:
            await asyncio.sleep(0.5)
        engine.pause()
        seen.append(engine.state.value)
        engine.resume()
        seen.append(engine.state.value)

    engine, result, events = run_engine(fleet, providers_for(fleet), during=operator)
    assert result.outcome is Outcome.COMPLETED
    assert seen == ["PAUSING", "RUNNING"]
    states = [e.data["state"] for e in events if e.kind == "state"]
    assert "PAUSED" not in states


def test_headless_output_says_pausing_then_paused():
    import io

    from rich.console import Console

    from upgrader.events import Event
    from upgrader.headless import HeadlessDisplay

    out = io.StringIO()
    display = HeadlessDisplay(total_hosts=2, target="2.0.0",
                              console=Console(file=out, width=200, color_system=None))
    with display:
        display(Event("state", 0.0, "r1", 1, {"state": "PAUSING",
                                "reason": "pause requested: holds at the next step boundary"}))
        display(Event("state", 0.0, "r1", 2, {"state": "PAUSED", "reason": "paused by operator"}))
    text = out.getvalue()
    assert "PAUSING: pause requested: holds at the next step boundary" in text
    assert "PAUSED: paused by operator" in text


def test_leaving_an_attached_paused_rollout_says_it_stays_paused():
    from upgrader.cli import detach_message

    assert detach_message("PAUSED", "f.toml") == ("the rollout stays paused; resume it with: "
                                                  "upgrader attach f.toml (then space)")
    assert "stays paused" in detach_message("PAUSING", "f.toml")
    assert detach_message("RUNNING", "f.toml").startswith("the rollout goes on")
