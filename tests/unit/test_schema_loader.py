"""Migration files: every key checked, errors name file, key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader.errors import ConfigError
from upgrader.schema.loader import load_migration, loads, validate_against
from upgrader.schema.model import AddColumn, ChangeType, Column, CreateTable, DropColumn, RawSQL

SAMPLES = Path(__file__).parents[2] / "sample_fleets" / "migrations"


def test_samples_load():
    names = [load_migration(p).name for p in sorted(SAMPLES.glob("*.toml"))]
    assert names == ["0001_users", "0002_split_name", "0003_drop_name", "0004_rename_email"]


def test_every_operation_and_defaults(tmp_path):
    path = tmp_path / "0007_all.toml"
    path.write_text('''release = "v2"
previous = "v1"
[[operations]]
op = "create_table"
table = "t"
columns = [{ name = "id", type = "integer", primary_key = true }, { name = "n", type = "varchar(40)", default = 0 }]
[[operations]]
op = "add_column"
table = "u"
column = { name = "c", type = "text", nullable = false, default = "'x'" }
[[operations]]
op = "drop_column"
table = "u"
column = "d"
down = "1"
[[operations]]
op = "rename_column"
table = "u"
column = "e"
to = "f"
[[operations]]
op = "change_type"
table = "u"
column = "g"
type = "numeric(10, 2)"
up = "CAST(g AS REAL)"
down = "CAST(g AS TEXT)"
[[operations]]
op = "set_not_null"
table = "u"
column = "h"
up = "coalesce(h, 0)"
[[operations]]
op = "add_index"
table = "u"
name = "u_c"
columns = ["c"]
unique = true
[[operations]]
op = "rename_table"
table = "w"
to = "w2"
[[operations]]
op = "sql"
up = "CREATE TABLE x (a int);"
down = "DROP TABLE x;"
''')
    m = load_migration(path)
    assert m.name == "0007_all" and m.release == "v2" and m.previous == "v1"
    assert m.batch_size == 1000 and len(m.operations) == 9
    assert m.operations[0] == CreateTable("t", (Column("id", "integer", False, None, True),
                                                Column("n", "varchar(40)", default="0")))
    assert m.operations[1] == AddColumn("u", Column("c", "text", False, "'x'"))
    assert m.operations[2] == DropColumn("u", "d", "1")
    assert isinstance(m.operations[4], ChangeType) and isinstance(m.operations[8], RawSQL)
    assert m.lines[0] == 3 and m.lines[8] == 43


@pytest.mark.parametrize("text, key, line, words", [
    ('release = "v2"\n[[operations]]\nop = "add_colum"\n', "operations[0].op", 3,
     "did you mean 'add_column'"),
    ('release = "v2"\n[[operations]]\nop = "change_type"\ntable = "u"\ncolumn = "a"\n'
     'type = "int"\nup = "a"\n', "operations[0].down", 2, "missing required key 'down'"),
    ('release = "v2"\nbatch = 3\n[[operations]]\nop = "sql"\nup = "x"\ndown = "y"\n',
     "batch", 2, "did you mean 'batch_size'"),
    ('release = "v2"\n[[operations]]\nop = "drop_column"\ntable = "u"\ncolumn = "a"\n'
     'dwn = "1"\n', "operations[0].dwn", 6, "did you mean 'down'"),
    ('release = "v2"\n[[operations]]\nop = "add_column"\ntable = "u"\n'
     'column = { name = "a", type = "int", nullable = false }\n', "operations[0].column.nullable",
     5, "needs a value"),
    ('release = "v2"\n[[operations]]\nop = "rename_column"\ntable = "u"\ncolumn = "a"\n'
     'to = "_upg_new_a"\n', "operations[0].to", 6, "reserved"),
    ('release = "v2"\n[[operations]]\nop = "add_column"\ntable = "u"\n'
     'column = { name = "a", type = "int; drop table u" }\n', "operations[0].column.type", 5,
     "not an SQL type"),
    ('release = "v2"\n[[operations]]\nop = "drop_column"\ntable = "u"\ncolumn = "a"\n'
     '[[operations]]\nop = "rename_column"\ntable = "u"\ncolumn = "a"\nto = "b"\n',
     "operations[1]", 6, "one change per column"),
    ('release = "v2"\n[[operations]]\nop = "sql"\nup = "x"\ndown = "y"\n[[operations]]\n'
     'op = "set_not_null"\ntable = "u"\ncolumn = "a"\nup = "1; delete from u"\n',
     "operations[1].up", 10, "may not contain ';'"),
    ('release = "v2"\n[[operations]]\nop = "sql"\nup = "x"\n', "operations[0].down", 2,
     "missing"),
    ('release = "v2"\noperations = [\n', None, 2, "not valid TOML"),
    ('[[operations]]\nop = "sql"\nup = "x"\ndown = "y"\n', "release", 1, "missing"),
])
def test_bad_input_names_key_and_line(text, key, line, words):
    with pytest.raises(ConfigError) as info:
        loads(text, source="m.toml")
    assert info.value.file == "m.toml" and info.value.key == key
    assert info.value.line == line and words in info.value.message


def test_validate_against_catalogue_names_operation_line(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('release = "v2"\n\n[[operations]]\nop = "add_column"\ntable = "users"\n'
                    'column = { name = "x", type = "int" }\n\n[[operations]]\n'
                    'op = "drop_column"\ntable = "users"\ncolumn = "nmae"\n')
    m = load_migration(path)
    with pytest.raises(ConfigError) as info:
        validate_against(m, {"users": ["id", "name"]})
    assert info.value.key == "operations[1].column" and info.value.line == 11
    assert "unknown column users.nmae (did you mean 'name'?)" in info.value.message
    with pytest.raises(ConfigError, match="unknown table 'users'"):
        validate_against(m, {"user": ["id"]})
    assert validate_against(loads('release = "v2"\n[[operations]]\nop = "rename_column"\n'
                                  'table = "u"\ncolumn = "a"\nto = "b"\n'),
                            {"u": ["a", "c"]}) == {"u": ["b", "c"]}


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_garbage_raises_only_config_error(text):
    try:
        loads(text)
    except ConfigError:
        pass
