"""upgrader_ssh: the ``ssh`` transport of upgrader (asyncssh).

A first-party plugin, loaded exactly as a third party's: through the ``upgrader`` entry point
``ssh = "upgrader_ssh"``. It uses only the public plugin API (``upgrader.hookspecs``,
``upgrader.providers.base``, ``upgrader.errors``). Settings, host key policy, ssh config,
sudo, upload and timeouts: docs/SSH.md.

Fleet file::

    [transport]
    kind = "ssh"
    username = "deploy"
    identity_files = ["~/.ssh/deploy_ed25519"]
"""

from __future__ import annotations

from typing import Any

from upgrader.hookspecs import Register, hookimpl
from upgrader.providers.base import ProviderContext, Transport

from .settings import SETTINGS

__all__ = ["SETTINGS", "SshTransport", "Target", "register_transports", "remote_command"]

#: imported from .transport on first use (PEP 562): every command loads this plugin to read a
#: fleet file's settings, and asyncssh takes about 150 ms to import; only an ``ssh`` fleet
#: needs it
_LAZY = frozenset({"SshTransport", "Target", "remote_command"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import transport

        return getattr(transport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_transport(settings: Any, context: ProviderContext | None = None) -> Transport:
    """The ``ssh`` transport (asyncssh imported now)."""
    from .transport import SshTransport

    return SshTransport.from_settings(settings, context)


@hookimpl
def register_transports(register: Register[Transport]) -> None:
    register("ssh", create_transport, settings=SETTINGS,
             description="commands over SSH (asyncssh): known_hosts checked, one reused "
                         "connection per host, SFTP upload")
