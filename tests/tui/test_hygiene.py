"""The TUI is the only part that imports textual (Harlequin's import-hygiene test)."""

from __future__ import annotations

import subprocess
import sys

CODE = r"""
import importlib, pkgutil, sys

def walk(package):
    # pkgutil.walk_packages would import upgrader.tui itself to look inside it
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.startswith("upgrader.tui") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        yield info.name
        if info.ispkg:
            yield from walk(module)

import upgrader
names = list(walk(upgrader))
assert "textual" not in sys.modules
print(len(names))
"""

def test_no_module_outside_the_tui_imports_textual():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 10
