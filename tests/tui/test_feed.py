"""The event feed collapses floods; the view follows events and snapshots; a fleet of 10,000
hosts stays interactive."""

from __future__ import annotations

import asyncio

from tuikit import SIZE, big_handle, frozen_app, main_screen, screen_text, wait_until

from upgrader.events import Event
from upgrader.tui.messages import EventDescriber, EventFeed
from upgrader.tui.view import RolloutView
from upgrader.tui.widgets import FleetTable


def event(seq, kind, **data):
    return Event(kind, 1000.0 + seq, "r", seq, data)


def test_a_flood_of_host_and_metrics_events_collapses_into_one_batch():
    feed = EventFeed()
    feed.take()
    seq = 0
    for round_ in range(100):
        for host in ("a", "b", "c"):
            seq += 1
            feed(event(seq, "host_phase", host=host, phase="installing", release="2",
                       mode="upgrade"))
        seq += 1
        feed(event(seq, "metrics", interval_s=1.0, pools={"1": {"rps": round_}}, hosts={}))
    seq += 1
    feed(event(seq, "host_done", host="a", release="2", slot=None, mode="upgrade"))
    batch = feed.take()
    assert batch is not None and batch.count == seq
    assert set(batch.hosts) == {"a", "b", "c"}
    assert batch.hosts["a"]["phase"] == "in_service" and batch.hosts["a"]["release"] == "2"
    assert batch.hosts["b"]["phase"] == "installing" and batch.hosts["b"]["heading"] == "2"
    assert batch.metrics["pools"]["1"]["rps"] == 99          # only the latest for the table
    assert len(batch.series) == 100                          # every reading for the chart
    summaries = [e for e in batch.events if e.kind == "hosts_done"]
    assert len(summaries) == 1 and summaries[0].data["count"] == 1
    assert feed.take() is None


def test_history_and_live_events_do_not_count_twice():
    feed = EventFeed()
    for seq in (1, 2, 3):
        feed(event(seq, "state", state="RUNNING", reason=str(seq)))
    feed(event(2, "state", state="RUNNING", reason="again"))
    feed(event(4, "state", state="WAITING", reason="4"))
    batch = feed.take()
    assert [e.seq for e in batch.events] == [1, 2, 3, 4]


def test_view_counts_hosts_on_the_target_and_takes_the_snapshot_as_truth():
    now = [0.0]
    view = RolloutView(lambda: now[0])
    view.load_snapshot({"current": "1", "target": "2", "state": "RUNNING", "elapsed_s": 10.0,
                        "hosts_total": 2, "hosts_on_target": 0,
                        "hosts": {"a": {"release": "1", "phase": "pending"},
                                  "b": {"release": "1", "phase": "pending"}}})
    feed = EventFeed()
    feed(event(1, "host_done", host="a", release="2", slot=None, mode="upgrade"))
    changed = view.apply(feed.take())
    assert changed == {"a"} and view.on_target == 1
    now[0] = 5.0
    assert view.elapsed() == 15.0                 # the clock runs between snapshots
    changed = view.load_snapshot({"state": "PAUSED", "elapsed_s": 16.0, "hosts_total": 2,
                                  "hosts_on_target": 2,
                                  "hosts": {"a": {"release": "2", "phase": "in_service"},
                                            "b": {"release": "2", "phase": "in_service"}}})
    assert changed == {"b"} and view.on_target == 2 and view.is_paused


def test_a_fleet_of_10000_hosts_stays_interactive():
    handle = big_handle(10_000)
    app = frozen_app(handle)

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            table = main_screen(app).query_one(FleetTable)
            assert table.border_title.startswith("Fleet · 10,000 hosts")
            seq = 1
            for i in range(1, 10_001):
                for phase in ("draining", "installing", "enabling"):
                    seq += 1
                    handle.emit(Event("host_phase", 2000.0, "r-big", seq,
                                      {"host": f"web-{i:04d}", "phase": phase,
                                       "release": "1.1.0", "slot": None, "mode": "upgrade"}))
                seq += 1
                handle.emit(Event("host_done", 2000.0, "r-big", seq,
                                  {"host": f"web-{i:04d}", "release": "1.1.0", "slot": None,
                                   "mode": "upgrade"}))
            await wait_until(pilot, lambda: "10,000 on 1.1.0" in table.border_title,
                             "40,000 events to reach the table")
            await pilot.press("end")
            await wait_until(pilot, lambda: "web-10000" in screen_text(app), "the last host")
            await pilot.press("home")
            await wait_until(pilot, lambda: table.cursor_host == "web-0001", "the first host")
            await pilot.press("pagedown", "pagedown")
            assert table.cursor_host not in (None, "web-0001")

    asyncio.run(main())


def test_a_control_that_fails_is_reported_not_fatal():
    handle = big_handle(10)

    def refuse() -> None:
        raise ConnectionError("controller went away")

    handle.pause = refuse
    app = frozen_app(handle)

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("space")
            await wait_until(pilot, lambda: any("pause failed: controller went away"
                                                in str(n.message) for n in app._notifications),
                             "the error notification")
            await pilot.press("p")
            assert handle.calls == [("promote", None)]

    asyncio.run(main())


def test_a_threshold_verdict_line_shows_a_proportion_in_percent_by_its_kind():
    feed = EventDescriber()
    verdict = event(1, "verdict", metric="failures", result="fail", value=50.0, threshold=5.0,
                    samples=40, baseline=0.5, metric_kind="proportion")
    line = feed.describe(verdict, RolloutView(clock=lambda: 0.0))
    assert line is not None
    assert line.plain == ("analysis failures FAIL: 50.00% (limit 5.00%, 40 samples, "
                          "old release 0.50%)")
