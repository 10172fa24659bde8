"""The plugin hooks of upgrader (pluggy project name ``upgrader``).

Provider hooks REGISTER factories by name: each receives a ``register`` callback and calls it
once per provider it offers::

    @hookimpl
    def register_transports(register):
        register("local", LocalTransport.from_settings, settings=SETTINGS,
                 description="commands as local subprocesses")

``register(name, factory, settings=(), description="")`` where ``factory(settings, context)``
returns the provider and ``settings`` is a tuple of ``upgrader.providers.base.Setting``.
A fleet file names the provider by that name (``kind = "local"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "upgrader"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_transports(register: Register) -> None:
    """Register transports: how commands reach a host (local subprocess, SSH, ...).

    :param register: ``register(name, factory, settings=(), description="")``
    """


@hookspec
def register_balancers(register: Register) -> None:
    """Register load balancer clients (built-in balancer, HAProxy, ...).

    :param register: ``register(name, factory, settings=(), description="")``
    """


@hookspec
def register_health_checks(register: Register) -> None:
    """Register health checks (http, tcp, command, ...).

    :param register: ``register(name, factory, settings=(), description="")``
    """


@hookspec
def register_snapshot_providers(register: Register) -> None:
    """Register snapshot providers (directory, libvirt, ...).

    :param register: ``register(name, factory, settings=(), description="")``
    """


@hookspec
def register_notifiers(register: Register) -> None:
    """Register notifiers that receive every rollout event (webhook, chat, ...).

    :param register: ``register(name, factory, settings=(), description="")``
    """


@hookspec
def upgrader_event(event: Any) -> None:
    """Observe every event of every rollout run in this process.

    Called synchronously from the engine's event loop: return quickly, never block.

    :param event: an ``upgrader.events.Event``
    """
