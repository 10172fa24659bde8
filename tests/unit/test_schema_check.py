"""The expand/contract check (pure)."""

from __future__ import annotations

from pathlib import Path

from upgrader.schema.check import check_migration
from upgrader.schema.loader import load_migration, loads

SAMPLES = Path(__file__).parents[2] / "sample_fleets" / "migrations"


def test_expand_only_is_safe():
    result = check_migration(load_migration(SAMPLES / "0002_split_name.toml"))
    assert result.exit_code == 0 and not result.breaks_previous
    assert [f.kind for f in result.findings] == ["expand", "expand"]
    assert "safe for '1.0.0'" in result.text()


def test_rename_breaks_previous_and_says_how_to_split():
    result = check_migration(load_migration(SAMPLES / "0004_rename_email.toml"))
    assert result.exit_code == 1
    (finding,) = result.breaking
    assert finding.op == "rename_column" and finding.line == 7
    text = result.text()
    assert "BREAKS '1.2.0'" in text and "line 7" in text
    assert 'add_column users.contact_email with up = "email"' in text
    assert 'drop_column users.email with down = "contact_email"' in text
    assert result.as_dict()["breaks_previous"] is True


def test_views_make_contract_safe_but_not_without_a_previous_release():
    with_prev = load_migration(SAMPLES / "0004_rename_email.toml")
    assert check_migration(with_prev, views=True).exit_code == 0
    no_prev = loads('release = "v1"\n[[operations]]\nop = "drop_column"\ntable = "u"\n'
                    'column = "a"\n')
    assert check_migration(no_prev, views=True).exit_code == 1


def test_classification():
    m = loads('release = "v2"\n'
              '[[operations]]\nop = "add_column"\ntable = "u"\ncolumn = { name = "a", '
              'type = "int", nullable = false }\nup = "1"\n'
              '[[operations]]\nop = "add_index"\ntable = "u"\nname = "i"\ncolumns = ["b"]\n'
              '[[operations]]\nop = "add_index"\ntable = "u"\nname = "j"\ncolumns = ["c"]\n'
              'unique = true\n'
              '[[operations]]\nop = "sql"\nup = "x"\ndown = "y"\n')
    kinds = [f.kind for f in check_migration(m).findings]
    assert kinds == ["contract", "expand", "contract", "unknown"]
