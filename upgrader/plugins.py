"""The plugin manager: finds providers (built-in and third-party) and creates them by name.

One :class:`Plugins` per engine instance wraps one pluggy ``PluginManager``, built lazily on
first use (nothing is loaded at import time). Built-in providers are plugins too: the modules
in :data:`DEFAULT_PLUGINS` register through the same hooks as a third-party package, which is
found through the ``upgrader`` entry-point group. ``UPGRADER_DISABLE_PLUGINS`` blocks
third-party plugins: ``1`` or ``all`` blocks every one, ``a,b`` blocks the entry points
named ``a`` and ``b``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError
from .events import Event
from .model import ProviderSpec
from .providers.base import (
    Balancer,
    Factory,
    HealthCheck,
    MetricSource,
    Notifier,
    ProviderContext,
    ProviderFactory,
    Setting,
    SnapshotProvider,
    Transport,
)

log = logging.getLogger(__name__)

#: Modules of upgrader itself that register providers, in registration order.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "upgrader.providers.local",
    "upgrader.providers.health",
    "upgrader.providers.snapshot",
    "upgrader.providers.noop",
    "upgrader.providers.builtin_balancer",
    "upgrader.providers.prometheus",
    "upgrader.providers.command_metrics",
    "upgrader.providers.balancer_metrics",
)

ENTRY_POINT_GROUP = "upgrader"
DISABLE_ENV = "UPGRADER_DISABLE_PLUGINS"

#: category (as a fleet file's table is named) -> the hook that registers its providers
CATEGORIES: dict[str, str] = {
    "transport": "register_transports",
    "balancer": "register_balancers",
    "health": "register_health_checks",
    "snapshot": "register_snapshot_providers",
    "notifier": "register_notifiers",
    "metrics": "register_metric_sources",
}

#: category -> the Protocol a created provider must satisfy
PROTOCOLS: dict[str, type] = {
    "transport": Transport,
    "balancer": Balancer,
    "health": HealthCheck,
    "snapshot": SnapshotProvider,
    "notifier": Notifier,
    "metrics": MetricSource,
}

_PROVIDER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PluginError(ConfigError):
    """A plugin is broken: it failed to load, misspelled a hook, or registered a provider
    name another plugin already uses. (A ``ConfigError``: the installed environment is bad
    input, the CLI exits with 2.)"""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a registered plugin came from (for ``upgrader plugins``)."""

    kind: str                     # builtin | entrypoint | registered
    version: str | None = None
    dist: str | None = None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points of the ``upgrader`` group, in a stable order (tests monkeypatch this)."""
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(eps, key=lambda ep: ep.name)


def _upgrader_version() -> str:
    try:
        return importlib.metadata.version("upgrader")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def _blocked_names(value: str | None) -> tuple[bool, frozenset[str]]:
    """Parse UPGRADER_DISABLE_PLUGINS: (block every third-party plugin, names to block)."""
    if not value or not value.strip():
        return False, frozenset()
    text = value.strip()
    if text.lower() in ("1", "all", "true", "yes"):
        return True, frozenset()
    return False, frozenset(part.strip() for part in text.split(",") if part.strip())


class Plugins:
    """The plugin manager of one engine (or CLI command).

    :param default_plugins: module names of the built-in providers to register.
    :param entrypoints: load third-party plugins from the ``upgrader`` entry-point group
        (still subject to ``UPGRADER_DISABLE_PLUGINS``).
    :param environ: where to read ``UPGRADER_DISABLE_PLUGINS`` (default ``os.environ``).
    """

    def __init__(
        self,
        *,
        default_plugins: Iterable[str] = DEFAULT_PLUGINS,
        entrypoints: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._default_plugins = tuple(default_plugins)
        self._load_entrypoints = entrypoints
        self._environ = environ
        self._pm: pluggy.PluginManager | None = None
        self._origins: dict[str, _Origin] = {}
        self._registries: dict[str, dict[str, ProviderFactory]] = {}

    # ---------------------------------------------------------------------------------------
    # the manager

    @property
    def pm(self) -> pluggy.PluginManager:
        """The pluggy manager, built (and every plugin loaded) on first use."""
        if self._pm is None:
            self._pm = self._build()
        return self._pm

    def _build(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        origins: dict[str, _Origin] = {}
        version = _upgrader_version()
        for modname in self._default_plugins:
            module = importlib.import_module(modname)
            self._register_into(pm, module, modname)
            origins[modname] = _Origin("builtin", version, "upgrader")
        environ = os.environ if self._environ is None else self._environ
        block_all, blocked = _blocked_names(environ.get(DISABLE_ENV))
        if self._load_entrypoints and not block_all:
            for name in blocked:
                pm.set_blocked(name)
            for ep in _entry_points():
                if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                    continue
                dist = getattr(ep, "dist", None)
                where = f"entry point {ep.name} = {ep.value!r}"
                if dist is not None:
                    where += f" of {dist.metadata['Name']} {dist.version}"
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginError(
                        f"plugin {ep.name!r} failed to load ({where}): "
                        f"{type(exc).__name__}: {exc} (set {DISABLE_ENV}={ep.name} to skip it)",
                        plugin=ep.name,
                    ) from exc
                self._register_into(pm, plugin, ep.name)
                origins[ep.name] = _Origin(
                    "entrypoint",
                    dist.version if dist is not None else None,
                    dist.metadata["Name"] if dist is not None else None,
                )
        self._check_pending(pm)
        self._origins = origins
        return pm

    @staticmethod
    def _register_into(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}", plugin=name) from exc
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} cannot be registered: {exc}",
                              plugin=name) from exc

    @staticmethod
    def _check_pending(pm: pluggy.PluginManager) -> None:
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) if exc.plugin is not None else None
            raise PluginError(
                f"plugin {name!r} implements a hook upgrader does not have: {exc} "
                f"(known hooks: {', '.join(sorted(_hook_names()))})",
                plugin=name,
            ) from exc

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register an extra plugin object (a module, class or instance with ``@hookimpl``
        functions), e.g. from a test. Returns the name it is registered under."""
        pm = self.pm
        if name is None:
            name = getattr(plugin, "__name__", None) or type(plugin).__qualname__
            base, n = name, 1
            while pm.get_plugin(name) is not None or pm.is_blocked(name):
                n += 1
                name = f"{base}-{n}"
        self._register_into(pm, plugin, name)
        try:
            self._check_pending(pm)
        except PluginError:
            pm.unregister(name=name)
            raise
        self._origins[name] = _Origin("registered")
        self._registries.clear()
        try:
            # Fail now, not at the first lookup, if it clashes with a registered name.
            for category in CATEGORIES:
                self._registry(category)
        except PluginError:
            self.unregister(name)
            raise
        return name

    def unregister(self, plugin_or_name: object) -> None:
        """Remove a plugin registered before (by object or by name)."""
        pm = self.pm
        name: str | None
        if isinstance(plugin_or_name, str):
            name = plugin_or_name
            pm.unregister(name=name)
        else:
            name = pm.get_name(plugin_or_name)
            pm.unregister(plugin_or_name)
        if name is not None:
            self._origins.pop(name, None)
        self._registries.clear()

    # ---------------------------------------------------------------------------------------
    # providers

    def _registry(self, category: str) -> dict[str, ProviderFactory]:
        if category not in CATEGORIES:
            raise ValueError(f"unknown provider category {category!r}; "
                             f"expected one of {', '.join(CATEGORIES)}")
        cached = self._registries.get(category)
        if cached is not None:
            return cached
        pm = self.pm
        hook_name = CATEGORIES[category]
        found: dict[str, ProviderFactory] = {}
        caller = getattr(pm.hook, hook_name)
        # Call each plugin's implementation on its own so that every factory is attributed
        # to the plugin that registered it (duplicates name both plugins).
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            plugin_name = impl.plugin_name

            # satisfies hookspecs.Register; the arguments are checked at run time anyway
            # (a plugin may not be type-checked)
            def register(name: str, factory: Factory[Any], settings: Iterable[Setting] = (),
                         description: str = "", *, _plugin: str = plugin_name) -> None:
                entry = _make_factory(category, _plugin, name, factory, settings, description)
                previous = found.get(name)
                if previous is not None:
                    raise PluginError(
                        f"{category} {name!r} is registered twice: by plugin "
                        f"{previous.plugin!r} and by plugin {_plugin!r}",
                        plugin=_plugin,
                    )
                found[name] = entry

            kwargs = {"register": register}
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {plugin_name!r} failed in {hook_name}: "
                                  f"{type(exc).__name__}: {exc}", plugin=plugin_name) from exc
        self._registries[category] = found
        return found

    def lookup(self, category: str, name: str) -> ProviderFactory | None:
        """The factory registered as ``name`` in ``category``, or None."""
        return self._registry(category).get(name)

    def names(self, category: str) -> list[str]:
        """Registered provider names of a category, sorted."""
        return sorted(self._registry(category))

    def factories(self, category: str) -> list[ProviderFactory]:
        """Registered factories of a category, sorted by name."""
        registry = self._registry(category)
        return [registry[name] for name in sorted(registry)]

    def validate(self, category: str, spec: ProviderSpec) -> dict[str, Any]:
        """Check ``spec`` against the declared settings of its kind; return the settings with
        defaults filled in. Raises ``ConfigError`` with ``key="<category>.<key>"``."""
        factory = self.lookup(category, spec.kind)
        if factory is None:
            known = ", ".join(self.names(category)) or "none"
            raise ConfigError(f"unknown {category} kind {spec.kind!r} (known: {known})",
                              key=f"{category}.kind")
        return validate_settings(category, factory, spec.settings)

    def create(self, category: str, spec: ProviderSpec,
               context: ProviderContext | None = None) -> Any:
        """Validate ``spec``'s settings and build the provider with its factory."""
        settings = self.validate(category, spec)
        factory = self.lookup(category, spec.kind)
        assert factory is not None
        provider = factory.factory(settings, context if context is not None else ProviderContext())
        protocol = PROTOCOLS[category]
        if not isinstance(provider, protocol):
            missing = [m for m in _protocol_methods(protocol) if not hasattr(provider, m)]
            raise PluginError(
                f"{category} {spec.kind!r} of plugin {factory.plugin!r} built "
                f"{type(provider).__qualname__}, which lacks {', '.join(missing)} "
                f"of the {protocol.__name__} protocol",
                plugin=factory.plugin,
            )
        return provider

    # ---------------------------------------------------------------------------------------
    # observers

    def emit_event(self, event: Event) -> list[tuple[str, BaseException]]:
        """Hand ``event`` to every ``upgrader_event`` implementation.

        A plugin that raises does not stop the others nor the rollout: the error is logged
        (logger ``upgrader.plugins``) and returned as ``(plugin name, exception)``.
        """
        failures: list[tuple[str, BaseException]] = []
        caller = self.pm.hook.upgrader_event
        kwargs = {"event": event}
        # pluggy calls the last registered first; keep that order.
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
                if inspect.isawaitable(result):
                    _schedule(result, impl.plugin_name)
            except Exception as exc:  # a broken observer must not break a rollout
                log.exception("plugin %r failed in upgrader_event(%s)", impl.plugin_name,
                              type(event).__name__)
                failures.append((impl.plugin_name, exc))
        return failures

    # ---------------------------------------------------------------------------------------
    # introspection

    def list_plugins(self) -> list[dict[str, Any]]:
        """Every registered plugin: name, version, kind, the hooks it implements and the
        providers it registered (category -> names). For ``upgrader plugins``."""
        pm = self.pm
        providers: dict[str, dict[str, list[str]]] = {}
        for category in CATEGORIES:
            for factory in self.factories(category):
                providers.setdefault(factory.plugin, {}).setdefault(category, []).append(
                    factory.name)
        result = []
        for name, plugin in pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            origin = self._origins.get(name, _Origin("registered"))
            hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
            result.append({
                "name": name,
                "version": origin.version,
                "kind": origin.kind,
                "dist": origin.dist,
                "hooks": hooks,
                "providers": providers.get(name, {}),
            })
        return result


# -------------------------------------------------------------------------------------------
# settings


def _make_factory(category: str, plugin: str, name: Any, factory: Any, settings: Any,
                  description: Any) -> ProviderFactory:
    def bad(message: str) -> PluginError:
        return PluginError(f"plugin {plugin!r} registered {category} {name!r}: {message}",
                           plugin=plugin)

    if not isinstance(name, str) or not _PROVIDER_NAME_RE.match(name):
        raise bad("a provider name is letters, digits, '_', '.', '-'")
    if not callable(factory):
        raise bad("the factory is not callable")
    try:
        settings = tuple(settings)
    except TypeError:
        raise bad("settings must be a tuple of upgrader.providers.base.Setting") from None
    seen: set[str] = set()
    for setting in settings:
        if not isinstance(setting, Setting):
            raise bad(f"settings must be Setting objects, got {setting!r}")
        if setting.name in seen or setting.name == "kind":
            raise bad(f"setting {setting.name!r} is declared twice or is reserved")
        seen.add(setting.name)
    return ProviderFactory(name=name, factory=factory, settings=settings,
                           description=str(description or ""), plugin=plugin)


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a table"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def coerce_setting(setting: Setting, value: Any) -> Any:
    """Check one value against a declared setting; returns the (normalised) value or raises
    ``ValueError`` with a short message.

    Rules: a bool is never an int; an int is a float; a ``float`` setting also takes a
    duration text ('2s', '250ms'); a TOML array is a ``list`` or ``tuple``.
    """
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    if isinstance(value, bool):
        if bool in types or object in types:
            return value
        raise ValueError(f"expected {_type_names(types)}, got {value!r}")
    for typ in types:
        if typ is object:
            return value
        if typ is float and isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
            return float(value)
        if typ is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if typ is list and isinstance(value, (list, tuple)):
            return list(value)
        if typ is dict and isinstance(value, Mapping):
            return dict(value)
        if typ not in (float, tuple, list, dict) and isinstance(value, typ):
            return value
    if float in types and isinstance(value, str):
        from .units import parse_duration

        try:
            return parse_duration(value)
        except ValueError:
            pass
    raise ValueError(f"expected {_type_names(types)}, got {value!r}")


def validate_settings(category: str, factory: ProviderFactory,
                      values: Mapping[str, Any]) -> dict[str, Any]:
    """Declared settings of ``factory`` applied to ``values``: unknown keys, wrong types and
    missing required settings raise ``ConfigError(key="<category>.<key>")``; defaults are
    filled in (copied, so a mutable default is never shared)."""
    declared = {s.name: s for s in factory.settings}
    for key in values:
        if key == "kind":
            continue
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise ConfigError(
                f"unknown setting {key!r} for {category} {factory.name!r} (known: {known})",
                key=f"{category}.{key}")
    result: dict[str, Any] = {}
    for name, setting in declared.items():
        if name in values:
            try:
                result[name] = coerce_setting(setting, values[name])
            except ValueError as exc:
                raise ConfigError(f"{exc}", key=f"{category}.{name}") from None
        elif setting.required:
            raise ConfigError(
                f"{category} {factory.name!r} needs setting {name!r}"
                + (f" ({setting.description})" if setting.description else ""),
                key=f"{category}.{name}")
        else:
            result[name] = copy.deepcopy(setting.default)
    return result


# -------------------------------------------------------------------------------------------
# helpers


def _hook_names() -> list[str]:
    return [name for name, obj in vars(hookspecs).items()
            if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")]


def _protocol_methods(protocol: type) -> list[str]:
    return sorted(name for name, obj in vars(protocol).items()
                  if not name.startswith("_") and callable(obj))


_background: set[Any] = set()


def _schedule(awaitable: Any, plugin_name: str) -> None:
    """Run an async observer's coroutine in the background, logging its failure."""
    import asyncio

    try:
        task = asyncio.ensure_future(awaitable)
    except RuntimeError:  # no running loop: close the coroutine rather than leak a warning
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        log.error("plugin %r returned a coroutine from upgrader_event outside an event loop",
                  plugin_name)
        return
    _background.add(task)

    def done(t: Any) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("plugin %r failed in upgrader_event", plugin_name,
                      exc_info=t.exception())

    task.add_done_callback(done)
