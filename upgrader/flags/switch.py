"""The flag switch a rollout uses (``upgrader.providers.base.FlagSwitch``) over a flag store:
a feature roll-out step turns a flag on for a share of users, a failed verification turns it
off. Every change goes through the store, so it is audited like any other.

With ``schema_database`` (the fleet's ``[schema] database``) the store refuses to turn on a
flag whose ``schema`` is not live there (:mod:`upgrader.flags.schemaguard`)."""

from __future__ import annotations

import asyncio
from typing import Any

from . import edit
from .schemaguard import SchemaGuard, flags_needing
from .store import default_actor, open_store


class StoreFlagSwitch:
    def __init__(self, store_spec: str, environment: str, *, actor: str | None = None,
                 schema_database: str | None = None) -> None:
        self.environment = environment
        self.actor = actor or f"{default_actor()} (rollout)"
        self._store = open_store(store_spec)
        if schema_database is not None:
            self._store.guard = SchemaGuard(schema_database, environment)

    async def set_flag(self, key: str, *, on: bool, percent: float | None = None,
                       groups: tuple[str, ...] = (), reason: str = "") -> None:
        def change() -> None:
            if on and groups:
                self._store.change(
                    lambda flagset: edit.set_group_rule(flagset, key, self.environment,
                                                        tuple(groups)),
                    action="groups", actor=self.actor, reason=reason)
            if on and percent is not None:
                self._store.set_rollout(key, self.environment, percent, actor=self.actor,
                                        reason=reason)
            self._store.set_enabled(key, self.environment, on, actor=self.actor, reason=reason)

        await asyncio.to_thread(change)

    async def flag_state(self, key: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            flag = self._store.load().flags.get(key)
            if flag is None:
                return {"on": False, "percent": None, "missing": True}
            env = flag.env(self.environment)
            percents = [r.percent for r in env.rules if r.percent is not None]
            groups = next((list(r.groups) for r in env.rules if r.name == edit.GROUPS_RULE), [])
            return {"on": env.enabled, "percent": percents[0] if len(percents) == 1 else None,
                    "groups": groups}

        return await asyncio.to_thread(read)

    async def flags_needing(self, versions: tuple[str, ...]) -> list[str]:
        """The flags on in this environment whose ``schema`` is one of ``versions`` (a
        release, a migration's name or number): those a roll-back of that schema turns off
        first."""
        def read() -> list[str]:
            flagset = self._store.load()
            return [k for k in flags_needing(flagset, versions)
                    if flagset.flags[k].env(self.environment).enabled]

        return await asyncio.to_thread(read)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._store.close)
