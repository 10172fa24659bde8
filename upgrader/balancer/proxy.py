"""The built-in balancer's data path: an HTTP/1.1 reverse proxy on raw asyncio protocols.

A ``_Client`` protocol per user connection parses requests (keep-alive, pipelining,
Content-Length and chunked bodies, ``Expect: 100-continue``); a small keep-alive pool of
``_Upstream`` connections per backend address carries them. Bodies are read in full both
ways (a request can be retried on another backend; an answer goes back with a
Content-Length). Choosing a backend, counting and the retry rules are the ``Table``'s of
server.py; the admin API stays on aiohttp there. See docs/BALANCER.md, "Proxying".
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .server import Backend, Table

log = logging.getLogger("upgrader.balancer")

#: the longest request or response head (request line or status line, and headers)
MAX_HEAD_BYTES = 64 * 1024
#: the largest request body accepted (413 past it), as aiohttp's client_max_size was
MAX_BODY_BYTES = 64 * 1024 * 1024
#: a user's connection that sent nothing and waited for no answer this long is closed
CLIENT_IDLE_SECONDS = 75.0
#: an idle connection to a backend is closed after this long
UPSTREAM_IDLE_SECONDS = 30.0
#: idle connections kept per backend address (more are opened when needed, then closed)
UPSTREAM_IDLE_MAX = 256
#: bytes of further (pipelined) requests buffered while one is served, before reading pauses
MAX_PIPELINE_BYTES = 256 * 1024
#: above this a body is written on its own rather than joined to the head (saves a copy)
JOIN_LIMIT = 64 * 1024

#: how long a backend that refused a connection is skipped while others can serve
PASSIVE_DOWN_SECONDS = 2.0
#: a request that failed before any answer is tried on at most this many other backends
MAX_RETRIES = 2
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
#: methods whose request always carries a Content-Length (0 when the body is empty)
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})

# RFC 9110 7.6.1, plus the proxy headers a client must not be able to forge through us
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
# the body is forwarded whole, with its own Content-Length; Expect is answered here;
# X-Forwarded-For and -Proto are rewritten
_REQUEST_DROP = _HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for",
                               b"x-forwarded-proto"}
_RESPONSE_DROP = _HOP_BY_HOP | {b"content-length", b"server"}

_PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n"


class BadMessage(Exception):
    """A request (or a backend's answer) that is not HTTP/1.x as this proxy reads it."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class ConnectFailed(Exception):
    """The backend could not be reached: it never saw the request (retry any method)."""


class UpstreamClosed(Exception):
    """The backend closed or broke the connection before a whole answer. ``answered``: some
    of the answer had arrived (never retried)."""

    def __init__(self, answered: bool, why: str) -> None:
        super().__init__(why)
        self.answered = answered


# --------------------------------------------------------------------------------------------
# Parsing


def _check_head(head: bytes) -> None:
    # a lone CR or LF inside a line could split one header into two at a lenient backend
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise BadMessage(400, "Bad request: a lone CR or LF in the head.")


def _parse_fields(lines: list[bytes]) -> tuple[list[tuple[bytes, bytes]], dict[bytes, bytes]]:
    """Header lines -> (name, value) in order, and the first value of each lower-cased name
    (repeated headers that matter here are joined where they are read)."""
    fields: list[tuple[bytes, bytes]] = []
    first: dict[bytes, bytes] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise BadMessage(400, "Bad request: a malformed header line.")
        value = value.strip(b" \t")
        fields.append((name, value))
        low = name.lower()
        if low not in first:
            first[low] = value
        elif low in (b"content-length", b"transfer-encoding", b"connection"):
            first[low] = first[low] + b"," + value
    return fields, first


def _content_length(raw: bytes) -> int:
    if raw.isdigit():
        return int(raw)
    values = {v.strip() for v in raw.split(b",")}
    if len(values) != 1:
        raise BadMessage(400, "Bad request: conflicting Content-Length headers.")
    value = values.pop()
    if not value.isdigit():
        raise BadMessage(400, "Bad request: Content-Length is not a number.")
    return int(value)


def _tokens(raw: bytes | None) -> set[bytes]:
    if not raw:
        return set()
    return {token.strip().lower() for token in raw.split(b",")}


class _Chunked:
    """An incremental decoder of a chunked body (RFC 9112 7.1); trailers are read and
    dropped."""

    __slots__ = ("limit", "parts", "remaining", "size", "state")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.remaining = 0
        self.state = self._SIZE
        self.limit = limit

    def feed(self, buf: bytearray) -> bool:
        """Consume what it can of ``buf`` (removed from it); True once the body is whole."""
        pos, end_of, done = 0, len(buf), False
        while not done:
            state = self.state
            if state == self._DATA:
                take = min(self.remaining, end_of - pos)
                if take:
                    self.parts.append(bytes(buf[pos:pos + take]))
                    pos += take
                    self.remaining -= take
                if self.remaining:
                    break
                self.state = self._DATA_END
            elif state == self._DATA_END:
                if end_of - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise BadMessage(400, "Bad request: a chunk does not end with CRLF.")
                pos += 2
                self.state = self._SIZE
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end_of - pos > 4096:
                        raise BadMessage(400, "Bad request: a chunk size line is too long.")
                    break
                line = bytes(buf[pos:eol])
                pos = eol + 2
                if state == self._TRAILER:
                    done = not line       # the empty line ends the trailers (and the body)
                    continue
                digits = line.split(b";", 1)[0].strip()
                try:
                    size = int(digits, 16)
                except ValueError:
                    raise BadMessage(400, "Bad request: a chunk size is not hexadecimal.") \
                        from None
                if size < 0 or digits[:1] in (b"+", b"-") or digits.startswith((b"0x", b"0X")):
                    raise BadMessage(400, "Bad request: a chunk size is not hexadecimal.")
                if size == 0:
                    self.state = self._TRAILER
                    continue
                self.size += size
                if self.size > self.limit:
                    raise BadMessage(413, "Request body too large.")
                self.remaining = size
                self.state = self._DATA
        del buf[:pos]
        return done

    def body(self) -> bytes:
        return b"".join(self.parts)


def _origin_form(target: bytes) -> bytes:
    """An absolute-form target (``http://host/path``) as the path a backend expects."""
    if target[:1] == b"/" or target == b"*":
        return target
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        slash = rest.find(b"/")
        if slash < 0:
            return b"/"
        return rest[slash:]
    raise BadMessage(400, "Bad request: the request target is not a path or a URL.")


class Request:
    """One parsed user request; ``header`` and ``cookie`` are what routing reads."""

    __slots__ = ("body", "fields", "first", "http10", "keep_alive", "method", "target")

    def __init__(self, method: bytes, target: bytes, http10: bool,
                 fields: list[tuple[bytes, bytes]], first: dict[bytes, bytes]) -> None:
        self.method = method
        self.target = target
        self.http10 = http10
        self.fields = fields
        self.first = first
        self.body = b""
        connection = _tokens(first.get(b"connection"))
        self.keep_alive = (b"keep-alive" in connection) if http10 \
            else (b"close" not in connection)

    def header(self, name: str) -> str | None:
        value = self.first.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("utf-8", "surrogateescape")

    def cookie(self, name: str) -> str | None:
        raw = self.first.get(b"cookie")
        if not raw:
            return None
        for pair in raw.decode("utf-8", "surrogateescape").split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None


def _parse_request_head(head: bytes) -> Request:
    _check_head(head)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadMessage(400, "Bad request: a malformed request line.")
    method, target, version = parts
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    else:
        raise BadMessage(505, "HTTP version not supported.")
    if not method.isalpha() or not method.isupper():
        raise BadMessage(400, "Bad request: a malformed method.")
    fields, first = _parse_fields(lines[1:])
    return Request(method, _origin_form(target), http10, fields, first)


class Response:
    """A backend's whole answer."""

    __slots__ = ("body", "fields", "first", "reason", "reusable", "status")

    def __init__(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                 first: dict[bytes, bytes], body: bytes, reusable: bool) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.first = first
        self.body = body
        self.reusable = reusable


# --------------------------------------------------------------------------------------------
# Backend connections


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend: one exchange at a time."""

    _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchange: Exchange | None = None     # the request it carries, if any
        self.deadline = 0.0
        self.buf = bytearray()
        self.head_request = False
        self.answered = False
        self.state = self._HEAD
        self.need = 0
        self.chunked: _Chunked | None = None
        self.status = 0
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.first: dict[bytes, bytes] = {}
        self.reusable = True

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._fail(UpstreamClosed(self.answered, f"connection lost ({exc!r})"))

    def eof_received(self) -> bool:
        if self.exchange is not None and self.state == self._UNTIL_CLOSE:
            self.reusable = False
            self._finish(bytes(self.buf))
        else:
            self._fail(UpstreamClosed(self.answered, "connection closed by the backend"))
        return False

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            self.close()          # an answer nobody asked for: the connection is unusable
            return
        self.answered = True
        buf = self.buf
        buf += data
        try:
            self._advance()
        except BadMessage as exc:
            self._fail(UpstreamClosed(True, f"bad answer: {exc.text}"))
            self.close()

    def _advance(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == self._HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise BadMessage(502, "answer head too long")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                if not self._read_head(head):
                    continue              # an interim 1xx answer: read the next head
                state = self.state
            if state == self._LENGTH:
                if len(buf) < self.need:
                    return
                if len(buf) == self.need:
                    body = bytes(buf)
                    buf.clear()
                else:                     # more than the answer: the connection is out of step
                    body = bytes(buf[:self.need])
                    self.reusable = False
                self._finish(body)
                return
            if state == self._CHUNKED:
                assert self.chunked is not None
                if self.chunked.feed(buf):
                    if buf:
                        self.reusable = False
                    self._finish(self.chunked.body())
                return
            return                        # until close: eof_received finishes it

    def _read_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") \
                or not parts[1].isdigit() or len(parts[1]) != 3:
            raise BadMessage(502, "a malformed status line")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return False
        fields, first = _parse_fields(lines[1:])
        connection = _tokens(first.get(b"connection"))
        if parts[0] == b"HTTP/1.0":
            self.reusable = b"keep-alive" in connection
        else:
            self.reusable = b"close" not in connection
        self.status, self.reason = status, parts[2] if len(parts) == 3 else b""
        self.fields, self.first = fields, first
        if self.head_request or status in (101, 204, 304):
            if status == 101:
                self.reusable = False
            self.state, self.need = self._LENGTH, 0
            return True
        coding = first.get(b"transfer-encoding")
        if coding is not None:
            if coding.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                self.state = self._CHUNKED
                self.chunked = _Chunked(1 << 62)
            else:
                self.state, self.reusable = self._UNTIL_CLOSE, False
            return True
        length = first.get(b"content-length")
        if length is not None:
            self.state, self.need = self._LENGTH, _content_length(length)
        else:
            self.state, self.reusable = self._UNTIL_CLOSE, False
        return True

    def _finish(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            self.pool.proxy.answered(self, exchange, Response(
                self.status, self.reason, self.fields, self.first, body, self.reusable))

    def _fail(self, exc: Exception) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            self.pool.proxy.failed(self, exchange, exc)

    # -- used by the proxy

    def send(self, exchange: Exchange, head: bytes) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.deadline = self.pool.proxy.now + self.pool.proxy.backend_timeout
        self.buf.clear()
        self.head_request = exchange.request.method == b"HEAD"
        self.answered = False
        self.state = self._HEAD
        self.chunked = None
        self.reusable = True
        body = exchange.request.body
        if len(body) <= JOIN_LIMIT:
            self.transport.write(head + body if body else head)
        else:
            self.transport.write(head)
            self.transport.write(body)

    def time_out(self) -> None:
        self._fail(TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """Idle keep-alive connections to one backend address, newest last (reused first)."""

    def __init__(self, proxy: ProxyServer, address: str, port: int) -> None:
        self.proxy = proxy
        self.address = address
        self.port = port
        self.idle: list[_Upstream] = []

    def take(self) -> _Upstream | None:
        idle = self.idle
        while idle:
            upstream = idle.pop()
            if not upstream.closed and not upstream.transport.is_closing():  # type: ignore[union-attr]
                return upstream
        return None

    def give_back(self, upstream: _Upstream, now: float) -> None:
        if upstream.closed or len(self.idle) >= UPSTREAM_IDLE_MAX:
            upstream.close()
            return
        upstream.idle_since = now
        self.idle.append(upstream)

    def forget(self, upstream: _Upstream) -> None:
        try:
            self.idle.remove(upstream)
        except ValueError:
            pass

    def close_idle(self, older_than: float | None = None) -> None:
        keep = []
        for upstream in self.idle:
            if older_than is None or upstream.idle_since < older_than:
                upstream.close()
            else:
                keep.append(upstream)
        self.idle = keep


# --------------------------------------------------------------------------------------------
# User connections


class _Client(asyncio.Protocol):
    """One user connection: requests are served one at a time, in order."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.buf = bytearray()
        self.searched = 0            # bytes of buf already searched for the end of a head
        self.pending: Request | None = None   # head read, body still coming
        self.need = 0
        self.chunked: _Chunked | None = None
        self.busy = False
        self.closed = False
        self.eof = False
        self.paused = False
        self.last_active = proxy.now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        self.proxy.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.clients.discard(self)

    def eof_received(self) -> bool:
        self.eof = True
        return self.busy              # busy: answer the request in hand, then close

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_active = self.proxy.now     # a slow upload is not an idle connection
        if self.busy:
            if len(self.buf) > MAX_PIPELINE_BYTES and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self._next()

    # -- reading requests

    def _next(self) -> None:
        try:
            request = self._read()
        except BadMessage as exc:
            self._reject(exc)
            return
        if request is None:
            return
        self.busy = True
        self.proxy.active += 1
        self.proxy.dispatch(self, request)

    def _read(self) -> Request | None:
        buf = self.buf
        request = self.pending
        if request is None:
            end = buf.find(b"\r\n\r\n", max(0, self.searched - 3))
            if end < 0:
                self.searched = len(buf)
                if len(buf) > MAX_HEAD_BYTES:
                    raise BadMessage(431, "Request header fields too large.")
                return None
            if end > MAX_HEAD_BYTES:
                raise BadMessage(431, "Request header fields too large.")
            start = 0
            while buf.startswith(b"\r\n", start):   # stray CRLF between requests (RFC 9112 2.2)
                start += 2
            head = bytes(buf[start:end])
            del buf[:end + 4]
            self.searched = 0
            request = _parse_request_head(head)
            first = request.first
            coding = first.get(b"transfer-encoding")
            length = first.get(b"content-length")
            if coding is not None:
                if length is not None:
                    raise BadMessage(400, "Bad request: both Transfer-Encoding and "
                                          "Content-Length.")
                if coding.strip().lower() != b"chunked":
                    raise BadMessage(501, "Transfer-Encoding other than chunked is not "
                                          "supported.")
                self.chunked = _Chunked(MAX_BODY_BYTES)
            elif length is not None:
                self.need = _content_length(length)
                if self.need > MAX_BODY_BYTES:
                    raise BadMessage(413, "Request body too large.")
                if self.need == 0:
                    return request
            else:
                return request
            self.pending = request
            expect = first.get(b"expect")
            if expect is not None and expect.lower() == b"100-continue" and not request.http10 \
                    and (self.chunked is not None or len(buf) < self.need):
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        if self.chunked is not None:
            if not self.chunked.feed(buf):
                return None
            request.body = self.chunked.body()
            self.chunked = None
        else:
            if len(buf) < self.need:
                return None
            request.body = bytes(buf[:self.need])
            del buf[:self.need]
        self.pending = None
        return request

    def _reject(self, exc: BadMessage) -> None:
        """A request that cannot be read: answer it and close (the stream is out of step)."""
        if not self.closed:
            body = (exc.text + "\n").encode()
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s"
                % (exc.status, _REASONS.get(exc.status, b"Error"), len(body), _PLAIN, body))
            self.transport.close()  # type: ignore[union-attr]

    # -- answering

    def answer(self, request: Request, head: bytes, body: bytes) -> None:
        """``head``: the status line and the headers so far, without the last CRLF."""
        proxy = self.proxy
        proxy.active -= 1
        if proxy.active == 0 and proxy.stopping is not None:
            proxy.stopping.set()
        self.busy = False
        self.last_active = proxy.now
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        keep = request.keep_alive and not self.eof and proxy.stopping is None
        if not keep:
            head += b"Connection: close\r\n\r\n"
        elif request.http10:
            head += b"Connection: keep-alive\r\n\r\n"
        else:
            head += b"\r\n"
        if request.method == b"HEAD" or not body:
            transport.write(head)
        elif len(body) <= JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if not keep:
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if self.buf:      # a pipelined request: later, not deeper in this call stack
            proxy.loop.call_soon(self._next)


class Exchange:
    """A user's request on its way through one backend or more."""

    __slots__ = ("backend", "client", "forward", "pool_name", "request", "started", "tried")

    def __init__(self, client: _Client, request: Request, pool_name: str | None,
                 forward: bytes) -> None:
        self.client = client
        self.request = request
        self.pool_name = pool_name
        self.forward = forward          # the head for the backend, less Host and the last CRLF
        self.tried: tuple[Backend, ...] = ()
        self.backend: Backend | None = None
        self.started = 0.0


_REASONS = {400: b"Bad Request", 413: b"Payload Too Large", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
            504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}


# --------------------------------------------------------------------------------------------
# The server


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``auto``: uvloop's loop when uvloop is importable (a dependency except on Windows:
    about 1.2x the requests a second), else asyncio's (None);
    ``uvloop``: uvloop's or ImportError; ``asyncio``: asyncio's."""
    if choice == "asyncio":
        return None
    try:
        # imported by name: there is no uvloop on Windows
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ImportError("uvloop is not installed (a dependency of upgrader except "
                              "on Windows)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class ProxyServer:
    """Listens for users and forwards their requests to the backends of ``table``."""

    def __init__(self, table: Table, *, connect_timeout: float, backend_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.connect_timeout = connect_timeout
        self.backend_timeout = backend_timeout
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.clients: set[_Client] = set()
        self.pools: dict[tuple[str, int], _Pool] = {}
        #: connections carrying a request (their deadlines are checked once a second)
        self.busy: set[_Upstream] = set()
        self.active = 0
        self.stopping: asyncio.Event | None = None
        self.now = clock()
        self.date = b""
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick()

    async def start(self, sock: object, backlog: int = 1024) -> None:
        self._server = await self.loop.create_server(
            lambda: _Client(self), sock=sock, backlog=backlog)  # type: ignore[call-overload]

    def _tick(self) -> None:
        """Once a second: the Date header, closing idle connections, backend timeouts."""
        self.now = now = self.clock()
        self.date = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
        for client in [c for c in self.clients if not c.busy
                       and now - c.last_active > CLIENT_IDLE_SECONDS]:
            if client.transport is not None:
                client.transport.close()
        for pool in self.pools.values():
            if pool.idle and pool.idle[0].idle_since < now - UPSTREAM_IDLE_SECONDS:
                pool.close_idle(now - UPSTREAM_IDLE_SECONDS)
        for upstream in [u for u in self.busy if u.deadline <= now]:
            upstream.time_out()
        self._ticker = self.loop.call_later(1.0, self._tick)

    async def close(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish (at most ``grace`` s), close all."""
        self.stopping = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            if not client.busy and client.transport is not None:
                client.transport.close()
        if self.active:
            try:
                await asyncio.wait_for(self.stopping.wait(), grace)
            except TimeoutError:
                log.warning("%d request(s) still in flight after %gs: closing them",
                            self.active, grace)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()
        for upstream in list(self.busy):
            upstream.close()
        for pool in self.pools.values():
            pool.close_idle()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # -- one request: dispatch, then answered() or failed() when the backend is done

    def dispatch(self, client: _Client, request: Request) -> None:
        try:
            self._begin(client, request)
        except Exception:                  # a bug here must not leave the user waiting
            log.exception("proxying %r %r failed", request.method, request.target)
            client.answer(request, *_simple(500, b"Internal Server Error", b"Internal error.\n",
                                            self.date))

    def _begin(self, client: _Client, request: Request) -> None:
        table = self.table
        if table.maintenance:
            table.counters.maintenance_responses += 1
            client.answer(request, *_simple(
                503, b"Service Unavailable", b"Service under maintenance, retry later.\n",
                b"Retry-After: %d\r\n" % table.retry_after + self.date))
            return
        pool_name = table.choose_pool(request.header, request.cookie) \
            if table.routes is not None or table.split else None
        backend = table.choose_backend(pool_name)
        if backend is None:
            table.counters.no_backend += 1
            client.answer(request, *_simple(503, b"Service Unavailable",
                                            b"No backend available.\n", self.date))
            return
        forward = _forward_head(request, client.peer)
        if request.body or request.method in _BODY_METHODS:
            forward += b"Content-Length: %d\r\n" % len(request.body)
        self._attempt(Exchange(client, request, pool_name, forward), backend)

    def _attempt(self, exchange: Exchange, backend: Backend) -> None:
        exchange.tried += (backend,)
        exchange.backend = backend
        backend.inflight += 1
        backend.idle.clear()
        exchange.started = time.monotonic()
        if b"host" in exchange.request.first:
            head = exchange.forward + b"\r\n"
        else:
            head = exchange.forward + _host_line(backend) + b"\r\n"
        key = (backend.address, backend.port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = _Pool(self, backend.address, backend.port)
        upstream = pool.take()
        if upstream is None:
            self.loop.create_task(self._connect_and_send(pool, exchange, head))
            return
        self.busy.add(upstream)
        upstream.send(exchange, head)

    async def _connect_and_send(self, pool: _Pool, exchange: Exchange, head: bytes) -> None:
        try:
            _transport, upstream = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Upstream(pool), pool.address, pool.port),
                self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.failed(None, exchange, ConnectFailed(
                f"cannot connect to {pool.address}:{pool.port}: {exc!r}"))
            return
        self.busy.add(upstream)
        upstream.send(exchange, head)

    def _done(self, exchange: Exchange) -> Backend:
        backend = exchange.backend
        assert backend is not None
        backend.inflight -= 1
        if backend.inflight == 0:
            backend.idle.set()
        return backend

    def answered(self, upstream: _Upstream, exchange: Exchange, response: Response) -> None:
        """The backend's whole answer: count it, keep the connection, answer the user."""
        self.busy.discard(upstream)
        try:
            backend = self._done(exchange)
            if response.reusable and self.stopping is None:
                upstream.pool.give_back(upstream, self.now)
            else:
                upstream.close()
            backend.record(time.monotonic() - exchange.started, response.status)
            head = self._relay(response, backend.name, exchange.request.method == b"HEAD")
        except Exception:
            log.exception("relaying an answer failed")
            head, response.body = _simple(500, b"Internal Server Error",
                                          b"Internal error.\n", self.date)
        exchange.client.answer(exchange.request, head, response.body)

    def failed(self, upstream: _Upstream | None, exchange: Exchange, exc: Exception) -> None:
        """No whole answer: retry on another backend when that is safe, else 502 or 504."""
        table = self.table
        request = exchange.request
        if upstream is not None:
            self.busy.discard(upstream)
            upstream.close()
        try:
            backend = self._done(exchange)
            elapsed = time.monotonic() - exchange.started
            never_sent = isinstance(exc, ConnectFailed)
            if never_sent:
                backend.connect_failures += 1
                backend.down_until = time.monotonic() + PASSIVE_DOWN_SECONDS
            retryable = never_sent or (request.method in IDEMPOTENT_METHODS and isinstance(
                exc, UpstreamClosed) and not exc.answered)
            if retryable and len(exchange.tried) <= MAX_RETRIES:
                retry_with = table.choose_backend(exchange.pool_name, exchange.tried)
                if retry_with is not None:
                    table.counters.retries += 1
                    self._attempt(exchange, retry_with)
                    return
            timed_out = isinstance(exc, TimeoutError)
            backend.record(elapsed, 504 if timed_out else 502)
            named = b"X-Upgrader-Backend: " + backend.name.encode() + b"\r\n" + self.date
            if timed_out:
                answer = _simple(504, b"Gateway Timeout", b"Backend timed out.\n", named)
            else:
                log.debug("backend %s failed: %r", backend.name, exc)
                answer = _simple(502, b"Bad Gateway", b"Bad gateway.\n", named)
        except Exception:
            log.exception("handling a backend's failure failed")
            answer = _simple(500, b"Internal Server Error", b"Internal error.\n", self.date)
        exchange.client.answer(request, *answer)

    def _relay(self, response: Response, backend: str, head_request: bool) -> bytes:
        parts = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason)]
        drop = _RESPONSE_DROP
        connection = response.first.get(b"connection")
        if connection:
            drop = drop | _tokens(connection)
        has_date = False
        for name, value in response.fields:
            low = name.lower()
            if low in drop:
                continue
            if low == b"date":
                has_date = True
            parts.append(b"%s: %s\r\n" % (name, value))
        if not has_date:
            parts.append(self.date)
        parts.append(b"X-Upgrader-Backend: %s\r\n" % backend.encode())
        status = response.status
        if head_request:
            length = response.first.get(b"content-length")
            if length is not None:
                parts.append(b"Content-Length: %s\r\n" % length)
        elif status != 304 and status != 204 and not 100 <= status < 200:
            parts.append(b"Content-Length: %d\r\n" % len(response.body))
        return b"".join(parts)


def _forward_head(request: Request, peer: bytes) -> bytes:
    """The request line and headers for the backend, without the final CRLF."""
    parts = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
    drop = _REQUEST_DROP
    connection = request.first.get(b"connection")
    if connection:
        drop = drop | _tokens(connection)
    forwarded: list[bytes] = []
    for name, value in request.fields:
        low = name.lower()
        if low in drop:
            if low == b"x-forwarded-for":
                forwarded.append(value)
            continue
        parts.append(b"%s: %s\r\n" % (name, value))
    forwarded.append(peer)
    parts.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % b", ".join(forwarded))
    return b"".join(parts)


def _host_line(backend: Backend) -> bytes:
    host = f"[{backend.address}]" if ":" in backend.address else backend.address
    return f"Host: {host}:{backend.port}\r\n".encode()


def _simple(status: int, reason: bytes, text: bytes, extra: bytes) -> tuple[bytes, bytes]:
    """A balancer's own answer: head without the final CRLF, and body."""
    return (b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n%s" % (status, reason, _PLAIN, len(text),
                                                               extra), text)
