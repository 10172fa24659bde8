"""Load a fleet file (TOML) into a :class:`upgrader.model.Fleet`, checking every key.

Layer: the composer above the features, not a shared leaf. It reads the fleet file, checks the
top-level keys and the tables that belong to the fleet itself (``[fleet]``, ``[release]``,
``[commands]``, ``[[hosts]]``, ``[defaults]``, the provider tables, ``[verify]``,
``[timing]``, ``[[groups]]``, ``[routing]``, ``[flags]``), and hands every other table to the
one public parser of the feature that owns it:

- ``[lab]``: :func:`upgrader.lab.fleet_table.parse_lab`,
- ``[strategy]``: :func:`upgrader.strategies.table.parse_strategy`,
- ``[windows]``: :func:`upgrader.policy.parse_windows`,
- ``[schema]`` and ``[release] migration``: :func:`upgrader.schema.loader.parse_schema`.

Every problem is a :class:`~upgrader.errors.ConfigError` naming the file, the key path
(``hosts[3].labels.zone``) and the line, raised through the checked-TOML toolkit
(:mod:`upgrader.tomlsource`), which finds a line only when it raises, so large fleets load in
linear time.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol

from . import units
from .lab.fleet_table import lab_prometheus_url, parse_lab
from .model import (
    TEMPLATE_FIELDS,
    Commands,
    FlagsSpec,
    Fleet,
    FleetLab,
    Host,
    MetricSpec,
    ProviderSpec,
    Releases,
    RollbackWindow,
    SchemaSpec,
    Timing,
    UserGroup,
    VerifySpec,
    WindowPolicy,
)
from .policy import parse_windows
from .providers.base import ProviderFactory, Setting
from .redact import is_secret_name
from .schema.loader import parse_schema
from .strategies.table import parse_strategy, where_in_file
from .tomlsource import (
    REQUIRED,
    Checker,
    KeyPath,
    check_path,
    check_url,
    describe_value,
    did_you_mean,
    format_key_path,
    parse_key_path,
    parse_toml,
    read_text,
)

__all__ = ["ProviderRegistry", "format_key_path", "load_fleet", "loads_fleet", "parse_key_path",
           "strategy_where"]

NO_DATA = ("fail", "pass", "wait")
CLUSTERS = ("main", "new")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: a flag key, as the flags file allows it (upgrader.flags.loader)
_FLAG_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
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
    return loads_fleet(read_text(path, "fleet file"), source=path, base_dir=path.parent,
                       registry=registry, strategy=strategy)


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
    data = parse_toml(text, source)
    return _Loader(text, source, base_dir, registry).fleet(data, strategy)


def load_verify(path: str | Path, *, registry: ProviderRegistry | None = None) -> VerifySpec:
    """A verify policy of its own (``upgrader analysis replay --verify FILE``): the file's
    ``[verify]`` table and its ``[[verify.metrics]]``, read by the fleet file's own parser
    (same keys, same errors naming file, key and line). A whole fleet file is accepted too:
    only its ``[verify]`` is read."""
    path = Path(path)
    text = read_text(path, "verify policy file")
    data = parse_toml(text, path)
    loader = _Loader(text, path, path.parent, registry)
    loader.table(data, (), _TOP_KEYS, "the verify policy file")
    if "verify" not in data:
        loader.error(("verify",), "missing required table [verify] (the policy to replay: "
                                  "[verify] and its [[verify.metrics]])")
    return loader.verify(data)


def strategy_where(fleet: Fleet) -> Any:
    """The ``where`` to pass to ``strategy.compile(fleet, params, where)``: an error the
    strategy finds only once it sees the fleet (an unknown group, too few new hosts) names
    ``strategy.<key>`` and its line in the fleet file (read again, only when raising)."""
    return where_in_file(fleet)


# ---------------------------------------------------------------------------------------------
# The loader


_TOP_KEYS = ("fleet", "release", "commands", "transport", "balancer", "health", "snapshot",
             "notifiers", "verify", "timing", "strategy", "groups", "routing", "hosts",
             "defaults", "lab", "flags", "schema", "windows")
_FLEET_KEYS = ("name", "environment")
_RELEASE_KEYS = ("current", "target", "migration", "rollback_window", "flags", "flags_hold")
_COMMAND_KEYS = ("install", "start", "stop", "system_test", "current", "pre_release_test",
                 "switch")
_REQUIRED_COMMANDS = ("install", "start", "stop")
_VERIFY_KEYS = ("error_rate_max", "p95_latency_max", "min_requests", "consecutive_failures",
                "interval", "for", "no_data", "health", "health_sample",
                "health_period", "metrics", "judge", "window", "inconclusive",
                "inconclusive_for")
#: the keys of a ``[[verify.metrics]]`` table; any other key is a setting of its source
_METRIC_KEYS = ("name", "source", "query", "kind", "direction", "max", "max_increase",
                "critical", "no_data", "dry_run")
METRIC_KINDS = ("proportion", "value")
METRIC_DIRECTIONS = ("increase", "decrease", "either")
METRIC_NO_DATA = ("inconclusive", "pass", "fail")
_TIMING_KEYS = ("host_upgrade", "drain_timeout", "health_timeout", "health_interval",
                "command_timeout")
_GROUP_KEYS = ("name", "header_values", "percent", "description")
_ROUTING_KEYS = ("group_header", "user_header")
_HOST_KEYS = ("name", "address", "port", "labels", "vars", "cluster", "slots")
_DEFAULTS_KEYS = ("labels", "vars", "port")
#: a var written as a table: where its value comes from, and whether it is secret
_VAR_SOURCES = ("env", "file", "value")
_VAR_REFERENCE_KEYS = (*_VAR_SOURCES, "secret")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: a secret file larger than this is a mistake (a key pair, a log), not one value
_VAR_FILE_LIMIT = 64 * 1024


class _Loader:
    def __init__(self, text: str, source: str | Path, base_dir: Path | None,
                 registry: ProviderRegistry | None) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self.registry = registry
        self.checker = Checker(source, text)
        c = self.checker
        # the toolkit's getters, under the names this loader has always used
        self.table = c.table
        self.get = c.get
        self.integer = c.integer
        self.boolean = c.boolean
        self.choice = c.choice
        self.duration = c.duration
        self.percent = c.percentage
        self.unknown_key = c.unknown_key

    def port(self, table: Mapping[str, Any], path: KeyPath, key: str,
             default: int | None = None) -> int | None:
        return self.checker.port(table, path, key, default)

    # -- errors

    def line_of(self, path: KeyPath) -> int:
        return self.checker.line_of(path) or 1

    def error(self, path: KeyPath, message: str) -> NoReturn:
        self.checker.error(path, message)

    # -- shapes

    def string(self, table: Mapping[str, Any], path: KeyPath, key: str,
               default: Any = REQUIRED, *, pattern: re.Pattern[str] | None = None,
               what: str = "") -> Any:
        """The toolkit's string getter, with this file's words for its patterns."""
        return self.checker.string(table, path, key, default, pattern=pattern, what=what,
                                   words=_pattern_words(pattern) if pattern else None)

    def string_map(self, value: Any, path: KeyPath, *,
                   key_pattern: re.Pattern[str] | None = None) -> dict[str, str]:
        table: dict[str, str] = self.table(value, path, None, "")
        for key, item in table.items():
            if key_pattern is not None and not key_pattern.fullmatch(key):
                self.error(path + (key,), f"{key!r} is not a valid name here"
                                          f" (allowed: {_pattern_words(key_pattern)})")
            if not key or "\n" in key or "\r" in key:
                self.error(path + (key,), "a key here must be non-empty, without line breaks")
            if not isinstance(item, str):
                self.error(path + (key,), f"expected a string, got {describe_value(item)}")
            if "\n" in item or "\r" in item:
                self.error(path + (key,), "a value here may not contain a line break")
            if _CONTROL_RE.search(item) or _CONTROL_RE.search(key):
                self.error(path + (key,), "control characters (NUL, escape, ...) are not "
                                          "allowed here")
        return table

    def labels(self, value: Any, path: KeyPath) -> dict[str, str]:
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
        return self.checker.array_of_tables(data, (), key)

    # -- the fleet

    def fleet(self, data: dict[str, Any], strategy_override: str | None) -> Fleet:
        self.table(data, (), _TOP_KEYS, "the fleet file")

        fleet_table = self.table(self.get(data, (), "fleet", REQUIRED), ("fleet",),
                                 _FLEET_KEYS, "[fleet]")
        name = self.string(fleet_table, ("fleet",), "name", pattern=_NAME_RE, what="fleet name")
        environment = self.string(fleet_table, ("fleet",), "environment", "production",
                                  pattern=_NAME_RE, what="environment name")

        release_table = self.table(self.get(data, (), "release", REQUIRED), ("release",),
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

        # an SSH lab gives the ssh transport and its keys; a local lab, the fleet's default
        lab_transport = lab.transport_spec() if lab is not None and "transport" not in data \
            else None
        transport = lab_transport or self.provider(data, "transport", "transport",
                                                   default_kind="local")
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
        if lab is not None:
            verify = self.lab_metrics(verify, lab)
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
            if "://" in store:
                self.checker.url(table, ("flags",), "store", what="flag store URL")
            else:
                self.checker.path(table, ("flags",), "store", what="flag store path")
                # like [lab] dir and `upgrader flags --store`: relative to the working folder
                store = str(Path(store).expanduser().resolve())
            flags = FlagsSpec(store=store, environment=self.string(
                table, ("flags",), "environment", environment, pattern=_NAME_RE,
                what="environment name"))
        windows = self.windows(data["windows"]) if "windows" in data else None
        if strategy.kind == "feature" and flags is None:
            self.error(("flags",), "a feature roll-out needs a [flags] table naming the store")
        schema = self.schema(data, release_table, current, target, lab)
        rollback_window = self.rollback_window(release_table)
        release_flags = self.release_flags(release_table, flags)
        flags_hold = self.duration(release_table, ("release",), "flags_hold", 30.0,
                                   positive=True)

        source = self.source
        return Fleet(
            name=name,
            hosts=hosts,
            releases=Releases(current=current, target=target, flags=release_flags,
                              flags_hold=flags_hold),
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
            rollback_window=rollback_window,
        )

    def schema(self, data: dict[str, Any], release_table: dict[str, Any], current: str,
               target: str, lab: FleetLab | None) -> SchemaSpec | None:
        """``[release] migration`` and ``[schema]``: :func:`upgrader.schema.loader.parse_schema`."""
        base = Path(self.source).parent if self.source != "<string>" else Path.cwd()
        return parse_schema(data.get("schema"), release_table, self.checker, current=current,
                            target=target,
                            default_database=lab.database_file if lab is not None else None,
                            base_dir=base)

    def rollback_window(self, release_table: dict[str, Any]) -> RollbackWindow | None:
        """``[release] rollback_window``: a duration (``"2h"``) or a count of releases (``2``)."""
        if "rollback_window" not in release_table:
            return None
        value = release_table["rollback_window"]
        path = ("release", "rollback_window")
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                self.error(path, f"rollback_window must be a duration like '2h' or a count of "
                                 f"releases >= 1, got {value}")
            return RollbackWindow(releases=value)
        if isinstance(value, str):
            try:
                seconds = units.parse_duration(value)
            except ValueError as exc:
                self.error(path, f"rollback_window: {exc} (or a count of releases, like 2)")
            if seconds <= 0:
                self.error(path, "rollback_window must be longer than 0s (leave it out for no "
                                 "window)")
            return RollbackWindow(seconds=seconds)
        self.error(path, f"rollback_window must be a duration like '2h' or a count of releases "
                         f"like 2, got {_kind_of(value)}")


    def release_flags(self, release_table: Mapping[str, Any],
                      flags: FlagsSpec | None) -> tuple[str, ...]:
        """``[release] flags``: the keys of the flags that ship with the target release."""
        path = ("release",)
        keys = self.checker.array(release_table, path, "flags", [], what="flag keys")
        seen: list[str] = []
        for index, key in enumerate(keys):
            where = path + ("flags", index)
            if not isinstance(key, str) or not _FLAG_KEY_RE.fullmatch(key):
                self.error(where, f"expected a flag key (letters, digits, '.', '_', '-', at "
                                  f"most 128), got {describe_value(key)}")
            if key in seen:
                self.error(where, f"flag {key!r} is listed twice")
            seen.append(key)
        if seen and flags is None:
            self.error(path + ("flags",), "[release] flags names flags, but the fleet has no "
                                          "[flags] table naming the store they live in")
        return tuple(seen)

    def windows(self, value: Any) -> WindowPolicy:
        """``[windows]``: deploy windows, checked by :mod:`upgrader.policy`."""
        return parse_windows(value, self.checker.under("windows"))

    def lab(self, value: Any, current: str) -> FleetLab:
        """``[lab]``: checked by :mod:`upgrader.lab.fleet_table`."""
        return parse_lab(value, self.checker.under("lab"), current)

    def hosts(self, data: dict[str, Any], lab: FleetLab | None) -> tuple[Host, ...]:
        defaults = self.table(data.get("defaults", {}), ("defaults",), _DEFAULTS_KEYS,
                              "[defaults]")
        default_labels = self.labels(defaults.get("labels", {}), ("defaults", "labels"))
        default_vars, default_secrets = self.host_vars(defaults.get("vars", {}),
                                                       ("defaults", "vars"))
        default_port = self.port(defaults, ("defaults",), "port")

        items = self.array_of_tables(data, "hosts")
        if not items and lab is not None:
            hosts = [self.with_defaults(h, default_labels, default_vars, default_port,
                                        default_secrets)
                     for h in lab.host_objects()]
            return tuple(hosts)
        if not items:
            self.error(("hosts",), "no hosts: add [[hosts]] tables (or a [lab] table, "
                                   "which makes local hosts)")

        result = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            path: KeyPath = ("hosts", index)
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
            host_vars, secret_vars = self.host_vars(table["vars"], path + ("vars",)) \
                if "vars" in table else ({}, frozenset())
            cluster = self.choice(table, path, "cluster", CLUSTERS, "main")
            slots = self.slots(table["slots"], path + ("slots",)) if "slots" in table else {}
            host = Host(name=name, address=address, port=port, labels=labels, vars=host_vars,
                        cluster=cluster, slots=slots, secret_vars=secret_vars)
            result.append(self.with_defaults(host, default_labels, default_vars, default_port,
                                             default_secrets))
        return tuple(result)

    @staticmethod
    def with_defaults(host: Host, labels: dict[str, str], host_vars: dict[str, str],
                      port: int | None, secret_vars: frozenset[str] = frozenset()) -> Host:
        """[defaults] under a host's own values (per key for labels and vars). A var is secret
        as the table that gives its value says: a host's own plain value overrides a secret
        default, and is then secret only if its name says so."""
        if not labels and not host_vars and port is None:
            return host
        inherited = frozenset(name for name in secret_vars if name not in host.vars)
        return Host(
            name=host.name, address=host.address,
            port=host.port if host.port is not None else port,
            labels={**labels, **host.labels} if labels else host.labels,
            vars={**host_vars, **host.vars} if host_vars else host.vars,
            cluster=host.cluster, slots=host.slots,
            secret_vars=host.secret_vars | inherited,
        )

    def host_vars(self, value: Any, path: KeyPath) -> tuple[dict[str, str], frozenset[str]]:
        """``vars``: each a string, or a table saying where the value comes from
        (``{ env = "NAME" }``, ``{ file = "PATH" }``, ``{ value = "..." }``) and whether it is
        secret (``secret``; true by default for ``env`` and ``file``). References are
        resolved here, so a missing variable or an unreadable file stops the load. Returns
        the values and the names of the secret ones (those, and the secret-named)."""
        table = self.table(value, path, None, "")
        values: dict[str, str] = {}
        secret: set[str] = set()
        for key, item in table.items():
            if isinstance(item, dict):
                values[key], is_secret = self.var_reference(item, path + (key,))
                if is_secret:
                    secret.add(key)
            elif not isinstance(item, str) and is_secret_name(key):
                self.error(path + (key,), "expected a string or a var table, got "
                                          f"{_kind_of(item)}")     # never the value itself
            else:
                values[key] = item
        self.string_map(values, path, key_pattern=_VAR_RE)
        self.check_var_names(values, path)
        secret.update(key for key in values if is_secret_name(key))
        return values, frozenset(secret)

    def var_reference(self, ref: dict[str, Any], path: KeyPath) -> tuple[str, bool]:
        """One var written as a table: its value and whether it is secret. Errors never show
        the value."""
        self.table(ref, path, _VAR_REFERENCE_KEYS, "a var table (env, file or value; secret)")
        sources = [key for key in _VAR_SOURCES if key in ref]
        if len(sources) != 1:
            self.error(path, "a var table needs exactly one of env = \"NAME\", file = \"PATH\" "
                             "or value = \"...\"" + (f" (got {', '.join(sources)})"
                                                     if sources else ""))
        source = sources[0]
        secret = self.boolean(ref, path, "secret", source != "value")
        where = path + (source,)
        if not isinstance(ref[source], str):
            self.error(where, f"expected a string, got {_kind_of(ref[source])}")
        text = self.string(ref, path, source)
        if source == "env":
            if not _ENV_NAME_RE.fullmatch(text):
                self.error(where, f"{text!r} is not an environment variable name")
            found = os.environ.get(text)
            if found is None:
                self.error(where, f"environment variable {text} is not set")
            if not found:
                self.error(where, f"environment variable {text} is empty")
            return self.var_text(found, where, f"environment variable {text}"), secret
        if source == "file":
            self.checker.path(ref, path, source, what="var file path")
            file = Path(text).expanduser()
            if not file.is_absolute():
                file = (self.base_dir or Path.cwd()) / file
            try:
                with open(file, "rb") as handle:
                    data = handle.read(_VAR_FILE_LIMIT + 1)
            except (OSError, ValueError) as exc:
                self.error(where, f"cannot read {file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}")
            if len(data) > _VAR_FILE_LIMIT:
                self.error(where, f"{file} is larger than {_VAR_FILE_LIMIT // 1024} KiB; a var "
                                  "file holds one value")
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                self.error(where, f"{file} is not UTF-8 text")
            # one trailing line break is how editors and `echo` end a file, not part of it
            content = content[:-1] if content.endswith("\n") else content
            content = content[:-1] if content.endswith("\r") else content
            if not content:
                self.error(where, f"{file} is empty")
            return self.var_text(content, where, str(file)), secret
        return text, secret

    def var_text(self, text: str, path: KeyPath, origin: str) -> str:
        """A var's value read from outside the file: one line, no control characters."""
        if "\n" in text or "\r" in text:
            self.error(path, f"the value of {origin} has a line break; a var is one line")
        if _CONTROL_RE.search(text):
            self.error(path, f"the value of {origin} has control characters (NUL, escape, "
                             "...); they are not allowed in a var")
        return text

    def check_var_names(self, host_vars: Mapping[str, str], path: KeyPath) -> None:
        for key in host_vars:
            if key in TEMPLATE_FIELDS:
                self.error(path + (key,), f"{key!r} is a built-in command placeholder; "
                                          f"choose another name for this var")

    def slots(self, value: Any, path: KeyPath) -> dict[str, int]:
        table = self.table(value, path, None, "")
        for key in table:
            if not _NAME_RE.fullmatch(key):
                self.error(path + (key,), f"{key!r} is not a valid slot name"
                                          f" (allowed: {_pattern_words(_NAME_RE)})")
            self.port(table, path, key)
        return table

    def commands(self, data: dict[str, Any], hosts: tuple[Host, ...],
                 lab: FleetLab | None) -> Commands:
        path: KeyPath = ("commands",)
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
                         commands.system_test, commands.pre_release_test,
                         commands.switch):
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

    def command(self, value: Any, path: KeyPath, allowed: set[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            self.error(path, "expected a non-empty array of strings (the program and its "
                             f"arguments, no shell), got {describe_value(value)}")
        for index, part in enumerate(value):
            if not isinstance(part, str):
                self.error(path + (index,), f"expected a string, got {describe_value(part)}")
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

    def provider_table(self, value: Any, path: KeyPath, category: str, where: str,
                       default_kind: str | None = None) -> ProviderSpec:
        table = self.table(value, path, None, where)
        kind = self.string(table, path, "kind",
                           REQUIRED if default_kind is None else default_kind,
                           pattern=_NAME_RE, what="provider kind")
        settings = {k: v for k, v in table.items() if k != "kind"}
        if self.registry is not None:
            self.check_settings(category, kind, settings, path)
        return ProviderSpec(kind=kind, settings=settings)

    def check_settings(self, category: str, kind: str, settings: dict[str, Any],
                       path: KeyPath) -> None:
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
                _check_setting_text(key, value)
            except (ValueError, TypeError) as exc:
                self.error(path + (key,), str(exc))
        for setting in factory.settings:
            if setting.required and setting.name not in settings:
                detail = f" ({setting.description})" if setting.description else ""
                self.error(path + (setting.name,),
                           f"missing required setting {setting.name!r} of {category} "
                           f"{kind!r}{detail}")

    def verify(self, data: dict[str, Any]) -> VerifySpec:
        path: KeyPath = ("verify",)
        table = self.table(data.get("verify", {}), path, _VERIFY_KEYS, "[verify]")
        d = VerifySpec()
        metrics = self.metrics(table)
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
            health_sample=self.integer(table, path, "health_sample", d.health_sample,
                                       minimum=1),
            health_period=self.duration(table, path, "health_period", d.health_period,
                                        positive=True),
            metrics=metrics,
            judge=self.choice(table, path, "judge", ("threshold", "statistical"),
                              "statistical" if metrics else "threshold"),
            window=self.integer(table, path, "window", d.window, minimum=1, maximum=1000),
            inconclusive=self.choice(table, path, "inconclusive", ("pause", "fail", "pass"),
                                     d.inconclusive),
            inconclusive_for=self.duration(table, path, "inconclusive_for",
                                           d.inconclusive_for),
        )

    def metrics(self, verify: Mapping[str, Any]) -> tuple[MetricSpec, ...]:
        """``[[verify.metrics]]``: the metrics the judge compares (empty: the defaults).
        Keys other than the metric's own are settings of its source, checked against what
        the source declares when the registry is known."""
        c = self.checker
        result: list[MetricSpec] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(c.array_of_tables(verify, ("verify",), "metrics")):
            path: KeyPath = ("verify", "metrics", index)
            table = self.table(item, path, None, "[[verify.metrics]]")
            name = self.string(table, path, "name", pattern=_NAME_RE, what="metric name")
            first = seen.setdefault(name, index)
            if first != index:
                line = self.line_of(("verify", "metrics", first, "name"))
                self.error(path + ("name",), f"duplicate metric name {name!r} (first defined "
                                             f"at verify.metrics[{first}].name, line {line})")
            source = self.string(table, path, "source", "balancer", pattern=_NAME_RE,
                                 what="metric source")
            settings = {k: v for k, v in table.items() if k not in _METRIC_KEYS}
            self.metric_settings(source, settings, path)
            query: str | tuple[str, ...]
            raw = table.get("query", name if source == "balancer" else REQUIRED)
            if raw is REQUIRED:
                self.get(table, path, "query", REQUIRED, where="[[verify.metrics]]")
            if isinstance(raw, list):
                if not raw:
                    self.error(path + ("query",), "expected a non-empty query")
                for i, part in enumerate(raw):
                    if not isinstance(part, str) or _CONTROL_RE.search(part):
                        self.error(path + ("query", i), f"expected a string without control "
                                                        f"characters, got {describe_value(part)}")
                query = tuple(raw)
            elif isinstance(raw, str) and raw.strip():
                if _CONTROL_RE.search(raw):
                    self.error(path + ("query",), "control characters (NUL, escape, ...) are "
                                                  "not allowed here")
                query = raw
            else:
                self.error(path + ("query",), f"expected a query (a string, or an array of "
                                              f"strings), got {describe_value(raw)}")
            default_kind = ("proportion" if source == "balancer" and query == "error_rate"
                            else "value")
            limit = self.get(table, path, "max", None)
            if limit is not None and (isinstance(limit, bool) or
                                      not isinstance(limit, (int, float)) or limit < 0):
                self.error(path + ("max",), f"expected a number >= 0 (the canary's absolute "
                                            f"limit), got {describe_value(limit)}")
            result.append(MetricSpec(
                name=name, source=source, query=query,
                kind=self.choice(table, path, "kind", METRIC_KINDS, default_kind),
                direction=self.choice(table, path, "direction", METRIC_DIRECTIONS, "increase"),
                max=float(limit) if limit is not None else None,
                max_increase=self.increase(table, path),
                critical=self.boolean(table, path, "critical", False),
                no_data=self.choice(table, path, "no_data", METRIC_NO_DATA, "inconclusive"),
                dry_run=self.boolean(table, path, "dry_run", False),
                settings=settings))
        return tuple(result)

    def lab_metrics(self, verify: VerifySpec, lab: FleetLab) -> VerifySpec:
        """A ``prometheus`` metric without ``url`` in a fleet with ``[lab]`` reads the
        Prometheus of the running lab (``lab up --prometheus``); a running lab without one is
        refused (LabMisfit, exit 3)."""
        wanting = [m.name for m in verify.metrics
                   if m.source == "prometheus" and "url" not in m.settings]
        if not wanting:
            return verify
        url = lab_prometheus_url(lab, wanting, self.source)
        if url is None:
            return verify
        metrics = tuple(dataclasses.replace(m, settings={**m.settings, "url": url})
                        if m.name in wanting else m for m in verify.metrics)
        return dataclasses.replace(verify, metrics=metrics)

    def increase(self, table: Mapping[str, Any], path: KeyPath) -> float | None:
        """``max_increase``: percent of the baseline's value, ``"20%"`` or ``20`` (>= 0; more
        than 100 is allowed: a latency may double)."""
        value = table.get("max_increase")
        if value is None:
            return None
        number: Any = value
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                number = float(value.strip()[:-1])
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0 \
                or number != number or number == float("inf"):
            self.error(path + ("max_increase",), f"expected an allowed increase in percent "
                                                 f"('20%' or 20, >= 0), got "
                                                 f"{describe_value(value)}")
        return float(number)

    def metric_settings(self, source: str, settings: dict[str, Any], path: KeyPath) -> None:
        """Keys of a metric table that are not the metric's own: settings of its source.
        Without a registry, only a near-miss of a metric key is caught (a typo)."""
        if self.registry is None:
            for key in settings:
                if did_you_mean(key, _METRIC_KEYS):
                    self.unknown_key(path + (key,), _METRIC_KEYS, "[[verify.metrics]]")
            return
        factory = self.registry.lookup("metrics", source)
        if factory is None:
            names = ", ".join(sorted(self.registry.names("metrics"))) or "(none)"
            self.error(path + ("source",), f"unknown metric source {source!r}"
                                           f"{did_you_mean(source, self.registry.names('metrics'))}"
                                           f"; registered: {names}")
        declared = [s.name for s in factory.settings]
        for key in settings:
            if key not in declared:
                self.unknown_key(path + (key,), (*_METRIC_KEYS, *declared),
                                 f"[[verify.metrics]] (source {source!r})")
        self.check_settings("metrics", source, settings, path)

    def timing(self, data: dict[str, Any]) -> Timing:
        path: KeyPath = ("timing",)
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
            path: KeyPath = ("groups", index)
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
                           f"expected a non-empty array of strings, got {describe_value(values)}")
            for i, value in enumerate(values):
                if not isinstance(value, str) or not value.strip():
                    self.error(path + ("header_values", i),
                               f"expected a non-empty string, got {describe_value(value)}")
                if "\n" in value or "\r" in value:
                    self.error(path + ("header_values", i),
                               "a header value may not contain a line break")
            percent = self.percent(table, path, "percent", None)
            description = self.string(table, path, "description", "")
            result.append(UserGroup(name=name, header_values=tuple(values), percent=percent,
                                    description=description))
        return tuple(result)

    def strategy(self, data: dict[str, Any], override: str | None) -> Any:
        """``[strategy]``: :func:`upgrader.strategies.table.parse_strategy`."""
        return parse_strategy(data.get("strategy"), self.checker.under("strategy"), override)


def _is_url_setting(name: str) -> bool:
    """``url``, ``admin_url``, ``uri``, ...: a provider setting that holds a URL."""
    return name in ("url", "uri") or name.endswith(("_url", "_uri"))


def _check_setting_text(name: str, value: Any) -> None:
    """Rules for the text of every provider setting, on top of its declared type: a URL
    setting is a URL without whitespace or control characters (``admin_url = "x\\ntouch y"``
    would put a second line into a request); no string anywhere in a setting holds a NUL,
    which no file name, header or command can carry; a ``*_file``, ``*_dir`` or ``*_files``
    setting holds paths the OS can take (:func:`check_path`). ValueError names the problem."""
    if _is_url_setting(name) and isinstance(value, str):
        check_url(value, what=f"{name} (a URL)")
    if name.endswith(("_file", "_dir")) and isinstance(value, str) and value:
        check_path(value, what=f"{name} path")
    if name.endswith("_files") and isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, str):
                check_path(item, what=f"path in {name}")
    for item in _strings_in(value):
        if "\x00" in item:
            raise ValueError("a NUL character is not allowed in a setting")


def _strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings_in(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings_in(key)
            yield from _strings_in(item)


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


def _kind_of(value: Any) -> str:
    """'an integer', 'a boolean', ...: what :func:`describe_value` says, without the value (a
    var's value may be a secret)."""
    return describe_value(value).split(" (", 1)[0]
