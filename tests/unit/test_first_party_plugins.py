"""The first-party plugins ``libvirt`` and ``webhook`` are found through their entry points as
a third party's would be, use only the public plugin API, and load without their optional
libraries."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import upgrader.events
from upgrader.errors import ConfigError
from upgrader.model import ProviderSpec
from upgrader.plugins import ENTRY_POINT_GROUP, Plugins
from upgrader.providers.base import Notifier, ProviderContext

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_API = {"upgrader.hookspecs", "upgrader.providers.base", "upgrader.errors",
              "upgrader.model", "upgrader.events"}
OURS = {"libvirt": ("upgrader_libvirt", "snapshot"), "webhook": ("upgrader_webhook", "notifier")}


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.delenv("UPGRADER_DISABLE_PLUGINS", raising=False)
    return Plugins()


@pytest.mark.parametrize("name", sorted(OURS))
def test_declared_as_an_entry_point(name):
    module, _ = OURS[name]
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert name in eps, f"pyproject.toml must declare {name} = {module!r} under [project." \
                        f"entry-points.upgrader] (and the project be installed)"
    assert eps[name].value == module
    assert eps[name].dist is not None and eps[name].dist.metadata["Name"] == "upgrader"


@pytest.mark.parametrize("name", sorted(OURS))
def test_found_through_the_entry_point(plugins, name):
    _, category = OURS[name]
    factory = plugins.lookup(category, name)
    assert factory is not None and factory.plugin == name
    assert factory.description
    listed = {p["name"]: p for p in plugins.list_plugins()}
    assert listed[name]["kind"] == "entrypoint"
    assert listed[name]["dist"] == "upgrader"
    assert listed[name]["version"] == importlib.metadata.version("upgrader")
    assert listed[name]["providers"] == {category: [name]}


@pytest.mark.parametrize("name", sorted(OURS))
def test_disable_plugins_blocks_it(monkeypatch, name):
    monkeypatch.setenv("UPGRADER_DISABLE_PLUGINS", name)
    _, category = OURS[name]
    assert Plugins().lookup(category, name) is None


@pytest.mark.parametrize("name", sorted(OURS))
def test_imports_only_the_public_plugin_api(name):
    module, _ = OURS[name]
    source = ROOT / "plugins" / module / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            used.add(node.module)
        elif isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{source}: relative import")
    private = {m for m in used if m.split(".")[0] == "upgrader"} - PUBLIC_API
    assert not private, f"{module} imports upgrader internals: {sorted(private)}"


def test_importing_them_imports_neither_libvirt_nor_aiohttp():
    """Their libraries load when a provider is used, not when `upgrader plugins` lists it
    (the built-in http check imports aiohttp anyway; the plugin modules must not)."""
    code = ("import sys\n"
            "import upgrader_libvirt, upgrader_webhook\n"
            "print(sorted(m for m in ('libvirt', 'aiohttp') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_libvirt_without_libvirt_python_is_a_config_error_saying_what_to_install(
        plugins, monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)      # as if it were not installed
    assert "libvirt" in plugins.names("snapshot")          # `upgrader plugins` still works
    with pytest.raises(ConfigError) as info:
        plugins.create("snapshot", ProviderSpec("libvirt", {"uri": "test:///default"}),
                       ProviderContext())
    assert info.value.key == "snapshot.kind"
    assert "upgrader[libvirt]" in str(info.value)


@pytest.mark.parametrize(("settings", "key"), [
    ({"keep": -1}, "snapshot.keep"),
    ({"timeout": 0}, "snapshot.timeout"),
    ({"domains": {"web-01": 3}}, "snapshot.domains"),
    ({"password_env": "UPGRADER_NO_SUCH_VARIABLE_17"}, "snapshot.password_env"),
    ({"uri": 5}, "snapshot.uri"),
])
def test_libvirt_bad_settings_name_the_key(plugins, settings, key):
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    with pytest.raises(ConfigError) as info:
        plugins.create("snapshot", ProviderSpec("libvirt", settings), ProviderContext())
    assert info.value.key == key


def test_webhook_event_kinds_match_the_documented_kinds():
    """The webhook's ``events`` filter rejects unknown kinds; its list must follow the engine's
    (documented in upgrader/events.py's docstring as ``kind`` [data keys]): a new kind goes
    into ``upgrader_webhook.EVENT_KINDS`` too."""
    from upgrader_webhook import EVENT_KINDS

    documented = set(re.findall(r"``([a-z_]+)`` \[", upgrader.events.__doc__ or ""))
    assert {"rollout_started", "host_done", "rollout_finished"} <= documented
    assert documented == set(EVENT_KINDS), (
        f"add to upgrader_webhook.EVENT_KINDS: {sorted(documented - set(EVENT_KINDS))}; "
        f"no longer emitted: {sorted(set(EVENT_KINDS) - documented)}")


def test_webhook_notify_needs_no_network_until_it_runs(plugins):
    notifier = plugins.create("notifier", ProviderSpec("webhook", {"url": "http://127.0.0.1:9/"}),
                              ProviderContext())
    assert isinstance(notifier, Notifier)
    asyncio.run(notifier.aclose())         # closing an unused notifier is a no-op
    assert (notifier.sent, notifier.dropped) == (0, 0)


def test_upgrader_plugins_lists_them_with_distribution_version_and_providers(capsys,
                                                                            monkeypatch):
    from upgrader.cli import main

    monkeypatch.delenv("UPGRADER_DISABLE_PLUGINS", raising=False)
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    version = importlib.metadata.version("upgrader")
    assert f"upgrader.providers.local  upgrader {version}  (built in)" in lines
    for name, (_, category) in OURS.items():
        index = lines.index(f"{name}  upgrader {version}  (entry point)")
        assert lines[index + 1].startswith(f"  {category}: {name} - ")
