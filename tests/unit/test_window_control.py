"""Deploy windows for front ends (issue 16, point 5): the snapshot carries the current window,
the next opening and, while a rollout waits for one, a countdown; the override needs a reason,
is journaled, and reaches a detached controller through the control API and RemoteRollout."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from test_control import TOKEN, make_engine, raw_request, seed, sock_path, wait_for
from test_engine_windows import BERLIN, fleet_for, of, plan_of, run, utc, windows

from upgrader.clock import LoopClock
from upgrader.control.client import RemoteRollout
from upgrader.control.server import ControlServer
from upgrader.engine.core import Engine
from upgrader.errors import ControlError, PolicyRefused
from upgrader.events import Outcome, RolloutState


def test_snapshot_counts_down_to_the_opening_while_held_then_the_override_goes_on(
        fleet_factory):
    fleet = fleet_for(fleet_factory, 2, win=windows(BERLIN))
    seen: dict[str, object] = {}

    async def operator(engine):
        await asyncio.sleep(60)
        first = engine.snapshot()["window"]
        await asyncio.sleep(3600)
        later = engine.snapshot()["window"]
        seen.update(first=first, later=later, state=engine.state)
        with pytest.raises(PolicyRefused, match="needs a reason"):
            engine.override_window("   ")
        engine.override_window("customer outage, approved by on-call")
        await asyncio.sleep(1)
        seen["after"] = engine.snapshot()["window"]

    # Saturday noon UTC: Berlin's team is on duty again on Monday 09:00 (08:00 UTC)
    engine, result, events = run(fleet, plan_of(fleet, (0,), (1,)), utc(2026, 1, 10, 12),
                                 during=operator)
    assert result.outcome is Outcome.COMPLETED
    first, later = seen["first"], seen["later"]
    assert seen["state"] is RolloutState.PAUSED
    assert first["open"] is False and first["held"] is True
    assert first["opens"] == first["resumes"] == "2026-01-12T08:00:00+00:00"
    assert first["resumes_in_s"] == pytest.approx((44 * 3600) - 60, abs=2)
    assert later["resumes_in_s"] == pytest.approx(first["resumes_in_s"] - 3600, abs=2)
    assert "outside the deploy window" in first["why"]
    after = seen["after"]
    assert after["overridden"] == "customer outage, approved by on-call"
    assert after["held"] is False and after["resumes_in_s"] is None
    assert of(events, "window_override")[0].data["reason"] == \
        "customer outage, approved by on-call"


def test_a_rollout_without_windows_has_none_and_refuses_an_override(fleet_factory):
    fleet = fleet_for(fleet_factory, 1)

    async def operator(engine):
        seen = engine.snapshot()["window"]
        assert seen is None
        with pytest.raises(PolicyRefused, match="no deploy window"):
            engine.override_window("why not")

    engine, result, _ = run(fleet, plan_of(fleet, (0,)), utc(2026, 1, 10, 12), during=operator)
    assert result.outcome is Outcome.COMPLETED


def test_control_api_carries_the_window_and_the_override_with_its_reason(fleet_factory,
                                                                         tmp_path):
    """A detached controller's window reaches RemoteRollout; its override (with a reason)
    wakes the held rollout and is journaled; no reason is a 400 and changes nothing."""

    async def main():
        fleet, engine = make_engine(fleet_factory, n=2, steps=[{"hosts": "100%"}])
        fleet = dataclasses.replace(fleet, windows=windows(BERLIN))
        # Saturday noon: outside the window, in real time (the hold lasts until overridden)
        engine = Engine(fleet, engine.plan, engine.providers,
                        clock=LoopClock(wall_origin=utc(2026, 1, 10, 12).timestamp()))
        await seed(fleet, engine)
        path = sock_path(tmp_path)
        async with ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.2):
            remote = RemoteRollout(path, TOKEN)
            await remote.connect()
            task = asyncio.create_task(engine.run())
            await wait_for(lambda: (remote.snapshot().get("window") or {}).get("held"),
                           what="the remote to see the hold")
            window = remote.snapshot()["window"]
            assert window["open"] is False and window["resumes_in_s"] > 3600
            assert window["opens"] == window["resumes"] and window["opens"].endswith(
                "T08:00:00+00:00")                       # Berlin's 09:00 in winter
            status, _, text = await raw_request(path, "POST", "/v1/control/override_window",
                                                json_body={"reason": ""})
            assert status == 400 and "reason" in text
            status, _, text = await raw_request(path, "POST", "/v1/control/override_window",
                                                json_body={"reason": "x", "other": 1})
            assert status == 400
            assert engine.window_info()["overridden"] is None
            with pytest.raises(ControlError, match="needs a reason"):
                remote.override_window("  ")
            remote.override_window("hotfix INC-4711, approved by on-call")
            outcome = await remote.wait_finished()
            assert outcome["outcome"] == "completed"
            await task
            overrides = [e for e in remote.history if e.kind == "window_override"]
            assert overrides and overrides[0].data["reason"] == \
                "hotfix INC-4711, approved by on-call"
            await wait_for(lambda: (remote.snapshot().get("window") or {}).get("overridden"),
                           what="the remote to see the override")
            await remote.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))
