"""The plugin hooks of upgrader (pluggy project name ``upgrader``).

Provider hooks REGISTER factories by name: each receives a ``register`` callback and calls it
once per provider it offers::

    @hookimpl
    def register_transports(register: Register[Transport]) -> None:
        register("local", LocalTransport.from_settings, settings=SETTINGS,
                 description="commands as local subprocesses")

``register(name, factory, settings=(), description="")`` where ``factory(settings, context)``
returns the provider (a ``upgrader.providers.base.Factory``) and ``settings`` is a tuple of
``upgrader.providers.base.Setting``. A fleet file names the provider by that name
(``kind = "local"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:  # for annotations only: hookspecs is a leaf that imports no upgrader module
    from .events import Event
    from .providers.base import (
        Balancer,
        Factory,
        HealthCheck,
        MetricSource,
        Notifier,
        Setting,
        SnapshotProvider,
        Transport,
    )

PROJECT = "upgrader"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# contravariant: a register that accepts factories of any provider also serves as one that
# accepts factories of transports only
ProviderT_contra = TypeVar("ProviderT_contra", contravariant=True)


class Register(Protocol[ProviderT_contra]):
    """The callback a ``register_*`` hook receives; ``Register[Transport]`` takes factories
    that build transports, and so on."""

    def __call__(self, name: str, factory: Factory[ProviderT_contra],
                 settings: Iterable[Setting] = (), description: str = "") -> None:
        """Offer ``factory`` under ``name`` (what a fleet file writes as ``kind``).

        :param name: letters, digits, ``_``, ``.``, ``-``; unique within the category.
        :param factory: ``factory(settings, context) -> provider``.
        :param settings: the settings the provider takes, as ``Setting`` declarations.
        :param description: one line, shown by ``upgrader plugins``.
        :raises PluginError: a bad name or settings, or a name another plugin registered.
        """


@hookspec
def register_transports(register: Register[Transport]) -> None:
    """Register transports: how commands reach a host (local subprocess, SSH, ...).

    :param register: ``register(name, factory, settings=(), description="")``, see
        :class:`Register`
    """


@hookspec
def register_balancers(register: Register[Balancer]) -> None:
    """Register load balancer clients (built-in balancer, HAProxy, ...).

    :param register: ``register(name, factory, settings=(), description="")``, see
        :class:`Register`
    """


@hookspec
def register_health_checks(register: Register[HealthCheck]) -> None:
    """Register health checks (http, tcp, command, ...).

    :param register: ``register(name, factory, settings=(), description="")``, see
        :class:`Register`
    """


@hookspec
def register_metric_sources(register: Register[MetricSource]) -> None:
    """Register metric sources the canary judge reads (balancer, prometheus, command, ...):
    what a ``[[verify.metrics]]`` table names as ``source``.

    :param register: ``register(name, factory, settings=(), description="")``, see
        :class:`Register`
    """


@hookspec
def register_snapshot_providers(register: Register[SnapshotProvider]) -> None:
    """Register snapshot providers (directory, libvirt, ...).

    :param register: ``register(name, factory, settings=(), description="")``, see
        :class:`Register`
    """


@hookspec
def register_notifiers(register: Register[Notifier]) -> None:
    """Register notifiers that receive every rollout event (webhook, chat, ...).

    :param register: ``register(name, factory, settings=(), description="")``, see
        :class:`Register`
    """


@hookspec
def upgrader_event(event: Event) -> None:
    """Observe every event of every rollout run in this process.

    Called synchronously from the engine's event loop: return quickly, never block.

    :param event: an ``upgrader.events.Event``
    """
