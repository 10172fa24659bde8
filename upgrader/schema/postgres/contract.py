"""PostgreSQL schema changes: the statements of complete (contract) and of rollback.

Both are computed from the layout that start recorded (``upgrader_schema.migrations``), not
from the migration file, so they run the same from any controller.
"""

from __future__ import annotations

from typing import Any

from .catalog import BACKFILL_MARKER, STATE_SCHEMA, Layout, render, trigger_names


def complete_statements(conn: Any, name: str, layout: dict[str, Any]
                        ) -> tuple[list[str], list[str]]:
    """(release schemas the contraction breaks, statements of the complete)."""
    from psycopg import sql

    base = layout["base"]
    tables = [Layout.from_json(t) for t in layout["tables"]]
    others = [r for (r,) in conn.execute(
        f"SELECT schema FROM {STATE_SCHEMA}.releases WHERE schema <> %s ORDER BY seq",
        (layout["schema"],)).fetchall()]
    broken: set[str] = set()
    if any(raw.get("on_complete") for raw in layout["raw"]):
        broken.update(others)          # unknown SQL: assume it breaks every older view
    for lay in tables:
        if lay.created:
            continue
        dropped = list(lay.drop_at_complete)
        derived = any(p.kind == "add_column" for p in lay.pairs)
        rows = conn.execute(
            """SELECT DISTINCT vn.nspname, d.refobjsubid
                 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                 JOIN pg_class v ON v.oid = r.ev_class
                 JOIN pg_namespace vn ON vn.oid = v.relnamespace
                 LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid
                                         AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_rewrite'::regclass
                  AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = to_regclass(%s)
                  AND vn.nspname = ANY(%s)
                  AND (%s OR a.attname = ANY(%s))""",
            (sql.Identifier(base, lay.physical).as_string(conn), others,
             derived, dropped)).fetchall()
        broken.update(schema for schema, _ in rows)
    statements: list[Any] = [sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(s))
                             for s in others if s in broken]
    for lay in tables:
        if not lay.pairs:
            continue
        trigger, function = trigger_names(name, lay.physical)
        statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            sql.Identifier(trigger), sql.Identifier(base, lay.physical)))
        statements.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
            sql.Identifier(STATE_SCHEMA, function)))
    for lay in tables:
        table = sql.Identifier(base, lay.physical)
        for column in lay.drop_at_complete:
            statements.append(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                table, sql.Identifier(column)))
        renames = [(physical, view) for view, physical in lay.view if physical != view]
        sources = {physical for physical, _ in renames}
        if any(view in sources for _, view in renames):
            temporary = [(physical, f"_upg_tmp_{n}") for n, (physical, _) in
                         enumerate(renames)]
            statements += [sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                table, sql.Identifier(a), sql.Identifier(b)) for a, b in temporary]
            renames = [(tmp, view) for (_, tmp), (_, view) in zip(temporary, renames)]
        statements += [sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
            table, sql.Identifier(a), sql.Identifier(b)) for a, b in renames]
        final = {physical: view for view, physical in lay.view}
        for constraint, physical in lay.checks:
            # PostgreSQL 12+ proves NOT NULL from the validated check: no table scan
            statements.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL")
                              .format(table, sql.Identifier(final.get(physical, physical))))
            statements.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                table, sql.Identifier(constraint)))
        if lay.marker:
            statements.append(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                table, sql.Identifier(BACKFILL_MARKER)))
        if lay.name != lay.physical:
            statements.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                table, sql.Identifier(lay.name)))
    for raw in layout["raw"]:
        if raw.get("on_complete"):
            statements.append(raw["on_complete"])
    return sorted(broken), [render(conn, s) for s in statements]


def validations(layout: dict[str, Any]) -> list[Any]:
    """``VALIDATE CONSTRAINT`` of every NOT VALID check and foreign key of start."""
    from psycopg import sql

    out = []
    for t in layout["tables"]:
        table = sql.Identifier(layout["base"], t["physical"])
        for constraint in [c for c, _ in t["checks"]] + list(t["fks"]):
            out.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                table, sql.Identifier(constraint)))
    return out


def rollback_statements(conn: Any, name: str, layout: dict[str, Any]) -> list[str]:
    """Undo start: drop the view schemas, triggers and functions it made, then its DDL's
    undo in reverse order."""
    from psycopg import sql

    statements: list[Any] = [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
        sql.Identifier(layout["schema"]))]
    if layout.get("baseline") and layout.get("previous_schema"):
        statements.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(layout["previous_schema"])))
    for t in layout["tables"]:
        lay = Layout.from_json(t)
        if lay.pairs:
            trigger, function = trigger_names(name, lay.physical)
            statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(trigger), sql.Identifier(layout["base"], lay.physical)))
            statements.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                sql.Identifier(STATE_SCHEMA, function)))
    statements += [undo for _, undo in reversed(layout["undo"])]
    return [render(conn, s) for s in statements]
