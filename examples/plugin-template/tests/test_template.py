"""Tests of the template plugin, with the fixtures upgrader ships for plugin authors:

- ``upgrader_plugins``: a fresh plugin manager with upgrader's built-ins and every installed
  plugin;
- ``register_temp_plugin(plugin, name=None)``: registers a plugin for one test only.

pytest finds them by itself (upgrader declares a ``pytest11`` entry point).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json

import pytest
import upgrader_template

from upgrader.errors import ConfigError, TransportError
from upgrader.model import Host, ProviderSpec
from upgrader.providers.base import Notifier, ProviderContext, Transport

HOST = Host("web-01", "10.0.0.11", 8080, vars={"zone": "a"})
DIST = "upgrader-template-plugin"


def installed() -> bool:
    try:
        importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def plugins(upgrader_plugins, register_temp_plugin):
    """upgrader's plugin manager with this plugin in it, whether it is installed or not."""
    if upgrader_plugins.lookup("transport", "record") is None:
        register_temp_plugin(upgrader_template, name="template")
    return upgrader_plugins


@pytest.mark.skipif(not installed(), reason=f"{DIST} is not installed (pip install -e .)")
def test_installed_plugin_is_found_through_its_entry_point(upgrader_plugins):
    factory = upgrader_plugins.lookup("transport", "record")
    assert factory is not None and factory.plugin == "template"   # the entry point's name
    listed = {p["name"]: p for p in upgrader_plugins.list_plugins()}
    assert listed["template"]["dist"] == DIST
    assert listed["template"]["version"] == upgrader_template.__version__
    assert listed["template"]["providers"] == {"notifier": ["jsonl"], "transport": ["record"]}


def test_record_transport_writes_down_each_command(plugins, tmp_path):
    transport = plugins.create(
        "transport", ProviderSpec("record", {"path": str(tmp_path / "{zone}" / "{host}.jsonl"),
                                             "fail_on": ["false"]}),
        ProviderContext())
    assert isinstance(transport, Transport)

    async def scenario():
        assert (await transport.run(HOST, ["deploy", "1.5.0"])).exit_status == 0
        assert (await transport.run(HOST, ["false"], check=False)).exit_status == 1
        with pytest.raises(TransportError) as info:
            await transport.run(HOST, ["false"])
        assert info.value.host == "web-01" and info.value.exit_status == 1
        await transport.aclose()

    asyncio.run(scenario())
    lines = (tmp_path / "a" / "web-01.jsonl").read_text().splitlines()
    assert [json.loads(line)["argv"] for line in lines] == [["deploy", "1.5.0"], ["false"],
                                                          ["false"]]


def test_settings_are_checked_before_the_factory_runs(plugins):
    with pytest.raises(ConfigError) as info:
        plugins.create("transport", ProviderSpec("record", {"path": "x", "fail_onn": []}),
                       ProviderContext())
    assert info.value.key == "transport.fail_onn"
    with pytest.raises(ConfigError) as info:
        plugins.create("transport", ProviderSpec("record"), ProviderContext())
    assert info.value.key == "transport.path"


def test_jsonl_notifier_appends_the_chosen_events(plugins, tmp_path):
    path = tmp_path / "events.jsonl"
    notifier = plugins.create(
        "notifier", ProviderSpec("jsonl", {"path": str(path), "events": ["host_done"]}),
        ProviderContext())
    assert isinstance(notifier, Notifier)

    class Event:          # what the engine sends has a kind and a to_json()
        def __init__(self, kind, host):
            self.kind, self.host = kind, host

        def to_json(self):
            return {"kind": self.kind, "host": self.host}

    async def scenario():
        for kind, host in [("host_phase", "a"), ("host_done", "a"), ("host_done", "b")]:
            await notifier.notify(Event(kind, host))
        await notifier.aclose()

    asyncio.run(scenario())
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"kind": "host_done", "host": "a"}, {"kind": "host_done", "host": "b"}]
