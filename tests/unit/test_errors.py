"""The error tree drawn in upgrader/errors.py is the tree the code has, and nothing raises a
bare ``UpgraderError``: every raise names a meaningful leaf (a ``ControlError``, a
``ConfigError``, ...), so a caller can catch what it can handle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import upgrader
from upgrader import errors
from upgrader.errors import UpgraderError

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = (ROOT / "upgrader", ROOT / "plugins")

# TEMPORARY (issue 11): files other helpers are changing on their own branches, where the
# bare `raise UpgraderError(...)` are replaced and HostctlError / SshdError / NetworkError
# join LabError. The checks below skip these files until those branches are merged; the lead
# empties this set after the merge, and it stays empty.
PENDING_OTHER_HELPERS: frozenset[str] = frozenset()

_TREE_LINE = re.compile(r"^(?P<prefix>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w*)\b")


def drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, as the docstring of upgrader/errors.py draws the tree."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []           # (depth, name) of the open branches
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "UpgraderError")
    for line in lines[start:]:
        if not line.strip():
            break
        if "── " not in line and line.strip() != "UpgraderError":
            continue                            # a description continued on the next line
        match = _TREE_LINE.match(line)
        assert match, f"cannot read the tree line {line!r}"
        depth = len(match.group("prefix")) // 4 + ("── " in line)
        name = match.group("name")
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def import_everything() -> None:
    """Import every module of upgrader/ and of the first-party plugins, so that every
    subclass of UpgraderError is defined."""
    for package_dir in SOURCE_DIRS:
        if package_dir.name == "upgrader":
            prefix, paths = "upgrader.", upgrader.__path__
        else:
            prefix, paths = "", [str(package_dir)]
        for module in pkgutil.walk_packages(paths, prefix):
            if module.name.rsplit(".", 1)[-1] == "__main__":
                continue                        # runs a program when imported
            importlib.import_module(module.name)


def tree_classes() -> dict[str, type]:
    """Every subclass of UpgraderError (and the root), by name."""
    import_everything()
    found: dict[str, type] = {"UpgraderError": UpgraderError}
    todo = [UpgraderError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__name__.startswith("_") or sub.__module__.startswith(("test", "conftest")):
                continue                        # private helpers and test doubles
            assert found.get(sub.__name__, sub) is sub, f"two error classes named {sub.__name__}"
            found[sub.__name__] = sub
            todo.append(sub)
    return found


def tree_parent(cls: type) -> str:
    """The base that places ``cls`` in the tree (CommandTimeout is also a TimeoutError)."""
    bases = [base for base in cls.__bases__ if issubclass(base, UpgraderError)]
    assert len(bases) == 1, f"{cls.__name__} has {len(bases)} bases in the tree"
    return bases[0].__name__


def source_files() -> list[Path]:
    return sorted(path for directory in SOURCE_DIRS for path in directory.rglob("*.py")
                  if ".venv" not in path.parts)


def pending_classes() -> set[str]:
    """Classes defined in a PENDING_OTHER_HELPERS file (not yet placed by their owner)."""
    names: set[str] = set()
    for relative in PENDING_OTHER_HELPERS:
        path = ROOT / relative
        if path.exists():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names |= {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    return names


def test_the_docstring_draws_a_tree_rooted_at_upgrader_error():
    drawn = drawn_tree()
    assert drawn["UpgraderError"] is None
    assert {"ConfigError", "ProviderError", "CommandTimeout", "ControlError", "BadRequest",
            "LabError", "JournalError", "PolicyRefused", "RolloutFailed"} <= set(drawn)
    assert drawn["CommandTimeout"] == "TransportError"
    assert drawn["JournalError"] == "StorageError"
    assert drawn["PluginError"] == "ConfigError"


def test_every_error_class_is_drawn_where_it_sits():
    drawn = drawn_tree()
    pending = pending_classes()
    for name, cls in sorted(tree_classes().items()):
        if name == "UpgraderError" or name in pending:
            continue
        assert name in drawn, (f"{cls.__module__}.{name} is an UpgraderError missing from the "
                               "tree in upgrader/errors.py's docstring")
        assert drawn[name] == tree_parent(cls), (
            f"{name} subclasses {tree_parent(cls)}, but upgrader/errors.py draws it under "
            f"{drawn[name]}")


def test_every_drawn_class_exists():
    classes = tree_classes()
    pending = pending_classes()
    missing = sorted(set(drawn_tree()) - set(classes) - pending)
    assert not missing, f"upgrader/errors.py draws classes that are not UpgraderErrors: {missing}"


def test_classes_of_errors_py_carry_a_docstring():
    for name, cls in tree_classes().items():
        if cls.__module__ == "upgrader.errors":
            assert cls.__doc__ and cls.__doc__.strip(), f"{name} needs a docstring"


def bare_raises(path: Path) -> list[int]:
    """Lines of ``path`` that raise (or build, to raise later) a bare ``UpgraderError``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None)
            if name == "UpgraderError":
                lines.append(node.lineno)
    return sorted(lines)


def test_nothing_raises_a_bare_upgrader_error():
    found = {}
    for path in source_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative in PENDING_OTHER_HELPERS:
            continue
        if lines := bare_raises(path):
            found[relative] = lines
    assert not found, ("raise a leaf of the tree in upgrader/errors.py (ControlError, "
                       f"ConfigError, ...), not a bare UpgraderError: {found}")


def test_the_source_check_sees_a_bare_raise(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from upgrader import errors\n"
                      "def f():\n"
                      "    raise errors.UpgraderError('x')\n"
                      "def g():\n"
                      "    raise ControlError('fine')\n"
                      "lost = UpgraderError('built to raise later')\n")
    assert bare_raises(sample) == [3, 6]

