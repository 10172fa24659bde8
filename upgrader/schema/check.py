"""The expand/contract check: would a migration break the release before it?

Pure (no database). An operation is *expand* when the previous release keeps working
against the changed tables even without views (it adds something), *contract* when it
removes, renames or narrows something the previous release reads or writes (safe only
while every client of the previous release reads through its views), *unknown* for raw
SQL. ``upgrader schema check`` exits 0 when safe, 1 when it would break, 2 on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

from .loader import op_name
from .model import (
    AddColumn,
    AddIndex,
    ChangeType,
    CreateTable,
    DropColumn,
    Migration,
    Operation,
    RawSQL,
    RenameColumn,
    RenameTable,
    SetNotNull,
)

__all__ = ["CheckResult", "Finding", "check_migration"]

EXPAND, CONTRACT, UNKNOWN = "expand", "contract", "unknown"


@dataclass(frozen=True, slots=True)
class Finding:
    index: int
    line: int | None
    op: str
    #: expand | contract | unknown
    kind: str
    #: what the operation does to the previous release
    reason: str
    #: how to split it over two releases (contract operations), else ""
    advice: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "line": self.line, "op": self.op, "kind": self.kind,
                "reason": self.reason, "advice": self.advice}


@dataclass(frozen=True, slots=True)
class CheckResult:
    migration: str
    release: str
    previous: str | None
    #: True: the previous release is assumed to read through its views
    views: bool
    findings: tuple[Finding, ...]

    @property
    def breaking(self) -> tuple[Finding, ...]:
        if self.views and self.previous is not None:
            return ()
        return tuple(f for f in self.findings if f.kind == CONTRACT)

    @property
    def breaks_previous(self) -> bool:
        return bool(self.breaking)

    @property
    def exit_code(self) -> int:
        return 1 if self.breaks_previous else 0

    def as_dict(self) -> dict[str, object]:
        return {"migration": self.migration, "release": self.release,
                "previous": self.previous, "views": self.views,
                "breaks_previous": self.breaks_previous,
                "findings": [f.as_dict() for f in self.findings]}

    def text(self) -> str:
        prev = repr(self.previous) if self.previous else "the previous release"
        lines = []
        if self.breaks_previous:
            lines.append(f"{self.migration}: BREAKS {prev} if it reads the tables without "
                         f"views:")
        else:
            lines.append(f"{self.migration}: safe for {prev}"
                         + (" (reading through its views)" if self.views
                            and any(f.kind == CONTRACT for f in self.findings) else ""))
        for f in self.findings:
            where = f"line {f.line}" if f.line else f"operations[{f.index}]"
            lines.append(f"  {where}: {f.op}: {f.kind}: {f.reason}")
            if f.advice and (f.kind == CONTRACT):
                for advice_line in f.advice.splitlines():
                    lines.append(f"      {advice_line}")
        if self.breaks_previous:
            lines.append("Split it over two releases: ship the expand steps with this release "
                         "and the contract steps (drops, renames, NOT NULL) with the next one, "
                         "once no host runs " + prev + "; or run it with views "
                         "(every client of " + prev + " connects through "
                         "upgrader.schema.connect / its search_path) and pass --views.")
        return "\n".join(lines)


def check_migration(migration: Migration, *, views: bool = False) -> CheckResult:
    """Classify every operation of ``migration``. ``views``: every client of the previous
    release reads through its views (then nothing breaks it while the migration is live)."""
    findings = []
    for i, op in enumerate(migration.operations):
        line = migration.lines[i] if i < len(migration.lines) else None
        kind, reason, advice = _classify(op)
        findings.append(Finding(i, line, op_name(op), kind, reason, advice))
    return CheckResult(migration.name, migration.release, migration.previous, views,
                       tuple(findings))


def _classify(op: Operation) -> tuple[str, str, str]:
    if isinstance(op, CreateTable):
        return EXPAND, f"adds table {op.table}", ""
    if isinstance(op, AddColumn):
        c = op.column
        if not c.nullable and c.default is None:
            return (CONTRACT, f"adds NOT NULL column {op.table}.{c.name} without a default: "
                              f"the previous release's inserts do not set it",
                    f"release N (expand): add {op.table}.{c.name} nullable or with a "
                    f"default (up = {op.up!r} fills it)\n"
                    f"release N+1 (contract): set_not_null {op.table}.{c.name}")
        if c.unique:
            return (CONTRACT, f"adds UNIQUE column {op.table}.{c.name}: the previous "
                              f"release's writes may collide",
                    f"release N (expand): add {op.table}.{c.name} without unique\n"
                    f"release N+1 (contract): add_index unique on it")
        return EXPAND, f"adds column {op.table}.{c.name}", ""
    if isinstance(op, DropColumn):
        return (CONTRACT, f"drops {op.table}.{op.column}, which the previous release reads",
                f"release N: stop reading and writing {op.table}.{op.column} in the code (no "
                f"schema change)\nrelease N+1 (contract): drop_column {op.table}.{op.column}")
    if isinstance(op, RenameColumn):
        return (CONTRACT, f"renames {op.table}.{op.column} to {op.to}: the previous release "
                          f"reads {op.column}",
                f"release N (expand): add_column {op.table}.{op.to} with up = "
                f"\"{op.column}\"; the code reads {op.to} and writes both\n"
                f"release N+1 (contract): drop_column {op.table}.{op.column} with down = "
                f"\"{op.to}\"")
    if isinstance(op, ChangeType):
        return (CONTRACT, f"changes the type of {op.table}.{op.column} to {op.type}",
                f"release N (expand): add_column {op.table}.{op.column}_new ({op.type}) with "
                f"up = {op.up!r}; the code writes both\n"
                f"release N+1 (contract): drop_column {op.table}.{op.column} with down = "
                f"{op.down.replace(op.column, op.column + '_new')!r}")
    if isinstance(op, SetNotNull):
        return (CONTRACT, f"makes {op.table}.{op.column} NOT NULL: the previous release may "
                          f"write NULL",
                f"release N: the code always writes {op.column}; backfill with an sql "
                f"operation (UPDATE ... SET {op.column} = {op.up} WHERE {op.column} IS NULL)\n"
                f"release N+1 (contract): set_not_null {op.table}.{op.column}")
    if isinstance(op, AddIndex):
        if op.unique:
            return (CONTRACT, f"adds UNIQUE index {op.name}: the previous release's writes "
                              f"may collide",
                    f"release N: the code never writes duplicates of "
                    f"({', '.join(op.columns)})\nrelease N+1 (contract): add the unique index")
        return EXPAND, f"adds index {op.name}", ""
    if isinstance(op, RenameTable):
        return (CONTRACT, f"renames table {op.table} to {op.to}: the previous release reads "
                          f"{op.table}",
                f"a table rename has no additive form: run it with views (--views), or "
                f"create_table {op.to} in release N and copy with an sql operation, then drop "
                f"{op.table} in release N+1")
    assert isinstance(op, RawSQL)
    return UNKNOWN, "raw SQL: upgrader cannot tell what it changes; review it", ""
