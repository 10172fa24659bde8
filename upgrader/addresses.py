"""``HOST:PORT`` arguments of the servers upgrader starts (balancer, OFREP), and whether a host
is loopback (beyond loopback, a server refuses to run without a token)."""

from __future__ import annotations

import ipaddress


def parse_host_port(text: str, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8500`` for IPv6) -> (host, port); ValueError naming ``option``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{option}: expected HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{option}: bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{option}: port out of range in {text!r}")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
