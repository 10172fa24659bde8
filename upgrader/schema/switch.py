"""The schema change of a release, as a rollout drives it (:class:`~upgrader.providers.base.
SchemaSwitch`): start before the first host changes, complete after the last host is
verified, roll back when the rollout is rolled back.

Every call reads the database's own record of the migration first, so each is idempotent:
a controller that died half-way through a start (or before journaling it) is resumed by
calling the same method again. Backends are synchronous; calls run in a worker thread, each
with a connection of its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..errors import SchemaError
from . import open_backend
from .loader import load_migration
from .model import SchemaBackend


class MigrationSwitch:
    def __init__(self, database: str, migration: str | Path) -> None:
        self.database = database
        self.migration = load_migration(migration)

    @property
    def name(self) -> str:
        return self.migration.name

    @property
    def irreversible(self) -> str | None:
        """Why a roll-back cannot undo this migration, or None (the engine freezes then)."""
        return self.migration.irreversible

    def _state(self, backend: SchemaBackend) -> str | None:
        status = backend.status()
        state = None
        for name, _release, seen in status.history:
            if name == self.name:
                state = seen
        if status.active == self.name:
            state = "started"
        return state

    def _start(self) -> str:
        with open_backend(self.database) as backend:
            state = self._state(backend)
            if state == "started":
                # a controller that died during the backfill: starting the active migration
                # again resumes its backfill where the last batch ended
                backend.start(self.migration)
                return "already started"
            if state == "complete":
                return "already complete"
            backend.start(self.migration)
            return "started"

    def _complete(self) -> str:
        with open_backend(self.database) as backend:
            state = self._state(backend)
            if state == "complete":
                return "already complete"
            if state != "started":
                raise SchemaError(f"migration {self.name} is not started (state: {state}); "
                                  "cannot complete it", database=backend.url,
                                  migration=self.name)
            backend.complete(self.name)
            return "completed"

    def _rollback(self) -> str:
        with open_backend(self.database) as backend:
            if self._state(backend) != "started":
                return "not started"
            if self.migration.irreversible:
                raise SchemaError(f"migration {self.name}: {self.migration.irreversible}",
                                  database=backend.url, migration=self.name)
            backend.rollback(self.name)
            return "rolled back"

    def _read_state(self) -> str | None:
        with open_backend(self.database) as backend:
            return self._state(backend)

    async def start(self) -> str:
        return await asyncio.to_thread(self._start)

    async def complete(self) -> str:
        return await asyncio.to_thread(self._complete)

    async def rollback(self) -> str:
        return await asyncio.to_thread(self._rollback)

    async def state(self) -> str | None:
        return await asyncio.to_thread(self._read_state)

    async def aclose(self) -> None:
        return None
