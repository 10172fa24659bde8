"""The flags screen (``f``): every flag of the app's flag store with its state in each
environment, turned on and off and rolled out from here, with the selected flag's audit trail.

Every store call (``version()``, ``load()``, ``history()``, the changes) runs in a thread
(``asyncio.to_thread``), never on the UI's event loop. A worker polls ``store.version()`` every
``POLL_S`` seconds and reloads when it moved, so a change made anywhere else (the command
line, another TUI, the engine) shows up within a second. Every change asks first, saying
exactly what will change; a change the store refuses (ConfigError) is shown and changes
nothing. Changes are recorded as ``default_actor() + " (tui)"`` with the reason "tui".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Static

from ...errors import ConfigError, PolicyRefused, StoreError
from ...flags import edit
from ...flags.describe import targeting, true_variant
from ...flags.model import Flag, FlagSet
from ...flags.store import AuditEntry, FlagStore, default_actor, redact
from ..messages import RolloutUpdated
from ..widgets import RolloutHeader
from .dialog import ChoiceDialog, choice

if TYPE_CHECKING:
    from ..app import UpgraderApp

#: seconds between two reads of the store's version
POLL_S = 0.5
#: what + and - add to / take from a roll-out percentage
PERCENT_STEP = 5
#: audit entries shown for the selected flag
HISTORY_LIMIT = 30
#: appended to ``default_actor()`` for changes made here
ACTOR_SUFFIX = " (tui)"
REASON = "tui"
DESCRIPTION_WIDTH = 56
#: narrower than this, the DESCRIPTION column goes (a narrow terminal)
MIN_DESCRIPTION = 16


def tui_actor() -> str:
    """Who changes made on this screen are recorded as: ``$USER@host (tui)``."""
    return default_actor() + ACTOR_SUFFIX


# ---------------------------------------------------------------------------------------------
# words


def fmt_pct(value: float | None) -> str:
    return "none" if value is None else f"{value:g} %"


def _number(value: float) -> float:
    """25.0 -> 25 (the flags file keeps whole percentages as integers)."""
    value = round(float(value), 2)
    return int(value) if value.is_integer() else value


def _variant(flag: Flag, name: str) -> str:
    value = flag.variants.get(name)
    if isinstance(value, (bool, int, float, str)) and not (
            isinstance(value, str) and value == name):
        return f"'{name}' ({json.dumps(value)})"
    return f"'{name}'"


def percent_rules(flag: Flag, environment: str) -> list[int]:
    """Indexes of the flag's rules with a ``percent`` in ``environment``."""
    return [i for i, rule in enumerate(flag.env(environment).rules) if rule.percent is not None]




def state_cell(flag: Flag, environment: str, selected: bool = False) -> Text:
    """``on`` / ``off``, with the roll-out percentage of a percentage rule (or ``split`` for
    a weighted one)."""
    config = flag.env(environment)
    text = Text()
    if config.enabled:
        text.append("● on", style="bold green" if selected else "green")
    else:
        text.append("○ off", style="bold red" if selected else "dim")
    found = percent_rules(flag, environment)
    if len(found) == 1:
        text.append(f" {config.rules[found[0]].percent:g}%",
                    style="bold yellow" if config.enabled else "dim yellow")
    elif len(found) > 1:
        text.append(" " + "/".join(f"{config.rules[i].percent:g}%" for i in found),
                    style="yellow" if config.enabled else "dim yellow")
    elif any(rule.rollout for rule in config.rules):
        text.append(" split", style="yellow" if config.enabled else "dim yellow")
    return text


def detail_text(flag: Flag, environment: str) -> Text:
    config = flag.env(environment)
    text = Text()
    text.append(flag.key, style="bold")
    text.append(f" in {environment}: ")
    if config.enabled:
        text.append("ON", style="bold green")
        text.append(f" · serves {_variant(flag, flag.default_in(environment))} by default")
        rules = targeting(flag, environment)
        if rules:
            text.append(f" · {rules}")
    else:
        text.append("OFF", style="bold red")
        text.append(f" · everyone gets {_variant(flag, flag.off_in(environment))}")
    extra = [f"kind {flag.kind}"]
    if flag.tags:
        extra.append("tags " + ", ".join(flag.tags))
    if flag.schema:
        extra.append(f"schema {flag.schema}")
    text.append("\n" + " · ".join(extra), style="dim")
    return text


def toggle_text(flagset: FlagSet, flag: Flag, environment: str, on: bool) -> str:
    """What turning ``flag`` on / off in ``environment`` does, first line first:
    "turn new-checkout OFF in production: users get variant 'off'"."""
    key = flag.key
    if not on:
        lines = [f"turn {key} OFF in {environment}: users get variant "
                 f"'{flag.off_in(environment)}'"]
        dependents = [f.key for f in flagset.flags.values()
                      if any(p.flag == key for p in f.prerequisites)
                      and f.env(environment).enabled]
        if dependents:
            lines.append(f"{', '.join(dependents)} need{'s' if len(dependents) == 1 else ''} "
                         f"{key}: they serve their off variant too.")
        return "\n\n".join(lines)
    default = flag.default_in(environment)
    rules = targeting(flag, environment)
    if rules:
        first = (f"turn {key} ON in {environment}: its targeting applies ({rules}); "
                 f"everyone else gets variant '{default}'")
    else:
        first = f"turn {key} ON in {environment}: users get variant '{default}'"
    return first + f"\n\n(off, they get '{flag.off_in(environment)}')"


def rollout_text(flag: Flag, environment: str, old: float | None, new: float) -> str:
    """What setting the flag's roll-out percentage to ``new`` does."""
    key = flag.key
    found = percent_rules(flag, environment)
    config = flag.env(environment)
    if found:
        rule = config.rules[found[0]]
        name = rule.name or f"rules[{found[0]}]"
        variant = rule.variant or true_variant(flag) or "?"
        text = (f"set the roll-out of {key} in {environment} to {fmt_pct(new)} "
                f"(now {fmt_pct(old)}): rule {name} serves variant '{variant}' to "
                f"{fmt_pct(new)} of the users it matches")
    else:
        variant = true_variant(flag) or "?"
        text = (f"start a roll-out of {key} in {environment} at {fmt_pct(new)}: a new rule "
                f"'rollout' serves variant '{variant}' to {fmt_pct(new)} of the users its "
                f"other rules do not serve")
    if old is not None and new > old:
        text += "\n\nRaising the percentage only adds users: those who have it keep it."
    elif old is not None and new < old:
        text += "\n\nLowering the percentage takes it away from some users who have it now."
    if not config.enabled:
        text += (f"\n\n{key} is OFF in {environment}: the roll-out applies once it is "
                 f"turned on.")
    return text


def fmt_ts(ts: str) -> str:
    """``2026-11-29T05:06:26.410Z`` -> ``2026-11-29 05:06:26Z`` (UTC, as stored)."""
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def change_words(entry: AuditEntry) -> str:
    """``old -> new`` of one audit entry, in words."""
    old, new = entry.old, entry.new
    if entry.action in ("enable", "disable"):
        def word(value: Any) -> str:
            return "none" if value is None else ("on" if value else "off")
        return f"{word(old)} -> {word(new)}"
    if entry.action == "rollout":
        return f"{fmt_pct(old)} -> {fmt_pct(new)}"
    if entry.action == "default":
        return f"{old} -> {new}"
    if entry.action in ("import", "change"):
        if old is None:
            return "added"
        if new is None:
            return "removed"
        return "definition changed"
    return f"{_short(old)} -> {_short(new)}"


def history_table(entries: list[AuditEntry]) -> Table:
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False,
                  header_style="bold")
    table.add_column("TIME (UTC)", no_wrap=True)
    table.add_column("VER", justify="right", no_wrap=True)
    table.add_column("ACTOR", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("ACTION", no_wrap=True)
    table.add_column("ENV", no_wrap=True)
    table.add_column("OLD -> NEW", no_wrap=True, overflow="ellipsis", max_width=36)
    table.add_column("REASON", ratio=1, no_wrap=True, overflow="ellipsis")
    for entry in entries:
        style = {"enable": "green", "disable": "red", "rollout": "yellow"}.get(entry.action, "")
        table.add_row(fmt_ts(entry.ts), f"v{entry.version}", entry.actor,
                      Text(entry.action, style=style), entry.environment or "all",
                      change_words(entry), entry.reason or "")
    return table


# ---------------------------------------------------------------------------------------------
# dialogs


class FlagChangeDialog(ChoiceDialog[bool]):
    """Dismissed with True (apply the change) or False (cancel)."""

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="flag-change-box", classes="dialog"):
            yield Static(self.text, id="flag-change-text")
            with Horizontal(classes="buttons"):
                yield choice("[A]pply", variant="warning", id="confirm")
                yield choice("[C]ancel", variant="primary", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#flag-change-box").border_title = self.title_text
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


def parse_percent(text: str) -> float:
    """``"25"``, ``"12.5"``, ``"30 %"`` -> the number (range checks are the store's)."""
    value = text.strip().removesuffix("%").strip()
    try:
        return _number(float(value))
    except ValueError:
        raise ValueError(f"expected a percentage like 25 or 12.5, got {text!r}") from None


class PercentDialog(ChoiceDialog[float | None]):
    """Asks for an exact roll-out percentage; dismissed with the number or None. The input
    has the focus (Enter submits it: the default); letters type into it, so its choices are
    Enter and Escape."""

    def __init__(self, key: str, environment: str, current: float | None) -> None:
        super().__init__()
        self.key = key
        self.environment = environment
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="percent-box", classes="dialog"):
            yield Static(f"The roll-out percentage of {self.key} in {self.environment} "
                         f"(now {fmt_pct(self.current)}), 0 to 100:")
            yield Input(value="" if self.current is None else f"{self.current:g}",
                        placeholder="percent", id="percent-input")
            yield Static("", id="percent-error")
            yield Static("Enter: next (you confirm the change)  ·  Escape: cancel",
                         classes="dim-hint")

    def on_mount(self) -> None:
        self.query_one("#percent-box").border_title = "Roll-out percentage"
        self.query_one("#percent-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            value = parse_percent(event.value)
        except ValueError as exc:
            self.query_one("#percent-error", Static).update(Text(str(exc), style="bold red"))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


# ---------------------------------------------------------------------------------------------
# the screen


class FlagsScreen(Screen[None]):
    """The flags of ``store``: a table (key, kind, state in each environment, description),
    the selected flag in the selected environment, and its recent history."""

    WANTS_UPDATES = True
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("f,q", "close", "Back", show=False),
        Binding("e", "next_environment", "Environment"),
        Binding("space", "toggle", "Toggle", key_display="space"),
        Binding("t", "toggle", "Toggle", show=False),
        Binding("plus", "rollout(1)", "Roll-out +5", key_display="+"),
        Binding("minus", "rollout(-1)", "Roll-out -5", key_display="-"),
        Binding("percent_sign", "exact_percent", "Set %", key_display="%"),
    ]

    def __init__(self, store: FlagStore) -> None:
        super().__init__()
        self.store = store
        #: the flag set on screen, and its version (None until the first load)
        self.flagset: FlagSet | None = None
        self.version: int | None = None
        self.environment: str | None = None
        #: the flag whose history is on screen, and that history
        self.history_key: str | None = None
        self.history: list[AuditEntry] = []
        self._row_keys: list[str] = []
        self._columns: tuple[Any, ...] = ()
        self._wake: asyncio.Event | None = None
        self._read_failed = False
        self._last_bug = ""

    def compose(self) -> ComposeResult:
        yield RolloutHeader(id="flags-rollout")
        yield Static(id="flags-title")
        table: DataTable[Any] = DataTable(id="flags-table", cursor_type="row",
                                          zebra_stripes=True)
        yield table
        yield Static(id="flag-detail")
        with VerticalScroll(id="flag-history"):
            yield Static(id="flag-history-body")
        yield Footer()

    def on_mount(self) -> None:
        app = cast("UpgraderApp", self.app)
        self.query_one(RolloutHeader).show(app.view)
        self.query_one("#flags-table").border_title = "Flags"
        self.query_one("#flag-history").border_title = "History"
        self._show_title()
        self.query_one("#flag-detail", Static).update(Text("loading the flags…", style="dim"))
        self.query_one(DataTable).focus()
        self._wake = asyncio.Event()
        self._watch()

    def on_rollout_updated(self, message: RolloutUpdated) -> None:
        self.query_one(RolloutHeader).show(message.view)

    # ------------------------------------------------------------------ reading the store

    @work(exclusive=True, group="flags-watch")
    async def _watch(self) -> None:
        """Read the store's version every POLL_S (or at once when woken); reload on a move."""
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                await self.reload()
            except Exception as exc:
                if repr(exc) != self._last_bug:       # once, not every POLL_S
                    self._last_bug = repr(exc)
                    self.app.notify(f"flags screen: {exc!r}", severity="error", timeout=10)
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass

    async def reload(self) -> None:
        """Load the flag set (and the selected flag's history) if the version moved."""
        store, known = self.store, self.version

        def read() -> tuple[int, FlagSet | None]:
            version = store.version()
            if version == known:
                return version, None
            flagset = store.load()
            return flagset.version, flagset

        try:
            version, flagset = await asyncio.to_thread(read)
        except Exception as exc:          # StoreError, or a stored flag set that is invalid
            if not self._read_failed:
                self._read_failed = True
                self.notify(f"cannot read the flag store: {exc}", severity="error",
                            timeout=10)
            return
        if self._read_failed:
            self._read_failed = False
            self.notify("the flag store reads again")
        if flagset is None or not self.is_mounted:
            return
        self.flagset, self.version = flagset, version
        if self.environment not in flagset.environments:
            envs = flagset.environments
            self.environment = ("production" if "production" in envs
                                else envs[0] if envs else None)
        self._show_flags()
        key = self.selected_key()
        if key is not None:
            await self._read_history(key)

    async def _read_history(self, key: str) -> None:
        try:
            entries = await asyncio.to_thread(self.store.history, key, HISTORY_LIMIT)
        except Exception as exc:
            self.notify(f"cannot read the history of {key}: {exc}", severity="error")
            return
        if self.is_mounted and key == self.selected_key():
            self._show_history(key, entries)

    @work(exclusive=True, group="flags-history")
    async def _load_history(self, key: str) -> None:
        await self._read_history(key)

    # ------------------------------------------------------------------ drawing

    def _show_title(self) -> None:
        text = Text()
        text.append(" Feature flags", style="bold")
        text.append(f" · store {redact(self.store.spec)}")
        if self.version is not None:
            text.append(f" · version {self.version}")
        if self.environment is not None and self.flagset is not None:
            text.append(" · environment ")
            text.append(f" {self.environment} ", style="bold reverse yellow")
            hint = f" (e: next of {', '.join(self.flagset.environments)})"
            if text.cell_len + len(hint) >= self.app.size.width:
                hint = " (e: next)"
            if text.cell_len + len(hint) < self.app.size.width:
                text.append(hint, style="dim")
        self.query_one("#flags-title", Static).update(text)

    def _show_flags(self) -> None:
        flagset, env = self.flagset, self.environment
        if flagset is None:
            return
        table = self.query_one(DataTable)
        keep = self.selected_key()
        row = table.cursor_row
        self._row_keys = list(flagset.flags)
        rows = [(Text(flag.key, style="bold"), Text(str(flag.kind), style="cyan"),
                 *(state_cell(flag, name, name == env) for name in flagset.environments))
                for flag in flagset.flags.values()]
        fit = self._description_width(rows, flagset.environments, env)
        described = fit >= MIN_DESCRIPTION
        columns = (tuple(flagset.environments), env, described)
        if columns != self._columns:
            table.clear(columns=True)
            table.add_column("KEY", key="key")
            table.add_column("KIND", key="kind")
            for name in flagset.environments:
                label = (Text(f"▶ {name}", style="bold yellow") if name == env
                         else Text(name))
                table.add_column(label, key=f"env:{name}")
            if described:
                table.add_column("DESCRIPTION", key="description")
            self._columns = columns
        else:
            table.clear()
        for flag, cells in zip(flagset.flags.values(), rows):
            description = flag.description
            if len(description) > fit:
                description = description[:max(0, fit - 1)] + "…"
            table.add_row(*cells, *([Text(description, style="dim")] if described else []),
                          key=flag.key)
        if keep is not None and keep in flagset.flags:
            table.move_cursor(row=self._row_keys.index(keep), animate=False)
        elif self._row_keys:
            table.move_cursor(row=min(row, len(self._row_keys) - 1), animate=False)
        table.border_title = f"Flags · {len(self._row_keys)}"
        self._show_title()
        self._show_detail()
        if not flagset.flags:
            self.query_one("#flag-detail", Static).update(Text(
                "the store holds no flags: upgrader flags import FILE", style="dim"))

    def _description_width(self, rows: list[tuple[Text, ...]], environments: tuple[str, ...]
                           | list[str], env: str | None) -> int:
        """What is left of the table's width for DESCRIPTION once the other columns (as wide
        as their longest cell, one space each side) have theirs: the table never runs wider
        than the screen, a long description ends in "…"."""
        table = self.query_one(DataTable)
        titles = ["KEY", "KIND"] + [f"▶ {n}" if n == env else n for n in environments]
        used = 0
        for column, title in enumerate(titles):
            longest = max([len(title), *(row[column].cell_len for row in rows)])
            used += longest + 2 * table.cell_padding
        width = table.scrollable_content_region.width or self.app.size.width - 2
        # the description's own padding, and a scrollbar's width in case the rows overflow
        return min(DESCRIPTION_WIDTH, width - used - 2 * table.cell_padding - 2)

    def on_resize(self) -> None:
        if self.flagset is not None and self._columns:
            self._columns = ()           # redraw the rows for the new width
            self._show_flags()

    def _show_detail(self) -> None:
        flag = self.selected_flag()
        detail = self.query_one("#flag-detail", Static)
        if flag is None or self.environment is None:
            detail.update("")
            return
        detail.update(detail_text(flag, self.environment))

    def _show_history(self, key: str, entries: list[AuditEntry]) -> None:
        self.history_key, self.history = key, entries
        box = self.query_one("#flag-history")
        box.border_title = f"History · {key}"
        body = self.query_one("#flag-history-body", Static)
        if not entries:
            body.update(Text("no changes recorded", style="dim"))
        else:
            body.update(history_table(entries))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()
        key = event.row_key.value
        if key is not None and key != self.history_key:
            self._load_history(key)

    # ------------------------------------------------------------------ selection

    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not self._row_keys or table.row_count == 0:
            return None
        row = table.cursor_row
        return self._row_keys[row] if 0 <= row < len(self._row_keys) else None

    def selected_flag(self) -> Flag | None:
        key = self.selected_key()
        if key is None or self.flagset is None:
            return None
        return self.flagset.flags.get(key)

    def _selection(self) -> tuple[Flag, str] | None:
        flag = self.selected_flag()
        if flag is None or self.environment is None:
            self.notify("no flag selected", severity="warning")
            return None
        return flag, self.environment

    # ------------------------------------------------------------------ keys

    def action_close(self) -> None:
        self.dismiss(None)

    def action_next_environment(self) -> None:
        if self.flagset is None or not self.flagset.environments:
            return
        envs = self.flagset.environments
        index = envs.index(self.environment) if self.environment in envs else -1
        self.environment = envs[(index + 1) % len(envs)]
        self._show_flags()

    def action_toggle(self) -> None:  # type: ignore[override]  # the screen's own action
        selection = self._selection()
        if selection is None or self.flagset is None:
            return
        flag, env = selection
        on = not flag.env(env).enabled
        key = flag.key
        text = toggle_text(self.flagset, flag, env, on)
        store = self.store

        def change() -> int:
            return store.set_enabled(key, env, on, actor=tui_actor(), reason=REASON)

        self._ask(f"Turn {key} {'ON' if on else 'OFF'}?", text, change,
                  f"{key}: {'ON' if on else 'OFF'} in {env}", key)

    def action_rollout(self, direction: int) -> None:
        selection = self._selection()
        if selection is None:
            return
        flag, env = selection
        current = edit.rollout_percent(flag, env)
        if current is None and direction < 0:
            self.notify(f"{flag.key} has no percentage roll-out in {env}", severity="warning")
            return
        base = current if current is not None else 0
        new = _number(min(100.0, max(0.0, base + direction * PERCENT_STEP)))
        if current is not None and new == current:
            self.notify(f"{flag.key} is already rolled out to {fmt_pct(current)} in {env}",
                        severity="warning")
            return
        self._propose_rollout(flag.key, env, new)

    def action_exact_percent(self) -> None:
        selection = self._selection()
        if selection is None:
            return
        flag, env = selection

        def chosen(value: float | None) -> None:
            if value is not None:
                self._propose_rollout(flag.key, env, value)

        self.app.push_screen(PercentDialog(flag.key, env, edit.rollout_percent(flag, env)),
                             chosen)

    # ------------------------------------------------------------------ changes

    @work(exclusive=True, group="flags-propose")
    async def _propose_rollout(self, key: str, env: str, percent: float) -> None:
        """Check the change against the flag set on screen (in a thread: a pure edit); an
        invalid one is shown and goes no further, a valid one is confirmed, then applied."""
        flagset = self.flagset
        if flagset is None:
            return
        try:
            await asyncio.to_thread(edit.set_rollout, flagset, key, env, percent)
        except Exception as exc:
            self.notify(f"{key}: not changed: {exc}", severity="error", timeout=10)
            return
        flag = flagset.flags[key]
        text = rollout_text(flag, env, edit.rollout_percent(flag, env), percent)
        store = self.store

        def change() -> int:
            return store.set_rollout(key, env, percent, actor=tui_actor(), reason=REASON)

        self._ask(f"Roll {key} out to {fmt_pct(percent)}?", text, change,
                  f"{key}: roll-out {fmt_pct(percent)} in {env}", key)

    def _ask(self, title: str, text: str, change: Callable[[], int], done: str,
             key: str) -> None:
        def confirmed(yes: bool | None) -> None:
            if yes:
                # an app worker: the change is reported even if this screen closes meanwhile
                self.app.run_worker(self._apply(change, done, key), group="flags-change")

        self.app.push_screen(FlagChangeDialog(title, text), confirmed)

    async def _apply(self, change: Callable[[], int], done: str, key: str) -> None:
        store, app = self.store, self.app

        def run() -> tuple[int, int]:
            before = store.version()
            return before, change()

        try:
            before, version = await asyncio.to_thread(run)
        except ConfigError as exc:
            app.notify(f"{key}: not changed: {exc}", severity="error", timeout=10)
            return
        except StoreError as exc:
            app.notify(f"{key}: the store failed: {exc}", severity="error", timeout=10)
            return
        except PolicyRefused as exc:       # a flag whose schema is not live
            app.notify(f"{key}: refused: {exc}", severity="error", timeout=10)
            return
        except Exception as exc:
            app.notify(f"{key}: change failed: {exc}", severity="error", timeout=10)
            return
        if version == before:
            app.notify(f"{done} (already so: nothing changed)")
        else:
            app.notify(f"{done} (version {version})")
        if self._wake is not None:
            self._wake.set()
