"""Deploy windows, the pure part: parsing with located errors, and the calendar across
daylight-saving changes, midnight-crossing hours, holidays, freezes and follow-the-sun
handovers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn

import pytest

from upgrader.errors import ConfigError
from upgrader.model import Timing
from upgrader.plan import Gate, Pause, Plan, UpgradeHosts, Verify, waves
from upgrader.policy import (
    DeployWindows,
    Team,
    calendar,
    local_to_utc,
    parse_windows,
    refusal,
    wave_work,
    with_window_gates,
)

UTC = UTC


class PathWhere:
    def error(self, path: Any, message: str) -> NoReturn:
        raise ConfigError(message, key=".".join(str(p) for p in path))


def windows(*teams: dict, freezes: tuple = (), min_remaining: str | None = None) -> DeployWindows:
    table: dict[str, Any] = {"teams": list(teams)}
    if freezes:
        table["freezes"] = list(freezes)
    if min_remaining:
        table["min_remaining"] = min_remaining
    return parse_windows(table, PathWhere())


BERLIN = {"name": "berlin", "timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}}
NEW_YORK = {"name": "newyork", "timezone": "America/New_York",
            "hours": {"mon-fri": "11:00-19:00"}}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Office hours


def test_office_hours_in_winter_and_summer():
    w = windows(BERLIN)
    # Monday 2026-01-12: CET, 09:00-17:00 local is 08:00-16:00 UTC
    assert not w.is_open(utc(2026, 1, 12, 7, 59))
    assert w.is_open(utc(2026, 1, 12, 8, 0))
    assert w.window_end(utc(2026, 1, 12, 10)) == utc(2026, 1, 12, 16)
    assert not w.is_open(utc(2026, 1, 12, 16))
    # Monday 2026-07-13: CEST, 07:00-15:00 UTC
    assert w.next_opening(utc(2026, 7, 13, 0)) == utc(2026, 7, 13, 7)
    assert w.window_end(utc(2026, 7, 13, 7)) == utc(2026, 7, 13, 15)


def test_weekend_waits_for_monday_and_next_opening_of_an_open_moment_is_itself():
    w = windows(BERLIN)
    saturday = utc(2026, 1, 10, 12)
    assert not w.is_open(saturday) and w.on_duty(saturday) == ()
    assert w.next_opening(saturday) == utc(2026, 1, 12, 8)
    assert w.next_opening(utc(2026, 1, 12, 9, 30)) == utc(2026, 1, 12, 9, 30)
    assert w.window_end(saturday) == saturday          # closed: ends where it is


def test_can_finish_and_min_remaining():
    w = windows(BERLIN, min_remaining="30m")
    at = utc(2026, 1, 12, 14)               # 15:00 CET, two hours left
    assert w.can_finish(at, 90 * 60)
    assert not w.can_finish(at, 91 * 60)    # 91 minutes + 30 minutes margin > 2 hours
    assert not w.can_finish(utc(2026, 1, 10, 12), 60)
    # the wave that does not fit waits for the next day's opening
    assert w.earliest_start(at, 2 * 3600) == utc(2026, 1, 13, 8)
    assert w.earliest_start(at, 60) == at


def test_a_wave_longer_than_every_window_starts_at_the_next_opening():
    w = windows(BERLIN)
    assert w.earliest_start(utc(2026, 1, 10, 12), 20 * 3600) == utc(2026, 1, 12, 8)


def test_midnight_crossing_hours_belong_to_the_day_they_start():
    w = windows({"name": "night", "timezone": "UTC", "hours": {"fri": "22:00-06:00"},
                 "holidays": ["2026-01-16"]})
    assert w.is_open(utc(2026, 1, 9, 23))            # Friday night
    assert w.is_open(utc(2026, 1, 10, 5, 59))        # Saturday morning: Friday's shift
    assert not w.is_open(utc(2026, 1, 10, 6))
    assert w.window_end(utc(2026, 1, 9, 22)) == utc(2026, 1, 10, 6)
    assert not w.is_open(utc(2026, 1, 16, 23))       # a holiday on Friday cancels it
    assert w.next_opening(utc(2026, 1, 10, 6)) == utc(2026, 1, 23, 22)


def test_hours_until_midnight_and_whole_days_merge_into_one_window():
    w = windows({"name": "ops", "timezone": "UTC",
                 "hours": {"mon": "18:00-24:00", "tue": "00:00-24:00", "wed": "00:00-02:00"}})
    assert w.window_end(utc(2026, 1, 12, 19)) == utc(2026, 1, 14, 2)


def test_several_spans_per_day():
    w = windows({"name": "split", "timezone": "UTC",
                 "hours": {"mon": "09:00-12:00, 13:00-17:00", "tue": ["10:00-11:00"]}})
    assert w.window_end(utc(2026, 1, 12, 9)) == utc(2026, 1, 12, 12)
    assert w.next_opening(utc(2026, 1, 12, 12, 30)) == utc(2026, 1, 12, 13)
    assert w.next_opening(utc(2026, 1, 12, 17)) == utc(2026, 1, 13, 10)


def test_day_ranges_wrap_the_week():
    w = windows({"name": "gulf", "timezone": "Asia/Dubai", "hours": {"sun-thu": "08:00-16:00"}})
    assert w.is_open(utc(2026, 1, 11, 5))            # Sunday 09:00 in Dubai
    assert not w.is_open(utc(2026, 1, 9, 5))         # Friday


# --------------------------------------------------------------------------------------------
# Follow the sun


def test_follow_the_sun_handover_keeps_the_window_open():
    w = windows(BERLIN, NEW_YORK)
    # January: Berlin 08:00-16:00 UTC, New York 16:00-24:00 UTC: one window
    monday = utc(2026, 1, 12, 10)
    assert [t.name for t in w.on_duty(monday)] == ["berlin"]
    assert w.window_end(monday) == utc(2026, 1, 13, 0)
    assert [t.name for t in w.on_duty(utc(2026, 1, 12, 17))] == ["newyork"]
    assert w.can_finish(utc(2026, 1, 12, 15), 6 * 3600)
    assert not windows(BERLIN).can_finish(utc(2026, 1, 12, 15), 6 * 3600)


def test_follow_the_sun_through_the_weeks_when_only_one_side_changed_its_clocks():
    w = windows(BERLIN, NEW_YORK)
    # 2026-03-09..13: New York on EDT already (11:00 = 15:00 UTC), Berlin still CET: overlap
    assert w.window_end(utc(2026, 3, 10, 9)) == utc(2026, 3, 10, 23)
    assert {t.name for t in w.on_duty(utc(2026, 3, 10, 15, 30))} == {"berlin", "newyork"}
    # 2026-10-26..30: Berlin back on CET (08:00-16:00 UTC), New York still EDT (15:00-23:00)
    assert w.next_opening(utc(2026, 10, 26, 0)) == utc(2026, 10, 26, 8)
    assert w.window_end(utc(2026, 10, 26, 8)) == utc(2026, 10, 26, 23)
    # 2026-11-02: both on winter time again: the handover is exact (16:00 UTC)
    assert w.window_end(utc(2026, 11, 2, 8)) == utc(2026, 11, 3, 0)


def test_a_gap_between_teams_closes_the_window():
    w = windows(BERLIN, {"name": "ny", "timezone": "America/New_York",
                         "hours": {"mon-fri": "12:00-19:00"}})
    assert w.window_end(utc(2026, 1, 12, 10)) == utc(2026, 1, 12, 16)
    assert w.next_opening(utc(2026, 1, 12, 16)) == utc(2026, 1, 12, 17)


# --------------------------------------------------------------------------------------------
# Daylight saving


def test_berlin_spring_forward_week():
    w = windows(BERLIN)
    assert w.next_opening(utc(2026, 3, 27, 0)) == utc(2026, 3, 27, 8)    # Friday, CET
    assert w.next_opening(utc(2026, 3, 28, 0)) == utc(2026, 3, 30, 7)    # Monday, CEST
    assert w.window_end(utc(2026, 3, 30, 7)) == utc(2026, 3, 30, 15)


def test_a_time_in_the_skipped_hour_means_the_moment_the_clocks_jump():
    berlin = Team("x", "Europe/Berlin", ()).zone
    # 2026-03-29 02:30 does not exist in Berlin: clocks jump from 02:00 CET to 03:00 CEST
    assert local_to_utc(datetime(2026, 3, 29, 2, 30), berlin) == utc(2026, 3, 29, 1)
    w = windows({"name": "early", "timezone": "Europe/Berlin", "hours": {"sun": "02:30-04:00"}})
    assert w.next_opening(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)
    assert w.window_end(utc(2026, 3, 29, 1)) == utc(2026, 3, 29, 2)     # 04:00 CEST
    # a shift wholly inside the skipped hour is empty that night, and normal a week later
    w = windows({"name": "gone", "timezone": "Europe/Berlin", "hours": {"sun": "02:10-02:50"}})
    assert w.next_opening(utc(2026, 3, 28, 12)) == utc(2026, 4, 5, 0, 10)


def test_a_time_in_the_repeated_hour_starts_at_its_first_and_ends_at_its_second():
    berlin = Team("x", "Europe/Berlin", ()).zone
    # 2026-10-25: 02:00-03:00 happens twice in Berlin (CEST, then CET)
    assert local_to_utc(datetime(2026, 10, 25, 2, 30), berlin) == utc(2026, 10, 25, 0, 30)
    assert local_to_utc(datetime(2026, 10, 25, 2, 30), berlin, end=True) == \
        utc(2026, 10, 25, 1, 30)
    w = windows({"name": "late", "timezone": "Europe/Berlin", "hours": {"sun": "01:00-02:30"}})
    start = w.next_opening(utc(2026, 10, 24, 12))
    assert start == utc(2026, 10, 24, 23)                              # 01:00 CEST
    assert w.window_end(start) == utc(2026, 10, 25, 1, 30)             # the second 02:30


def test_new_york_night_shift_over_both_changes():
    w = windows({"name": "night", "timezone": "America/New_York", "hours": {"sat": "22:00-06:00"}})
    # 2026-03-08: 02:00 EST -> 03:00 EDT inside the shift: it lasts 7 hours
    start = w.next_opening(utc(2026, 3, 7, 12))
    assert start == utc(2026, 3, 8, 3)
    assert w.window_end(start) - start == timedelta(hours=7)
    # 2026-11-01: 02:00 EDT -> 01:00 EST inside the shift: it lasts 9 hours
    start = w.next_opening(utc(2026, 10, 31, 12))
    assert start == utc(2026, 11, 1, 2)
    assert w.window_end(start) - start == timedelta(hours=9)


def test_new_york_office_hours_across_the_spring_change():
    w = windows(NEW_YORK)
    assert w.next_opening(utc(2026, 3, 6, 0)) == utc(2026, 3, 6, 16)    # Friday, EST
    assert w.next_opening(utc(2026, 3, 7, 0)) == utc(2026, 3, 9, 15)    # Monday, EDT


# --------------------------------------------------------------------------------------------
# Holidays and freezes


def test_holidays_are_per_team():
    w = windows({**BERLIN, "holidays": ["2026-12-24", "2026-12-25"]}, NEW_YORK)
    thursday = utc(2026, 12, 24, 10)
    assert not w.is_open(thursday)                  # Berlin off; New York not yet awake
    assert w.next_opening(thursday) == utc(2026, 12, 24, 16)
    assert [t.name for t in w.on_duty(utc(2026, 12, 24, 17))] == ["newyork"]


def test_freeze_by_dates_covers_whole_local_days_of_every_team():
    w = windows(BERLIN, NEW_YORK, freezes=({"from": date(2026, 12, 21), "to": "2027-01-04",
                                            "reason": "year-end"},))
    assert not w.is_open(utc(2026, 12, 21, 10))
    assert w.is_open(utc(2026, 12, 18, 20))                 # Friday before, New York
    assert w.next_opening(utc(2026, 12, 19, 0)) == utc(2027, 1, 5, 8)
    assert "year-end" in w.freezes[0].describe()


def test_freeze_by_instants():
    w = windows(BERLIN, freezes=({"from": datetime(2026, 1, 12, 10, tzinfo=UTC),
                                  "to": "2026-01-12T12:00:00+00:00"},))
    assert w.window_end(utc(2026, 1, 12, 9)) == utc(2026, 1, 12, 10)
    assert w.next_opening(utc(2026, 1, 12, 10)) == utc(2026, 1, 12, 12)


def test_a_window_that_never_closes_has_no_end_and_a_freeze_forever_has_no_opening():
    always = windows({"name": "ops", "timezone": "UTC", "hours": {"mon-sun": "00:00-24:00"}})
    assert always.window_end(utc(2026, 1, 12)) is None
    assert always.can_finish(utc(2026, 1, 12), 10 ** 7)
    frozen = windows(BERLIN, freezes=({"from": "2026-01-01", "to": "2030-01-01"},))
    assert frozen.next_opening(utc(2026, 1, 12)) is None
    assert frozen.earliest_start(utc(2026, 1, 12), 60) is None
    refused = refusal(frozen, utc(2026, 1, 12))
    assert refused is not None and refused.next_opening is None


def test_refusal_names_the_next_opening_in_utc_and_in_the_team_zone():
    w = windows(BERLIN, NEW_YORK)
    assert refusal(w, utc(2026, 1, 12, 10)) is None
    refused = refusal(w, utc(2026, 1, 10, 12))
    assert refused is not None
    assert refused.next_opening == utc(2026, 1, 12, 8) and refused.teams == ("berlin",)
    text = str(refused)
    assert "2026-01-12 08:00 UTC" in text and "09:00 CET Europe/Berlin" in text
    assert "--wait" in text and "--override-window" in text


# --------------------------------------------------------------------------------------------
# Plans and the calendar of waves


def _plan() -> Plan:
    steps = (UpgradeHosts(("a",), wave=0), Verify(600.0, wave=0), Pause(3600.0, wave=0),
             UpgradeHosts(("b", "c"), max_parallel=1, wave=1), Verify(600.0, wave=1))
    return Plan(strategy="rolling", steps=steps, total_hosts=3)


def test_gates_go_before_each_wave_and_show_in_the_plan():
    plan = with_window_gates(_plan())
    gates = [i for i, s in enumerate(plan.steps) if isinstance(s, Gate)]
    assert gates == [0, 4]
    assert with_window_gates(plan) == plan
    timing = Timing(host_upgrade=1800.0)
    assert wave_work(plan.steps, 0, timing) == 1800 + 600      # the pause needs no one
    assert wave_work(plan.steps, 4, timing) == 2 * 1800 + 600
    labels = [w.label for w in waves(plan, timing)]
    assert labels[0].startswith("deploy window, upgrade 1")


def test_calendar_places_waves_in_windows():
    plan = with_window_gates(_plan())
    timing = Timing(host_upgrade=1800.0)
    w = windows(BERLIN)
    slots = calendar(plan, timing, w, utc(2026, 1, 12, 13))       # Monday 14:00 CET
    first, second = slots
    assert first.start == utc(2026, 1, 12, 13)
    assert first.end == utc(2026, 1, 12, 13) + timedelta(seconds=1800 + 600 + 3600)
    # wave 1 needs 70 minutes of work at 14:40 UTC; the window closes at 16:00: it fits
    assert second.start == utc(2026, 1, 12, 14, 40) and second.waited_s == 0
    assert calendar(plan, timing, w, utc(2026, 1, 12, 15, 20))[0].start == \
        utc(2026, 1, 12, 15, 20)                                  # 40 minutes: just fits
    late = calendar(plan, timing, w, utc(2026, 1, 12, 15, 21))
    assert late[0].start == utc(2026, 1, 13, 8)                  # 39 minutes do not
    assert late[0].waited_s == pytest.approx(16 * 3600 + 39 * 60)
    # without windows the calendar is the estimate's arithmetic
    assert calendar(plan, timing, None, utc(2026, 1, 10))[1].start == \
        utc(2026, 1, 10) + timedelta(seconds=6000)


# --------------------------------------------------------------------------------------------
# Parsing: every mistake is named


@pytest.mark.parametrize("table,key,words", [
    ({"teams": [{**BERLIN, "timezone": "Europe/Berlinn"}]}, "teams.0.timezone",
     ["unknown time zone", "Europe/Berlinn"]),
    ({"teams": [{**BERLIN, "timezone": "../etc/passwd"}]}, "teams.0.timezone",
     ["unknown time zone"]),
    ({"teams": [{**BERLIN, "hours": {"mon-fri": "9-17"}}]}, "teams.0.hours.mon-fri",
     ["expected a time like '09:00'"]),
    ({"teams": [{**BERLIN, "hours": {"mon-fri": "09:00-25:00"}}]}, "teams.0.hours.mon-fri",
     ["25:00"]),
    ({"teams": [{**BERLIN, "hours": {"mon-fry": "09:00-17:00"}}]}, "teams.0.hours.mon-fry",
     ["mon-fri"]),
    ({"teams": [{**BERLIN, "hours": {"mon-fri": "09:00-17:00", "fri": "10:00-11:00"}}]},
     "teams.0.hours.fri", ["fri is given twice"]),
    ({"teams": [{**BERLIN, "hours": {"mon": "09:00-09:00"}}]}, "teams.0.hours.mon",
     ["empty hours"]),
    ({"teams": [{**BERLIN, "holidays": ["2026-02-30"]}]}, "teams.0.holidays.0",
     ["expected a date"]),
    ({"teams": [{**BERLIN, "holiday": []}]}, "teams.0.holiday", ["unknown key", "holidays"]),
    ({"teams": [BERLIN, BERLIN]}, "teams.1.name", ["duplicate team name"]),
    ({"teams": []}, "teams", ["non-empty"]),
    ({}, "teams", ["at least one team"]),
    ({"teams": [BERLIN], "min_remaining": "half an hour"}, "min_remaining", ["duration"]),
    ({"teams": [BERLIN], "freezes": [{"from": "2026-12-20"}]}, "freezes.0.to", ["missing"]),
    ({"teams": [BERLIN], "freezes": [{"from": "2026-12-20", "to": "2026-12-01"}]},
     "freezes.0.to", ["before it starts"]),
    ({"teams": [BERLIN], "freezes": [{"from": "2026-12-20T10:00:00", "to": "2026-12-21"}]},
     "freezes.0.from", ["no offset"]),
    ({"teams": [BERLIN], "freezes": [{"from": "2026-12-20", "to": "tomorrow"}]},
     "freezes.0.to", ["expected a date"]),
])
def test_bad_windows_name_the_key(table, key, words):
    with pytest.raises(ConfigError) as info:
        parse_windows(table, PathWhere())
    assert info.value.key == key
    for word in words:
        assert word in info.value.message
