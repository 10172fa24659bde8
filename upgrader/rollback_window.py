"""The roll-back window: which earlier releases ``upgrader rollback`` can go straight back to,
worked out from the journal's completed rollouts and an injected ``now`` (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .model import RollbackWindow
from .units import format_duration, plural


def describe(window: RollbackWindow) -> str:
    """``2 releases`` or ``1h``: the window as the fleet file gave it."""
    if window.releases is not None:
        return plural(window.releases, "release")
    return format_duration(window.seconds or 0.0)


@dataclass(frozen=True, slots=True)
class Completed:
    """A completed rollout as the window needs it: ``previous`` -> ``release`` at ``finished``."""

    rollout: str
    previous: str
    release: str
    finished: float


@dataclass(frozen=True, slots=True)
class WindowState:
    """Where the fleet is and what ``upgrader rollback`` would do now."""

    #: the release the last completed rollout installed (None: nothing completed)
    live: str | None
    #: the release before it: ``upgrader rollback`` without ``--to`` goes here
    previous: str | None
    #: earlier releases still inside the window, newest first
    open_releases: tuple[str, ...]
    #: when the window for ``previous`` closes (wall clock), for a window by time
    closes_at: float | None
    #: the completed rollout that opened the window
    rollout: str | None = None

    @property
    def open(self) -> bool:
        return self.previous is not None and self.previous in self.open_releases

    def is_open_for(self, release: str) -> bool:
        return release in self.open_releases


def window_state(window: RollbackWindow | None, completed: Sequence[Completed],
                 now: float) -> WindowState:
    """The window after ``completed`` (newest first) at ``now`` (wall-clock seconds).

    By count N: the releases that the last N completed rollouts replaced stay open. By time:
    a release stays open until its replacement has been live for the window's duration."""
    if not completed:
        return WindowState(None, None, (), None)
    last = completed[0]
    open_releases: list[str] = []
    closes_at: float | None = None
    if window is not None:
        if window.releases is not None:
            chain = completed[:window.releases]
            open_releases = [c.previous for c in chain]
        else:
            duration = window.seconds or 0.0
            closes_at = last.finished + duration
            for c in completed:
                if now < c.finished + duration:
                    open_releases.append(c.previous)
    # the live release is never a roll-back target; each release once, newest first
    seen: list[str] = []
    for release in open_releases:
        if release != last.release and release not in seen:
            seen.append(release)
    return WindowState(live=last.release, previous=last.previous, open_releases=tuple(seen),
                       closes_at=closes_at, rollout=last.rollout)
