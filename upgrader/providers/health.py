"""Built-in health checks: ``http`` (GET a path), ``tcp`` (open a connection) and
``command`` (run an argument list on the host through the fleet's transport).

A check answers ``HealthResult(ok, detail)`` for every host, healthy or not; it raises only
when it is misconfigured (``ConfigError``).
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, TransportError
from ..hookspecs import Register, hookimpl
from ..model import Host
from .base import HealthCheck, HealthResult, ProviderContext, Setting, Transport
from .local import host_fields

if TYPE_CHECKING:
    import aiohttp

HTTP_SETTINGS: tuple[Setting, ...] = (
    Setting("path", str, "/healthz", "path to GET"),
    Setting("scheme", str, "http", "http or https"),
    Setting("timeout", float, 2.0, "seconds for the whole request"),
    Setting("expect_status", (int, list), 200, "status (or list of statuses) that means healthy"),
    Setting("headers", dict, {}, "extra request headers"),
)

TCP_SETTINGS: tuple[Setting, ...] = (
    Setting("timeout", float, 2.0, "seconds to connect"),
    Setting("port", int, None, "port to connect to (default: the host's port)"),
)

COMMAND_SETTINGS: tuple[Setting, ...] = (
    Setting("argv", list, description="command to run on the host; a template of {host} "
            "{address} {port} and the host's vars; healthy if it exits 0"),
    Setting("timeout", float, 10.0, "seconds the command may run"),
)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HttpHealthCheck:
    """GET ``scheme://address:port/path``; healthy when the status is the expected one.

    One aiohttp session per check, opened on first use and closed by ``aclose()``. Each
    check opens a fresh connection (no keep-alive): a restarted service must accept anew.
    """

    def __init__(self, *, path: str = "/healthz", scheme: str = "http", timeout: float = 2.0,
                 expect_status: int | list[int] = 200,
                 headers: Mapping[str, str] | None = None) -> None:
        if scheme not in ("http", "https"):
            raise ConfigError(f"expected 'http' or 'https', got {scheme!r}", key="health.scheme")
        if timeout <= 0:
            raise ConfigError(f"must be above 0 seconds, got {timeout}", key="health.timeout")
        statuses = [expect_status] if isinstance(expect_status, int) else list(expect_status)
        if not statuses or not all(isinstance(s, int) and not isinstance(s, bool)
                                   and 100 <= s <= 599 for s in statuses):
            raise ConfigError(f"expected HTTP status codes, got {expect_status!r}",
                              key="health.expect_status")
        for key, value in (headers or {}).items():
            if not isinstance(value, str):
                raise ConfigError(f"header {key!r} must be a string, got {value!r}",
                                  key="health.headers")
        self.path = path if path.startswith("/") else "/" + path
        self.scheme = scheme
        self.timeout = timeout
        self.expect_status = frozenset(statuses)
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> HttpHealthCheck:
        return cls(path=settings["path"], scheme=settings["scheme"],
                   timeout=settings["timeout"], expect_status=settings["expect_status"],
                   headers=settings["headers"])

    def url(self, host: Host, port: int | None = None) -> str:
        chosen = port if port is not None else host.port
        netloc = _url_host(host.address) + (f":{chosen}" if chosen is not None else "")
        return f"{self.scheme}://{netloc}{self.path}"

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp  # imported on first use: loading the plugin costs nothing

        if self._closed:
            raise RuntimeError("the http health check is closed")
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(force_close=True, limit=256)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self.headers)
        return self._session

    async def check(self, host: Host, *, port: int | None = None) -> HealthResult:
        import aiohttp

        url = self.url(host, port)
        session = self._get_session()
        try:
            async with session.get(url, allow_redirects=False) as response:
                status = response.status
                body = ""
                if status not in self.expect_status:
                    body = (await response.content.read(200)).decode("utf-8", "replace").strip()
        except TimeoutError:
            return HealthResult(False, f"GET {url}: no answer within {self.timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return HealthResult(False, f"GET {url}: {_short(exc)}")
        if status in self.expect_status:
            return HealthResult(True, f"GET {url} -> {status}")
        return HealthResult(False, f"GET {url} -> {status}" + (f": {body}" if body else ""))

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpHealthCheck:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class TcpHealthCheck:
    """Healthy when a TCP connection to the host's port opens within ``timeout``."""

    def __init__(self, *, timeout: float = 2.0, port: int | None = None) -> None:
        if timeout <= 0:
            raise ConfigError(f"must be above 0 seconds, got {timeout}", key="health.timeout")
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"not a TCP port: {port}", key="health.port")
        self.timeout = timeout
        self.port = port

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> TcpHealthCheck:
        return cls(timeout=settings["timeout"], port=settings["port"])

    async def check(self, host: Host, *, port: int | None = None) -> HealthResult:
        chosen = port if port is not None else (self.port if self.port is not None else host.port)
        if chosen is None:
            raise ConfigError(f"host {host.name} has no port to check", key="health.port")
        where = f"{_url_host(host.address)}:{chosen}"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.address, chosen), self.timeout)
        except TimeoutError:
            return HealthResult(False, f"connect {where}: no answer within {self.timeout:g}s")
        except OSError as exc:
            return HealthResult(False, f"connect {where}: {_short(exc)}")
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return HealthResult(True, f"connect {where}: ok")

    async def aclose(self) -> None:
        pass


class CommandHealthCheck:
    """Runs ``argv`` on the host through the fleet's transport; healthy if it exits 0."""

    ALLOWED_FIELDS = ("host", "address", "port")

    def __init__(self, transport: Transport | None, *, argv: list[str],
                 timeout: float = 10.0) -> None:
        if transport is None:
            raise ConfigError("the command health check needs the fleet's transport",
                              key="health.kind")
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"expected a non-empty list of strings, got {argv!r}",
                              key="health.argv")
        for part in argv:
            try:
                list(string.Formatter().parse(part))
            except ValueError as exc:
                raise ConfigError(f"bad template {part!r}: {exc}", key="health.argv") from None
        if timeout <= 0:
            raise ConfigError(f"must be above 0 seconds, got {timeout}", key="health.timeout")
        self.transport = transport
        self.argv = tuple(argv)
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> CommandHealthCheck:
        transport = context.transport if context is not None else None
        return cls(transport, argv=settings["argv"], timeout=settings["timeout"])

    def command(self, host: Host, port: int | None = None) -> list[str]:
        fields = host_fields(host, port)
        try:
            return [part.format_map(fields) for part in self.argv]
        except (KeyError, IndexError, AttributeError) as exc:
            raise ConfigError(f"unknown placeholder {exc} for host {host.name} (known: "
                              f"{', '.join(sorted(fields))})", key="health.argv") from None

    async def check(self, host: Host, *, port: int | None = None) -> HealthResult:
        argv = self.command(host, port)
        try:
            result = await self.transport.run(host, argv, timeout=self.timeout, check=False)
        except TransportError as exc:
            return HealthResult(False, exc.message)
        if result.exit_status == 0:
            return HealthResult(True, f"{argv[0]} exited 0")
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
        return HealthResult(False, f"{argv[0]} exited with status {result.exit_status}"
                            + (f": {tail[0]}" if tail[0] else ""))

    async def aclose(self) -> None:
        pass  # the transport belongs to the fleet


@hookimpl
def register_health_checks(register: Register[HealthCheck]) -> None:
    register("http", HttpHealthCheck.from_settings, settings=HTTP_SETTINGS,
             description="GET scheme://address:port/path; healthy on the expected status")
    register("tcp", TcpHealthCheck.from_settings, settings=TCP_SETTINGS,
             description="healthy when a TCP connection opens")
    register("command", CommandHealthCheck.from_settings, settings=COMMAND_SETTINGS,
             description="a command run on the host through the transport; healthy on exit 0")
