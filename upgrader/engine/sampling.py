"""What verification looks at each round, at a cost bounded whatever the fleet's size: which
upgraded hosts to health-check (:class:`HealthSampler`) and which hosts' traffic figures to
report (:class:`FigureScope`). Pure bookkeeping: no I/O, no clock of its own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Set


class HealthSampler:
    """Picks the backends a health round checks: every backend that changed since the last
    round (a host entering service is checked at once), every backend that failed its last
    check (rechecked at once), then the backends least recently checked, ``sample`` of them
    a round, or more when ``period`` asks that every serving backend be checked at least
    that often. A round's cost is bounded by the changes and failures since the last one
    plus the sample, never by the number of hosts upgraded so far."""

    def __init__(self, sample: int, period: float | None, interval: float) -> None:
        self.sample = sample
        self.period = period
        self.interval = interval
        #: backend -> monotonic time of its last check, least recently checked first
        self.last_seen: OrderedDict[str, float] = OrderedDict()
        #: backend -> wall time of its last check (what front ends show)
        self.last_seen_wall: dict[str, float] = {}
        #: backend -> when it last changed, not checked since
        self._changed: dict[str, float] = {}
        self.failing: set[str] = set()

    def changed(self, backend: str, now: float) -> None:
        """The engine changed ``backend`` (added, moved, drained, enabled) at ``now``; one
        the host procedure checked since (or within the last round) is not checked again."""
        self._changed[backend] = now

    def found(self, backend: str, now: float) -> None:
        """``backend`` serves the target already (found so at a start or resume): first in
        line for the sample, not checked all at once with every other one found."""
        if backend not in self.last_seen:
            self.last_seen[backend] = now
            self.last_seen.move_to_end(backend, last=False)

    def quota(self, serving: int) -> int:
        """How many of the least recently checked backends a round checks."""
        if self.period is None:
            return self.sample
        return max(self.sample, math.ceil(serving * self.interval / self.period))

    def pick(self, serving: Set[str]) -> list[str]:
        """The backends to check this round, out of ``serving`` (in service on the target)."""
        chosen: dict[str, None] = {}
        changed, self._changed = self._changed, {}
        for backend, when in changed.items():
            seen = self.last_seen.get(backend)
            if backend in serving and (seen is None or when - seen >= self.interval):
                chosen[backend] = None
        for backend in sorted(self.failing):
            if backend in serving:
                chosen[backend] = None
            else:
                self.failing.discard(backend)
        quota = self.quota(len(serving))
        # least recently checked first (the order's head: no walk over every host); the
        # backends out of service met on the way leave the order
        gone = []
        for backend in self.last_seen:
            if quota <= 0:
                break
            if backend not in serving:
                gone.append(backend)
            elif backend not in chosen:
                chosen[backend] = None
                quota -= 1
        for backend in gone:
            del self.last_seen[backend]
            self.last_seen_wall.pop(backend, None)
        return list(chosen)

    def record(self, backend: str, ok: bool, now: float, wall: float) -> None:
        """``backend`` was checked at ``now`` (monotonic) / ``wall``."""
        self.last_seen[backend] = now
        self.last_seen.move_to_end(backend)
        self.last_seen_wall[backend] = wall
        if ok:
            self.failing.discard(backend)
        else:
            self.failing.add(backend)

    def oldest(self, serving: Set[str]) -> tuple[str, float] | None:
        """The serving backend least recently checked, and when (monotonic)."""
        for backend, seen in self.last_seen.items():
            if backend in serving:
                return backend, seen
        return None


class FigureScope:
    """Which backends a ``metrics`` event carries figures for: those the engine changed in
    the last ``recent`` seconds and those a front end watches (its visible rows), at most
    ``limit`` in all (a small fleet's: all of them). Pools are always reported whole."""

    def __init__(self, limit: int, recent: float) -> None:
        self.limit = limit
        self.recent = recent
        #: backend -> monotonic time of its last change, oldest first
        self._changed: OrderedDict[str, float] = OrderedDict()
        self.watched: tuple[str, ...] = ()
        #: reported in every event (a small fleet's every backend)
        self.always: tuple[str, ...] = ()

    def changed(self, backend: str, now: float) -> None:
        self._changed[backend] = now
        self._changed.move_to_end(backend)
        while len(self._changed) > self.limit:
            self._changed.popitem(last=False)

    def watch(self, backends: Iterable[str]) -> None:
        self.watched = tuple(dict.fromkeys(backends))[: self.limit]

    def backends(self, now: float) -> list[str]:
        """The backends to report now (watched ones first)."""
        changed = self._changed
        while changed:
            backend, when = next(iter(changed.items()))
            if now - when <= self.recent:
                break
            changed.popitem(last=False)
        if not changed and not self.watched:
            return list(self.always[: self.limit])
        wanted = dict.fromkeys(self.always[: self.limit])
        wanted.update(dict.fromkeys(self.watched[: self.limit - len(wanted)]))
        for backend in reversed(changed):
            if len(wanted) >= self.limit:
                break
            wanted[backend] = None
        return list(wanted)
