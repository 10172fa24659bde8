"""Load a fleet file (TOML) into a :class:`upgrader.model.Fleet`, checking every key.

Every problem is a :class:`~upgrader.errors.ConfigError` naming the file, the key path
(``hosts[3].labels.zone``) and the line. tomllib reports no positions for values, so a small
locator (``_Locator``, in :mod:`upgrader.tomlsource`) finds the line of a key path in the source
text; it runs only when an error is raised, so large fleets load in linear time.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol

from . import units
from .errors import ConfigError
from .lab.layout import MAX_LAB_HOSTS, LabLayout, default_lab_dir
from .model import (
    TEMPLATE_FIELDS,
    Commands,
    FlagsSpec,
    Fleet,
    Host,
    ProviderSpec,
    Releases,
    SchemaSpec,
    StrategySpec,
    Timing,
    UserGroup,
    VerifySpec,
)
from .providers.base import ProviderFactory, Setting
from .tomlsource import (
    Path_,
    _describe,
    _Locator,
    _toml_error_line,
    did_you_mean,
    format_key_path,
    parse_key_path,
)

__all__ = ["ProviderRegistry", "format_key_path", "load_fleet", "loads_fleet", "parse_key_path",
           "strategy_where"]

ON_FAILURE = ("rollback", "shutdown", "freeze", "pause")
NO_DATA = ("fail", "pass", "wait")
CLUSTERS = ("main", "new")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
#: host names, IPv4 and IPv6 addresses (with a zone id); nothing a shell would interpret
_ADDRESS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:%-]{0,252}|\[[0-9A-Fa-f:.%A-Za-z]+\]")
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: labels: a plain alphabet, no shell syntax (docs/SECURITY.md)
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9._:/@+=,-]{1,255}")
#: C0 controls but tab (line breaks have their own message), DEL and C1 controls
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")

_REQUIRED: Any = object()



class ProviderRegistry(Protocol):
    """What the loader needs from the plugin registry to check provider kinds and settings."""

    def lookup(self, category: str, name: str) -> ProviderFactory | None:
        """The factory registered as ``name`` in ``category`` (transport, balancer, health,
        snapshot, notifier), or None."""

    def names(self, category: str) -> list[str]:
        """Registered names in ``category``."""


# ---------------------------------------------------------------------------------------------
# Entry points


def load_fleet(
    path: str | Path,
    *,
    registry: ProviderRegistry | None = None,
    strategy: str | None = None,
) -> Fleet:
    """Read and check the fleet file at ``path``.

    :param registry: when given, provider kinds and their settings are checked against it;
        without it only the shape of the provider tables is checked.
    :param strategy: a strategy name (``--strategy``) that replaces the file's strategy with
        its default parameters, unless the file's strategy is that one already.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the fleet file: {exc.strerror or exc}", file=path) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the fleet file is not UTF-8 text", file=path, line=line) from exc
    return loads_fleet(text, source=path, base_dir=path.parent, registry=registry,
                       strategy=strategy)


def loads_fleet(
    text: str,
    *,
    source: str | Path = "<string>",
    base_dir: Path | None = None,
    registry: ProviderRegistry | None = None,
    strategy: str | None = None,
) -> Fleet:
    """Check the fleet file ``text`` and build its :class:`Fleet`.

    :param source: the file name errors name (``Fleet.source`` unless ``"<string>"``).
    :param base_dir: the directory of the fleet file, for keys that name files relative to it
        (none does yet: ``[lab] dir`` resolves against the current working directory, as
        ``upgrader lab`` does).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=source,
                          line=_toml_error_line(str(exc), text)) from exc
    except RecursionError as exc:
        raise ConfigError("not valid TOML: values nested too deeply", file=source,
                          line=1) from exc
    return _Loader(text, source, base_dir, registry).fleet(data, strategy)


class _FileStrategyWhere:
    """A ``where`` for errors a strategy finds at compile time, located in the fleet file."""

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def error(self, key: str | None, message: str) -> NoReturn:
        path: Path_ = ("strategy",) + (parse_key_path(key) if key else ())
        line = None
        source = self._fleet.source
        if source is not None:
            try:
                line = _Locator(source.read_text(encoding="utf-8")).line_of(path)
            except (OSError, UnicodeDecodeError):
                line = None
        raise ConfigError(message, file=source, key=format_key_path(path), line=line)


def strategy_where(fleet: Fleet) -> Any:
    """The ``where`` to pass to ``strategy.compile(fleet, params, where)``: an error the
    strategy finds only once it sees the fleet (an unknown group, too few new hosts) names
    ``strategy.<key>`` and its line in the fleet file (read again, only when raising)."""
    return _FileStrategyWhere(fleet)


# ---------------------------------------------------------------------------------------------
# The loader


class _StrategyWhere:
    """The ``where`` a strategy's ``parse_params`` reports through: ``strategy.<key>``."""

    __slots__ = ("_loader",)

    def __init__(self, loader: _Loader) -> None:
        self._loader = loader

    def error(self, key: str | None, message: str) -> NoReturn:
        path: Path_ = ("strategy",) + (parse_key_path(key) if key else ())
        self._loader.error(path, message)


_TOP_KEYS = ("fleet", "release", "commands", "transport", "balancer", "health", "snapshot",
             "notifiers", "verify", "timing", "strategy", "groups", "routing", "hosts",
             "defaults", "lab", "flags", "schema", "windows")
_FLEET_KEYS = ("name", "environment")
_RELEASE_KEYS = ("current", "target", "migration")
_COMMAND_KEYS = ("install", "start", "stop", "system_test", "current", "pre_release_test")
_REQUIRED_COMMANDS = ("install", "start", "stop")
_VERIFY_KEYS = ("error_rate_max", "p95_latency_max", "min_requests", "consecutive_failures",
                "interval", "for", "no_data", "health")
_TIMING_KEYS = ("host_upgrade", "drain_timeout", "health_timeout", "health_interval",
                "command_timeout")
_STRATEGY_COMMON = ("kind", "on_failure", "min_capacity")
_GROUP_KEYS = ("name", "header_values", "percent", "description")
_ROUTING_KEYS = ("group_header", "user_header")
_HOST_KEYS = ("name", "address", "port", "labels", "vars", "cluster", "slots")
_DEFAULTS_KEYS = ("labels", "vars", "port")
_LAB_KEYS = ("hosts", "new_hosts", "slots", "base_port", "dir", "base_release", "ssh",
             "network", "subnet")


class _Loader:
    def __init__(self, text: str, source: str | Path, base_dir: Path | None,
                 registry: ProviderRegistry | None) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self.registry = registry
        self._locator: _Locator | None = None

    # -- errors

    def line_of(self, path: Path_) -> int:
        if self._locator is None:
            self._locator = _Locator(self.text)
        return self._locator.line_of(path) or 1

    def error(self, path: Path_, message: str) -> NoReturn:
        raise ConfigError(message, file=self.source, key=format_key_path(path) or None,
                          line=self.line_of(path))

    def unknown_key(self, path: Path_, allowed: Collection[str], where: str) -> NoReturn:
        key = str(path[-1])
        message = f"unknown key {key!r} in {where}{did_you_mean(key, allowed)}"
        message += f"; allowed keys: {', '.join(allowed) or '(none)'}"
        self.error(path, message)

    # -- shapes

    def table(self, value: Any, path: Path_, allowed: Collection[str] | None,
              where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {_describe(value)}")
        if allowed is not None and not value.keys() <= set(allowed):
            for key in value:
                if key not in allowed:
                    self.unknown_key(path + (key,), allowed, where)
        return value

    def get(self, table: Mapping[str, Any], path: Path_, key: str, default: Any) -> Any:
        if key in table:
            return table[key]
        if default is _REQUIRED:
            what = f"table [{key}]" if not path else f"key {key!r}"
            self.error(path + (key,), f"missing required {what}")
        return default

    def string(self, table: Mapping[str, Any], path: Path_, key: str, default: Any = _REQUIRED,
               *, pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        value = self.get(table, path, key, default)
        if value is default and key not in table:
            return value
        kpath = path + (key,)
        if not isinstance(value, str):
            self.error(kpath, f"expected a string, got {_describe(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            self.error(kpath, f"{value!r} is not a valid {what or key}"
                              f" (allowed: {_pattern_words(pattern)})")
        if "\n" in value or "\r" in value:
            self.error(kpath, "a value here may not contain a line break")
        return value

    def choice(self, table: Mapping[str, Any], path: Path_, key: str, choices: tuple[str, ...],
               default: Any = _REQUIRED) -> Any:
        value = self.get(table, path, key, default)
        if key in table and value not in choices:
            shown = _describe(value) if not isinstance(value, str) else repr(value)
            self.error(path + (key,), f"expected one of {', '.join(choices)}; got {shown}")
        return value

    def integer(self, table: Mapping[str, Any], path: Path_, key: str, default: Any = _REQUIRED,
                *, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self.get(table, path, key, default)
        if key not in table:
            return value
        kpath = path + (key,)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(kpath, f"expected an integer, got {_describe(value)}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = (f"between {minimum} and {maximum}" if maximum is not None
                      else f"at least {minimum}")
            self.error(kpath, f"expected an integer {bounds}, got {value}")
        return value

    def port(self, table: Mapping[str, Any], path: Path_, key: str, default: Any = None) -> Any:
        return self.integer(table, path, key, default, minimum=1, maximum=65535)

    def boolean(self, table: Mapping[str, Any], path: Path_, key: str, default: Any) -> Any:
        value = self.get(table, path, key, default)
        if key in table and not isinstance(value, bool):
            self.error(path + (key,), f"expected true or false, got {_describe(value)}")
        return value

    def duration(self, table: Mapping[str, Any], path: Path_, key: str, default: Any,
                 *, positive: bool = False) -> Any:
        if key not in table:
            return default
        try:
            seconds = units.parse_duration(table[key])
        except ValueError as exc:
            self.error(path + (key,), str(exc))
        if positive and seconds <= 0:
            self.error(path + (key,), f"expected a duration above zero, got {table[key]!r}")
        return seconds

    def percent(self, table: Mapping[str, Any], path: Path_, key: str, default: Any) -> Any:
        if key not in table:
            return default
        try:
            return units.parse_percent(table[key])
        except ValueError as exc:
            self.error(path + (key,), str(exc))

    def string_map(self, value: Any, path: Path_, *,
                   key_pattern: re.Pattern[str] | None = None) -> dict[str, str]:
        self.table(value, path, None, "")
        for key, item in value.items():
            if key_pattern is not None and not key_pattern.fullmatch(key):
                self.error(path + (key,), f"{key!r} is not a valid name here"
                                          f" (allowed: {_pattern_words(key_pattern)})")
            if not key or "\n" in key or "\r" in key:
                self.error(path + (key,), "a key here must be non-empty, without line breaks")
            if not isinstance(item, str):
                self.error(path + (key,), f"expected a string, got {_describe(item)}")
            if "\n" in item or "\r" in item:
                self.error(path + (key,), "a value here may not contain a line break")
            if _CONTROL_RE.search(item) or _CONTROL_RE.search(key):
                self.error(path + (key,), "control characters (NUL, escape, ...) are not "
                                          "allowed here")
        return value

    def labels(self, value: Any, path: Path_) -> dict[str, str]:
        """Labels select hosts (zones, teams); they are never part of a command, and they show
        in logs and the TUI, so they are held to a plain alphabet: shell syntax (``;``,
        ``$( )``, backticks, quotes, spaces) is rejected here rather than quoted later."""
        table = self.string_map(value, path)
        for key, item in table.items():
            if not _LABEL_KEY_RE.fullmatch(key):
                self.error(path + (key,), f"{key!r} is not a valid label name"
                                          f" (allowed: {_pattern_words(_LABEL_KEY_RE)})")
            if item and not _LABEL_VALUE_RE.fullmatch(item):
                self.error(path + (key,), f"{item!r} is not a valid label value"
                                          f" (allowed: {_pattern_words(_LABEL_VALUE_RE)})")
        return table

    def array_of_tables(self, data: Mapping[str, Any], key: str) -> list[Any]:
        value = data.get(key, [])
        if not isinstance(value, list):
            self.error((key,), f"expected an array of tables ([[{key}]]), got {_describe(value)}")
        return value

    # -- the fleet

    def fleet(self, data: dict[str, Any], strategy_override: str | None) -> Fleet:
        self.table(data, (), _TOP_KEYS, "the fleet file")

        fleet_table = self.table(self.get(data, (), "fleet", _REQUIRED), ("fleet",),
                                 _FLEET_KEYS, "[fleet]")
        name = self.string(fleet_table, ("fleet",), "name", pattern=_NAME_RE, what="fleet name")
        environment = self.string(fleet_table, ("fleet",), "environment", "production",
                                  pattern=_NAME_RE, what="environment name")

        release_table = self.table(self.get(data, (), "release", _REQUIRED), ("release",),
                                   _RELEASE_KEYS, "[release]")
        current = self.string(release_table, ("release",), "current", pattern=_RELEASE_RE,
                              what="release")
        target = self.string(release_table, ("release",), "target", pattern=_RELEASE_RE,
                             what="release")
        raw_strategy = data.get("strategy")
        kind = strategy_override or (raw_strategy.get("kind")
                                     if isinstance(raw_strategy, dict) else None)
        if current == target and kind != "feature":
            self.error(("release", "target"),
                       f"the target release is the current release ({target!r}): nothing to do")

        lab = self.lab(data["lab"], current) if "lab" in data else None
        hosts = self.hosts(data, lab)
        commands = self.commands(data, hosts, lab)

        if "transport" not in data and lab is not None and hasattr(lab, "transport_spec"):
            transport = lab.transport_spec()     # an SSH lab: the ssh transport, its keys
        else:
            transport = self.provider(data, "transport", "transport", default_kind="local")
        if "balancer" in data:
            balancer = self.provider(data, "balancer", "balancer")
        elif lab is not None:
            balancer = lab.balancer_spec()
        else:
            self.error(("balancer",), "missing required table [balancer] (a fleet without "
                                      "[lab] must say which load balancer fronts its hosts)")
        if "health" in data or lab is None:
            health = self.provider(data, "health", "health", default_kind="http")
        else:
            health = lab.health_spec()
        snapshot = self.provider(data, "snapshot", "snapshot") if "snapshot" in data else None
        notifiers = tuple(
            self.provider_table(item, ("notifiers", i), "notifier", "[[notifiers]]")
            for i, item in enumerate(self.array_of_tables(data, "notifiers")))

        verify = self.verify(data)
        timing = self.timing(data)
        groups = self.groups(data)
        routing = self.table(data.get("routing", {}), ("routing",), _ROUTING_KEYS, "[routing]")
        group_header = self.string(routing, ("routing",), "group_header", "X-User-Group",
                                   pattern=_HEADER_RE, what="HTTP header name")
        user_header = self.string(routing, ("routing",), "user_header", "X-User",
                                  pattern=_HEADER_RE, what="HTTP header name")
        strategy = self.strategy(data, strategy_override)
        flags = None
        if "flags" in data:
            table = self.table(data["flags"], ("flags",), ("store", "environment"), "[flags]")
            store = self.string(table, ("flags",), "store", what="flag store")
            if "://" not in store:
                # like [lab] dir and `upgrader flags --store`: relative to the working folder
                store = str(Path(store).expanduser().resolve())
            flags = FlagsSpec(store=store, environment=self.string(
                table, ("flags",), "environment", environment, pattern=_NAME_RE,
                what="environment name"))
        windows = self.windows(data["windows"]) if "windows" in data else None
        if strategy.kind == "feature" and flags is None:
            self.error(("flags",), "a feature roll-out needs a [flags] table naming the store")
        schema = self.schema(data, release_table, current, target, lab)

        source = self.source
        return Fleet(
            name=name,
            hosts=hosts,
            releases=Releases(current=current, target=target),
            commands=commands,
            transport=transport,
            balancer=balancer,
            health=health,
            strategy=strategy,
            environment=environment,
            snapshot=snapshot,
            notifiers=notifiers,
            verify=verify,
            timing=timing,
            groups=groups,
            group_header=group_header,
            user_header=user_header,
            source=None if source == "<string>" else Path(source),
            lab=lab,
            flags=flags,
            windows=windows,
            schema=schema,
        )

    def schema(self, data: dict[str, Any], release_table: dict[str, Any], current: str,
               target: str, lab: LabLayout | None) -> SchemaSpec | None:
        """``[release] migration`` (a file, relative to the fleet file) and ``[schema]
        database`` (in a lab: the lab's own database by default); the migration is loaded
        and checked now, so that a bad one stops the rollout before anything changes."""
        table = self.table(data.get("schema", {}), ("schema",), ("database",), "[schema]")
        if "migration" not in release_table:
            if "database" in table:
                self.error(("schema", "database"), "[schema] database is set but [release] "
                           "names no migration")
            return None
        text = self.string(release_table, ("release",), "migration", what="migration file")
        if "database" in table:
            database = self.string(table, ("schema",), "database", what="database")
        elif lab is not None:
            database = str(lab.database_file)
        else:
            self.error(("schema",), "[release] migration needs a [schema] table with the "
                       "database it changes (database = a SQLite file or a postgresql:// URL)")
        if "://" not in database:
            # like [flags] store: relative to the working folder
            database = str(Path(database).expanduser().resolve())
        base = Path(self.source).parent if self.source != "<string>" else Path.cwd()
        path = (base / Path(text).expanduser()).resolve()
        if not path.is_file():
            self.error(("release", "migration"), f"migration file {path} does not exist")
        from .schema.loader import load_migration

        migration = load_migration(path)   # its own ConfigError names the migration file
        if migration.release != target:
            self.error(("release", "migration"),
                       f"migration {migration.name} creates the views of release "
                       f"{migration.release!r}, but the target release is {target!r}")
        if migration.previous is not None and migration.previous != current:
            self.error(("release", "migration"),
                       f"migration {migration.name} follows release {migration.previous!r}, "
                       f"but the current release is {current!r}")
        return SchemaSpec(database=database, migration=path, migration_name=migration.name)

    def windows(self, value: Any) -> Any:
        """``[windows]``: deploy windows, checked by :mod:`upgrader.policy`."""
        from .policy import parse_windows

        loader = self

        class _Where:
            def error(self, path: Path_, message: str) -> NoReturn:
                loader.error(("windows",) + tuple(path), message)

        return parse_windows(value, _Where())

    def lab(self, value: Any, current: str) -> LabLayout:
        path: Path_ = ("lab",)
        table = self.table(value, path, _LAB_KEYS, "[lab]")
        hosts = self.integer(table, path, "hosts", 8, minimum=1, maximum=MAX_LAB_HOSTS)
        new_hosts = self.integer(table, path, "new_hosts", 0, minimum=0,
                                 maximum=MAX_LAB_HOSTS)
        if hosts + new_hosts > MAX_LAB_HOSTS:
            self.error(path + ("new_hosts",),
                       f"a lab has at most {MAX_LAB_HOSTS} hosts; hosts + new_hosts = "
                       f"{hosts + new_hosts}")
        slots = self.boolean(table, path, "slots", False)
        base_port = self.integer(table, path, "base_port", 18000, minimum=1024,
                                 maximum=65535 - 300 - MAX_LAB_HOSTS)
        dir_text = self.string(table, path, "dir", None)
        if dir_text is None:
            lab_dir = default_lab_dir()
        else:
            if not dir_text.strip() or "\0" in dir_text:
                self.error(path + ("dir",), f"expected a directory path, got {dir_text!r}")
            try:  # relative to the current directory, as `upgrader lab` resolves it
                lab_dir = Path(dir_text).expanduser().resolve()
            except (OSError, RuntimeError, ValueError) as exc:
                self.error(path + ("dir",), f"cannot use {dir_text!r} as the lab directory: {exc}")
        base_release = self.string(table, path, "base_release", current, pattern=_RELEASE_RE,
                                   what="release")
        if self.boolean(table, path, "ssh", False):
            # hosts with their own sshd, behind HAProxy (upgrader.lab.sshlab)
            from .lab.sshlab import DEFAULT_SUBNET, NETWORKS, SshLabLayout, parse_subnet

            network = self.string(table, path, "network", "auto")
            if network not in NETWORKS:
                self.error(path + ("network",), f"expected one of {', '.join(NETWORKS)}, "
                                                f"got {network!r}")
            subnet = self.string(table, path, "subnet", DEFAULT_SUBNET)
            try:
                parse_subnet(subnet)
            except ValueError as exc:
                self.error(path + ("subnet",), str(exc))
            return SshLabLayout(dir=lab_dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                                base_port=base_port, base_release=base_release,
                                network=network, subnet=subnet)
        for key in ("network", "subnet"):
            if key in table:
                self.error(path + (key,), f"[lab] {key} is for an SSH lab: add ssh = true")
        return LabLayout(dir=lab_dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                         base_port=base_port, base_release=base_release)

    def hosts(self, data: dict[str, Any], lab: LabLayout | None) -> tuple[Host, ...]:
        defaults = self.table(data.get("defaults", {}), ("defaults",), _DEFAULTS_KEYS,
                              "[defaults]")
        default_labels = self.labels(defaults.get("labels", {}), ("defaults", "labels"))
        default_vars = self.string_map(defaults.get("vars", {}), ("defaults", "vars"),
                                       key_pattern=_VAR_RE)
        self.check_var_names(default_vars, ("defaults", "vars"))
        default_port = self.port(defaults, ("defaults",), "port")

        items = self.array_of_tables(data, "hosts")
        if not items and lab is not None:
            hosts = [self.with_defaults(h, default_labels, default_vars, default_port)
                     for h in lab.host_objects()]
            return tuple(hosts)
        if not items:
            self.error(("hosts",), "no hosts: add [[hosts]] tables (or a [lab] table, "
                                   "which makes local hosts)")

        result = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            path: Path_ = ("hosts", index)
            table = self.table(item, path, _HOST_KEYS, "[[hosts]]")
            name = self.string(table, path, "name", pattern=_NAME_RE, what="host name")
            first = seen.setdefault(name, index)
            if first != index:
                first_path = ("hosts", first, "name")
                self.error(path + ("name",),
                           f"duplicate host name {name!r} (first defined at "
                           f"{format_key_path(first_path)}, line {self.line_of(first_path)})")
            address = self.string(table, path, "address", "127.0.0.1", pattern=_ADDRESS_RE,
                                  what="host address")
            port = self.port(table, path, "port")
            labels = self.labels(table["labels"], path + ("labels",)) \
                if "labels" in table else {}
            host_vars = self.string_map(table["vars"], path + ("vars",), key_pattern=_VAR_RE) \
                if "vars" in table else {}
            if host_vars:
                self.check_var_names(host_vars, path + ("vars",))
            cluster = self.choice(table, path, "cluster", CLUSTERS, "main")
            slots = self.slots(table["slots"], path + ("slots",)) if "slots" in table else {}
            host = Host(name=name, address=address, port=port, labels=labels, vars=host_vars,
                        cluster=cluster, slots=slots)
            result.append(self.with_defaults(host, default_labels, default_vars, default_port))
        return tuple(result)

    @staticmethod
    def with_defaults(host: Host, labels: dict[str, str], host_vars: dict[str, str],
                      port: int | None) -> Host:
        """[defaults] under a host's own values (per key for labels and vars)."""
        if not labels and not host_vars and port is None:
            return host
        return Host(
            name=host.name, address=host.address,
            port=host.port if host.port is not None else port,
            labels={**labels, **host.labels} if labels else host.labels,
            vars={**host_vars, **host.vars} if host_vars else host.vars,
            cluster=host.cluster, slots=host.slots,
        )

    def check_var_names(self, host_vars: Mapping[str, str], path: Path_) -> None:
        for key in host_vars:
            if key in TEMPLATE_FIELDS:
                self.error(path + (key,), f"{key!r} is a built-in command placeholder; "
                                          f"choose another name for this var")

    def slots(self, value: Any, path: Path_) -> dict[str, int]:
        table = self.table(value, path, None, "")
        for key in table:
            if not _NAME_RE.fullmatch(key):
                self.error(path + (key,), f"{key!r} is not a valid slot name"
                                          f" (allowed: {_pattern_words(_NAME_RE)})")
            self.port(table, path, key)
        return table

    def commands(self, data: dict[str, Any], hosts: tuple[Host, ...],
                 lab: LabLayout | None) -> Commands:
        path: Path_ = ("commands",)
        # Placeholders every host can fill: the built-in fields, and vars all hosts share.
        shared_vars: set[str] | None = None
        for host in hosts:
            names = host.vars.keys()
            shared_vars = set(names) if shared_vars is None else shared_vars & names
            if not shared_vars:
                break
        allowed = set(TEMPLATE_FIELDS) | (shared_vars or set())
        if "commands" not in data:
            if lab is None:
                self.error(path, "missing required table [commands] (install, start and "
                                 "stop run on each host)")
            commands = lab.commands()
            # Explicit [[hosts]] in a lab fleet must still fill the lab commands' placeholders.
            for argv in (commands.install, commands.start, commands.stop, commands.current,
                         commands.system_test, commands.pre_release_test):
                for field in _placeholders(argv or ()):
                    if field not in allowed:
                        self.error(path, f"the lab's commands use {{{field}}}, which not every "
                                         f"host has in vars: give [commands], or vars.{field}")
            return commands
        table = self.table(data["commands"], path, _COMMAND_KEYS, "[commands]")
        argvs: dict[str, tuple[str, ...] | None] = {}
        for key in _COMMAND_KEYS:
            if key not in table:
                if key in _REQUIRED_COMMANDS:
                    self.error(path + (key,), f"missing required command {key!r}")
                argvs[key] = None
                continue
            argvs[key] = self.command(table[key], path + (key,), allowed)
        return Commands(**argvs)  # type: ignore[arg-type]

    def command(self, value: Any, path: Path_, allowed: set[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            self.error(path, "expected a non-empty array of strings (the program and its "
                             f"arguments, no shell), got {_describe(value)}")
        for index, part in enumerate(value):
            if not isinstance(part, str):
                self.error(path + (index,), f"expected a string, got {_describe(part)}")
            try:
                fields = [field for _, field, _, _ in string.Formatter().parse(part)
                          if field is not None]
            except ValueError as exc:
                self.error(path + (index,), f"bad placeholder in {part!r}: {exc} "
                                            "(write {{ and }} for literal braces)")
            for field in fields:
                if field not in allowed:
                    known = ", ".join(sorted(allowed))
                    self.error(path, f"unknown placeholder {{{field}}} in {part!r}; "
                                     f"known: {known} (a host var is known when every host "
                                     f"has it)")
        if not value[0].strip():
            self.error(path + (0,), "the program name is empty")
        return tuple(value)

    def provider(self, data: dict[str, Any], key: str, category: str,
                 default_kind: str | None = None) -> ProviderSpec:
        return self.provider_table(data.get(key, {}), (key,), category, f"[{key}]",
                                   default_kind=default_kind)

    def provider_table(self, value: Any, path: Path_, category: str, where: str,
                       default_kind: str | None = None) -> ProviderSpec:
        table = self.table(value, path, None, where)
        kind = self.string(table, path, "kind",
                           _REQUIRED if default_kind is None else default_kind,
                           pattern=_NAME_RE, what="provider kind")
        settings = {k: v for k, v in table.items() if k != "kind"}
        if self.registry is not None:
            self.check_settings(category, kind, settings, path)
        return ProviderSpec(kind=kind, settings=settings)

    def check_settings(self, category: str, kind: str, settings: dict[str, Any],
                       path: Path_) -> None:
        assert self.registry is not None
        factory = self.registry.lookup(category, kind)
        if factory is None:
            names = ", ".join(sorted(self.registry.names(category))) or "(none)"
            self.error(path + ("kind",), f"unknown {category} {kind!r}; registered: {names}")
        # The registry's own rules (a bool is no int, a float setting takes '2s', ...), so the
        # loader never accepts what creating the provider would refuse.
        from .plugins import coerce_setting

        declared: dict[str, Setting] = {s.name: s for s in factory.settings}
        for key, value in settings.items():
            setting = declared.get(key)
            if setting is None:
                self.unknown_key(path + (key,), list(declared),
                                 f"the settings of {category} {kind!r}")
            try:
                coerce_setting(setting, value)
            except (ValueError, TypeError) as exc:
                self.error(path + (key,), str(exc))
        for setting in factory.settings:
            if setting.required and setting.name not in settings:
                detail = f" ({setting.description})" if setting.description else ""
                self.error(path + (setting.name,),
                           f"missing required setting {setting.name!r} of {category} "
                           f"{kind!r}{detail}")

    def verify(self, data: dict[str, Any]) -> VerifySpec:
        path: Path_ = ("verify",)
        table = self.table(data.get("verify", {}), path, _VERIFY_KEYS, "[verify]")
        d = VerifySpec()
        return VerifySpec(
            error_rate_max=self.percent(table, path, "error_rate_max", d.error_rate_max),
            p95_latency_max=self.duration(table, path, "p95_latency_max", d.p95_latency_max,
                                          positive=True),
            min_requests=self.integer(table, path, "min_requests", d.min_requests, minimum=0),
            consecutive_failures=self.integer(table, path, "consecutive_failures",
                                              d.consecutive_failures, minimum=1),
            interval=self.duration(table, path, "interval", d.interval, positive=True),
            for_=self.duration(table, path, "for", d.for_),
            no_data=self.choice(table, path, "no_data", NO_DATA, d.no_data),
            health=self.boolean(table, path, "health", d.health),
        )

    def timing(self, data: dict[str, Any]) -> Timing:
        path: Path_ = ("timing",)
        table = self.table(data.get("timing", {}), path, _TIMING_KEYS, "[timing]")
        d = Timing()
        return Timing(
            host_upgrade=self.duration(table, path, "host_upgrade", d.host_upgrade),
            drain_timeout=self.duration(table, path, "drain_timeout", d.drain_timeout),
            health_timeout=self.duration(table, path, "health_timeout", d.health_timeout,
                                         positive=True),
            health_interval=self.duration(table, path, "health_interval", d.health_interval,
                                          positive=True),
            command_timeout=self.duration(table, path, "command_timeout", d.command_timeout,
                                          positive=True),
        )

    def groups(self, data: dict[str, Any]) -> tuple[UserGroup, ...]:
        result = []
        seen: dict[str, int] = {}
        for index, item in enumerate(self.array_of_tables(data, "groups")):
            path: Path_ = ("groups", index)
            table = self.table(item, path, _GROUP_KEYS, "[[groups]]")
            name = self.string(table, path, "name", pattern=_NAME_RE, what="group name")
            first = seen.setdefault(name, index)
            if first != index:
                self.error(path + ("name",), f"duplicate group name {name!r} (first defined "
                                             f"at groups[{first}].name, line "
                                             f"{self.line_of(('groups', first, 'name'))})")
            values: list[str] = self.get(table, path, "header_values", [name])
            if not isinstance(values, list) or not values:
                self.error(path + ("header_values",),
                           f"expected a non-empty array of strings, got {_describe(values)}")
            for i, value in enumerate(values):
                if not isinstance(value, str) or not value.strip():
                    self.error(path + ("header_values", i),
                               f"expected a non-empty string, got {_describe(value)}")
                if "\n" in value or "\r" in value:
                    self.error(path + ("header_values", i),
                               "a header value may not contain a line break")
            percent = self.percent(table, path, "percent", None)
            description = self.string(table, path, "description", "")
            result.append(UserGroup(name=name, header_values=tuple(values), percent=percent,
                                    description=description))
        return tuple(result)

    def strategy(self, data: dict[str, Any], override: str | None) -> StrategySpec:
        from . import strategies  # the strategy modules import the model; keep this lazy

        path: Path_ = ("strategy",)
        if "strategy" not in data and override is None:
            self.error(path, "missing required table [strategy] (kind = \"rolling\", "
                             "\"canary\", ...), or give one with --strategy")
        table = self.table(data.get("strategy", {}), path, None, "[strategy]")
        kind = self.string(table, path, "kind", _REQUIRED if override is None else None)
        on_failure = self.choice(table, path, "on_failure", ON_FAILURE, "rollback")
        min_capacity = self.percent(table, path, "min_capacity", 50.0)
        rest = {k: v for k, v in table.items() if k not in _STRATEGY_COMMON}

        params: Any = None
        if kind is not None:
            module = self.strategy_module(strategies, kind, path + ("kind",))
            params = self.parse_params(module, rest)
        elif rest:
            self.error(path + (next(iter(rest)),),
                       "strategy parameters without a strategy: add kind = \"...\"")
        if override is not None and override != kind:
            module = self.strategy_module(strategies, override, None)
            kind = override
            params = module.default_params()
        assert kind is not None
        return StrategySpec(kind=kind, params=params, on_failure=on_failure,
                            min_capacity=min_capacity)

    def strategy_module(self, strategies: Any, kind: str, path: Path_ | None) -> Any:
        try:
            return strategies.get(kind)
        except KeyError:
            names = ", ".join(strategies.names())
            if path is None:
                raise ConfigError(f"unknown strategy {kind!r} (given with --strategy); "
                                  f"known: {names}", file=self.source, key="--strategy") from None
            self.error(path, f"unknown strategy {kind!r}; known: {names}")

    def parse_params(self, module: Any, table: dict[str, Any]) -> Any:
        try:
            return module.parse_params(table, _StrategyWhere(self))
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            # A strategy should report through ``where``; never let a parser slip past as
            # anything but a ConfigError.
            self.error(("strategy",), str(exc))


def _placeholders(argv: Iterable[str]) -> Iterator[str]:
    for part in argv:
        for _, field, _, _ in string.Formatter().parse(part):
            if field is not None:
                yield field


def _pattern_words(pattern: re.Pattern[str]) -> str:
    return {
        _NAME_RE: "letters, digits, '.', '_' and '-', starting with a letter or digit, "
                  "at most 63 characters",
        _RELEASE_RE: "letters, digits, '.', '_', '+' and '-', starting with a letter or "
                     "digit, at most 128 characters",
        _ADDRESS_RE: "a host name or an IP address",
        _VAR_RE: "a letter or '_', then letters, digits and '_'",
        _HEADER_RE: "an HTTP header name",
        _LABEL_KEY_RE: "letters, digits, '.', '_', '/' and '-', starting with a letter or "
                       "digit, at most 63 characters",
        _LABEL_VALUE_RE: "letters, digits and . _ : / @ + = , -, at most 255 characters",
    }.get(pattern, pattern.pattern)
