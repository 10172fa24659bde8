"""The library entry point: open a fleet's providers, journal and lock, and drive the engine.

    fleet = upgrader.load_fleet("fleet.toml")
    async with upgrader.Rollout(fleet) as rollout:
        task = asyncio.create_task(rollout.run())
        async for event in rollout.events():
            ...                       # or rollout.pause(), rollout.abort(rollback=True), ...
        result = await task
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from .clock import Clock
from .engine.core import Engine, Providers, RolloutResult
from .engine.inventory import Assessment, Fixes, Problem, refusal_text, take_inventory
from .engine.resume import replay
from .errors import (
    ConfigError,
    FlagSchemaRefused,
    InventoryRefused,
    JournalError,
    PolicyRefused,
    ProviderError,
    UpgraderError,
)
from .events import Event
from .model import Fleet
from .plan import Pause, Plan, Verify, with_release_gates
from .providers.base import ProviderContext

#: the state folder before issue 12: relative to the working directory (still read, see
#: :func:`legacy_state_dir`)
OLD_STATE_DIR = Path(".upgrader/state")


def user_state_home() -> Path:
    """``$XDG_STATE_HOME/upgrader``, else ``~/.local/state/upgrader``."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base).expanduser() if Path(base).is_absolute() else \
        Path("~/.local/state").expanduser()
    return root / "upgrader"


def fleet_identity(fleet: Fleet) -> str:
    """A short hash of what identifies the fleet's machines: its balancer (kind and settings
    but secrets) and its hosts (name, address, port). Two fleet files for the same machines
    share it, wherever they are; the same name for another fleet does not."""
    import hashlib
    import json

    settings = {key: value for key, value in fleet.balancer.settings.items()
                if not any(word in key for word in ("token", "password", "secret"))}
    what = {"balancer": [fleet.balancer.kind, settings],
            "hosts": sorted([h.name, h.address, h.port] for h in fleet.hosts)}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_state_dir(fleet: Fleet | None = None) -> Path:
    """``$UPGRADER_STATE_DIR``, else a per-user folder keyed by the fleet's identity
    (``~/.local/state/upgrader/<fleet>-<identity>``): the same whatever the working
    directory. Without a fleet: the per-user folder itself."""
    configured = os.environ.get("UPGRADER_STATE_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    home = user_state_home()
    if fleet is None:
        return home
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in fleet.name) or "fleet"
    return home / f"{safe}-{fleet_identity(fleet)}"


def legacy_state_dir(fleet: Fleet, *, unfinished_only: bool) -> Path | None:
    """``./.upgrader/state`` (the old default) when it journals a rollout of ``fleet`` (an
    unfinished one with ``unfinished_only``) and ``$UPGRADER_STATE_DIR`` is not set."""
    if os.environ.get("UPGRADER_STATE_DIR"):
        return None
    old = OLD_STATE_DIR.resolve()
    path = old / "journal.sqlite"
    if not path.is_file() or old == default_state_dir(fleet):
        return None
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            sql = "SELECT 1 FROM rollouts WHERE fleet=?" + (
                " AND status='running'" if unfinished_only else "") + " LIMIT 1"
            found = conn.execute(sql, (fleet.name,)).fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return old if found else None


def compile_plan(fleet: Fleet) -> Plan:
    """The strategy of ``fleet`` compiled into a Plan (pure, touches nothing)."""
    from . import strategies

    plan = strategies.get(fleet.strategy.kind).compile(fleet, fleet.strategy.params)
    plan = with_release_gates(
        plan, pre_release_test=fleet.commands.pre_release_test is not None,
        migration=fleet.schema.migration_name if fleet.schema is not None else None)
    if fleet.windows is not None:
        from .policy import with_window_gates

        gated: Plan = with_window_gates(plan)   # policy types its plans loosely (Any)
        return gated
    return plan


def compress(fleet: Fleet, plan: Plan, speed: float) -> tuple[Fleet, Plan]:
    """Divide pauses and verification holds by ``speed`` (demo, rehearsals). The analysis
    interval is left alone (a shorter window judges fewer requests), and so are timeouts:
    a real process still needs its real time."""
    if speed == 1:
        return fleet, plan
    steps = []
    for step in plan.steps:
        if isinstance(step, Pause) and step.duration is not None:
            step = dataclasses.replace(step, duration=step.duration / speed)
        elif isinstance(step, Verify):
            step = dataclasses.replace(step, for_=step.for_ / speed)
        steps.append(step)
    verify = dataclasses.replace(fleet.verify, for_=fleet.verify.for_ / speed)
    return dataclasses.replace(fleet, verify=verify), dataclasses.replace(plan, steps=tuple(steps))


async def open_providers(fleet: Fleet, plugins: Any, state_dir: str | None = None) -> Providers:
    """Create the fleet's providers through the plugin registry."""
    opened: list[Any] = []
    try:
        transport = plugins.create("transport", fleet.transport,
                                   ProviderContext(fleet=fleet, state_dir=state_dir))
        opened.append(transport)
        context = ProviderContext(fleet=fleet, transport=transport, state_dir=state_dir)
        balancer = plugins.create("balancer", fleet.balancer, context)
        opened.append(balancer)
        health = plugins.create("health", fleet.health, context)
        opened.append(health)
        snapshot = plugins.create("snapshot", fleet.snapshot, context) if fleet.snapshot else None
        notifiers = tuple(plugins.create("notifier", spec, context) for spec in fleet.notifiers)
        metrics = open_metric_sources(fleet, plugins, ProviderContext(
            fleet=fleet, transport=transport, state_dir=state_dir, balancer=balancer), opened)
        flags = None
        if fleet.flags is not None:
            from .flags.switch import StoreFlagSwitch

            flags = StoreFlagSwitch(
                fleet.flags.store, fleet.flags.environment,
                schema_database=fleet.schema.database if fleet.schema is not None else None)
            opened.append(flags)
        schema = None
        if fleet.schema is not None:
            from .schema.switch import MigrationSwitch

            schema = MigrationSwitch(fleet.schema.database, fleet.schema.migration)
            opened.append(schema)
    except BaseException:
        for provider in opened:
            await provider.aclose()
        raise
    return Providers(transport, balancer, health, snapshot, notifiers, flags, schema, metrics)


def open_metric_sources(fleet: Fleet, plugins: Any, context: ProviderContext,
                        opened: list[Any]) -> dict[str, Any]:
    """One metric source per source kind and settings (``[[verify.metrics]]``, else the
    balancer's two defaults), looked up through ``register_metric_sources``; each metric
    checked by its source (a ``ConfigError`` naming the metric's key and line)."""
    from .model import ProviderSpec, verify_metrics
    from .tomlsource import line_in_file

    sources: dict[str, Any] = {}
    by_spec: dict[str, Any] = {}
    explicit = bool(fleet.verify.metrics)
    for index, metric in enumerate(verify_metrics(fleet.verify)):
        where = f"verify.metrics[{index}]" if explicit else "verify"
        key = repr((metric.source, sorted(metric.settings.items())))
        try:
            source = by_spec.get(key)
            if source is None:
                source = plugins.create("metrics", ProviderSpec(kind=metric.source,
                                                                settings=dict(metric.settings)),
                                        context)
                opened.append(source)
                by_spec[key] = source
            source.check(metric)
        except ConfigError as exc:
            sub = f"{where}.{exc.key.rpartition('.')[2]}" if exc.key and explicit else where
            path = tuple(int(p) if p.isdigit() else p
                         for p in sub.replace("[", ".").replace("]", "").split("."))
            line = line_in_file(fleet.source, path) if fleet.source else None
            raise ConfigError(f"metric {metric.name!r} ({metric.source}): {exc.message}",
                              file=fleet.source, key=sub, line=line) from exc
        sources[metric.name] = source
    return sources


def check_flag_schemas(fleet: Fleet, plan: Plan) -> None:
    """Refuse (:class:`~upgrader.errors.FlagSchemaRefused`, exit 3) before anything changes a
    plan that turns on a flag whose ``schema`` is not live in the fleet's ``[schema]
    database`` and that the plan's own schema change does not make live first."""
    from .plan import Gate, SetFlag

    if fleet.flags is None or fleet.schema is None:
        return
    keys = [s.key for s in plan.steps if isinstance(s, SetFlag) and s.on]
    if not keys:
        return
    from .flags.schemaguard import read_live_schema
    from .flags.store import open_store

    with open_store(fleet.flags.store) as store:
        flagset = store.load()
    wanting = {k: flagset.flags[k].schema for k in keys
               if k in flagset.flags and flagset.flags[k].schema is not None}
    if not wanting:
        return
    live = read_live_schema(fleet.schema.database)
    versions = live.versions()
    if any(isinstance(s, Gate) and s.gate == "schema_start" for s in plan.steps):
        name = fleet.schema.migration_name
        versions |= {name, name.split("_", 1)[0], fleet.releases.target}
    for key, needs in wanting.items():
        assert needs is not None
        if needs not in versions:
            raise FlagSchemaRefused(key, needs=needs, live=live.describe(),
                                    database=live.database,
                                    environment=fleet.flags.environment)


def inventory_applies(fleet: Fleet, setting: bool | None = None) -> bool:
    """Whether a rollout of ``fleet`` reads its inventory first: ``setting`` when given;
    otherwise when the fleet has a ``current`` command to read releases with and a transport
    that runs commands (the ``noop`` transport of estimates and benchmarks runs nothing)."""
    if setting is not None:
        return setting
    return fleet.commands.current is not None and fleet.transport.kind != "noop"


async def _open_checked(fleet: Fleet, plugins: Any, state_dir: str | None = None) -> Providers:
    """``open_providers``; for a lab fleet, providers that cannot be opened (no token file,
    no lab folder) mean that no lab is up where the fleet looks: a refusal naming the fix."""
    try:
        return await open_providers(fleet, plugins, state_dir)
    except ConfigError as exc:
        if fleet.lab is None:
            raise
        problem = Problem(None, f"a lab up in {fleet.lab.dir}", f"none ({exc})",
                          Fixes.for_fleet(fleet).balancer)
        raise InventoryRefused(f"fleet {fleet.name}: no lab is up where it looks; nothing "
                               f"was touched\n  {problem.text()}", [problem.to_json()]) from None


async def inspect_fleet(fleet: Fleet, plugins: Any = None) -> Assessment:
    """The inventory of ``fleet`` (``upgrader check``): its providers opened, the fleet read,
    nothing changed, no lock or journal."""
    if plugins is None:
        from .plugins import Plugins

        plugins = Plugins()
    _register_secrets(fleet, None)
    providers = await _open_checked(fleet, plugins)
    try:
        return await take_inventory(fleet, providers.transport, providers.balancer)
    finally:
        await providers.aclose()


def _register_secrets(fleet: Fleet, state: str | None) -> None:
    """Tell the redaction helper every secret this rollout knows, before anything is logged,
    emitted or journaled: provider settings, the flag store's and the state's passwords,
    secret-named environment variables and the hosts' secret vars."""
    from . import redact

    specs = [fleet.transport, fleet.balancer, fleet.health, fleet.snapshot, *fleet.notifiers]
    redact.register_all(
        urls=[state, fleet.flags.store if fleet.flags is not None else None],
        settings=[spec.settings for spec in specs if spec is not None], hosts=fleet.hosts)


class Rollout:
    """One rollout of one fleet: lock, journal, providers and engine, as an async context."""

    def __init__(self, fleet: Fleet, plan: Plan | None = None, *, plugins: Any = None,
                 clock: Clock | None = None, state_dir: str | Path | None = None,
                 recover: bool = False, interactive: bool = False, journal: bool = True,
                 providers: Providers | None = None,
                 observers: Iterable[Callable[[Event], None]] = (),
                 metrics_interval: float | None = 1.0, state: str | None = None,
                 override_window: str | None = None, inventory: bool | None = None,
                 fleet_lock: bool | None = None,
                 lock_clock: Callable[[], float] | None = None) -> None:
        """:param inventory: read the fleet before the first step and refuse a fleet unlike
            its file (``InventoryRefused``, exit 3, before anything is journaled); hosts
            already on the target and in service are left alone. None (default): when the
            fleet has a ``current`` command and a transport that runs commands (not
            ``noop``); never on resume, which reconciles instead.
        :param fleet_lock: take the lock on the fleet itself (the balancer's, or lock files
            on the hosts; see upgrader.fleetlock) before anything changes. Default: when the
            rollout opens its own providers and keeps a journal.
        :param lock_clock: the wall clock the fleet lock's lease is judged on (tests).
        :param state: a ``postgresql://`` URL for the journal and the fleet lock, shared by
            every controller (default ``$UPGRADER_STATE``; unset: SQLite in ``state_dir``).
            ``state_dir`` still holds this controller's control socket and token."""
        from .state import resolve_state

        self.fleet = fleet
        self.state = resolve_state(state)
        self.plan = plan
        self._plugins = plugins
        self._clock = clock
        self.state_dir = Path(state_dir) if state_dir else default_state_dir(fleet)
        self._recover = recover
        self._interactive = interactive
        self._use_journal = journal
        self._providers = providers
        self._own_providers = providers is None
        self._observers = list(observers)
        self._metrics_interval = metrics_interval
        #: push outside the fleet's deploy windows, for this reason (journaled)
        self._override_window = override_window
        self._inventory = inventory
        #: what the inventory found (None: not taken)
        self.inventory: Assessment | None = None
        self._lock: Any = None
        #: the lock on the fleet itself (upgrader.fleetlock); None: injected providers and
        #: ``fleet_lock`` not asked for, or no journal
        self.fleet_lock: Any = None
        self._take_fleet_lock = fleet_lock
        self._lock_clock = lock_clock
        self.journal: Any = None
        self.engine: Engine | None = None

    async def __aenter__(self) -> Rollout:
        try:
            await self._open()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _open(self) -> None:
        resume_state = None
        _register_secrets(self.fleet, self.state)
        if self._use_journal:
            from .state import fleet_lock, open_journal

            lock = fleet_lock(self.state, self.state_dir, self.fleet.name)
            try:
                await asyncio.to_thread(lock.acquire)
            except PolicyRefused as exc:
                raise PolicyRefused(await self._with_rollout(str(exc))) from None
            self._lock = lock
            # disk and network work off the event loop (a long journal takes a moment to read)
            self.journal = journal = await asyncio.to_thread(open_journal, self.state,
                                                             self.state_dir)
            if hasattr(journal, "fence_with"):
                journal.fence_with(lock)
            unfinished = await asyncio.to_thread(journal.unfinished, self.fleet.name)
            if self._recover:
                if unfinished is None:
                    raise JournalError(f"fleet {self.fleet.name} has no unfinished rollout "
                                       "to resume")
                if (unfinished.current, unfinished.target) != (
                        self.fleet.releases.current, self.fleet.releases.target):
                    raise PolicyRefused(
                        f"the unfinished rollout {unfinished.id} goes {unfinished.current} -> "
                        f"{unfinished.target}, but the fleet file now says "
                        f"{self.fleet.releases.current} -> {self.fleet.releases.target}; put "
                        "the releases back to resume it" + (
                            " (a roll-back `upgrader rollback` started: that command finishes "
                            "it)" if (unfinished.current, unfinished.target) == (
                                self.fleet.releases.target, self.fleet.releases.current)
                            else ""))
                self.plan = Plan.from_json(unfinished.plan)
                entries = await asyncio.to_thread(journal.entries, unfinished.id)
                resume_state = replay(unfinished, entries, self.fleet)
                await asyncio.to_thread(journal.claim, unfinished.id)
            elif unfinished is not None:
                raise PolicyRefused(
                    f"fleet {self.fleet.name} has an unfinished rollout {unfinished.id} "
                    f"({unfinished.current} -> {unfinished.target}, started by "
                    f"{unfinished.controller}); run `upgrader resume` to finish it")
        elif self._recover:
            raise ConfigError("resume needs the journal")
        if self.plan is None:
            self.plan = compile_plan(self.fleet)
        if self._providers is None:
            if self._plugins is None:
                from .plugins import Plugins

                self._plugins = Plugins()
            self._providers = await _open_checked(self.fleet, self._plugins, str(self.state_dir))
        observers = list(self._observers)
        inventory = not self._recover and inventory_applies(self.fleet, self._inventory)
        # the lock on the fleet first: a second controller is told who drives the fleet, not
        # that the hosts it is upgrading look unlike the fleet file
        try:
            await self._acquire_fleet_lock(observers)
        except ProviderError:
            # the lock lives on the balancer or the hosts: when they do not answer, the
            # inventory says which and how to fix it (exit 3) better than the lock's error
            if inventory:
                await self._take_inventory()
            raise
        if inventory:
            await self._take_inventory()
        if not self._recover:
            await asyncio.to_thread(check_flag_schemas, self.fleet, self.plan)
        if self._plugins is not None and hasattr(self._plugins, "emit_event"):
            observers.append(self._plugins.emit_event)
        self.engine = Engine(self.fleet, self.plan, self._providers, clock=self._clock,
                             journal=self.journal, observers=observers,
                             interactive=self._interactive, resume=resume_state,
                             metrics_interval=self._metrics_interval,
                             override_window=self._override_window,
                             inventory=self.inventory)

    async def _take_inventory(self) -> None:
        """Read the fleet before the journal's begin: a refusal leaves no rollout behind."""
        assert self._providers is not None
        self.inventory = await take_inventory(self.fleet, self._providers.transport,
                                              self._providers.balancer)
        if self.inventory.problems:
            raise InventoryRefused(refusal_text(self.fleet.name, self.inventory),
                                   [p.to_json() for p in self.inventory.problems])

    async def _acquire_fleet_lock(self, observers: list[Callable[[Event], None]]) -> None:
        """Take the lock held on the fleet itself, before the engine changes anything;
        journal a takeover of a dead holder's lock; keep it alive while the rollout runs."""
        wanted = self._take_fleet_lock
        if wanted is None:
            wanted = self._own_providers and self._use_journal
        if not wanted or self._providers is None:
            return
        import time

        from .fleetlock import FleetLock, keeper_for

        keeper = keeper_for(self.fleet, self._providers.transport, self._providers.balancer)
        lock = FleetLock(self.fleet.name, keeper, clock=self._lock_clock or time.time)
        rollout_id = None
        if self._recover and self.journal is not None:
            record = await asyncio.to_thread(self.journal.unfinished, self.fleet.name)
            rollout_id = record.id if record is not None else None
        await lock.acquire(rollout_id)
        self.fleet_lock = lock
        if lock.takeover is not None and self.journal is not None:
            await asyncio.to_thread(
                self.journal.note_lock, self.fleet.name, "taken over",
                f"{lock.takeover.reason} ({keeper.where})", lock.takeover.previous.to_json())

        def current_rollout() -> str | None:
            return self.engine.rollout_id or None if self.engine is not None else rollout_id

        def on_event(event: Event) -> None:
            if lock.holder is not None and event.rollout and event.rollout != lock.holder.rollout:
                lock.nudge()        # the rollout id is known: name it in the lock at once

        def on_lost() -> None:
            # another controller may drive the fleet now: stop changing it at the next step
            # (paused, still unfinished in the journal) and let an operator decide
            if self.engine is not None:
                self.engine.pause()

        observers.append(on_event)
        lock.start_heartbeat(current_rollout, on_lost)

    async def _with_rollout(self, message: str) -> str:
        """A lock refusal, plus the rollout the holder drives when the message lacks it."""
        if ", rollout " in message:
            return message
        from .state import journal_exists, open_journal

        try:
            if not journal_exists(self.state, self.state_dir):
                return message
            journal = await asyncio.to_thread(open_journal, self.state, self.state_dir)
            try:
                record = await asyncio.to_thread(journal.unfinished, self.fleet.name)
            finally:
                journal.close()
        except UpgraderError:
            return message
        if record is None:
            return message
        head, sep, tail = message.partition(";")
        return f"{head}, rollout {record.id}{sep}{tail}"

    async def _close(self) -> None:
        try:
            if self.fleet_lock is not None:
                lock, self.fleet_lock = self.fleet_lock, None
                await lock.release()        # before the providers it goes through close
        finally:
            await self._close_rest()

    async def _close_rest(self) -> None:
        try:
            if self._providers is not None and self._own_providers:
                await self._providers.aclose()
        finally:
            try:
                if self.journal is not None:
                    await asyncio.to_thread(self.journal.close)
            finally:
                if self._lock is not None:
                    await asyncio.to_thread(self._lock.release)
                    self._lock = None

    # delegation to the engine -----------------------------------------------------------------

    async def run(self) -> RolloutResult:
        assert self.engine is not None, "use `async with Rollout(...)`"
        return await self.engine.run()

    def events(self) -> AsyncIterator[Event]:
        assert self.engine is not None
        return self.engine.events()

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        assert self.engine is not None
        return self.engine.subscribe(callback)

    def pause(self) -> None:
        assert self.engine is not None
        self.engine.pause()

    def resume(self) -> None:
        assert self.engine is not None
        self.engine.resume()

    def promote(self) -> None:
        assert self.engine is not None
        self.engine.promote()

    def promote_all(self) -> None:
        assert self.engine is not None
        self.engine.promote_all()

    def override_window(self, reason: str) -> None:
        """Go on outside the fleet's deploy windows from now on (journaled with ``reason``)."""
        assert self.engine is not None
        self.engine.override_window(reason)

    def abort(self, rollback: bool = True) -> None:
        assert self.engine is not None
        self.engine.abort(rollback=rollback)

    def snapshot(self) -> dict[str, Any]:
        assert self.engine is not None
        return self.engine.snapshot()
