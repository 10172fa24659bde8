"""Live schema changes on PostgreSQL, the pgroll way: one view schema per release, chosen
with ``search_path``; triggers keep old and new physical columns in step; batched backfill.

Physical layout while a migration is active (release ``v2`` after ``v1``)::

    public.accounts           the base table: old columns, ``_upg_new_<col>`` columns,
                              ``_upg_needs_backfill`` and a BEFORE INSERT OR UPDATE trigger
    upg_v1.accounts           a view: what release v1 reads and writes
    upg_v2.accounts           a view: what release v2 reads and writes
    upgrader_schema.*         bookkeeping: migrations, live releases, backfill progress,
                              the trigger functions

The trigger decides which release is writing from the first schema of the writing session's
``search_path`` (``current_schemas(false)[1]``, pgroll's "latest schema" check): a write
through the new release's views computes the old columns from the new (``down``); any other
write (older releases' views, the base tables, the backfill) computes the new columns from
the old (``up``). The backfill is ``UPDATE ... SET _upg_needs_backfill = false`` over primary
key ranges, one short transaction per batch, its cursor saved in the same transaction, so an
interrupted backfill continues where it stopped.

Every DDL step (start, complete, rollback) is one transaction with ``lock_timeout``; when a
lock is not granted in time the whole transaction is retried with backoff, so a busy table
never queues every writer behind our ACCESS EXCLUSIVE request for long. ``CREATE INDEX
CONCURRENTLY`` cannot run in a transaction: ``add_index`` builds its index after the backfill
(outside the DDL transaction); if the build fails the migration is rolled back.

The package: :mod:`.catalog` (names, the catalogue as found, the recorded layout),
:mod:`.compiler` (operations -> SQL, views, triggers), :mod:`.backfill` (the batched,
resumable backfill and the concurrent indexes), :mod:`.contract` (the statements of complete
and rollback) and :mod:`.backend` (:class:`PostgresBackend`: start, backfill, complete,
rollback, status, plan).
"""

from __future__ import annotations

from ..model import BackfillResult
from .backend import PostgresBackend
from .catalog import (
    BACKFILL_MARKER,
    RELEASE_SCHEMA_PREFIX,
    STATE_SCHEMA,
    migration_from_json,
    migration_to_json,
    release_schema,
    release_url,
    search_path_setting,
)

__all__ = [
    "BACKFILL_MARKER",
    "RELEASE_SCHEMA_PREFIX",
    "STATE_SCHEMA",
    "BackfillResult",
    "PostgresBackend",
    "migration_from_json",
    "migration_to_json",
    "release_schema",
    "release_url",
    "search_path_setting",
]
