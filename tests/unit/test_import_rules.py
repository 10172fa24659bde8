"""The finer import rules of docs/ARCHITECTURE.md ("Import rules"), checked on the source:
data flows down, nothing imports upward. Every ``import`` counts, also inside functions (lazy
imports); imports under ``if TYPE_CHECKING:`` do not. The layer table itself, and the absence
of import cycles, are checked by test_layers.py, which reads the table from the document.
(Strategies have their own, stricter test in test_strategies.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "upgrader"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upgrader_imports(path: Path) -> set[str]:
    """Every upgrader module ``path`` imports (``from .x import y`` counts as ``x`` and, when
    ``x`` is a package, ``x.y``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in child.names
                             if (PACKAGE.parent / Path(*f"{target}.{a.name}".split("."))).is_dir()
                             or (PACKAGE.parent / Path(*f"{target}.{a.name}".split(".")))
                             .with_suffix(".py").exists())
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m == "upgrader" or m.startswith("upgrader.")}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(prefix: str) -> dict[str, set[str]]:
    return {name: upgrader_imports(path) for name, path in MODULES.items()
            if name == prefix or name.startswith(prefix + ".")}


def allowed(module: str, rules: tuple[str, ...]) -> bool:
    """``module`` is one of ``rules`` or inside one of them (``upgrader.engine`` allows
    ``upgrader.engine.core``)."""
    return any(module == r or module.startswith(r + ".") for r in rules)


U = "upgrader."
LEAVES = ("errors", "events", "units", "hashing", "clock", "hookspecs", "model", "tomlsource",
          "addresses", "redact")
#: module (or package) -> the upgrader modules it may import
RULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(LEAVES, ()),
    # the checked-TOML toolkit raises ConfigError and reads durations and percentages
    "tomlsource": ("errors", "units"),
    # the servers' bearer tokens: token files, the Authorization header
    "tokens": ("errors",),
    "plan": ("model",),
    # the contracts, and the errors their reference reader of balancer counters raises
    "providers.base": ("model", "errors"),
    # the storage layer (URLs, connections, driver errors) under journal, flags and schema
    "db": ("errors", "units", "redact"),
    "journal": ("errors", "redact", "db"),
    "engine": ("clock", "errors", "events", "journal", "model", "plan", "providers.base",
               "redact", "engine", "policy", "units"),
    # deploy windows: pure calendar logic the engine asks through WindowPolicy
    "policy": ("errors", "units", "tomlsource", "plan", "model"),
    "balancer": ("hashing", "addresses", "providers.base", "balancer", "errors", "tokens"),
    # feature flags: beside the engine, on the shared leaves only, and the schema library (a
    # flag's `schema` is checked against the live schema: flags/schemaguard.py)
    "flags": ("errors", "hashing", "tomlsource", "units", "addresses", "flags", "db",
              "tokens", "schema"),
}
FRONT_ENDS = ("cli", "frontend", "headless", "demo", "lab.cli", "flags.cli", "schema.cli", "tui")


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_only_what_is_below_it(layer):
    rules = tuple(U + r for r in RULES[layer])
    for module, imported in imports_of(U + layer).items():
        if module[len(U):] in FRONT_ENDS:
            # a package's command line (flags/cli.py) is a front end: it may import every
            # layer below (docs/ARCHITECTURE.md), e.g. the fleet loader for `--fleet FILE`;
            # test_only_front_ends_import_front_ends keeps the library below it
            continue
        bad = {m for m in imported if not allowed(m, rules) and not allowed(m, (U + layer,))
               and m != "upgrader"}
        assert not bad, f"{module} imports {sorted(bad)}; allowed: {sorted(rules)}"


def test_engine_knows_providers_only_through_their_protocols():
    for module, imported in imports_of(U + "engine").items():
        concrete = {m for m in imported
                    if m.startswith(U + "providers.") and m != U + "providers.base"}
        assert not concrete, f"{module} imports concrete providers {sorted(concrete)}"


@pytest.mark.parametrize("module", ["providers.local", "providers.health", "providers.snapshot",
                                    "providers.noop", "providers.builtin_balancer"])
def test_built_in_providers_import_no_engine_and_no_front_end(module):
    forbidden = tuple(U + m for m in ("engine", "rollout", "plugins", "config", "strategies",
                                      *FRONT_ENDS))
    bad = {m for m in imports_of(U + module)[U + module] if allowed(m, forbidden)}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_rollout_and_lab_stay_below_the_front_ends():
    checks = {"rollout": ("lab", "balancer", *FRONT_ENDS),
              "lab": ("engine", "rollout")}
    for layer, never in checks.items():
        forbidden = tuple(U + m for m in never)
        for module, imported in imports_of(U + layer).items():
            if module == U + "lab.cli":
                continue
            bad = {m for m in imported if allowed(m, forbidden)}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_the_fleet_loader_reaches_the_lab_only_through_its_table_parser():
    """config.py composes; of the lab it knows only ``lab.fleet_table.parse_lab``, the ``[lab]``
    table's own parser (not the lab's layout, processes or SSH lab)."""
    lab = {m for m in imports_of(U + "config")[U + "config"] if allowed(m, (U + "lab",))}
    assert lab <= {U + "lab", U + "lab.fleet_table"}, sorted(lab)


def test_only_front_ends_import_front_ends():
    front = tuple(U + f for f in FRONT_ENDS)
    for module, imported in imports_of("upgrader").items():
        if allowed(module, front):
            continue
        bad = {m for m in imported if allowed(m, front)}
        assert not bad, f"{module} (not a front end) imports {sorted(bad)}"


def test_the_flag_library_imports_no_command_line():
    """flags/bisect.py and flags/ofrep.py are library: their argparse parts are in flags/cli.py
    (an upward import once, for DEFAULT_ENV and add_common_arguments)."""
    for module, imported in imports_of(U + "flags").items():
        if module != U + "flags.cli":
            assert U + "flags.cli" not in imported, f"{module} imports flags.cli"


def test_the_rules_see_lazy_imports():
    """cli imports the rollout inside a function; the checker must see it."""
    assert U + "rollout" in upgrader_imports(MODULES[U + "cli"])
