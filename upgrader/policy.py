"""Deploy windows: when someone awake is on duty to push (the seed's "avoid code pushes when
sleepy"). Pure calendar logic over IANA time zones; no clock of its own, no I/O besides the
time-zone database.

A fleet file's ``[windows]`` table names teams, each with a time zone, working hours per
weekday and holidays, and fleet-wide freezes. The deploy window is open while at least one
team is on duty (inside its hours, not on a holiday, not frozen). Teams that hand over to one
another (one's hours end when the next's begin) make one continuous window: follow the sun.

Rules, also in docs/WINDOWS.md:

- A shift belongs to the day it starts on: ``fri = "22:00-06:00"`` runs from Friday 22:00 to
  Saturday 06:00 local time, and a holiday on Friday cancels it, one on Saturday does not.
- Daylight saving: a time in the hour that is skipped (spring forward) means the moment the
  clocks jump; a time in the hour that repeats (fall back) means its first occurrence for a
  start and its second for an end, so a shift covers every moment its wall-clock times span.
- A freeze by dates covers whole local days of every team (both dates included); a freeze by
  offset date-times covers exactly that span (``to`` excluded).

Every method takes and returns timezone-aware :class:`datetime` values (returned in UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, NoReturn, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import PolicyRefused
from .model import WindowPolicy
from .tomlsource import (
    KeyPath,
    check_duration,
    describe_value,
    unknown_key_message,
)

__all__ = [
    "WINDOW_GATE",
    "DeployWindows",
    "Freeze",
    "Shift",
    "Team",
    "WaveSlot",
    "WindowPolicy",
    "WindowRefused",
    "calendar",
    "parse_windows",
    "refusal",
    "with_window_gates",
]

UTC = UTC
#: the ``Gate.gate`` of a deploy-window gate
WINDOW_GATE = "deploy_window"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {name: i for i, name in enumerate(DAYS)}
_DAY_NAMES.update({full: i for i, full in enumerate(
    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))})
_TIME_RE = re.compile(r"([01]?\d|2[0-4]):([0-5]\d)")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: how far ahead the calendar looks for an opening (a window that never closes within it is
#: treated as open without end)
HORIZON = timedelta(days=400)
#: how far ahead a wave looks for a window long enough for it before it gives up and runs
#: across windows (pausing at each end)
FIT_SEARCH = timedelta(days=60)
_CHUNK = timedelta(days=8)
_SLACK = timedelta(days=2)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True)
class Shift:
    """Working hours on one weekday: ``start``/``end`` in minutes after local midnight;
    ``end <= start`` crosses midnight (ends on the next day)."""

    weekday: int          # 0 = Monday
    start: int            # 0..1439
    end: int              # 1..1440

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def describe(self) -> str:
        return f"{DAYS[self.weekday]} {_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    timezone: str                       # an IANA key, e.g. "Europe/Berlin"
    shifts: tuple[Shift, ...]
    holidays: frozenset[date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)


@dataclass(frozen=True, slots=True)
class Freeze:
    """No pushes: whole local days (``first``..``last`` dates, both included) or an exact span
    (``start``..``end`` aware date-times, end excluded)."""

    first: date | None = None
    last: date | None = None
    start: datetime | None = None
    end: datetime | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.first is not None:
            span = f"{self.first.isoformat()} to {self.last.isoformat()}"  # type: ignore[union-attr]
        else:
            span = f"{_utc_text(self.start)} to {_utc_text(self.end)}"  # type: ignore[arg-type]
        return f"freeze {span}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True, slots=True)
class DeployWindows:
    """Teams, freezes and the margin a wave must leave before a window closes."""

    teams: tuple[Team, ...]
    freezes: tuple[Freeze, ...] = ()
    #: seconds of margin: a wave starts only if it can finish this long before the window ends
    min_remaining: float = 0.0

    # -- queries

    def is_open(self, at: datetime) -> bool:
        """True while at least one team is on duty at ``at``."""
        return self._interval_at(at) is not None

    def on_duty(self, at: datetime) -> tuple[Team, ...]:
        """The teams on duty at ``at`` (inside their hours, not on holiday, not frozen)."""
        at = _as_utc(at)
        return tuple(team for team in self.teams
                     if any(s <= at < e for s, e in self._team_intervals(team, at - _SLACK,
                                                                          at + _SLACK)))

    def next_opening(self, after: datetime) -> datetime | None:
        """The earliest moment at or after ``after`` when the window is open (``after`` itself
        when open then); None when none comes within :data:`HORIZON`."""
        after = _as_utc(after)
        found = self._interval_from(after)
        if found is None:
            return None
        return max(found[0], after)

    def window_end(self, at: datetime) -> datetime | None:
        """When the open period around ``at`` ends, handovers between teams included; ``at``
        itself when closed; None when it does not end within :data:`HORIZON`."""
        at = _as_utc(at)
        found = self._interval_at(at)
        if found is None:
            return at
        return found[1]

    def can_finish(self, at: datetime, duration: float) -> bool:
        """Open at ``at``, and ``duration`` seconds (plus ``min_remaining``) fit before the
        window ends."""
        at = _as_utc(at)
        found = self._interval_at(at)
        if found is None:
            return False
        end = found[1]
        return end is None or (end - at).total_seconds() >= duration + self.min_remaining

    def earliest_start(self, at: datetime, duration: float) -> datetime | None:
        """When a wave of ``duration`` seconds may start: the first moment at or after ``at``
        that is open and leaves room for it (and ``min_remaining``) before the window closes.
        A wave longer than every window within :data:`FIT_SEARCH` starts at the next opening
        (and pauses at each window's end). None: no opening within :data:`HORIZON`."""
        at = _as_utc(at)
        need = duration + self.min_remaining
        t = at
        while t - at <= FIT_SEARCH:
            found = self._interval_from(t)
            if found is None:
                return None
            start, end = max(found[0], t), found[1]
            if end is None or (end - start).total_seconds() >= need:
                return start
            t = end
        return self.next_opening(at)

    def describe_time(self, at: datetime) -> str:
        """``2026-03-30 07:00 UTC (09:00 CEST Europe/Berlin, team berlin)``: UTC, and local
        time for the teams on duty then (or the first team when none is)."""
        at = _as_utc(at)
        teams = self.on_duty(at) or self.teams[:1]
        local = ", ".join(f"{_local_text(at, team)}, team {team.name}" for team in teams)
        return f"{_utc_text(at)} ({local})" if local else _utc_text(at)

    def describe(self) -> str:
        teams = ", ".join(f"{t.name} ({t.timezone})" for t in self.teams)
        return f"teams {teams}" + (f"; {len(self.freezes)} freeze(s)" if self.freezes else "")

    # -- intervals

    def _interval_at(self, at: datetime) -> tuple[datetime, datetime | None] | None:
        at = _as_utc(at)
        found = self._interval_from(at)
        if found is None or found[0] > at:
            return None
        return found

    def _interval_from(self, t: datetime) -> tuple[datetime, datetime | None] | None:
        """The first merged open interval that ends after ``t`` (it may have begun before):
        (start, end), end None when it lasts past the horizon."""
        t = _as_utc(t)
        limit = t + HORIZON
        lo, hi = t - _SLACK, t + _CHUNK
        while True:
            candidate = next(((s, e) for s, e in self._merged(lo, hi) if e > t), None)
            if candidate is not None and candidate[1] < hi - _SLACK:
                return candidate
            if hi >= limit:
                return None if candidate is None else (candidate[0], None)
            if candidate is None:
                lo = hi - _SLACK          # nothing open yet: slide on
                hi = hi + _CHUNK
            else:
                hi = hi + _CHUNK * 4      # open up to the edge: widen to find its end

    def _merged(self, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
        """Every team's open intervals overlapping [lo, hi), merged: overlapping or touching
        intervals (a handover) make one."""
        intervals: list[tuple[datetime, datetime]] = []
        for team in self.teams:
            intervals.extend(self._team_intervals(team, lo, hi))
        intervals.sort()
        merged: list[tuple[datetime, datetime]] = []
        for start, end in intervals:
            if merged and start <= merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def _team_intervals(self, team: Team, lo: datetime, hi: datetime
                        ) -> list[tuple[datetime, datetime]]:
        """The team's shifts (minus holidays and freezes) that overlap [lo, hi)."""
        zone = team.zone
        first = lo.astimezone(zone).date() - timedelta(days=1)
        last = hi.astimezone(zone).date() + timedelta(days=1)
        result: list[tuple[datetime, datetime]] = []
        day = first
        while day <= last:
            for start, end in _day_shifts(team, day):
                if end > lo and start < hi:
                    result.append((start, end))
            day += timedelta(days=1)
        if self.freezes and result:
            cuts = [_freeze_span(f, team) for f in self.freezes]
            result = _subtract(result, cuts)
        return result


# ---------------------------------------------------------------------------------------------
# Local time -> UTC, across daylight-saving changes


@lru_cache(maxsize=64)
def _zone(key: str) -> ZoneInfo:
    return ZoneInfo(key)


def _as_utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"expected an aware datetime, got naive {at!r}")
    return at.astimezone(UTC)


def _exists(naive: datetime, zone: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive


def local_to_utc(naive: datetime, zone: ZoneInfo, *, end: bool = False) -> datetime:
    """The instant a local wall-clock time means: in a skipped hour, the moment the clocks
    jump; in a repeated hour, the first occurrence (``end``: the second)."""
    if not _exists(naive, zone):
        # between the two readings lies the transition; find it to the second
        before = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)   # earlier offset's image
        after = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
        lo, hi = min(before, after), max(before, after)
        offset_lo = lo.astimezone(zone).utcoffset()
        while (hi - lo) > timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            mid = mid.replace(microsecond=0)
            if mid <= lo:
                break
            if mid.astimezone(zone).utcoffset() == offset_lo:
                lo = mid
            else:
                hi = mid
        return hi
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return max(first, second) if end else min(first, second)


@lru_cache(maxsize=8192)
def _day_shifts(team: Team, day: date) -> tuple[tuple[datetime, datetime], ...]:
    """The team's shifts that start on local ``day``, as UTC intervals."""
    if day in team.holidays:
        return ()
    zone = team.zone
    result = []
    for shift in team.shifts:
        if shift.weekday != day.weekday():
            continue
        start = local_to_utc(_at_minutes(day, shift.start), zone)
        end_day = day + timedelta(days=1) if shift.crosses_midnight else day
        end = local_to_utc(_at_minutes(end_day, shift.end), zone, end=True)
        if end > start:
            result.append((start, end))
    return tuple(result)


def _at_minutes(day: date, minutes: int) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(minutes=minutes)


def _freeze_span(freeze: Freeze, team: Team) -> tuple[datetime, datetime]:
    if freeze.start is not None and freeze.end is not None:
        return _as_utc(freeze.start), _as_utc(freeze.end)
    assert freeze.first is not None and freeze.last is not None
    zone = team.zone
    start = local_to_utc(_at_minutes(freeze.first, 0), zone)
    end = local_to_utc(_at_minutes(freeze.last + timedelta(days=1), 0), zone, end=True)
    return start, end


def _subtract(intervals: list[tuple[datetime, datetime]],
              cuts: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    result = intervals
    for cut_start, cut_end in cuts:
        pieces = []
        for start, end in result:
            if cut_end <= start or cut_start >= end:
                pieces.append((start, end))
                continue
            if start < cut_start:
                pieces.append((start, cut_start))
            if cut_end < end:
                pieces.append((cut_end, end))
        result = pieces
    return result


# ---------------------------------------------------------------------------------------------
# Text


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _utc_text(at: datetime) -> str:
    return _as_utc(at).strftime("%Y-%m-%d %H:%M UTC")


def _local_text(at: datetime, team: Team) -> str:
    local = _as_utc(at).astimezone(team.zone)
    return f"{local.strftime('%a %Y-%m-%d %H:%M %Z')} {team.timezone}"


# ---------------------------------------------------------------------------------------------
# Refusal (exit 3)


class WindowRefused(PolicyRefused):
    """Outside the deploy window: no team is on duty. Carries the next opening (None: none
    within the horizon) and the teams on duty then."""

    def __init__(self, message: str, *, next_opening: datetime | None,
                 teams: tuple[str, ...] = ()) -> None:
        self.next_opening = next_opening
        self.teams = teams
        super().__init__(message)


def refusal(windows: WindowPolicy, now: datetime) -> WindowRefused | None:
    """None while a team is on duty at ``now``; else the refusal to raise (exit 3), naming
    the next opening in UTC and in the local time of the team on duty then."""
    if windows.is_open(now):
        return None
    opening = windows.next_opening(now)
    if opening is None:
        return WindowRefused("outside the deploy window: no team is on duty, and none will be "
                             f"within {HORIZON.days} days", next_opening=None)
    teams = tuple(t.name for t in windows.on_duty(opening))
    return WindowRefused(
        f"outside the deploy window: no team is on duty now ({_utc_text(now)}); next opening "
        f"{windows.describe_time(opening)}. Wait for it with --wait, or push anyway with "
        "--override-window REASON", next_opening=opening, teams=teams)


# ---------------------------------------------------------------------------------------------
# Plans: a gate before each wave, and the calendar of waves


def with_window_gates(plan: Any) -> Any:
    """``plan`` with a ``Gate("deploy_window")`` before each wave that changes something (a
    wave of only pauses and holds needs no one awake to push). Idempotent."""
    from dataclasses import replace

    from .plan import Gate, Pause, Verify

    if any(isinstance(s, Gate) and s.gate == WINDOW_GATE for s in plan.steps):
        return plan
    steps: list[Any] = []
    gated: set[int] = set()
    acts = {s.wave for s in plan.steps if not isinstance(s, (Pause, Verify, Gate))}
    for step in plan.steps:
        if step.wave in acts and step.wave not in gated:
            gated.add(step.wave)
            steps.append(Gate(gate=WINDOW_GATE, wave=step.wave))
        steps.append(step)
    return replace(plan, steps=tuple(steps))


def wave_work(steps: Sequence[Any], gate_index: int, timing: Any) -> float:
    """Seconds of work the wave gated at ``gate_index`` needs inside a window: its steps'
    estimates, pauses excluded (waiting needs no one to push)."""
    from .plan import Gate, Pause, step_duration

    wave = steps[gate_index].wave
    total = 0.0
    for step in steps[gate_index + 1:]:
        if step.wave != wave:
            break
        if isinstance(step, Pause) or (isinstance(step, Gate) and step.gate == WINDOW_GATE):
            continue
        total += step_duration(step, timing)
    return total


@dataclass(frozen=True, slots=True)
class WaveSlot:
    """When a wave would run given the windows (None: no opening within the horizon)."""

    index: int
    start: datetime | None
    end: datetime | None
    waited_s: float = 0.0          # time its gate waited for a window that fits it


def calendar(plan: Any, timing: Any, windows: WindowPolicy | None,
             start: datetime) -> tuple[WaveSlot, ...]:
    """Each wave's start and end, as the engine would run ``plan`` from ``start``: every step
    begins only while the window is open; a gated wave waits for a window it fits in;
    host work stops at a window's end and goes on at the next opening; holds and pauses run
    on the wall clock. Indefinite pauses count as zero, as in the estimate."""
    from .plan import Gate, Pause, Verify, step_duration

    t: datetime | None = _as_utc(start)
    slots: dict[int, list[Any]] = {}
    steps = plan.steps
    wave: int | None = None
    for index, step in enumerate(steps):
        if wave is None or (step.wave != wave and step.wave not in slots):
            wave = step.wave        # a step of an earlier wave after a later one (a final
        slot = slots.setdefault(wave, [None, None, 0.0])   # gate) counts with the last
        if t is None:
            continue
        if windows is not None:
            t = windows.next_opening(t)
            if t is None:
                continue
        if isinstance(step, Gate) and step.gate == WINDOW_GATE:
            if windows is None:
                continue
            began = t
            t = windows.earliest_start(t, wave_work(steps, index, timing))
            if t is not None:
                slot[2] += (t - began).total_seconds()
            continue
        if slot[0] is None:
            slot[0] = t
        seconds = step_duration(step, timing)
        if isinstance(step, (Verify, Pause)) or windows is None:
            t = t + timedelta(seconds=seconds)
        else:
            t = _advance_open(windows, t, seconds)
        slot[1] = t
    return tuple(WaveSlot(index=w, start=s[0], end=s[1], waited_s=s[2])
                 for w, s in sorted(slots.items()))


def _advance_open(windows: WindowPolicy, t: datetime, seconds: float) -> datetime | None:
    remaining = seconds
    current: datetime | None = t
    while current is not None:
        end = windows.window_end(current)
        if end is None or (end - current).total_seconds() >= remaining:
            return current + timedelta(seconds=remaining)
        remaining -= (end - current).total_seconds()
        current = windows.next_opening(end)
    return None


# ---------------------------------------------------------------------------------------------
# Parsing the [windows] table


class Where(Protocol):
    """Raises a ConfigError located at a key path under ``[windows]``."""

    def error(self, path: KeyPath, message: str) -> NoReturn: ...


_WINDOWS_KEYS = ("min_remaining", "teams", "freezes")
_TEAM_KEYS = ("name", "timezone", "hours", "holidays")
_FREEZE_KEYS = ("from", "to", "reason")


def parse_windows(value: Any, where: Where) -> DeployWindows:
    """Check a ``[windows]`` table (as tomllib read it) and build its :class:`DeployWindows`.
    Every problem goes through ``where.error(path, message)`` (a path under ``windows``)."""
    table = _table(value, (), _WINDOWS_KEYS, "[windows]", where)
    min_remaining = 0.0
    if "min_remaining" in table:
        try:
            min_remaining = check_duration(table["min_remaining"])
        except ValueError as exc:
            where.error(("min_remaining",), str(exc))
    raw_teams = table.get("teams")
    if raw_teams is None:
        where.error(("teams",), "missing [[windows.teams]]: a deploy window needs at least "
                                "one team with a timezone and hours")
    if not isinstance(raw_teams, list) or not raw_teams:
        where.error(("teams",), "expected a non-empty array of tables ([[windows.teams]]), got "
                                + describe_value(raw_teams))
    teams = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw_teams):
        team = _team(item, ("teams", index), where)
        first = seen.setdefault(team.name, index)
        if first != index:
            where.error(("teams", index, "name"), f"duplicate team name {team.name!r} (first "
                                                  f"at windows.teams[{first}])")
        teams.append(team)
    raw_freezes = table.get("freezes", [])
    if not isinstance(raw_freezes, list):
        where.error(("freezes",), "expected an array of tables ([[windows.freezes]]), got "
                                  + describe_value(raw_freezes))
    freezes = tuple(_freeze(item, ("freezes", i), where) for i, item in enumerate(raw_freezes))
    return DeployWindows(teams=tuple(teams), freezes=freezes, min_remaining=min_remaining)


def _table(value: Any, path: KeyPath, allowed: Iterable[str], what: str,
           where: Where) -> dict[str, Any]:
    if not isinstance(value, dict):
        where.error(path, f"expected a table ({what}), got {describe_value(value)}")
    allowed = tuple(allowed)
    for key in value:
        if key not in allowed:
            where.error(path + (key,), unknown_key_message(key, allowed, what))
    return value


def _team(value: Any, path: KeyPath, where: Where) -> Team:
    table = _table(value, path, _TEAM_KEYS, "[[windows.teams]]", where)
    for key in ("name", "timezone", "hours"):
        if key not in table:
            where.error(path + (key,), f"missing required key {key!r} in [[windows.teams]]")
    name = table["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        where.error(path + ("name",), f"expected a team name (letters, digits, '.', '_' and "
                                      f"'-'), got {describe_value(name)}")
    zone_name = table["timezone"]
    if not isinstance(zone_name, str) or not zone_name.strip():
        where.error(path + ("timezone",), "expected an IANA time zone like 'Europe/Berlin', "
                                          f"got {describe_value(zone_name)}")
    try:
        _zone(zone_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        where.error(path + ("timezone",), f"unknown time zone {zone_name!r} (expected an IANA "
                                          "name like 'Europe/Berlin' or 'America/New_York')")
    shifts = _hours(table["hours"], path + ("hours",), where)
    holidays: set[date] = set()
    raw = table.get("holidays", [])
    if not isinstance(raw, list):
        where.error(path + ("holidays",), "expected an array of dates like '2026-12-24', got "
                                          + describe_value(raw))
    for i, item in enumerate(raw):
        holidays.add(_date(item, path + ("holidays", i), where))
    return Team(name=name, timezone=zone_name, shifts=shifts, holidays=frozenset(holidays))


def _hours(value: Any, path: KeyPath, where: Where) -> tuple[Shift, ...]:
    if not isinstance(value, dict) or not value:
        where.error(path, "expected a table of days and hours like "
                          "{ mon-fri = \"09:00-17:00\" }, got " + describe_value(value))
    shifts: list[Shift] = []
    given: dict[int, str] = {}
    for key, spans in value.items():
        days = _days(key, path + (key,), where)
        for day in days:
            if day in given:
                where.error(path + (key,), f"{DAYS[day]} is given twice (in {given[day]!r} "
                                           f"and {key!r})")
            given[day] = key
        for start, end in _spans(spans, path + (key,), where):
            shifts.extend(Shift(day, start, end) for day in days)
    return tuple(sorted(shifts, key=lambda s: (s.weekday, s.start)))


def _days(key: str, path: KeyPath, where: Where) -> list[int]:
    text = key.strip().lower()
    first, dash, last = text.partition("-")
    if first not in _DAY_NAMES or (dash and last not in _DAY_NAMES):
        where.error(path, f"expected a day (mon, tue, ... sun) or a range of days (mon-fri), "
                          f"got {key!r}")
    a = _DAY_NAMES[first]
    if not dash:
        return [a]
    b = _DAY_NAMES[last]
    return [(a + i) % 7 for i in range((b - a) % 7 + 1)]       # "fri-mon" wraps the week


def _spans(value: Any, path: KeyPath, where: Where) -> list[tuple[int, int]]:
    if isinstance(value, str):
        parts = value.split(",")
        indexed = [(path, p) for p in parts]
    elif isinstance(value, list) and value:
        indexed = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                where.error(path + (i,), f"expected hours like '09:00-17:00', got "
                                         f"{describe_value(item)}")
            indexed.append((path + (i,), item))
    else:
        where.error(path, f"expected hours like '09:00-17:00' (or several, comma-separated), "
                          f"got {describe_value(value)}")
    spans = []
    for item_path, text in indexed:
        start_text, dash, end_text = text.strip().partition("-")
        start = _minutes(start_text, item_path, text, where)
        end = _minutes(end_text, item_path, text, where) if dash else None
        if end is None:
            where.error(item_path, f"expected hours like '09:00-17:00', got {text!r}")
        if start == 1440:
            where.error(item_path, f"hours cannot start at 24:00 (in {text!r})")
        if end == 0:
            end = 1440            # "22:00-00:00" ends at midnight
        if start == end and start != 0:
            where.error(item_path, f"empty hours {text!r} (start equals end)")
        if start == 0 and end == 0:
            end = 1440
        spans.append((start, end))
    return spans


def _minutes(text: str, path: KeyPath, whole: str, where: Where) -> int:
    match = _TIME_RE.fullmatch(text.strip())
    if not match:
        where.error(path, f"expected a time like '09:00' (24-hour clock), got {text.strip()!r} "
                          f"in {whole!r}")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours == 24 and minutes:
        where.error(path, f"no such time {text.strip()!r} in {whole!r} (24:00 is the latest)")
    return hours * 60 + minutes


def _date(value: Any, path: KeyPath, where: Where) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    where.error(path, f"expected a date like 2026-12-24, got {describe_value(value)}")


def _freeze(value: Any, path: KeyPath, where: Where) -> Freeze:
    table = _table(value, path, _FREEZE_KEYS, "[[windows.freezes]]", where)
    for key in ("from", "to"):
        if key not in table:
            where.error(path + (key,), f"missing required key {key!r} in [[windows.freezes]]")
    reason = table.get("reason", "")
    if not isinstance(reason, str):
        where.error(path + ("reason",), f"expected a string, got {describe_value(reason)}")
    ends = [_date_or_instant(table[k], path + (k,), where) for k in ("from", "to")]
    kinds = {isinstance(e, datetime) for e in ends}
    if len(kinds) != 1:
        where.error(path + ("to",), "give 'from' and 'to' both as dates or both as date-times "
                                    "with an offset")
    first, last = ends
    if isinstance(first, datetime) and isinstance(last, datetime):
        if last <= first:
            where.error(path + ("to",), f"the freeze ends ({_utc_text(last)}) before it "
                                        f"starts ({_utc_text(first)})")
        return Freeze(start=first, end=last, reason=reason)
    if last < first:
        where.error(path + ("to",), f"the freeze ends ({last}) before it starts ({first})")
    return Freeze(first=first, last=last, reason=reason)


def _date_or_instant(value: Any, path: KeyPath, where: Where) -> date | datetime:
    if isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            where.error(path, f"expected a date like 2026-12-20 or a date-time with an offset "
                              f"like 2026-12-20T18:00:00+01:00, got {value!r}")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            where.error(path, f"the date-time {value.isoformat()} has no offset: add one "
                              "(+01:00, Z) or give a date")
        return value
    if isinstance(value, date):
        return value
    where.error(path, f"expected a date like 2026-12-20, got {describe_value(value)}")

