"""PostgreSQL schema changes: the triggers that keep old and new physical columns in step.

Each table a migration changes gets one BEFORE INSERT OR UPDATE trigger (a PL/pgSQL function
in ``upgrader_schema``). It decides which release is writing from the first schema of the
session's ``search_path``: a write through the new release's views computes the old columns
from the new (``down``); any other write (older releases' views, the base tables, the
backfill) computes the new columns from the old (``up``).
"""

from __future__ import annotations

from typing import Any

from ...errors import SchemaError
from .catalog import BACKFILL_MARKER, STATE_SCHEMA, Layout, Pair, trigger_names
from .compiler import Compiler


def _named(column: str | None) -> str:
    """The physical column of a trigger pair's side that has an expression (always set)."""
    if column is None:
        raise SchemaError("a recorded trigger pair lacks its column (a corrupt layout in "
                          "upgrader_schema.migrations)")
    return column



def table_trigger_names(c: Compiler, layout: Layout) -> tuple[str, str]:
    """(trigger, function) of ``layout``'s table in this migration."""
    return trigger_names(c.m.name, layout.physical)

def up_context(c: Compiler, layout: Layout, pair: Pair) -> list[tuple[str, str]]:
    """(name, physical) the previous release's row binds in ``up`` expressions."""
    original = list(c.original(layout))
    context = [(c, c) for c in original]
    if pair.alias and pair.old and pair.alias not in original:
        context.append((pair.alias, pair.old))
    return context

def down_context(c: Compiler, layout: Layout, pair: Pair) -> list[tuple[str, str]]:
    context = [(name, physical) for name, physical in layout.view]
    names = {name for name, _ in context}
    if pair.alias and pair.new and pair.alias not in names:
        context.append((pair.alias, pair.new))
    return context

def row_sql(c: Compiler, record: str, context: list[tuple[str, str]]) -> Any:
    sql = c.sql
    return sql.SQL(", ").join(
        sql.SQL("{}.{} AS {}").format(sql.SQL(record), c.ident(physical),
                                      c.ident(name))
        for name, physical in context)

def trigger_statements(c: Compiler, layout: Layout) -> list[Any]:
    sql = c.sql
    if not layout.pairs:
        return []
    trigger, function = table_trigger_names(c, layout)
    declare = [sql.SQL("_upg_is_new boolean := (current_schemas(false))[1] IS NOT "
                       "DISTINCT FROM {};").format(sql.Literal(c.schema)),
               sql.SQL("_upg_sync boolean := false;")]
    body: list[Any] = []
    if layout.marker:
        body.append(sql.SQL("IF TG_OP = 'UPDATE' THEN _upg_sync := OLD.{}; END IF;")
                    .format(c.ident(BACKFILL_MARKER)))
    ups = [(n, p) for n, p in enumerate(layout.pairs) if p.up is not None]
    downs = [(n, p) for n, p in enumerate(layout.pairs) if p.down is not None]
    for n, pair in enumerate(layout.pairs):
        declare.append(sql.SQL("_upg_keep_{} boolean := false;").format(sql.SQL(str(n))))
        if pair.new is not None and layout.marker:
            # the new release rewrote a row the backfill has not reached: when it did not
            # set this column, take it from the old one (up); when it did, keep it
            body.append(sql.SQL(
                "IF TG_OP = 'UPDATE' THEN _upg_keep_{n} := _upg_sync AND NEW.{c} IS NOT "
                "DISTINCT FROM OLD.{c}; END IF;").format(n=sql.SQL(str(n)),
                                                         c=c.ident(pair.new)))
    for n, pair in ups:
        declare.append(sql.SQL("_upg_up_{} {};").format(sql.SQL(str(n)),
                                                        sql.SQL(pair.new_type)))
    for n, pair in downs:
        declare.append(sql.SQL("_upg_down_{} {};").format(sql.SQL(str(n)),
                                                          sql.SQL(pair.old_type)))
    for n, pair in ups:
        body.append(sql.SQL(
            "IF NOT _upg_is_new OR _upg_keep_{n} THEN\n"
            "  SELECT ({expr}) INTO _upg_up_{n} FROM (SELECT {row}) AS _upg_row;\n"
            "  NEW.{col} := _upg_up_{n};\nEND IF;").format(
            n=sql.SQL(str(n)), expr=sql.SQL(pair.up),
            row=row_sql(c, "NEW", up_context(c, layout, pair)),
            col=c.ident(_named(pair.new))))
    for n, pair in downs:
        when = (sql.SQL("_upg_is_new AND TG_OP = 'INSERT'") if pair.kind == "drop_column"
                else sql.SQL("_upg_is_new AND NOT _upg_keep_{}").format(sql.SQL(str(n))))
        body.append(sql.SQL(
            "IF {when} THEN\n"
            "  SELECT ({expr}) INTO _upg_down_{n} FROM (SELECT {row}) AS _upg_row;\n"
            "  NEW.{col} := _upg_down_{n};\nEND IF;").format(
            when=when, n=sql.SQL(str(n)), expr=sql.SQL(pair.down),
            row=row_sql(c, "NEW", down_context(c, layout, pair)),
            col=c.ident(_named(pair.old))))
    for n, pair in enumerate(layout.pairs):
        if pair.kind == "set_not_null" and pair.down is None:
            body.append(sql.SQL("IF _upg_is_new AND NOT _upg_keep_{n} THEN NEW.{old} := "
                                "NEW.{new}; END IF;").format(
                n=sql.SQL(str(n)), old=c.ident(_named(pair.old)),
                new=c.ident(_named(pair.new))))
    if layout.marker:
        body.append(sql.SQL("NEW.{} := false;").format(c.ident(BACKFILL_MARKER)))
    source = sql.SQL("#variable_conflict use_column\nDECLARE\n{}\nBEGIN\n{}\nRETURN NEW;"
                     "\nEND").format(sql.SQL("\n").join(declare), sql.SQL("\n").join(body))
    text = c.render(source)
    return [
        sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
            c.ident(STATE_SCHEMA, function), sql.Literal(text)),
        sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW "
                "EXECUTE FUNCTION {}()").format(c.ident(trigger),
                                                c.table_ident(layout),
                                                c.ident(STATE_SCHEMA, function)),
    ]

def expression_checks(c: Compiler, layout: Layout) -> list[tuple[int, str, Any]]:
    """SELECTs that make PostgreSQL parse and type-check every up/down expression."""
    sql = c.sql
    checks = []
    for pair in layout.pairs:
        for key, expr, context, type_ in (
                ("up", pair.up, up_context(c, layout, pair), pair.new_type),
                ("down", pair.down, down_context(c, layout, pair), pair.old_type)):
            if expr is None:
                continue
            row = row_sql(c, c.render(c.table_ident(layout)), context)
            checks.append((pair.op, key, sql.SQL(
                "SELECT CAST(({}) AS {}) FROM (SELECT {} FROM {} LIMIT 0) AS _upg_row")
                .format(sql.SQL(expr), sql.SQL(type_), row, c.table_ident(layout))))
    return checks
