"""The upgrader TUI: watches a rollout through a ``RolloutHandle`` and steers it.

The handle's events go to an :class:`~upgrader.tui.messages.EventFeed`; a tick, ten times a
second, applies what came to the :class:`~upgrader.tui.view.RolloutView` (re-reading the
handle's snapshot after state changes and every few seconds) and posts one update to each
screen. Controls are method calls on the handle; the app decides nothing about the upgrade.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import App
from textual.binding import Binding

from ..control.handle import RolloutHandle
from .messages import EventDescriber, EventFeed, RolloutUpdated
from .screens import (
    FlagsScreen,
    HelpScreen,
    LogScreen,
    MainScreen,
    QuitDialog,
    RollbackDialog,
    WindowOverrideDialog,
)
from .view import MOVING_STATES, RolloutView, as_clock, fmt_duration
from .widgets import FleetTable

if TYPE_CHECKING:
    from ..flags.store import FlagStore

#: seconds between screen updates (at most ten a second, never one per event)
TICK_S = 0.1
#: seconds between snapshot reads while nothing tells the app to read one sooner
RESYNC_S = 2.0

QuitHook = Callable[[str], Any]

#: what a pause does, as the engine does it (docs/TUI.md "Pausing" says the same)
PAUSE_TEXT = ("pause requested: PAUSING until the next step boundary, then PAUSED (a timed "
              "pause or hold stops at once, its countdown frozen); space again cancels")


class UpgraderApp(App[str]):
    """Returns (``run()``/``run_async()``) "abort", "detach" or "quit" (None if killed)."""

    CSS_PATH = "app.tcss"
    #: classes put on every screen by the terminal's size (app.tcss lays the screens out by
    #: them): under 100 columns -narrow, from 160 -wide; under 30 lines -short
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-medium"), (160, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "request_quit", "Quit", show=False, priority=True)]

    def __init__(self, handle: RolloutHandle, *, title: str | None = None,
                 on_quit: QuitHook | None = None, clock: Any = None,
                 flags: FlagStore | None = None) -> None:
        super().__init__()
        self.handle = handle
        #: the flag store the flags screen (``f``) shows and changes, if any
        self.flag_store = flags
        self.on_quit = on_quit
        self.clock = as_clock(clock)
        self.view = RolloutView(self.clock)
        self.feed = EventFeed()
        self.describer = EventDescriber()
        #: notable lines so far (the main screen's event log starts with them)
        self.recent_lines: deque[Text] = deque(maxlen=300)
        self._title = title
        self.title = title or "upgrader"
        self._unsubscribe: Callable[[], None] | None = None
        self._snapshot_failed = False
        #: the hosts whose traffic figures the engine was last asked for
        self._watched: tuple[str, ...] = ()

    @property
    def detachable(self) -> bool:
        """Whether quitting may leave the rollout running: ``on_quit`` is given (a remote
        handle) and does not say otherwise with ``on_quit.detachable = False``."""
        return self.on_quit is not None and bool(getattr(self.on_quit, "detachable", True))

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self._connect()
        self.title = self._title or f"upgrader · {self.view.fleet or 'rollout'}"
        self.push_screen(MainScreen())
        self.set_interval(TICK_S, self._tick)

    def _connect(self) -> None:
        # the snapshot first (it lays out the fleet in order), then the history, then the
        # snapshot again: it is newer than any event
        self.view.load_snapshot(self.handle.snapshot())
        for event in list(self.handle.history):
            self.feed(event)
        # nothing runs between reading the history and subscribing: no event falls between
        self._unsubscribe = self.handle.subscribe(self.feed)
        batch = self.feed.take()
        if batch is not None:
            self.view.apply(batch)
            self.recent_lines.extend(self.describer.lines(batch, self.view))
        self.view.load_snapshot(self.handle.snapshot())

    def on_unmount(self) -> None:
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except ValueError:   # already unsubscribed
                pass
            self._unsubscribe = None

    def _watch_visible(self) -> None:
        """Ask the engine for the traffic figures of the hosts on screen (it reports per-host
        figures only for the hosts that changed lately and those a front end watches): an
        in-process ``Engine`` and a ``RemoteRollout`` (``POST /v1/watch``) alike. A handle
        without ``watch_hosts`` is left alone."""
        watch = getattr(self.handle, "watch_hosts", None)
        if watch is None:
            return
        tables = self.screen.query(FleetTable)
        names = tables.first().visible_hosts() if tables else ()
        if names != self._watched:
            self._watched = names
            watch(names)

    def _tick(self) -> None:
        self._watch_visible()
        view = self.view
        batch = self.feed.take()
        changed: set[str] = set()
        lines: list[Text] = []
        if batch is not None:
            changed = view.apply(batch)
            lines = self.describer.lines(batch, view)
            self.recent_lines.extend(lines)
        synced = False
        if (batch is not None and batch.needs_sync) or (
                not view.is_finished and self.clock() - view.synced_at >= RESYNC_S):
            snapshot = self._snapshot()
            if snapshot is not None:
                changed |= view.load_snapshot(snapshot)
                synced = True
        if batch is None and not synced and view.state not in MOVING_STATES:
            return
        events = batch.log if batch is not None else []
        for screen in self.screen_stack:
            if getattr(screen, "WANTS_UPDATES", False):
                screen.post_message(RolloutUpdated(view, set(changed), synced, list(lines),
                                                   list(events)))

    def _snapshot(self) -> dict[str, Any] | None:
        try:
            return self.handle.snapshot()
        except Exception as exc:      # a remote handle that lost its controller, say
            self.view.synced_at = self.clock()     # try again in RESYNC_S, not every tick
            if not self._snapshot_failed:
                self._snapshot_failed = True
                self.notify(f"cannot read the rollout's status: {exc}", severity="error")
            return None

    # ------------------------------------------------------------------ controls

    def _control(self, name: str, done: str, **kwargs: Any) -> bool:
        """Call a control of the handle; say what happened (a failure too)."""
        try:
            getattr(self.handle, name)(**kwargs)
        except Exception as exc:
            self.notify(f"{name.replace('_', ' ')} failed: {exc}", severity="error")
            return False
        self.notify(done, severity="warning" if name == "abort" else "information")
        return True

    def action_toggle_pause(self) -> None:
        if self.view.is_finished:
            self.notify(f"the rollout is {self.view.state}", severity="warning")
        elif self.view.is_paused:
            self._resume()
        else:
            self._control("pause", PAUSE_TEXT)

    def _resume(self) -> None:
        if self.view.state == "PAUSED":
            self._control("resume", "resumed: the rollout goes on (a frozen countdown counts "
                                    "on from where it stopped)")
        else:
            self._control("resume", "pause cancelled: the rollout goes on")

    def action_promote(self) -> None:
        if self.view.is_paused and not self.view.is_finished:
            # one truth: while paused, p resumes (it does not end a pause it cannot reach)
            self._resume()
            return
        self._control("promote", "promote: the current pause or hold ends now")

    def action_promote_all(self) -> None:
        self._control("promote_all", "promote all: every remaining pause and analysis is "
                                     "skipped")

    def action_rollback(self) -> None:
        if self.view.is_finished:
            window = self.view.rollback_window
            if window is not None and self.view.state == "COMPLETED":
                # the TUI steers a rollout, it does not start one: say which command does
                about = (f", about {fmt_duration(float(window['rollback_s']))}"
                         if window.get("rollback_s") is not None else "")
                self.notify(f"the rollout is COMPLETED; inside its roll-back window `upgrader "
                            f"rollback FLEET` goes straight back to {window.get('previous')}"
                            f"{about}", severity="information")
                return
            self.notify(f"the rollout is {self.view.state}: nothing to roll back",
                        severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._control("abort", "roll-back requested", rollback=True)

        self.push_screen(RollbackDialog(self.rollback_text), confirmed)

    def rollback_text(self) -> str:
        view = self.view
        busy = view.busy_hosts()
        moving = f", and {busy} host(s) are in the middle of their procedure" if busy else ""
        if view.rollback_now_s is not None:
            expected = (f"Expected to take about {fmt_duration(view.rollback_now_s)} "
                        "for the hosts touched so far.")
        else:
            expected = (f"Expected to take about {fmt_duration(view.rollback_estimated_s)} "
                        "at most (the plan's roll-back estimate).")
        return (f"Roll back {view.fleet} from {view.target} to {view.current}?\n\n"
                f"{view.on_target} host(s) run {view.target}{moving}. The rollout stops, and "
                f"they return to {view.current}, with no pauses and no analysis on the way.\n\n"
                + expected)

    def action_override_window(self) -> None:
        window = self.view.window
        if window is None:
            self.notify("override window: this rollout has no deploy window",
                        severity="warning")
            return
        if window.get("overridden"):
            self.notify(f"the deploy window is already overridden ({window['overridden']})")
            return
        if self.view.is_finished or getattr(self.handle, "override_window", None) is None:
            self.notify("override window: not possible for this rollout", severity="warning")
            return
        if window.get("held"):
            situation = f"The rollout waits for the deploy window: {window.get('why')}."
        elif window.get("open"):
            situation = "The deploy window is open now; an override lets the rollout go on " \
                        "after it closes."
        else:
            situation = "The deploy window is closed now."

        def chosen(reason: str | None) -> None:
            if reason:
                self._control("override_window", f"deploy window overridden ({reason}): "
                              "the rollout goes on outside it; the reason is journaled",
                              reason=reason)

        self.push_screen(WindowOverrideDialog(situation), chosen)

    def action_log(self) -> None:
        if not isinstance(self.screen, LogScreen):
            self.push_screen(LogScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_flags(self) -> None:
        if self.flag_store is None:
            self.notify("flags: no flag store: pass --flags-store "
                        "(or import one: upgrader flags import FILE)", severity="warning")
        elif not isinstance(self.screen, FlagsScreen):
            self.push_screen(FlagsScreen(self.flag_store))

    def action_request_quit(self) -> None:
        if self.view.is_finished:
            self._leave("quit")
            return
        if isinstance(self.screen, QuitDialog):
            return

        def chosen(choice: str | None) -> None:
            if choice == "abort" and not self._control("abort", "roll-back requested",
                                                       rollback=True):
                return
            if choice in ("abort", "detach"):
                self._leave(choice)

        self.push_screen(QuitDialog(state=self.view.state, detachable=self.detachable,
                                    paused=self.view.is_paused), chosen)

    async def action_quit(self) -> None:
        self.action_request_quit()

    def _leave(self, choice: str) -> None:
        if self.on_quit is not None:
            self.on_quit(choice)
        self.exit(choice)


def make_app(handle: RolloutHandle, *, title: str | None = None,
             on_quit: QuitHook | None = None, clock: Any = None,
             flags: FlagStore | None = None) -> UpgraderApp:
    """The TUI on ``handle`` (an in-process ``Engine`` or a remote rollout).

    :param title: the terminal title (default: "upgrader · FLEET").
    :param on_quit: called with "abort", "detach" or "quit" when the operator leaves; giving
        it offers "Leave it running" when quitting a live rollout (a remote, detachable
        handle), unless it has ``detachable = False``.
    :param clock: monotonic seconds for the displayed times: a callable, an
        ``upgrader.clock.Clock``, or None for ``time.monotonic`` (tests freeze it).
    :param flags: a :class:`~upgrader.flags.store.FlagStore`: ``f`` opens the flags screen
        on it (without one, ``f`` says how to give one). The app does not close it.
    """
    return UpgraderApp(handle, title=title, on_quit=on_quit, clock=clock, flags=flags)
