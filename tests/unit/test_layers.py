"""The layers of docs/ARCHITECTURE.md, enforced on the source: no import cycles, no import
against the layer table, and every module named in the document.

The import graph is computed from the source with ``ast``, so it sees what runs:

- Every ``import`` counts, also one inside a function (a lazy import still runs, and still
  makes a cycle at run time); an import under ``if TYPE_CHECKING:`` does not (it never runs).
- ``import a.b.c`` and ``from a.b import c`` (``c`` a module) are an edge to ``a.b.c``;
  ``from a.b import name`` (``name`` not a module) is an edge to ``a.b``. An import also runs
  the ``__init__`` of every package on the way (``a.b``), so those are edges too, except the
  packages that contain the importer: Python has initialised them before the importer runs.
- So ``from . import _common`` inside ``strategies/canary.py`` is an edge to
  ``strategies._common`` only, not to ``strategies/__init__.py``: Python starts a package's
  ``__init__`` before any of its submodules, and ``from package import submodule`` only needs
  the submodule (``_handle_fromlist`` imports it when the attribute is not there yet), never
  the rest of a half-run ``__init__``. Counting it as an edge to the package would make every
  package whose ``__init__`` imports its submodules a "cycle" that cannot fail. A
  ``from . import name`` of something the ``__init__`` defines is an edge to the package.
- Dynamic imports (``importlib.import_module`` of a computed name: the lazy public API in
  ``upgrader/__init__.py``, the built-in providers that ``plugins.py`` loads by name) are not
  in the graph: they are the plugin mechanism, the one place that may look upward.

The layer table is READ from docs/ARCHITECTURE.md (section "Layers"), so the document and
this test cannot drift: change the rules there. The table lists the layers from the top
down; each names its modules (globs relative to ``upgrader/``; the most specific glob wins)
and the layers it may import, which must be itself and layers listed below it.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "upgrader"
PLUGINS = ROOT / "plugins"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

#: TEMPORARY. Edges that break the rules on this branch and that other helpers of issue 11
#: remove in their own branches (the TOML toolkit moves the lab table's parser out of
#: config.py; the engine helper turns deploy windows into a part that core.py uses, instead of
#: a mixin that imports core.py back). The lead empties this after merging them:
#: test_the_pending_allow_list_is_still_needed fails as soon as an entry is no longer needed.
PENDING_OTHER_HELPERS: dict[tuple[str, str], str] = {}


# ------------------------------------------------------------------------------ the graph


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package (``root``) it imports when it runs (see the
    module docstring for what counts)."""
    top = root.name
    modules = module_names(root)

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()

        def add(dotted: str, name: str = name, found: set[str] = found) -> None:
            target = resolve(dotted)
            if target is None:
                return
            found.add(target)
            ancestor = target
            while "." in ancestor:
                ancestor = ancestor.rpartition(".")[0]
                if name == ancestor or name.startswith(ancestor + "."):
                    break              # initialised before the importer ran
                if ancestor in modules:
                    found.add(ancestor)

        def visit(node: ast.AST, package: str = package, add=add) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    for other in child.orelse:
                        visit(other)
                    continue
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        if alias.name.split(".")[0] == top:
                            add(alias.name)
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = package.split(".")[:len(package.split(".")) - child.level + 1]
                        source = ".".join(base + ([child.module] if child.module else []))
                    else:
                        source = child.module or ""
                    if source.split(".")[0] == top:
                        for alias in child.names:
                            submodule = f"{source}.{alias.name}"
                            add(submodule if submodule in modules else source)
                visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.discard(name)
        graph[name] = found
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle path (``[a, b, ..., a]``) per strongly connected component of more than one
    module, shortest first from the component's first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:          # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        paths = {start: [start]}
        queue = [start]
        while queue:                          # breadth first: the shortest way back
            node = queue.pop(0)
            for other in sorted(graph[node]):
                if other == start:
                    cycles.append(paths[node] + [start])
                    queue = []
                    break
                if other in component and other not in paths:
                    paths[other] = paths[node] + [other]
                    queue.append(other)
    return sorted(cycles)


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    globs: tuple[str, ...]
    may_import: frozenset[str]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _names(cell: str) -> list[str]:
    return [n.strip().strip("`*").strip() for n in cell.split(",") if n.strip()]


def read_layers(markdown: str) -> list[Layer]:
    """The table ``| layer | modules | may import |`` of the "Layers" section, top down.
    "may import" is a list of layer names; ``every layer below`` means all of them."""
    section = markdown.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if _cells(line)[:3] == ["layer", "modules", "may import"])
    rows = []
    for line in lines[start + 2:]:
        if not line.strip().startswith("|"):
            break
        rows.append(_cells(line))
    names = [_names(row[0])[0] for row in rows]
    layers = []
    for i, (name, row) in enumerate(zip(names, rows, strict=True)):
        below = names[i:]
        allowed = below if row[2].strip() == "every layer below" else [name, *_names(row[2])]
        layers.append(Layer(name, tuple(re.findall(r"`([^`]+)`", row[1])), frozenset(allowed)))
    return layers


LAYERS = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def layer_of(relative: str, layers: Iterable[Layer]) -> Layer | None:
    """The layer of a file (path relative to the package, e.g. ``lab/manager.py``): the one
    whose matching glob is the most specific (an exact path beats a wildcard, a longer
    wildcard a shorter one)."""
    best: tuple[tuple[bool, int], Layer] | None = None
    for layer in layers:
        for glob in layer.globs:
            if fnmatch.fnmatchcase(relative, glob):
                rank = ("*" not in glob and "?" not in glob, len(glob))
                if best is None or rank > best[0]:
                    best = (rank, layer)
    return best[1] if best else None


def check_layers(root: Path, layers: list[Layer],
                 allow: Iterable[tuple[str, str]] = ()) -> tuple[list[str], list[str]]:
    """(cycles, layer violations) of the package at ``root``, as messages; edges in
    ``allow`` are left out of both."""
    allowed_edges = set(allow)
    modules = module_names(root)
    graph = {m: {t for t in targets if (m, t) not in allowed_edges}
             for m, targets in module_graph(root).items()}
    cycles = [" -> ".join(c) for c in find_cycles(graph)]
    where = {m: layer_of(p.relative_to(root).as_posix(), layers) for m, p in modules.items()}
    problems = [f"{m} ({modules[m].relative_to(root)}) is in no layer of the table"
                for m, layer in sorted(where.items()) if layer is None]
    for module, targets in sorted(graph.items()):
        mine = where[module]
        for target in sorted(targets):
            theirs = where[target]
            if mine is None or theirs is None or theirs.name in mine.may_import:
                continue
            problems.append(f"{module} ({mine.name}) imports {target} ({theirs.name}); "
                            f"{mine.name} may import: {', '.join(sorted(mine.may_import))}")
    return cycles, problems


# ------------------------------------------------------------------------------ the tree


def test_the_package_has_no_import_cycle():
    cycles, _ = check_layers(PACKAGE, LAYERS, PENDING_OTHER_HELPERS)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_import_follows_the_layer_table():
    _, problems = check_layers(PACKAGE, LAYERS, PENDING_OTHER_HELPERS)
    assert not problems, "against docs/ARCHITECTURE.md, Layers:\n" + "\n".join(problems)


def test_the_pending_allow_list_is_still_needed():
    """Each entry is an edge that exists and breaks a rule; once its helper's branch removed
    it, delete the entry (and, when empty, the allow-list)."""
    graph = module_graph(PACKAGE)
    for (module, target), why in PENDING_OTHER_HELPERS.items():
        assert target in graph.get(module, ()), (
            f"{module} -> {target} is gone ({why}): remove it from PENDING_OTHER_HELPERS")


def test_the_layer_table_is_ordered_and_complete():
    names = [layer.name for layer in LAYERS]
    assert len(names) == len(set(names)), f"a layer twice: {names}"
    for i, layer in enumerate(LAYERS):
        assert layer.globs, f"{layer.name} names no module"
        unknown = layer.may_import - set(names)
        assert not unknown, f"{layer.name} may import unknown layers {sorted(unknown)}"
        upward = layer.may_import - set(names[i:])
        assert not upward, f"{layer.name} may import layers above it: {sorted(upward)}"
    # what the engine must never know
    engine = next(layer for layer in LAYERS if layer.name == "engine")
    for never in ("built-in providers", "lab", "library entry", "front-end plumbing", "tui",
                  "front ends"):
        assert never not in engine.may_import


# ------------------------------------------------------------------------------ the checker


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


FAKE_TABLE = """# Fake

## Layers

| layer | modules | may import |
| --- | --- | --- |
| front | `cli.py` | every layer below |
| core | `core.py`, `core/*` | leaves |
| leaves | `errors.py`, `__init__.py`, `pkg/*` | |

## Next
"""


def test_the_checker_reports_a_cycle_and_an_upward_import(tmp_path):
    """A deliberate violation: errors.py (a leaf) imports core (upward), and pkg.a <-> pkg.b
    import each other, one of them lazily inside a function."""
    root = tmp_path / "fake"
    _write(root, {
        "__init__.py": "",
        "errors.py": "from fake import core\n",
        "core.py": "from .errors import X\nfrom typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from fake import cli\n",
        "cli.py": "import fake.core\nfrom fake.pkg import a\n",
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "def later():\n    from .a import thing\n",
    })
    layers = read_layers(FAKE_TABLE)
    cycles, problems = check_layers(root, layers)
    assert cycles == ["fake.core -> fake.errors -> fake.core",
                      "fake.pkg.a -> fake.pkg.b -> fake.pkg.a"]
    assert problems == ["fake.errors (leaves) imports fake.core (core); "
                        "leaves may import: leaves"]
    # the TYPE_CHECKING import of the front end is no edge; an allowed edge is left out
    assert "fake.cli" not in module_graph(root)["fake.core"]
    cycles, problems = check_layers(root, layers, {("fake.errors", "fake.core")})
    assert cycles == ["fake.pkg.a -> fake.pkg.b -> fake.pkg.a"] and problems == []


def test_from_package_import_submodule_is_an_edge_to_the_submodule_only(tmp_path):
    root = tmp_path / "fake"
    _write(root, {
        "__init__.py": "",
        "strategies/__init__.py": "from . import canary\nVERSION = 1\n",
        "strategies/canary.py": "from . import _common\n",
        "strategies/_common.py": "",
        "strategies/feature.py": "from . import VERSION\n",
        "other.py": "from fake.strategies import _common\n",
    })
    graph = module_graph(root)
    assert graph["fake.strategies.canary"] == {"fake.strategies._common"}
    assert graph["fake.strategies.feature"] == {"fake.strategies"}   # a name of __init__
    # from outside, the package's __init__ runs first: an edge to it too
    assert graph["fake.other"] == {"fake.strategies._common", "fake.strategies"}
    assert find_cycles(graph) == []


def test_a_module_in_no_layer_is_reported(tmp_path):
    root = tmp_path / "fake"
    _write(root, {"__init__.py": "", "errors.py": "", "stray.py": ""})
    _, problems = check_layers(root, read_layers(FAKE_TABLE))
    assert problems == ["fake.stray (stray.py) is in no layer of the table"]


def test_the_most_specific_glob_wins():
    layers = read_layers(FAKE_TABLE)
    assert layer_of("core/x.py", layers).name == "core"        # type: ignore[union-attr]
    assert layer_of("cli.py", layers).name == "front"          # type: ignore[union-attr]
    assert layer_of("nowhere.py", layers) is None


# ------------------------------------------------------------------------------ the document


def _blocks(markdown: str) -> list[set[str]]:
    """The backticked names of each paragraph or list item."""
    blocks, current = [], []
    for line in markdown.splitlines():
        if not line.strip() or line.lstrip().startswith(("- ", "* ", "#", "|")):
            if current:
                blocks.append(set(re.findall(r"`([^`]+)`", " ".join(current))))
            current = [] if not line.strip() else [line]
            if line.lstrip().startswith(("#", "|")):
                blocks.append(set(re.findall(r"`([^`]+)`", line)))
                current = []
        else:
            current.append(line)
    if current:
        blocks.append(set(re.findall(r"`([^`]+)`", " ".join(current))))
    return blocks


def named_in(relative: str, blocks: list[set[str]]) -> bool:
    """``lab/sshlab.py`` is named when one paragraph (or list item) has `lab/sshlab.py`, or has
    its package (`lab/`) and `sshlab.py`; a package's ``__init__.py`` when its package is."""
    path = Path(relative)
    package = path.parent.as_posix()
    if path.name == "__init__.py":
        wanted = {f"{package}/", f"{path.parent.name}/"} if package != "." else {"__init__.py"}
        return any(wanted & names for names in blocks)
    if any(relative in names for names in blocks):
        return True
    folders = {f"{package}/", f"{path.parent.name}/"}
    return package != "." and any(path.name in names and folders & names for names in blocks)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))


def test_every_module_has_its_row_in_architecture_md():
    blocks = _blocks(ARCHITECTURE.read_text(encoding="utf-8"))
    missing = [f for f in _files(PACKAGE) if not named_in(f, blocks)]
    assert not missing, ("modules docs/ARCHITECTURE.md does not name (add a row, as "
                         "`package/module.py`, or `module.py` beside `package/`): "
                         + ", ".join(missing))


def test_every_first_party_plugin_has_its_row_in_architecture_md():
    blocks = _blocks(ARCHITECTURE.read_text(encoding="utf-8"))
    missing = [f for f in _files(PLUGINS) if not named_in(f, blocks)]
    assert not missing, f"plugin modules docs/ARCHITECTURE.md does not name: {missing}"


def test_the_document_check_sees_a_missing_module():
    blocks = _blocks("- **`lab/`**: `manager.py` and `layout.py`.\n\n`cli.py` too\n")
    assert named_in("lab/manager.py", blocks) and named_in("lab/__init__.py", blocks)
    assert named_in("cli.py", blocks)
    assert not named_in("lab/sshlab.py", blocks)
    assert not named_in("sshlab.py", blocks)


@pytest.mark.parametrize("layer", [layer.name for layer in LAYERS])
def test_each_layer_of_the_table_holds_a_module(layer):
    """A glob that matches nothing is a stale row (``db.py`` and the other modules that other
    helpers add are named by the lead when their branches are merged)."""
    files = _files(PACKAGE)
    globs = next(x for x in LAYERS if x.name == layer).globs
    assert any(fnmatch.fnmatchcase(f, g) for f in files for g in globs)
