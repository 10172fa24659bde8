"""upgrader_haproxy: the ``haproxy`` balancer, HAProxy driven through its Runtime API.

A first-party plugin that uses only the public plugin API (``upgrader.hookspecs``,
``upgrader.providers.base``, ``upgrader.errors``). The haproxy.cfg it expects, its settings
and what it does are in docs/HAPROXY.md.

```toml
[balancer]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"     # or "tcp:127.0.0.1:9999"
backend = "shop"                       # pools are the backends shop_1 .. shop_3
maps = "/etc/haproxy/upgrader"
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from upgrader.errors import ConfigError
from upgrader.hookspecs import Register, hookimpl
from upgrader.providers.base import Balancer, ProviderContext, Setting

if TYPE_CHECKING:  # imported when a balancer is built: `upgrader plugins` stays light
    from .balancer import HAProxyBalancer

__all__ = ["SETTINGS", "from_settings", "register_balancers"]

SETTINGS: tuple[Setting, ...] = (
    Setting("socket", str, description="HAProxy's Runtime API: a Unix socket path "
            "(stats socket ... level admin) or tcp:HOST:PORT"),
    Setting("backend", str, "upgrader", "prefix of the pool backends in haproxy.cfg: "
            "<backend>_1 .. <backend>_<slots>"),
    Setting("slots", int, 3, "how many pool backends haproxy.cfg declares (2..64); pools "
            "alive at once (old, new, ...) each take one"),
    Setting("maps", str, "/etc/haproxy/upgrader", "directory of state.map, groups.map, "
            "cohorts.map and split.map, exactly as haproxy.cfg spells the paths"),
    Setting("group_header", str, "X-User-Group", "the header haproxy.cfg reads a user's "
            "group from (routes must use the same)"),
    Setting("user_header", str, "X-User", "the header haproxy.cfg reads the user key of "
            "cohorts from"),
    Setting("server_options", list, [], "extra `add server` keywords for new servers, "
            "e.g. [\"check\", \"inter\", \"2s\", \"maxconn\", \"200\"]"),
    Setting("timeout", float, 10.0, "seconds for one Runtime API command"),
    Setting("delete_timeout", float, 30.0, "seconds a server in maintenance may take to end "
            "its sessions before it is deleted (removal, or a move to another pool)"),
    Setting("poll_interval", float, 0.1, "seconds between two readings of a server's "
            "sessions while waiting for a drain"),
)

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def from_settings(settings: Mapping[str, Any],
                  context: ProviderContext | None = None) -> HAProxyBalancer:
    from .balancer import HAProxyBalancer

    known = {s.name for s in SETTINGS}
    for key in settings:
        if key not in known:
            raise ConfigError(f"unknown setting (known: {', '.join(sorted(known))})", key=key)
    values = {s.name: settings.get(s.name, s.default) for s in SETTINGS}
    sock = values["socket"]
    if not isinstance(sock, str) or not sock:
        raise ConfigError("required: a Unix socket path or tcp:HOST:PORT", key="socket")
    if sock.startswith("tcp:"):
        host, sep, port = sock[4:].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"expected tcp:HOST:PORT, got {sock!r}", key="socket")
    backend = values["backend"]
    if not isinstance(backend, str) or not _NAME.match(backend):
        raise ConfigError(f"an HAProxy backend name (letters, digits, _ . : -), got "
                          f"{backend!r}", key="backend")
    slots = values["slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or not 2 <= slots <= 64:
        raise ConfigError(f"must be an integer 2..64, got {slots!r}", key="slots")
    maps = values["maps"]
    if not isinstance(maps, str) or not maps or any(c.isspace() for c in maps):
        raise ConfigError(f"a directory path without spaces, got {maps!r}", key="maps")
    for key in ("group_header", "user_header"):
        if not isinstance(values[key], str) or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
                                                            values[key]):
            raise ConfigError(f"not an HTTP header name: {values[key]!r}", key=key)
    options = values["server_options"]
    if not isinstance(options, (list, tuple)) or not all(
            isinstance(o, str) and o and not any(c.isspace() or c in ";\\#" for c in o)
            for o in options):
        raise ConfigError("a list of `add server` keywords and values, one word each",
                          key="server_options")
    for key in ("timeout", "delete_timeout", "poll_interval"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"must be a positive number of seconds, got {value!r}", key=key)
    return HAProxyBalancer(sock, backend=backend, slots=slots, maps=maps,
                           group_header=values["group_header"],
                           user_header=values["user_header"],
                           server_options=tuple(options), timeout=float(values["timeout"]),
                           delete_timeout=float(values["delete_timeout"]),
                           poll_interval=float(values["poll_interval"]))


@hookimpl
def register_balancers(register: Register[Balancer]) -> None:
    register("haproxy", from_settings, settings=SETTINGS,
             description="HAProxy through its Runtime API (pools as backends, maps for "
                         "split, groups and maintenance)")
