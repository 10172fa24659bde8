"""The template plugin in examples/plugin-template is a real, installable package: pip installs
it from its folder into a throw-away venv, `upgrader plugins` there lists it with its
distribution and version, and its own tests pass there (with upgrader's pytest fixtures).

Isolation, offline and fast: the throw-away venv gets no copy of upgrader or its dependencies;
a .pth file adds this project's environment (upgrader installed editable, pytest, aiohttp, ...)
BEHIND its own site-packages, so the template is installed into, and found in, the throw-away
venv only. The project's environment is never changed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "plugin-template"
DIST, VERSION, ENTRY_POINT = "upgrader-template-plugin", "0.2.0", "template"


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 240) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("UPGRADER_DISABLE_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited with {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _can_build_wheels_here() -> bool:
    """setuptools < 70.1 builds wheels only with the `wheel` package."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A throw-away venv with the template installed from (a copy of) its folder."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in the project environment (build backend "
                    "of the template)")
    root = tmp_path_factory.mktemp("plugin-template")
    # build from a copy: pip builds in the source tree and would leave build/ and *.egg-info
    source = root / "plugin-template"
    shutil.copytree(TEMPLATE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                  ".pytest_cache"))
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = env_dir / "bin" / "python"
    purelib = _run([str(python), "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    host = sysconfig.get_paths()["purelib"]
    # addsitedir (not a bare path line) so that the project's own .pth files run too: they
    # install the editable finder of upgrader and its first-party plugins
    Path(purelib, "_upgrader_project_env.pth").write_text(
        f"import site; site.addsitedir({host!r})\n", encoding="utf-8")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    if not _can_build_wheels_here():
        try:   # into the throw-away venv; from the configured index or find-links
            _run([*pip, "wheel"])
        except AssertionError as exc:
            pytest.skip(f"cannot build a wheel: setuptools < 70.1 needs the `wheel` package, "
                        f"and pip could not install it: {exc}")
    _run([*pip, "--no-deps", "--no-build-isolation", str(source)])
    return env_dir


def test_pip_installed_template_is_found_through_its_entry_point(venv):
    python = str(venv / "bin" / "python")
    where = _run([python, "-c", "import upgrader_template, upgrader; "
                                "print(upgrader_template.__file__); print(upgrader.__file__)"])
    template_file, upgrader_file = where.split()
    assert template_file.startswith(str(venv))               # installed into the venv
    assert upgrader_file.startswith(str(ROOT / "upgrader"))   # upgrader: the project's
    # and the project's environment does not have it
    assert importlib.util.find_spec("upgrader_template") is None


def test_upgrader_plugins_lists_it_with_distribution_version_and_providers(venv):
    out = _run([str(venv / "bin" / "python"), "-m", "upgrader.cli", "plugins"])
    lines = out.splitlines()
    header = f"{ENTRY_POINT}  {DIST} {VERSION}  (entry point)"
    assert header in lines, out
    index = lines.index(header)
    assert lines[index + 1].startswith("  notifier: jsonl - ")
    assert lines[index + 2].startswith("  transport: record - ")


def test_the_templates_own_tests_pass_in_that_venv(venv, tmp_path):
    source = tmp_path / "plugin-template"
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                    "__pycache__"))
    shutil.rmtree(source / "src")     # the tests must use the installed package
    out = _run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-rs", "-p",
                "no:cacheprovider"], cwd=source)
    assert re.search(r"\b4 passed\b", out), out
    assert "skipped" not in out, out     # including the entry-point test
