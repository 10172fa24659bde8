"""The fleet table: one line per host, virtualised with the line API.

Only the lines on screen are rendered (and cached by the row's version), and an update
touches only the rows that changed, so a fleet of 10,000 hosts scrolls as lightly as one of ten.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.cache import LRUCache
from textual.events import Click, Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..view import BUSY_PHASES, HostRow, RolloutView, fmt_ms, fmt_percent, fmt_rps

PHASE_WORDS = {"pending": "pending", "snapshot": "snapshot", "draining": "draining",
               "stopping": "stopping", "installing": "installing", "starting": "starting",
               "checking": "checking", "enabling": "enabling", "in_service": "in service",
               "out_of_service": "out of service", "failed": "FAILED"}
_STYLE = Style.parse
PENDING = _STYLE("dim")
ON_TARGET = _STYLE("green")
BUSY = _STYLE("bold yellow")
ROLLING_BACK = _STYLE("bold magenta")
FAILED = _STYLE("bold red")
OUT = _STYLE("dim italic")
HEALTH_OK = _STYLE("green")
HEALTH_BAD = _STYLE("bold red")
WARN = _STYLE("yellow")
PLAIN = Style()

#: seconds between repaints for new traffic figures alone (host changes repaint at once)
FIGURES_REPAINT_S = 0.5
#: the columns after HOST and RELEASE: (title, width); ERROR (last) is as wide as the longest
#: error and shows only when a host has one
FIXED_COLUMNS = (("STATE", 2 + max(len(w) for w in PHASE_WORDS.values())), ("HEALTH", 6),
                 ("SHARE", 6), ("REQ/S", 7), ("5XX", 7), ("P95", 7))
TITLES = ("HOST", "RELEASE") + tuple(t for t, _ in FIXED_COLUMNS) + ("ERROR",)
#: the order in which columns go when the table is too narrow for all of them (the first
#: ones stay: host, release, state, health, error rate)
DROP_ORDER = ("ERROR", "P95", "REQ/S", "SHARE")
#: the most an ERROR column takes (longer errors end in "…"; the log has them whole)
ERROR_MAX = 60


def natural_widths(names: Iterable[str], releases: Iterable[str],
                   errors: Iterable[str]) -> list[int]:
    """Every column's width from the data: the longest host name and release text (at least
    the title), the fixed columns, and the longest error (0: no ERROR column)."""
    host_w = max([len("HOST"), *(len(n) for n in names)])
    release_w = max([len("RELEASE"), *(len(r) for r in releases)])
    error_w = max([0, *(len(e) for e in errors)])
    if error_w:
        error_w = max(len("ERROR"), min(ERROR_MAX, error_w))
    return [host_w, release_w] + [w for _, w in FIXED_COLUMNS] + [error_w]


def fit_columns(widths: list[int], width: int) -> list[int]:
    """The indexes of the columns to show in ``width`` cells (one space after each)."""
    shown = [i for i, w in enumerate(widths) if w > 0]
    for title in DROP_ORDER:
        if sum(widths[i] + 1 for i in shown) <= width:
            break
        index = TITLES.index(title)
        if index in shown:
            shown.remove(index)
    return shown

class FleetTable(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor(-1000000000)", "First", show=False),
        Binding("end", "cursor(1000000000)", "Last", show=False),
    ]
    COMPONENT_CLASSES = {"fleet-table--header", "fleet-table--cursor"}
    DEFAULT_CSS = """
    FleetTable {
        height: 1fr;
        overflow-x: hidden;
    }
    FleetTable > .fleet-table--header {
        text-style: bold;
        background: $boost;
    }
    FleetTable > .fleet-table--cursor {
        background: $accent 40%;
    }
    FleetTable:blur > .fleet-table--cursor {
        background: $accent 15%;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._view: RolloutView | None = None
        self._rows_version = -1
        self._figures_version = -1
        self._figures_painted = float("-inf")
        self._cache: LRUCache[tuple[object, ...], Strip] = LRUCache(1024)
        self._widths: list[int] = []
        self._titles: list[str] = []
        #: the indexes (in TITLES) of the columns shown
        self._columns: list[int] = []
        #: the width of the columns shown, one space after each
        self.natural_width = 0
        self._error_w = 0
        self.cursor_row = 0

    # ------------------------------------------------------------------ data

    def show(self, view: RolloutView, changed: Iterable[str] = (), synced: bool = False) -> None:
        self._view = view
        title = (f"Fleet · {len(view.order):,} hosts · {view.on_target:,} on "
                 f"{view.target or '?'}")
        if self.border_title != title:
            self.border_title = title
        if view.rows_version != self._rows_version:
            before = self.natural_width
            self._measure()
            self.refresh(layout=self.natural_width != before)
            return
        changed = changed if isinstance(changed, (set, frozenset)) else set(changed)
        if any(len(view.hosts[n].error or "") > self._error_w for n in changed
               if n in view.hosts) and self._error_w < ERROR_MAX:
            # a new error longer than the ERROR column (or the first: no column yet)
            before = self.natural_width
            self._measure()
            self.refresh(layout=self.natural_width != before)
            return
        if synced:
            self._figures_version = view.figures_version
            self.refresh()
            return
        if view.figures_version != self._figures_version:
            # new traffic figures repaint every line on screen: at most twice a second
            now = view.clock()
            if now - self._figures_painted >= FIGURES_REPAINT_S:
                self._figures_painted = now
                self._figures_version = view.figures_version
                self.refresh()
                return
        changed = changed if isinstance(changed, (set, frozenset)) else set(changed)
        if changed:
            # repaint only the changed lines on screen (a whole repaint costs ~40 lines)
            for index in self._visible_changed(changed):
                self.refresh_line(index + 1)

    def visible_hosts(self) -> tuple[str, ...]:
        """The hosts on the rows shown now (the engine reports traffic figures for them)."""
        if self._view is None:
            return ()
        order = self._view.order
        top = int(self.scroll_offset.y)
        return tuple(order[top:min(len(order), top + max(0, self.size.height - 1))])

    def _visible_changed(self, changed: set[str] | frozenset[str]) -> list[int]:
        assert self._view is not None
        order = self._view.order
        top = int(self.scroll_offset.y)
        bottom = min(len(order), top + max(0, self.size.height - 1))
        return [i for i in range(top, bottom) if order[i] in changed]

    def _natural(self) -> list[int]:
        view = self._view
        assert view is not None
        rows = view.hosts.values()
        current, target = view.current or "-", view.target or "-"
        releases = [current, target, f"{current}>{target}"]
        releases += [f"{r.release or '-'}@{r.slot}" for r in rows if r.slot]
        releases += [f"{r.release or '-'}>{r.heading}" for r in rows
                     if r.heading and r.heading != r.release]
        return natural_widths(view.order, releases, (r.error for r in rows if r.error))

    def _measure(self) -> None:
        view = self._view
        if view is None:
            return
        self._rows_version = view.rows_version
        self._cache.clear()
        width = self.scrollable_content_region.width or self.size.width
        natural = self._natural()
        self.natural_width = sum(w + 1 for w in natural if w > 0)
        shown = fit_columns(natural, width)
        self._columns = shown
        self._widths = [natural[i] for i in shown]
        used = sum(w + 1 for w in self._widths)
        if shown and TITLES[shown[-1]] == "ERROR" and width > used:
            # the error takes what is left of the line (it was cut to ERROR_MAX)
            self._widths[-1] += width - used
        self._titles = [TITLES[i] for i in shown]
        self._error_w = natural[-1]
        self.virtual_size = Size(max(1, min(width, used) if width else used),
                                 len(view.order) + 1)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        """``width: auto`` (a wide terminal): as wide as every column, not the screen."""
        return max(1, self.natural_width)

    def on_resize(self, event: Resize) -> None:
        self._measure()

    # ------------------------------------------------------------------ cursor

    def action_cursor(self, delta: int) -> None:
        if self._view is None or not self._view.order:
            return
        before = self.cursor_row
        self.cursor_row = max(0, min(len(self._view.order) - 1, self.cursor_row + delta))
        top = int(self.scroll_offset.y)
        self._follow_cursor()
        if int(self.scroll_offset.y) == top:
            self.refresh_line(before + 1)
            self.refresh_line(self.cursor_row + 1)
        else:
            self.refresh()

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 2))

    def _follow_cursor(self) -> None:
        visible = max(1, self.size.height - 1)
        top = int(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False)

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y == 0 or self._view is None:
            return
        row = int(self.scroll_offset.y) + offset.y - 1
        if 0 <= row < len(self._view.order):
            self.cursor_row = row
            self.refresh()

    @property
    def cursor_host(self) -> str | None:
        if self._view is None or not self._view.order:
            return None
        return self._view.order[min(self.cursor_row, len(self._view.order) - 1)]

    # ------------------------------------------------------------------ rendering

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width or self.size.width
        base = self.rich_style
        if self._view is None or not self._widths:
            return Strip.blank(width, base)
        if y == 0:
            header = base + self.get_component_rich_style("fleet-table--header")
            header_key = ("header", width, header)
            strip = self._cache.get(header_key)
            if strip is None:
                strip = self._cells([(t, header) for t in self._titles], width, header)
                self._cache[header_key] = strip
            return strip
        index = int(self.scroll_offset.y) + y - 1
        order = self._view.order
        if index >= len(order):
            return Strip.blank(width, base)
        name = order[index]
        row = self._view.hosts[name]
        cursor = index == self.cursor_row
        line_style = base + self.get_component_rich_style("fleet-table--cursor") if cursor \
            else base
        key = (name, row.version, self._figures_version, cursor, width, line_style)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._row(row, width, line_style)
            self._cache[key] = strip
        return strip

    def _row(self, row: HostRow, width: int, base: Style) -> Strip:
        view = self._view
        assert view is not None
        target = view.target
        phase = row.phase
        if phase == "failed":
            style = FAILED
        elif phase in BUSY_PHASES:
            style = ROLLING_BACK if row.mode == "rollback" else BUSY
        elif phase == "pending":
            style = PENDING
        elif phase == "out_of_service":
            style = OUT
        elif row.release == target and phase == "in_service":
            style = ON_TARGET
        else:
            style = PLAIN
        release = row.release or "-"
        if row.slot:
            release += f"@{row.slot}"
        if row.heading and row.heading != row.release and phase in BUSY_PHASES:
            release = f"{row.release or '-'}>{row.heading}"
        state = PHASE_WORDS.get(phase, phase)
        if row.mode == "rollback" and phase in BUSY_PHASES:
            state = "↩ " + state
        if row.healthy is None:
            health, health_style = "-", PENDING
        elif row.healthy:
            health, health_style = "ok", HEALTH_OK
        else:
            health, health_style = "FAIL", HEALTH_BAD
        figures = view.figures(row.name)
        error_rate = figures.error_rate
        cells = [
            (row.name, style), (release, ON_TARGET if row.release == target else PLAIN),
            (state, style), (health, health_style), (fmt_percent(figures.share), PLAIN),
            (fmt_rps(figures.rps), PLAIN),
            (fmt_percent(error_rate, 2), WARN if error_rate else PLAIN),
            (fmt_ms(figures.p95), PLAIN), (row.error or "", FAILED),
        ]
        return self._cells([(cells[i][0], base + cells[i][1]) for i in self._columns], width,
                           base)

    def _cells(self, cells: list[tuple[str, Style]], width: int, base: Style) -> Strip:
        segments = []
        for (text, style), cell_width in zip(cells, self._widths):
            if len(text) > cell_width:
                text = text[:max(0, cell_width - 1)] + "…"
            segments.append(Segment(text.ljust(cell_width), style))
            segments.append(Segment(" ", base))
        return Strip(segments).adjust_cell_length(width, base)
