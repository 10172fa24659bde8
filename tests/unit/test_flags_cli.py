"""``upgrader flags ...`` through ``upgrader.flags.cli``: every command, the exit codes, and
bad input that changes nothing."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader.flags import cli
from upgrader.flags.cli import add_flags_parser, main, run
from upgrader.flags.loader import dump, load, loads
from upgrader.flags.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_fleets" / "flags.toml"
EU = ["--attr", "country=DE", "--attr", "app_version=2.5.0", "--attr", "email=a@example.com"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store holding the sample, named by $UPGRADER_FLAG_STORE."""
    spec = str(tmp_path / "flags.sqlite")
    monkeypatch.setenv("UPGRADER_FLAG_STORE", spec)
    monkeypatch.setenv("USER", "tester")
    assert run(["import", str(SAMPLE), "--actor", "alice", "--reason", "seed"]) == 0
    return spec


def state(spec: str) -> tuple[int, str, list]:
    with open_store(spec) as s:
        return s.version(), dump(s.load()), s.history(limit=1000)


def test_the_parser_plugs_into_a_top_level_cli():
    parser = argparse.ArgumentParser(prog="upgrader")
    add_flags_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["flags", "eval", "f", "--user", "u", "--group", "a", "--group",
                              "b", "--tier", "gold", "--attr", "n=3", "--json", "--env",
                              "staging", "--store", "x.sqlite"])
    assert (args.command, args.flags_command, args.env, args.store) == \
        ("flags", "eval", "staging", "x.sqlite")
    assert cli.context_from(args) == {"targetingKey": "u", "groups": ["a", "b"],
                                      "tier": "gold", "n": 3}
    for command in ("list", "show k", "enable k", "disable k", "rollout k 5", "set k --variant v",
                    "history", "history k", "import f", "export", "export f"):
        args = parser.parse_args(["flags", *command.split()])
        # --env's default is resolved by main(): the --fleet's environment, else production
        assert args.env is None and args.store is None and callable(args.flags_handler)
        assert cli.resolve_store_and_env(args)[1] == "production"


def test_list_and_show(store, capsys):
    assert run(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# 7 flags in production, store version 1\nKEY")
    assert "gold-silver-30: 30 % on" in out and "kill_switch" in out
    assert run(["list", "--env", "demo"]) == 0
    assert "new-checkout      release      on     off      needs payments-v2=on; 1 target" in \
        capsys.readouterr().out
    assert run(["show", "export-format"]) == 0
    out = capsys.readouterr().out
    assert "# tier bronze: csv\n# tier gold: parquet\n[flags.export-format]" in out


def test_enable_disable_rollout_set_and_history(store, capsys):
    assert run(["disable", "recommendations", "--reason", "ML service down"]) == 0
    assert capsys.readouterr().out == "recommendations: off in production (version 2)\n"
    assert run(["disable", "recommendations"]) == 0
    assert "unchanged, version 2" in capsys.readouterr().out
    assert run(["enable", "new-checkout", "--env", "staging", "--actor", "bob"]) == 0
    assert run(["rollout", "new-checkout", "45%"]) == 0
    assert run(["rollout", "search-page-size", "10", "--variant", "large"]) == 0
    assert run(["set", "export-format", "--variant", "csv"]) == 0
    capsys.readouterr()
    assert run(["history", "--limit", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert "v5  tester@" in lines[0] and "default  export-format [production]  " \
        '"none" -> "csv"' in lines[0]
    assert "rollout  search-page-size [production]  null -> 10" in lines[1]
    assert "rollout  new-checkout [production]  30 -> 45" in lines[2]
    assert lines[3].endswith("disable  recommendations [production]  true -> false  "
                             "# ML service down")
    assert run(["history", "recommendations"]) == 0
    out = capsys.readouterr().out
    assert "import  recommendations  null -> {" in out and "# seed" in out


def test_eval(store, capsys):
    def evaluate(*argv: str) -> dict:
        assert run(["eval", *argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert evaluate("new-checkout", "--user", "bob", "--group", "beta", *EU) == \
        {"value": True, "variant": "on", "reason": "TARGETING_MATCH", "rule": "beta"}
    assert evaluate("new-checkout", "--user", "bob") == \
        {"value": False, "variant": "off", "reason": "DISABLED",
         "rule": "prerequisite:payments-v2"}
    assert evaluate("export-format", "--user", "u", "--tier", "gold") == \
        {"value": "parquet", "variant": "parquet", "reason": "TARGETING_MATCH",
         "rule": "tier:gold"}
    assert evaluate("search-page-size", "--attr", "screen_width=1920")["value"] == 50
    assert evaluate("new-checkout", "--user", "director", "--env", "demo")["variant"] == "on"
    assert evaluate("recommendations")["reason"] == "STATIC"
    assert run(["eval", "checkout-button", "--user", "u1", "--attr", "platform=web"]) == 0
    assert capsys.readouterr().out.startswith('checkout-button = {"color": ')


@pytest.mark.parametrize("argv, words", [
    (["enable", "new-chekout"], "unknown flag 'new-chekout' (did you mean 'new-checkout'?)"),
    (["disable", "new-checkout", "--env", "prod"], "unknown environment 'prod'"),
    (["rollout", "new-checkout", "101"], "rules[1].percent: a percent must be between 0 and 100"),
    (["rollout", "new-checkout", "-5"], "between 0 and 100"),
    (["rollout", "new-checkout", "33.333"], "two decimals"),
    (["rollout", "checkout-button", "5"], "is a weighted roll-out"),
    (["rollout", "export-format", "5"], "say which variant"),
    (["set", "new-checkout", "--variant", "maybe"], "unknown variant 'maybe'"),
    (["eval", "nope", "--user", "u"], "unknown flag 'nope'"),
    (["eval", "new-checkout", "--attr", "novalue"], "expected --attr KEY=VALUE"),
    (["show", "nope"], "unknown flag 'nope'"),
    (["history", "nope"], "unknown flag 'nope'"),
    (["list", "--env", "qa"], "unknown environment 'qa'"),
])
def test_bad_input_exits_2_and_changes_nothing(store, capsys, argv, words):
    before = state(store)
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("upgrader: error: ") and words in err
    assert state(store) == before


def test_a_bad_flags_file_is_refused_with_its_line(store, tmp_path, capsys):
    before = state(store)
    bad = tmp_path / "bad.toml"
    bad.write_text(SAMPLE.read_text().replace("percent = 30", "percent = 130"))
    assert run(["import", str(bad)]) == 2
    err = capsys.readouterr().err
    line = SAMPLE.read_text().splitlines().index("percent = 30                     "
                                                 "# 30 % of them get \"on\" (reason SPLIT); "
                                                 "the rest go on below") + 1
    assert f"{bad}:{line}: flags.new-checkout.environments.production.rules[1].percent: " \
           "a percent must be between 0 and 100, got 130" in err
    cyclic = tmp_path / "cyclic.toml"
    cyclic.write_text(SAMPLE.read_text().replace('[tiers.bronze]\n',
                                                 '[tiers.bronze]\nextends = "gold"\n'))
    assert run(["import", str(cyclic)]) == 2
    assert "tier cycle" in capsys.readouterr().err
    assert run(["import", str(tmp_path / "missing.toml")]) == 2
    assert "no such flags file" in capsys.readouterr().err
    assert state(store) == before


def test_argparse_errors_exit_2(store, capsys):
    assert run(["rollout", "new-checkout", "lots"]) == 2
    assert run(["set", "new-checkout"]) == 2
    assert run(["frobnicate"]) == 2


def test_export_and_import_round_trip(store, tmp_path, capsys):
    assert run(["rollout", "new-checkout", "60"]) == 0
    exported = tmp_path / "out.toml"
    assert run(["export", str(exported)]) == 0
    assert "exported 7 flags (store version 2)" in capsys.readouterr().err
    assert run(["export"]) == 0
    assert capsys.readouterr().out == exported.read_text()
    fs = load(exported)
    assert fs.version == 2
    with open_store(store) as s:
        assert fs == s.load()
    other = str(tmp_path / "other.sqlite")
    assert run(["import", str(exported), "--store", other]) == 0
    assert "7 flags, 7 changed (version 1)" in capsys.readouterr().out
    assert run(["import", str(exported), "--store", other]) == 0
    assert "0 changed (unchanged, version 1)" in capsys.readouterr().out
    with open_store(other) as s:
        assert dump(s.load()) == dump(loads(exported.read_text())).replace(
            "version = 2", "version = 1", 1)


def test_main_takes_parsed_args(store, capsys):
    parser = argparse.ArgumentParser(prog="upgrader")
    add_flags_parser(parser.add_subparsers(dest="command", required=True))
    assert main(parser.parse_args(["flags", "eval", "recommendations", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["value"] is True


def test_a_store_that_cannot_be_opened_exits_1(tmp_path, capsys):
    (tmp_path / "dir.sqlite").mkdir()
    assert run(["list", "--store", str(tmp_path / "dir.sqlite")]) == 1
    assert "cannot open the flag store" in capsys.readouterr().err


def test_serve_and_bisect_are_flags_commands():
    """The command line of the OFREP server and of the flag bisection lives in flags/cli.py
    (the flag library never imports its CLI): both are subcommands with the common options."""
    parser = argparse.ArgumentParser(prog="upgrader")
    add_flags_parser(parser.add_subparsers(dest="command", required=True))
    serve = parser.parse_args(["flags", "serve", "--listen", "127.0.0.1:0"])
    assert serve.flags_handler is cli.serve_command
    assert (serve.env, serve.listen, serve.token) == (None, "127.0.0.1:0", None)
    assert cli.resolve_store_and_env(serve)[1] == cli.DEFAULT_ENV          # main() fills it
    bisect = parser.parse_args(["flags", "bisect", "--test", "true", "--flags", "a,b",
                                "--env", "demo", "--actor", "me"])
    assert bisect.flags_handler is cli.bisect_command
    assert (bisect.env, bisect.actor, bisect.flags) == ("demo", "me", "a,b")
    assert cli.resolve_store_and_env(serve)[1] == "production"


def test_a_subprocess(tmp_path):
    spec = str(tmp_path / "flags.sqlite")
    code = "import sys; from upgrader.flags.cli import run; sys.exit(run(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "import", str(SAMPLE), "--store", spec],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "upgrader.flags.cli", "eval", "new-checkout",
                           "--user", "director", "--env", "demo", "--json", "--store", spec],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert json.loads(done.stdout) == {"value": True, "variant": "on",
                                       "reason": "TARGETING_MATCH", "rule": "targets"}


def test_fleet_names_the_store_environment_and_schema_of_its_rollouts(store, tmp_path, capsys):
    """``--fleet FILE``: the flags an operator flips are those the fleet's rollouts read, in
    their environment (not $UPGRADER_FLAG_STORE's production), and a bad fleet file is exit
    2 naming its file and line, with nothing changed."""
    fleet_store = tmp_path / "fleet-flags.sqlite"
    assert run(["import", str(SAMPLE), "--store", str(fleet_store)]) == 0
    fleet = tmp_path / "feature.toml"
    fleet.write_text((ROOT / "sample_fleets" / "feature.toml").read_text()
                     .replace('store = ".upgrader/flags.sqlite"', f'store = "{fleet_store}"')
                     .replace('environment = "production"\n\n[verify]',
                              'environment = "demo"\n\n[verify]'))
    default_before = state(store)
    capsys.readouterr()
    assert run(["disable", "new-checkout", "--fleet", str(fleet), "--reason", "r"]) == 0
    assert capsys.readouterr().out.startswith("new-checkout: off in demo ")
    assert state(store) == default_before                       # not the default store
    with open_store(str(fleet_store)) as s:
        flags = s.load()
        assert not flags.flags["new-checkout"].env("demo").enabled
    # the command line still wins over the fleet
    assert run(["list", "--fleet", str(fleet), "--env", "production"]) == 0
    assert capsys.readouterr().out.startswith("# 7 flags in production")
    bad = tmp_path / "bad.toml"
    bad.write_text(fleet.read_text().replace("[flags]\n", "[flags]\nstroe = 1\n"))
    fleet_before = state(str(fleet_store))
    assert run(["enable", "new-checkout", "--fleet", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "stroe" in err and ":" in err
    assert state(str(fleet_store)) == fleet_before
    assert run(["list", "--fleet", str(tmp_path / "none.toml")]) == 2
    assert "no such fleet file" in capsys.readouterr().err
