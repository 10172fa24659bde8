"""pytest fixtures for plugin authors (registered as the ``upgrader`` pytest plugin).

``upgrader_plugins``
    a fresh :class:`upgrader.plugins.Plugins` with the built-in providers and the installed
    plugins (``UPGRADER_DISABLE_PLUGINS`` applies).
``register_temp_plugin``
    ``register_temp_plugin(plugin, name=None) -> name`` registers a plugin object with
    ``upgrader_plugins`` for the test and unregisters it afterwards::

        from upgrader.hookspecs import hookimpl

        class FakeTransportPlugin:
            @hookimpl
            def register_transports(self, register):
                register("fake", lambda settings, context: FakeTransport())

        def test_fake_is_found(upgrader_plugins, register_temp_plugin):
            register_temp_plugin(FakeTransportPlugin())
            assert upgrader_plugins.lookup("transport", "fake") is not None

A test suite outside upgrader gets them with the installed pytest plugin, or with
``pytest_plugins = ["upgrader.testing"]`` in its top-level conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .plugins import Plugins

__all__ = ["register_temp_plugin", "upgrader_plugins"]


@pytest.fixture
def upgrader_plugins() -> Plugins:
    """A fresh plugin manager with the built-in providers and the installed plugins."""
    return Plugins()


@pytest.fixture
def register_temp_plugin(upgrader_plugins: Plugins) -> Iterator[Callable[..., str]]:
    """``register_temp_plugin(plugin, name=None) -> name``: registered for this test only."""
    registered: list[str] = []

    def register(plugin: object, name: str | None = None) -> str:
        registered_name = upgrader_plugins.register(plugin, name=name)
        registered.append(registered_name)
        return registered_name

    yield register
    for name in reversed(registered):
        if upgrader_plugins.pm.get_plugin(name) is not None:
            upgrader_plugins.unregister(name)
