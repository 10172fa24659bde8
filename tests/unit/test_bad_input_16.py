"""Issue 16's bad-input findings, through the real command line (``upgrader plan FLEET`` and
``upgrader run FLEET --headless``): a path the OS refuses (5,000 characters, a NUL), a URL
setting with a line break, a batch of 10**18 hosts and a misspelt strategy kind are each one
``upgrader: error:`` line naming file:line and key, exit 2, no traceback, and nothing created
(no provider, no state folder, no journal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgrader import cli
from upgrader.errors import ConfigError
from upgrader.plugins import Plugins
from upgrader.tomlsource import check_path, check_url

BASE = """\
[fleet]
name = "shop"

[release]
current = "1.0.0"
target = "1.1.0"
{release}

[commands]
install = ["true"]
start = ["true"]
stop = ["true"]

[balancer]
kind = "builtin"
admin_url = {admin_url}

{tables}

[[hosts]]
name = "a"
address = "127.0.0.1"

[strategy]
kind = {kind}
batch = {batch}
"""


def fleet_text(*, release: str = "", admin_url: str = '"http://127.0.0.1:18001"',
               tables: str = "", kind: str = '"rolling"', batch: str = "1") -> str:
    return BASE.format(release=release, admin_url=admin_url, tables=tables, kind=kind,
                       batch=batch)


@pytest.fixture
def no_providers(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    created: list[tuple] = []
    original = Plugins.create

    def spy(self: Plugins, category: str, spec: Any, *args: Any, **kwargs: Any) -> Any:
        created.append((category, spec))
        return original(self, category, spec, *args, **kwargs)

    monkeypatch.setattr(Plugins, "create", spy)
    return created


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_providers: list[tuple],
            text: str, key: str, line_start: str) -> str:
    """Both commands refuse ``text`` naming ``file:line: key``; returns plan's error."""
    file = tmp_path / "fleet.toml"
    file.write_text(text, encoding="utf-8")
    line = line_of(text, line_start)
    state = tmp_path / "state"
    errors = []
    for argv in (["plan", str(file)],
                 ["run", str(file), "--headless", "--state-dir", str(state)]):
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (argv, out, err)
        assert "Traceback" not in err and "Traceback" not in out
        assert err.startswith("upgrader: error: "), err
        assert f"{file}:{line}: {key}" in err, err
        errors.append(err)
    assert no_providers == []
    assert not state.exists(), "a refused run must not create its state or journal"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]
    return errors[0]


def test_the_base_fleet_plans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fleet the cases break is valid: each refusal is the broken key's."""
    file = tmp_path / "fleet.toml"
    file.write_text(fleet_text(), encoding="utf-8")
    assert cli.main(["plan", str(file)]) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# paths the OS refuses: checked before they are opened


@pytest.mark.parametrize("value, words", [
    ('"' + "m" * 5000 + '.toml"', "bytes long"),
    ('"migrations/' + "m" * 300 + '.toml"', "longer than 255 bytes"),
    ('"0001\\u0000.toml"', "control characters"),
], ids=["5000-chars", "long-name", "nul"])
def test_a_migration_path_the_os_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         no_providers: list[tuple], value: str,
                                         words: str) -> None:
    text = fleet_text(release=f"migration = {value}",
                      tables='[schema]\ndatabase = "db.sqlite"')
    err = refused(tmp_path, capsys, no_providers, text, "release.migration", "migration =")
    assert words in err


@pytest.mark.parametrize("value", ['"' + "d" * 5000 + '"', '"db\\u0000.sqlite"'],
                         ids=["5000-chars", "nul"])
def test_a_schema_database_path_the_os_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_providers: list[tuple],
        value: str) -> None:
    text = fleet_text(release='migration = "m/0001.toml"',
                      tables=f"[schema]\ndatabase = {value}")
    refused(tmp_path, capsys, no_providers, text, "schema.database", "database =")


@pytest.mark.parametrize("value", ['"' + "f" * 5000 + '"', '"flags\\u0000.sqlite"'],
                         ids=["5000-chars", "nul"])
def test_a_flags_store_path_the_os_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           no_providers: list[tuple], value: str) -> None:
    text = fleet_text(tables=f"[flags]\nstore = {value}")
    refused(tmp_path, capsys, no_providers, text, "flags.store", "store =")


@pytest.mark.parametrize("value", ['"' + "v" * 5000 + '"', '"secret\\u0000"'],
                         ids=["5000-chars", "nul"])
def test_a_var_file_path_the_os_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        no_providers: list[tuple], value: str) -> None:
    text = fleet_text().replace('address = "127.0.0.1"',
                                f'address = "127.0.0.1"\nvars = {{ token = {{ file = {value} }} }}')
    refused(tmp_path, capsys, no_providers, text, "hosts[0].vars.token.file", "vars =")


def test_a_nul_in_any_provider_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       no_providers: list[tuple]) -> None:
    text = fleet_text().replace('kind = "builtin"',
                                'kind = "builtin"\ntoken_file = "/run/token\\u0000x"')
    err = refused(tmp_path, capsys, no_providers, text, "balancer.token_file", "token_file =")
    assert "NUL" in err


# --------------------------------------------------------------------------------------------
# URLs: no whitespace, no control characters


@pytest.mark.parametrize("value", ['"x\\ntouch y"', '"http://a b/"', '"http://a/\\u0000"',
                                   '"http://a/\\t"'])
def test_a_url_setting_with_a_line_break_or_space(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_providers: list[tuple],
        value: str) -> None:
    err = refused(tmp_path, capsys, no_providers, fleet_text(admin_url=value),
                  "balancer.admin_url", "admin_url =")
    assert "whitespace or control characters" in err


def test_a_flags_store_url_with_a_line_break(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             no_providers: list[tuple]) -> None:
    text = fleet_text(tables='[flags]\nstore = "postgresql://db/flags\\nx"')
    refused(tmp_path, capsys, no_providers, text, "flags.store", "store =")


# --------------------------------------------------------------------------------------------
# host counts: out of range is refused with the range, not clamped


@pytest.mark.parametrize("batch", ["1000000000000000000", "[1, 1000000000000000000]"])
def test_a_batch_out_of_range_is_refused_with_the_range(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_providers: list[tuple],
        batch: str) -> None:
    key = "strategy.batch" if batch.isdigit() else "strategy.batch[1]"
    err = refused(tmp_path, capsys, no_providers, fleet_text(batch=batch), key, "batch =")
    assert "between 1 and 1000000" in err


def test_rollback_parallel_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        no_providers: list[tuple]) -> None:
    text = fleet_text() + "rollback_parallel = 1000000000000000000\n"
    err = refused(tmp_path, capsys, no_providers, text, "strategy.rollback_parallel",
                  "rollback_parallel =")
    assert "between 1 and 1000000" in err


# --------------------------------------------------------------------------------------------
# the strategy kind: did you mean


def test_a_misspelt_strategy_gets_did_you_mean(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               no_providers: list[tuple]) -> None:
    err = refused(tmp_path, capsys, no_providers, fleet_text(kind='"canery"'),
                  "strategy.kind", "kind = \"canery\"")
    assert "unknown strategy 'canery' (did you mean 'canary'?)" in err


def test_a_misspelt_strategy_override_gets_did_you_mean() -> None:
    """``load_fleet(strategy=...)`` (the CLI's --strategy is an argparse choice already)."""
    from upgrader.config import loads_fleet

    with pytest.raises(ConfigError, match=r"\(did you mean 'bluegreen'\?\)"):
        loads_fleet(fleet_text(), strategy="blugreen")


# --------------------------------------------------------------------------------------------
# the value checks themselves


@pytest.mark.parametrize("value", ["", " ", "a\x00b", "a\nb", "x" * 5000, "d/" + "x" * 256,
                                   3, None])
def test_check_path_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        check_path(value)


@pytest.mark.parametrize("value", ["fleet.toml", "/var/lib/x/" + "y" * 255, "ü/ä.toml"])
def test_check_path_accepts(value: str) -> None:
    assert check_path(value) == value


@pytest.mark.parametrize("value", ["", "x\ntouch y", "http://a b", "http://a/\x00",
                                   "http://a/\x1b[2J", 5])
def test_check_url_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        check_url(value)


def test_config_error_is_what_the_cli_turns_into_exit_2() -> None:
    """The checks surface as ConfigError (what the CLI maps to exit 2), never OSError."""
    from upgrader.config import loads_fleet

    with pytest.raises(ConfigError) as info:
        loads_fleet(fleet_text(release='migration = "' + "m" * 5000 + '"',
                               tables='[schema]\ndatabase = "db.sqlite"'))
    assert info.value.key == "release.migration"


def test_a_file_setting_too_long_for_the_os(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            no_providers: list[tuple]) -> None:
    """``*_file`` / ``*_dir`` / ``*_files`` provider settings are paths, checked at load."""
    text = fleet_text().replace('kind = "builtin"',
                                'kind = "builtin"\ntoken_file = "/run/' + "t" * 5000 + '"')
    err = refused(tmp_path, capsys, no_providers, text, "balancer.token_file", "token_file =")
    assert "bytes long" in err


@pytest.mark.parametrize("value", ['"' + "d" * 5000 + '"', '"lab\\u0000"', '" "'],
                         ids=["5000-chars", "nul", "blank"])
def test_a_lab_dir_the_os_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  no_providers: list[tuple], value: str) -> None:
    text = fleet_text().replace("[[hosts]]", f"[lab]\nhosts = 2\ndir = {value}\n\n[[hosts]]")
    refused(tmp_path, capsys, no_providers, text, "lab.dir", "dir =")


@pytest.mark.parametrize("argv, hint", [
    (["plan", "sample_fleets/canary.toml", "--strategy", "canery"], "'canary'"),
    (["run", "sample_fleets/canary.toml", "--strategy", "blugreen"], "'bluegreen'"),
    (["demo", "--strategy", "rollin"], "'rolling'"),
])
def test_a_misspelt_strategy_option_gets_did_you_mean(argv: list[str], hint: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Issue 16: `--strategy canery` got argparse's bare "invalid choice" (exit 2)."""
    from upgrader.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --strategy: invalid choice: '{argv[-1]}' (did you mean {hint}?); " \
           "choose from 'takedown'" in err


def test_an_invalid_choice_without_a_close_match_keeps_argparse_words(
        capsys: pytest.CaptureFixture[str]) -> None:
    from upgrader.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--strategy", "xyzzy"])
    assert "invalid choice: 'xyzzy' (choose from 'takedown'" in capsys.readouterr().err
