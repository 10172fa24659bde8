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

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # asyncssh imports cryptography's DSA support, which newer cryptography releases mark as
    # deprecated (a CryptographyDeprecationWarning on import). The operator can do nothing about
    # it, and every command loads this plugin: it must not reach stderr, where scripts and tests
    # read "upgrader: error: ..." as the first line.
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh  # noqa: F401  (imported here once, under the filter)

from upgrader.hookspecs import Register, hookimpl
from upgrader.providers.base import Transport

from .transport import SETTINGS, SshTransport, Target, remote_command

__all__ = ["SETTINGS", "SshTransport", "Target", "register_transports", "remote_command"]


@hookimpl
def register_transports(register: Register[Transport]) -> None:
    register("ssh", SshTransport.from_settings, settings=SETTINGS,
             description="commands over SSH (asyncssh): known_hosts checked, one reused "
                         "connection per host, SFTP upload")
