"""Every option of ``upgrader`` (every subcommand, nested ones too) says what it does, and
every subcommand has a help line and a description: a walk over the whole argparse tree, so
a new option without help fails here."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from upgrader.cli import _parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    yield path, parser, None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                for sub_path, sub_parser, sub_help in _walk(sub, (*path, name)):
                    yield sub_path, sub_parser, helps.get(name) if sub_path == (*path, name) \
                        else sub_help


def _tree() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    return list(_walk(_parser()))


def test_the_walk_reaches_nested_subcommands() -> None:
    paths = {path for path, _, _ in _tree()}
    assert {("run",), ("lab", "down"), ("lab", "up"), ("demo",), ("plugins",)} <= paths
    assert any(len(path) == 2 and path[0] == "flags" for path in paths)


def test_every_option_has_help() -> None:
    missing = []
    for path, parser, _ in _tree():
        if parser.add_help is False:      # `balancer serve`: its own parser has the help
            continue
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue                  # hidden on purpose (internal flags)
            if not (action.help or "").strip():
                name = "/".join(action.option_strings) or action.dest
                missing.append(f"upgrader {' '.join(path)} {name}")
    assert missing == []


def test_every_subcommand_has_help_and_a_description() -> None:
    missing = []
    for path, parser, help_text in _tree():
        if not path:
            assert (parser.description or "").strip()
            continue
        if not (help_text or "").strip():
            missing.append(f"upgrader {' '.join(path)}: no help line")
        if not (parser.description or "").strip() and parser.add_help is not False:
            missing.append(f"upgrader {' '.join(path)}: no description")
    assert missing == []


def test_lab_help_says_what_down_does() -> None:
    lab = next(p for path, p, _ in _tree() if path == ("lab",))
    text = lab.format_help()
    assert "down the lab" not in text
    assert "stop the lab" in text
