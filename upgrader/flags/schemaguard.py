"""A flag's ``schema`` enforced: a flag whose code needs a schema version may be turned on only
where that version is live in the fleet's database (``[schema] database``).

"Live" is what the database's own schema record says (:meth:`SchemaBackend.status`): the
releases whose views exist, and the migrations started or complete there (a migration rolled
back is not). A flag's ``schema`` names one of them: a release (``1.5.0``), a migration's name
(``0007_split_name``) or its number (``0007``, the part before the first ``_``).

:class:`SchemaGuard` is the check a :class:`~upgrader.flags.store.FlagStore` runs inside a
change (``store.guard``): every flag the change turns on in the guard's environment is checked,
and one that needs an absent version refuses the whole change
(:class:`~upgrader.errors.FlagSchemaRefused`, exit 3) before anything is written. The schema
database is read only when a change turns such a flag on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .. import db
from ..errors import ConfigError, FlagSchemaRefused
from .model import Flag, FlagSet

__all__ = ["LiveSchema", "SchemaGuard", "flags_needing", "read_live_schema", "turned_on"]


@dataclass(frozen=True, slots=True)
class LiveSchema:
    """What is live in one schema database: release names and migration names."""

    database: str
    releases: tuple[str, ...] = ()
    migrations: tuple[str, ...] = ()

    def has(self, version: str) -> bool:
        return version in self.versions()

    def versions(self) -> set[str]:
        found = set(self.releases) | set(self.migrations)
        found |= {name.split("_", 1)[0] for name in self.migrations}
        return found

    def describe(self) -> tuple[str, ...]:
        """The live versions as a message names them: releases, then migrations."""
        return (tuple(f"release {r}" for r in self.releases)
                + tuple(f"migration {m}" for m in self.migrations))


def read_live_schema(database: str) -> LiveSchema:
    """The live releases and migrations of ``database`` (a SQLite file or a PostgreSQL URL).
    A SQLite file that does not exist has nothing live."""
    from ..schema import open_backend

    shown = db.describe(database)
    try:
        backend = open_backend(database, create=False)
    except ConfigError:
        return LiveSchema(shown)
    with backend:
        status = backend.status()
    releases = tuple(dict.fromkeys(r.release for r in status.live))
    migrations = tuple(dict.fromkeys(
        name for name, _release, state in status.history if state in ("started", "complete")))
    return LiveSchema(shown, releases, migrations)


def needs(flag: Flag, version_names: Iterable[str]) -> bool:
    """Whether ``flag``'s ``schema`` is one of ``version_names`` (a release, a migration's
    name, or its number)."""
    if flag.schema is None:
        return False
    names = set(version_names)
    names |= {n.split("_", 1)[0] for n in names}
    return flag.schema in names


def flags_needing(flagset: FlagSet, version_names: Iterable[str]) -> list[str]:
    """The keys of the flags whose ``schema`` is one of ``version_names``, sorted."""
    names = tuple(version_names)
    return sorted(k for k, f in flagset.flags.items() if needs(f, names))


def turned_on(before: FlagSet, after: FlagSet, environment: str) -> list[Flag]:
    """The flags with a ``schema`` that ``after`` has on in ``environment`` and ``before``
    had off (or did not have)."""
    changed = []
    for key, flag in after.flags.items():
        if flag.schema is None or not flag.env(environment).enabled:
            continue
        old = before.flags.get(key)
        if old is None or not old.env(environment).enabled:
            changed.append(flag)
    return changed


class SchemaGuard:
    """``guard(before, after)``: refuse a change that turns on, in ``environment``, a flag
    whose schema version is not live in ``database``."""

    def __init__(self, database: str, environment: str) -> None:
        self.database = database
        self.environment = environment

    def __call__(self, before: FlagSet, after: FlagSet) -> None:
        flags = turned_on(before, after, self.environment)
        if not flags:
            return
        live = read_live_schema(self.database)
        for flag in flags:
            assert flag.schema is not None
            if not live.has(flag.schema):
                raise FlagSchemaRefused(flag.key, needs=flag.schema, live=live.describe(),
                                        database=live.database, environment=self.environment)
