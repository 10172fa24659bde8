"""Tests keep docs/PLUGINS.md honest: every hook has a section with its exact signature and
a test named after it (as datasette's test_docs.py does)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from upgrader import hookspecs
from upgrader.plugins import CATEGORIES, Plugins

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PLUGINS.md"
PLUGIN_TESTS = Path(__file__).with_name("test_plugins.py")


def hook_specs() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: obj for name, obj in vars(hookspecs).items()
            if callable(obj) and hasattr(obj, marker)}


def signature_text(name: str, function: object) -> str:
    """``name(arg: Ann, ...) -> Ret`` exactly as written in hookspecs.py (the annotations are
    strings there, thanks to ``from __future__ import annotations``)."""
    signature = inspect.signature(function)
    params = []
    for param in signature.parameters.values():
        text = param.name
        if param.annotation is not inspect.Parameter.empty:
            text += f": {param.annotation}"
        params.append(text)
    result = f"{name}({', '.join(params)})"
    if signature.return_annotation is not inspect.Signature.empty:
        result += f" -> {signature.return_annotation}"
    return result


def doc_sections() -> dict[str, str]:
    """Heading text -> the text up to the next heading of the same or a higher level."""
    text = DOC.read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    matches = list(re.finditer(r"^(#+) (.+)$", text, flags=re.MULTILINE))
    for index, match in enumerate(matches):
        level = len(match.group(1))
        end = len(text)
        for later in matches[index + 1:]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        sections[match.group(2).strip()] = text[match.end():end]
    return sections


HOOKS = sorted(hook_specs())


def test_there_are_hooks():
    assert "register_transports" in HOOKS and "upgrader_event" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_documented_section_with_its_signature(hook):
    sections = doc_sections()
    heading = f"`{hook}`"
    assert heading in sections, f"docs/PLUGINS.md needs a section headed {heading}"
    expected = signature_text(hook, hook_specs()[hook])
    assert expected in sections[heading], (
        f"the {heading} section of docs/PLUGINS.md must show the signature {expected!r}")
    assert "@hookimpl" in sections[heading], f"the {heading} section needs an example"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tree = ast.parse(PLUGIN_TESTS.read_text(encoding="utf-8"))
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert f"test_hook_{hook}" in names, f"tests/unit/test_plugins.py needs test_hook_{hook}"


def test_no_section_for_a_hook_that_does_not_exist():
    documented = {m.group(1) for heading in doc_sections()
                  if (m := re.fullmatch(r"`((?:register|upgrader)_\w+)`", heading))}
    assert documented <= set(HOOKS), f"documented but not hooks: {documented - set(HOOKS)}"


def test_every_builtin_provider_is_documented():
    text = DOC.read_text(encoding="utf-8")
    plugins = Plugins(entrypoints=False)
    for category in CATEGORIES:
        for factory in plugins.factories(category):
            row = f"| {category} | `{factory.name}` |"
            assert row in text, f"docs/PLUGINS.md's built-in table needs a row {row!r}"
            if factory.plugin.startswith("upgrader.providers.builtin_balancer"):
                continue
            for setting in factory.settings:
                assert f"`{setting.name}`" in text.split(row, 1)[1].split("\n", 1)[0], (
                    f"{category} {factory.name}: setting {setting.name} is not documented")
