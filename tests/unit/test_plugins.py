"""The plugin manager: every hook works through a temporary plugin, settings are validated,
broken plugins are errors that name them, observers cannot break a rollout."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sys
import types
from dataclasses import dataclass

import pytest

from upgrader import plugins as plugins_module
from upgrader.errors import ConfigError, SnapshotError, TransportError
from upgrader.hookspecs import hookimpl
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import CATEGORIES, DEFAULT_PLUGINS, PluginError, Plugins
from upgrader.providers.base import (
    BalancerState,
    CommandResult,
    HealthResult,
    ProviderContext,
    RouteTable,
    Setting,
)
from upgrader.providers.noop import NoopBalancer, NoopTransport
from upgrader.testing import register_temp_plugin, upgrader_plugins  # noqa: F401 (fixtures)

HOST = Host("web-01", "127.0.0.1", 8101)


# -------------------------------------------------------------------------------------------
# fakes


class FakeTransport:
    def __init__(self, settings):
        self.settings = settings

    async def run(self, host, argv, *, timeout=None, check=True):
        return CommandResult(0, stdout=" ".join(argv))

    async def aclose(self):
        pass


class FakeBalancer(NoopBalancer):
    pass


class FakeHealth:
    async def check(self, host, *, port=None):
        return HealthResult(True, f"fake {port}")

    async def aclose(self):
        pass


class FakeSnapshot:
    async def create(self, host, label):
        return f"{label}-fake"

    async def revert(self, host, snapshot_id):
        pass

    async def delete(self, host, snapshot_id):
        pass

    async def aclose(self):
        pass


class FakeNotifier:
    def __init__(self):
        self.seen = []

    async def notify(self, event):
        self.seen.append(event)

    async def aclose(self):
        pass


FAKE_SETTINGS = (
    Setting("count", int, 3, "how many"),
    Setting("timeout", float, 1.0),
    Setting("name", str, description="required"),
    Setting("tags", list, []),
    Setting("enabled", bool, True),
)


class FakeTransportPlugin:
    @hookimpl
    def register_transports(self, register):
        register("fake", lambda settings, context: FakeTransport(settings),
                 settings=FAKE_SETTINGS, description="a fake transport")


@dataclass(frozen=True)
class SomethingHappened:
    what: str


# -------------------------------------------------------------------------------------------
# one test per hook


def test_hook_register_transports(upgrader_plugins, register_temp_plugin):
    name = register_temp_plugin(FakeTransportPlugin(), name="fake-plugin")
    factory = upgrader_plugins.lookup("transport", "fake")
    assert factory is not None
    assert factory.plugin == name == "fake-plugin"
    assert factory.description == "a fake transport"
    assert "fake" in upgrader_plugins.names("transport")

    transport = upgrader_plugins.create(
        "transport", ProviderSpec("fake", {"name": "x", "timeout": "250ms", "tags": ["a"]}),
        ProviderContext())
    assert isinstance(transport, FakeTransport)
    assert transport.settings == {"count": 3, "timeout": 0.25, "name": "x", "tags": ["a"],
                                  "enabled": True}
    result = asyncio.run(transport.run(HOST, ["echo", "hi"]))
    assert result.stdout == "echo hi"


def test_hook_register_balancers(upgrader_plugins, register_temp_plugin):
    class Plugin:
        @hookimpl
        def register_balancers(self, register):
            register("fakelb", lambda settings, context: FakeBalancer())

    register_temp_plugin(Plugin())
    balancer = upgrader_plugins.create("balancer", ProviderSpec("fakelb"))
    assert isinstance(balancer, FakeBalancer)

    async def scenario():
        await balancer.set_backend("a", address="127.0.0.1", port=9000, pool="old")
        return await balancer.state()

    assert isinstance(asyncio.run(scenario()), BalancerState)


def test_hook_register_health_checks(upgrader_plugins, register_temp_plugin):
    class Plugin:
        @hookimpl
        def register_health_checks(self, register):
            register("fakecheck", lambda settings, context: FakeHealth())

    register_temp_plugin(Plugin())
    check = upgrader_plugins.create("health", ProviderSpec("fakecheck"))
    assert asyncio.run(check.check(HOST, port=8102)) == HealthResult(True, "fake 8102")


def test_hook_register_snapshot_providers(upgrader_plugins, register_temp_plugin):
    class Plugin:
        @hookimpl
        def register_snapshot_providers(self, register):
            register("fakesnap", lambda settings, context: FakeSnapshot())

    register_temp_plugin(Plugin())
    snapshot = upgrader_plugins.create("snapshot", ProviderSpec("fakesnap"))
    assert asyncio.run(snapshot.create(HOST, "pre")) == "pre-fake"


def test_hook_register_notifiers(upgrader_plugins, register_temp_plugin):
    created = []

    class Plugin:
        @hookimpl
        def register_notifiers(self, register):
            def factory(settings, context):
                created.append(FakeNotifier())
                return created[-1]
            register("fakenote", factory, settings=(Setting("room", str, "#ops"),))

    register_temp_plugin(Plugin(), name="notes")
    assert "fakenote" in upgrader_plugins.names("notifier")
    notifier = upgrader_plugins.create("notifier", ProviderSpec("fakenote"))
    asyncio.run(notifier.notify(SomethingHappened("x")))
    assert created[0].seen == [SomethingHappened("x")]
    listed = {p["name"]: p for p in upgrader_plugins.list_plugins()}
    assert listed["notes"]["providers"] == {"notifier": ["fakenote"]}
    assert listed["notes"]["hooks"] == ["register_notifiers"]


def test_hook_register_metric_sources(upgrader_plugins, register_temp_plugin):
    from upgrader.model import MetricSpec
    from upgrader.providers.base import MetricSamples, MetricSource, MetricWindow

    class ConstantSource:
        def __init__(self, value):
            self.value = value

        def check(self, metric):
            pass

        async def collect(self, metric, window):
            return MetricSamples(canary=(self.value,) * len(window.canary),
                                 baseline=(1.0,) * len(window.baseline))

        async def aclose(self):
            pass

    class Plugin:
        @hookimpl
        def register_metric_sources(self, register):
            register("constant", lambda settings, context: ConstantSource(settings["value"]),
                     settings=(Setting("value", float, 2.0),))

    register_temp_plugin(Plugin(), name="constants")
    assert "constant" in upgrader_plugins.names("metrics")
    source = upgrader_plugins.create("metrics", ProviderSpec("constant", {"value": 3.0}))
    assert isinstance(source, MetricSource)
    window = MetricWindow(0.0, 10.0, ("web-02",), ("web-01", "web-03"), "1.1.0", "1.0.0")
    samples = asyncio.run(source.collect(MetricSpec("x", source="constant"), window))
    assert samples.canary == (3.0,) and samples.baseline == (1.0, 1.0)
    listed = {p["name"]: p for p in upgrader_plugins.list_plugins()}
    assert listed["constants"]["providers"] == {"metrics": ["constant"]}


def test_hook_upgrader_event(upgrader_plugins, register_temp_plugin, caplog):
    received = []

    class Observer:
        @hookimpl
        def upgrader_event(self, event):
            received.append(event)

    class Broken:
        @hookimpl
        def upgrader_event(self, event):
            raise RuntimeError("observer bug")

    register_temp_plugin(Observer(), name="observer")
    register_temp_plugin(Broken(), name="broken")
    event = SomethingHappened("wave 1 done")
    with caplog.at_level(logging.ERROR, logger="upgrader.plugins"):
        failures = upgrader_plugins.emit_event(event)
    assert received == [event]           # the broken observer did not stop the others
    assert [(name, str(exc)) for name, exc in failures] == [("broken", "observer bug")]
    assert "broken" in caplog.text and "observer bug" in caplog.text


def test_async_event_observer_is_scheduled(upgrader_plugins, register_temp_plugin):
    received = []

    class AsyncObserver:
        @hookimpl
        async def upgrader_event(self, event):
            received.append(event)

    register_temp_plugin(AsyncObserver())

    async def scenario():
        assert upgrader_plugins.emit_event("e") == []
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert received == ["e"]


def test_every_provider_hook_is_a_category():
    assert set(CATEGORIES.values()) | {"upgrader_event"} == set(plugins_module._hook_names())


# -------------------------------------------------------------------------------------------
# built-ins


def test_builtins_are_registered_through_the_hooks(upgrader_plugins):
    assert {"local", "noop"} <= set(upgrader_plugins.names("transport"))
    assert {"builtin", "noop"} <= set(upgrader_plugins.names("balancer"))
    assert {"http", "tcp", "command", "noop"} <= set(upgrader_plugins.names("health"))
    assert {"directory", "noop"} <= set(upgrader_plugins.names("snapshot"))
    assert upgrader_plugins.lookup("transport", "local").plugin == "upgrader.providers.local"
    assert upgrader_plugins.lookup("transport", "nope") is None
    listed = [p["name"] for p in upgrader_plugins.list_plugins()]
    assert listed[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert all(p["version"] for p in upgrader_plugins.list_plugins()[: len(DEFAULT_PLUGINS)])


def test_nothing_is_loaded_until_first_use(monkeypatch):
    calls = []
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: calls.append(1) or [])
    plugins = Plugins()
    assert calls == []
    plugins.names("transport")
    plugins.names("health")
    assert calls == [1]


def test_builtin_providers_satisfy_their_protocols(upgrader_plugins):
    context = ProviderContext(transport=NoopTransport())
    required = {("health", "command"): {"argv": ["true"]}}
    for category in CATEGORIES:
        for factory in upgrader_plugins.factories(category):
            if (category, factory.name) == ("balancer", "builtin"):
                continue  # needs a running balancer's admin_url; covered by its own tests
            if factory.plugin not in DEFAULT_PLUGINS:
                continue  # first-party plugins (entry points) are covered by their own tests
            spec = ProviderSpec(factory.name, required.get((category, factory.name), {}))
            provider = upgrader_plugins.create(category, spec, context)
            asyncio.run(provider.aclose())


def test_the_builtin_balancer_is_found():
    factory = Plugins().lookup("balancer", "builtin")
    assert factory is not None and factory.plugin == "upgrader.providers.builtin_balancer"


# -------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize(("settings", "key", "words"), [
    ({"name": "x", "timout": 2}, "transport.timout", "unknown setting 'timout'"),
    ({}, "transport.name", "needs setting 'name'"),
    ({"name": 3}, "transport.name", "expected a string"),
    ({"name": "x", "count": "3"}, "transport.count", "expected an integer"),
    ({"name": "x", "count": True}, "transport.count", "expected an integer"),
    ({"name": "x", "timeout": True}, "transport.timeout", "expected a number"),
    ({"name": "x", "timeout": "soon"}, "transport.timeout", "expected a number"),
    ({"name": "x", "tags": "a,b"}, "transport.tags", "expected a list"),
    ({"name": "x", "enabled": 1}, "transport.enabled", "expected a boolean"),
])
def test_bad_settings_are_config_errors_naming_the_key(upgrader_plugins, register_temp_plugin,
                                                       settings, key, words):
    register_temp_plugin(FakeTransportPlugin())
    with pytest.raises(ConfigError) as info:
        upgrader_plugins.create("transport", ProviderSpec("fake", settings), ProviderContext())
    assert info.value.key == key
    assert words in str(info.value)


def test_settings_are_normalised_and_defaults_not_shared(upgrader_plugins,
                                                         register_temp_plugin):
    register_temp_plugin(FakeTransportPlugin())
    first = upgrader_plugins.create("transport", ProviderSpec("fake", {"name": "a",
                                                                       "timeout": 2}))
    second = upgrader_plugins.create("transport", ProviderSpec("fake", {"name": "b"}))
    assert first.settings["timeout"] == 2.0 and isinstance(first.settings["timeout"], float)
    first.settings["tags"].append("mutated")
    assert second.settings["tags"] == []


def test_unknown_kind_lists_the_known_ones(upgrader_plugins):
    with pytest.raises(ConfigError) as info:
        upgrader_plugins.create("transport", ProviderSpec("sshh"), ProviderContext())
    assert info.value.key == "transport.kind"
    assert "local" in str(info.value) and "sshh" in str(info.value)


def test_validate_without_creating(upgrader_plugins):
    assert upgrader_plugins.validate("health", ProviderSpec("http", {"timeout": "500ms"})) == {
        "path": "/healthz", "scheme": "http", "timeout": 0.5, "expect_status": 200,
        "headers": {}}


def test_provider_missing_protocol_methods_is_a_plugin_error(upgrader_plugins,
                                                            register_temp_plugin):
    class Plugin:
        @hookimpl
        def register_health_checks(self, register):
            register("half", lambda settings, context: object())

    register_temp_plugin(Plugin(), name="halfway")
    with pytest.raises(PluginError) as info:
        upgrader_plugins.create("health", ProviderSpec("half"))
    assert "halfway" in str(info.value) and "check" in str(info.value)


def test_factory_config_errors_pass_through(upgrader_plugins):
    with pytest.raises(ConfigError) as info:
        upgrader_plugins.create("transport", ProviderSpec("local", {"max_parallel": 0}))
    assert info.value.key == "transport.max_parallel"


# -------------------------------------------------------------------------------------------
# broken plugins


def test_duplicate_names_error_naming_both_plugins(upgrader_plugins, register_temp_plugin):
    class Again:
        @hookimpl
        def register_transports(self, register):
            register("local", lambda settings, context: FakeTransport(settings))

    with pytest.raises(PluginError) as info:
        register_temp_plugin(Again(), name="again")
    message = str(info.value)
    assert "'local'" in message
    assert "upgrader.providers.local" in message and "again" in message
    # the clash was rolled back: the manager still works
    assert upgrader_plugins.lookup("transport", "local").plugin == "upgrader.providers.local"
    assert upgrader_plugins.pm.get_plugin("again") is None


def test_duplicate_name_within_one_plugin(upgrader_plugins, register_temp_plugin):
    class Twice:
        @hookimpl
        def register_health_checks(self, register):
            register("x", lambda s, c: FakeHealth())
            register("x", lambda s, c: FakeHealth())

    with pytest.raises(PluginError, match="registered twice"):
        register_temp_plugin(Twice(), name="twice")


@pytest.mark.parametrize("call", [
    lambda register: register("bad name!", lambda s, c: None),
    lambda register: register("ok", "not callable"),
    lambda register: register("ok", lambda s, c: None, settings=("timeout",)),
    lambda register: register("ok", lambda s, c: None, settings=(Setting("kind", str, ""),)),
])
def test_bad_registrations_are_plugin_errors(upgrader_plugins, register_temp_plugin, call):
    class Plugin:
        @hookimpl
        def register_transports(self, register):
            call(register)

    with pytest.raises(PluginError, match="plugin 'sloppy'"):
        register_temp_plugin(Plugin(), name="sloppy")


def test_a_register_hook_that_raises_is_a_plugin_error(upgrader_plugins,
                                                      register_temp_plugin):
    class Crashing:
        @hookimpl
        def register_snapshot_providers(self, register):
            raise KeyError("oops")

    with pytest.raises(PluginError, match="plugin 'crashing' failed in "
                                          "register_snapshot_providers"):
        register_temp_plugin(Crashing(), name="crashing")
    assert "directory" in upgrader_plugins.names("snapshot")


def test_check_pending_catches_a_misspelled_hookimpl(upgrader_plugins, register_temp_plugin):
    class Typo:
        @hookimpl
        def register_transport(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError) as info:
        register_temp_plugin(Typo(), name="typo")
    assert "register_transport" in str(info.value) and "typo" in str(info.value)
    assert upgrader_plugins.pm.get_plugin("typo") is None


def test_hookimpl_with_unknown_argument_is_rejected(upgrader_plugins, register_temp_plugin):
    class WrongArgs:
        @hookimpl
        def register_transports(self, register, extra):
            pass

    with pytest.raises(PluginError, match="wrongargs"):
        register_temp_plugin(WrongArgs(), name="wrongargs")


# -------------------------------------------------------------------------------------------
# entry points and UPGRADER_DISABLE_PLUGINS


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Two third-party plugins, ``alpha`` (a transport) and ``beta`` (an observer)."""
    alpha = types.ModuleType("upgrader_test_alpha")

    @hookimpl
    def register_transports(register):
        register("alpha", lambda settings, context: FakeTransport(settings))

    alpha.register_transports = register_transports
    beta = types.ModuleType("upgrader_test_beta")

    @hookimpl
    def upgrader_event(event):
        beta.seen.append(event)

    beta.upgrader_event = upgrader_event
    beta.seen = []
    monkeypatch.setitem(sys.modules, alpha.__name__, alpha)
    monkeypatch.setitem(sys.modules, beta.__name__, beta)
    eps = [importlib.metadata.EntryPoint("alpha", alpha.__name__, "upgrader"),
           importlib.metadata.EntryPoint("beta", beta.__name__, "upgrader")]
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: eps)
    monkeypatch.delenv("UPGRADER_DISABLE_PLUGINS", raising=False)
    return beta


def test_entry_points_are_loaded(fake_entry_points):
    plugins = Plugins()
    assert plugins.lookup("transport", "alpha").plugin == "alpha"
    plugins.emit_event("hello")
    assert fake_entry_points.seen == ["hello"]
    kinds = {p["name"]: p["kind"] for p in plugins.list_plugins()}
    assert kinds["alpha"] == kinds["beta"] == "entrypoint"


@pytest.mark.parametrize("value", ["1", "all"])
def test_disable_plugins_blocks_every_entry_point(fake_entry_points, monkeypatch, value):
    monkeypatch.setenv("UPGRADER_DISABLE_PLUGINS", value)
    plugins = Plugins()
    assert plugins.lookup("transport", "alpha") is None
    assert plugins.lookup("transport", "local") is not None   # built-ins stay
    plugins.emit_event("hello")
    assert fake_entry_points.seen == []


def test_disable_plugins_blocks_named_entry_points(fake_entry_points, monkeypatch):
    monkeypatch.setenv("UPGRADER_DISABLE_PLUGINS", "beta, gamma")
    plugins = Plugins()
    assert plugins.lookup("transport", "alpha") is not None
    plugins.emit_event("hello")
    assert fake_entry_points.seen == []
    assert "beta" not in [p["name"] for p in plugins.list_plugins()]


def test_entrypoints_false_loads_none(fake_entry_points):
    assert Plugins(entrypoints=False).lookup("transport", "alpha") is None


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    eps = [importlib.metadata.EntryPoint("ghost", "upgrader_no_such_module_xyz", "upgrader")]
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: eps)
    monkeypatch.delenv("UPGRADER_DISABLE_PLUGINS", raising=False)
    with pytest.raises(PluginError) as info:
        Plugins().names("transport")
    assert "ghost" in str(info.value) and "UPGRADER_DISABLE_PLUGINS=ghost" in str(info.value)
    monkeypatch.setenv("UPGRADER_DISABLE_PLUGINS", "ghost")
    assert "local" in Plugins().names("transport")


def test_a_misspelled_hook_in_an_entry_point_fails_the_load(monkeypatch):
    module = types.ModuleType("upgrader_test_typo")

    @hookimpl
    def register_balancer(register):
        pass

    module.register_balancer = register_balancer
    monkeypatch.setitem(sys.modules, module.__name__, module)
    eps = [importlib.metadata.EntryPoint("typo", module.__name__, "upgrader")]
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: eps)
    monkeypatch.delenv("UPGRADER_DISABLE_PLUGINS", raising=False)
    with pytest.raises(PluginError, match="register_balancer"):
        Plugins().names("balancer")


def test_unregister_forgets_the_providers(upgrader_plugins):
    plugin = FakeTransportPlugin()
    upgrader_plugins.register(plugin, name="temp")
    assert upgrader_plugins.lookup("transport", "fake") is not None
    upgrader_plugins.unregister(plugin)
    assert upgrader_plugins.lookup("transport", "fake") is None


def test_managers_are_independent():
    one, two = Plugins(), Plugins()
    one.register(FakeTransportPlugin(), name="only-in-one")
    assert one.lookup("transport", "fake") is not None
    assert two.lookup("transport", "fake") is None


# -------------------------------------------------------------------------------------------
# the noop providers (used by estimates and tests: they must be faithful)


def test_noop_balancer_reads_back_what_was_set():
    async def scenario():
        lb = NoopBalancer()
        for i in range(10_000):
            await lb.set_backend(f"b{i}", address="10.0.0.1", port=8000 + i % 1000,
                                 pool="old" if i % 2 else "new", weight=i % 257)
        await lb.set_backend_state("b1", "drain", pool="parking")
        await lb.set_split({"old": 90, "new": 10})
        routes = RouteTable(groups={"staff": "new"}, default="old")
        await lb.set_routes(routes)
        await lb.set_maintenance(True, retry_after=30)
        state = await lb.state()
        assert len(state.backends) == 10_000
        assert state.backends["b1"].state == "drain" and state.backends["b1"].pool == "parking"
        assert state.backends["b256"].weight == 256
        assert state.split == {"old": 90.0, "new": 10.0}
        assert state.routes is routes
        assert state.maintenance and state.retry_after == 30
        stats = await lb.stats()
        assert stats["b3"].requests == 0 and sum(stats["b3"].latency_buckets) == 0
        lb.record("b3", requests=10, errors=2, latencies=[0.004, 0.2, 99])
        stats = await lb.stats()
        assert (stats["b3"].requests, stats["b3"].errors) == (10, 2)
        assert sum(stats["b3"].latency_buckets) == 3 and stats["b3"].latency_buckets[-1] == 1
        await lb.remove_backend("b3")
        assert "b3" not in (await lb.state()).backends
        with pytest.raises(Exception, match="no backend"):
            await lb.set_backend_state("b3", "ready")
        with pytest.raises(Exception, match="state"):
            await lb.set_backend_state("b4", "sleeping")
        with pytest.raises(Exception, match=r"0\.\.256"):
            await lb.set_backend("b5", address="x", port=1, pool="p", weight=300)
        await lb.set_split(None)
        assert (await lb.state()).split is None

    asyncio.run(scenario())


def test_noop_balancer_wait_drained():
    async def scenario():
        lb = NoopBalancer()
        await lb.set_backend("a", address="127.0.0.1", port=9000, pool="old")
        assert await lb.wait_drained("a", 1.0) == 0
        lb.set_inflight("a", 3)
        assert await lb.wait_drained("a", 0.01) == 3
        asyncio.get_running_loop().call_later(0.01, lb.set_inflight, "a", 0)
        assert await lb.wait_drained("a", 5.0) == 0

    asyncio.run(scenario())


def test_noop_transport_records_and_can_fail():
    async def scenario():
        transport = NoopTransport(
            responder=lambda host, argv: CommandResult(3, stderr="nope") if "bad" in argv else None)
        assert (await transport.run(HOST, ["deploy", "1.5"])).exit_status == 0
        with pytest.raises(TransportError) as info:
            await transport.run(HOST, ["bad"])
        assert info.value.exit_status == 3
        assert (await transport.run(HOST, ["bad"], check=False)).exit_status == 3
        assert [c.argv for c in transport.calls] == [("deploy", "1.5"), ("bad",), ("bad",)]

    asyncio.run(scenario())


def test_noop_snapshot_and_health(upgrader_plugins):
    snapshot = upgrader_plugins.create("snapshot", ProviderSpec("noop"))
    health = upgrader_plugins.create("health", ProviderSpec("noop"))

    async def scenario():
        sid = await snapshot.create(HOST, "pre-1.5")
        await snapshot.revert(HOST, sid)
        await snapshot.delete(HOST, sid)
        with pytest.raises(SnapshotError):
            await snapshot.revert(HOST, sid)
        assert (await health.check(HOST)).ok
        health.set_healthy(HOST.name, False)
        assert not (await health.check(HOST)).ok

    asyncio.run(scenario())
