"""The built-in balancer's data path (upgrader/balancer/proxy.py) as HTTP/1.1 on the wire:
keep-alive both ways, pipelining, chunked and large bodies, HEAD, 100-continue, hop-by-hop
headers and X-Forwarded-For, a backend dying mid-answer, its own 503 pages and routing.

A real balancer process (on asyncio's loop, and on uvloop's when it is installed) in front of
a raw asyncio backend whose answers the tests choose byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOKEN = "proxy-test-token"
LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed (optional)"))]


# --------------------------------------------------------------------------------------------
# A backend that answers what each test asks for, byte for byte


class RawBackend:
    """An HTTP/1.1 server on raw asyncio streams, in a thread. It records every request
    (method, target, headers in order, body) and how many connections it accepted.

    Paths: ``/echo`` answers the request as JSON; ``/chunked`` answers in chunks with a
    trailer; ``/big?n=N`` answers N bytes; ``/die`` sends half a head and closes;
    ``/close`` answers with ``Connection: close`` and closes; ``/nolength`` answers with
    neither length nor chunks and closes; ``/hop`` answers with hop-by-hop headers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20), self.loop
        ).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ")
                headers = [tuple(part.strip() for part in line.split(":", 1))
                           for line in lines[1:]]
                lookup = {name.lower(): value for name, value in headers}
                body = await reader.readexactly(int(lookup.get("content-length", 0)))
                self.requests.append({"method": method, "target": target, "headers": headers,
                                      "body": body})
                if not await self._answer(writer, method, target, headers, body):
                    return
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, target: str,
                      headers: list[Any], body: bytes) -> bool:
        path, _, query = target.partition("?")
        if path == "/die":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
            await writer.drain()
            return False
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Trailer: X-Sum\r\n\r\n"
                         b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: 1\r\n\r\n")
            return True
        if path == "/nolength":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            await writer.drain()
            return False
        if path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye")
            await writer.drain()
            return False
        if path == "/hop":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: secret\r\n"
                         b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
                         b"X-Public: yes\r\nContent-Length: 2\r\n\r\nok")
            return True
        if path == "/big":
            size = int(query.partition("=")[2])
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        else:       # /echo and anything else
            payload = json.dumps({"method": method, "target": target, "headers": headers,
                                  "body_sha256": hashlib.sha256(body).hexdigest(),
                                  "body_length": len(body)}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload))
        if method != "HEAD":     # HEAD: the length of what GET would answer, no body
            writer.write(payload)
        await writer.drain()
        return True


# --------------------------------------------------------------------------------------------
# The balancer


class Balancer:
    def __init__(self, directory: Path, loop: str) -> None:
        token_file = directory / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)        # a token file others can read is refused
        ready_file = directory / "ready.json"
        self.log = (directory / "balancer.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "upgrader.balancer", "--listen", "127.0.0.1:0",
             "--admin", "127.0.0.1:0", "--token-file", str(token_file), "--ready-file",
             str(ready_file), "--loop", loop, "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 15
        while not ready_file.exists():
            assert self.process.poll() is None, (directory / "balancer.log").read_text()
            assert time.monotonic() < deadline, "the balancer did not start"
            time.sleep(0.02)
        ready = json.loads(ready_file.read_text())
        self.port = ready["listen_port"]
        self.admin_url = f"http://127.0.0.1:{ready['admin_port']}"

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.admin_url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[RawBackend]:
    server = RawBackend()
    yield server
    server.close()


@pytest.fixture(scope="module", params=LOOPS)
def lb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
       backend: RawBackend) -> Iterator[Balancer]:
    balancer = Balancer(tmp_path_factory.mktemp("proxy"), request.param)
    yield balancer
    balancer.stop()


@pytest.fixture
def balancer(lb: Balancer, backend: RawBackend) -> Balancer:
    for name in lb.admin("GET", "/admin/state")["backends"]:
        lb.admin("DELETE", f"/admin/backends/{name}")
    lb.admin("PUT", "/admin/routes", {"routes": None})
    lb.admin("PUT", "/admin/split", {"weights": None})
    lb.admin("PUT", "/admin/maintenance", {"on": False, "retry_after": 60})
    lb.admin("PUT", "/admin/backends/raw", {"address": "127.0.0.1", "port": backend.port,
                                            "pool": "main"})
    backend.requests.clear()
    return lb


def connect(balancer: Balancer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=10)


def raw(balancer: Balancer, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the balancer sends until it closes."""
    with socket.create_connection(("127.0.0.1", balancer.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket, pending: bytes) -> tuple[bytes, bytes]:
    """One answer with a Content-Length from ``sock``: (its head, what came after it)."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        assert chunk, "the balancer closed the connection"
        pending += chunk
    head, _, rest = pending.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the balancer closed the connection"
        rest += chunk
    return head + b"\r\n", rest[length:]


# --------------------------------------------------------------------------------------------
# Connections


def test_keep_alive_to_the_user_and_to_the_backend(balancer: Balancer,
                                                   backend: RawBackend) -> None:
    before = backend.connections
    conn = connect(balancer)
    conn.request("GET", "/echo")
    first_socket = conn.sock
    for n in range(30):
        if n:
            conn.request("GET", f"/echo?n={n}")
        response = conn.getresponse()
        assert response.status == 200 and not response.will_close
        assert json.loads(response.read())["target"] == (f"/echo?n={n}" if n else "/echo")
        assert conn.sock is first_socket          # the same user connection throughout
    conn.close()
    # one request at a time: one backend connection carried them all (kept in the pool)
    assert backend.connections - before <= 1
    assert len(backend.requests) == 30


def test_http_1_0_keep_alive_only_when_asked(balancer: Balancer) -> None:
    answer = raw(balancer, b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in answer    # and the balancer closed it (raw returned)

    with socket.create_connection(("127.0.0.1", balancer.port), timeout=10) as sock:
        pending = b""
        for _ in range(2):
            sock.sendall(b"GET /echo HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            head, pending = read_response(sock, pending)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"\r\nConnection: keep-alive\r\n" in head


def test_pipelined_requests_are_answered_in_order(balancer: Balancer) -> None:
    requests = b"".join(b"GET /echo?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    answer = raw(balancer, requests + b"GET /echo?i=last HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
    targets = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1 ")[0])["target"]
               for part in answer.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert targets == [f"/echo?i={i}" for i in range(5)] + ["/echo?i=last"]


def test_a_backend_closing_its_connection_is_no_error(balancer: Balancer,
                                                      backend: RawBackend) -> None:
    conn = connect(balancer)
    for path, body in [("/close", b"bye"), ("/nolength", b"until the end"), ("/close", b"bye")]:
        conn.request("GET", path)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, body)
        # the user's connection stays open; the balancer measured the body for it
        assert not response.will_close
        assert response.getheader("Content-Length") == str(len(body))
    conn.close()
    assert balancer.admin("GET", "/admin/stats")["backends"]["raw"]["errors"] == 0


# --------------------------------------------------------------------------------------------
# Bodies


def test_chunked_request_body_reaches_the_backend_whole(balancer: Balancer,
                                                        backend: RawBackend) -> None:
    parts = [b"a" * 1000, b"", b"b" * 70000, b"c"]    # an empty part is not the last chunk
    conn = connect(balancer)
    conn.request("POST", "/echo", body=iter([p for p in parts if p]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    seen = json.loads(conn.getresponse().read())
    whole = b"".join(parts)
    assert seen["body_sha256"] == hashlib.sha256(whole).hexdigest()
    names = {name.lower(): value for name, value in backend.requests[-1]["headers"]}
    assert "transfer-encoding" not in names
    assert names["content-length"] == str(len(whole))


def test_chunked_answer_is_returned_whole_with_a_length(balancer: Balancer) -> None:
    conn = connect(balancer)
    conn.request("GET", "/chunked")
    response = conn.getresponse()
    assert response.read() == b"hello world"
    assert response.getheader("Content-Length") == "11"
    assert response.getheader("Transfer-Encoding") is None
    assert response.getheader("Trailer") is None
    conn.request("GET", "/echo")                          # the connections stay in step
    assert json.loads(conn.getresponse().read())["target"] == "/echo"


def test_large_bodies_both_ways(balancer: Balancer) -> None:
    upload = bytes(range(256)) * (5 * 1024 * 1024 // 256) + b"tail"
    conn = connect(balancer)
    conn.request("PUT", "/echo", body=upload)
    seen = json.loads(conn.getresponse().read())
    assert (seen["body_length"], seen["body_sha256"]) == (
        len(upload), hashlib.sha256(upload).hexdigest())
    size = 8 * 1024 * 1024 + 7
    conn.request("GET", f"/big?n={size}")
    response = conn.getresponse()
    body = response.read()
    assert len(body) == size and body[:256] == bytes(range(256)) and body[-7:] == b"xxxxxxx"


def test_head_answers_the_length_and_no_body(balancer: Balancer) -> None:
    conn = connect(balancer)
    conn.request("HEAD", "/big?n=1000")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == "1000"
    assert response.read() == b""
    conn.request("GET", "/echo?after-head")    # no stray body bytes on the connection
    assert json.loads(conn.getresponse().read())["target"] == "/echo?after-head"


def test_expect_100_continue(balancer: Balancer, backend: RawBackend) -> None:
    with socket.create_connection(("127.0.0.1", balancer.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body_length"] == 5
    names = {name.lower() for name, _ in backend.requests[-1]["headers"]}
    assert "expect" not in names                 # answered by the balancer, not forwarded


# --------------------------------------------------------------------------------------------
# Headers


def test_hop_by_hop_headers_and_x_forwarded_for(balancer: Balancer,
                                                backend: RawBackend) -> None:
    conn = connect(balancer)
    conn.request("GET", "/echo", headers={
        "X-Forwarded-For": "10.0.0.9", "X-Forwarded-Proto": "https",
        "Connection": "keep-alive, X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=9",
        "Proxy-Authorization": "Basic eDp5", "TE": "trailers", "Upgrade": "h2c",
        "X-Custom": "kept", "Cookie": "a=1"})
    response = conn.getresponse()
    assert response.status == 200
    response.read()
    headers = backend.requests[-1]["headers"]
    names = [name.lower() for name, _ in headers]
    for dropped in ("x-secret", "keep-alive", "proxy-authorization", "te", "upgrade",
                    "connection"):
        assert dropped not in names
    lookup = {name.lower(): value for name, value in headers}
    assert lookup["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert lookup["x-forwarded-proto"] == "http"
    assert names.count("x-forwarded-for") == 1
    assert lookup["x-custom"] == "kept" and lookup["cookie"] == "a=1"
    assert lookup["host"] == f"127.0.0.1:{balancer.port}"

    conn.request("GET", "/hop")
    response = conn.getresponse()
    assert response.read() == b"ok"
    assert response.getheader("X-Public") == "yes"
    assert response.getheader("X-Upgrader-Backend") == "raw"
    for dropped in ("X-Private", "Keep-Alive", "Proxy-Authenticate"):
        assert response.getheader(dropped) is None
    assert response.getheader("Date")


def test_an_absolute_url_is_forwarded_as_a_path(balancer: Balancer) -> None:
    answer = raw(balancer, b"GET http://example.test/echo?q=1 HTTP/1.1\r\nHost: example.test"
                           b"\r\nConnection: close\r\n\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["target"] == "/echo?q=1"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
])
def test_a_request_it_cannot_read_is_refused_and_the_connection_closed(
        balancer: Balancer, backend: RawBackend, request_bytes: bytes, status: int) -> None:
    answer = raw(balancer, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer
    assert backend.requests == []


# --------------------------------------------------------------------------------------------
# Failures and the balancer's own answers


def test_a_backend_dying_mid_answer_is_a_502(balancer: Balancer, backend: RawBackend) -> None:
    before = balancer.admin("GET", "/admin/stats")
    conn = connect(balancer)
    conn.request("GET", "/die")
    response = conn.getresponse()
    assert response.status == 502
    assert response.read() == b"Bad gateway.\n"
    assert response.getheader("X-Upgrader-Backend") == "raw"
    assert len(backend.requests) == 1       # part of an answer had come: never retried
    after = balancer.admin("GET", "/admin/stats")
    assert after["backends"]["raw"]["errors"] - before["backends"]["raw"]["errors"] == 1
    assert after["retries"] == before["retries"]
    conn.request("GET", "/echo")            # the user's connection is still good
    assert conn.getresponse().status == 200


def test_maintenance_and_no_backend_pages(balancer: Balancer, backend: RawBackend) -> None:
    balancer.admin("PUT", "/admin/maintenance", {"on": True, "retry_after": 42})
    conn = connect(balancer)
    for method in ("GET", "POST", "HEAD"):
        conn.request(method, "/echo", body=b"x" if method == "POST" else None)
        response = conn.getresponse()
        assert response.status == 503
        assert response.getheader("Retry-After") == "42"
        assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
        assert response.read() == (b"" if method == "HEAD"
                                   else b"Service under maintenance, retry later.\n")
    balancer.admin("PUT", "/admin/maintenance", {"on": False})
    balancer.admin("POST", "/admin/backends/raw/state", {"state": "maint"})
    conn.request("GET", "/echo")
    response = conn.getresponse()
    assert (response.status, response.read()) == (503, b"No backend available.\n")
    assert response.getheader("Retry-After") is None
    assert backend.requests == []


def test_routes_by_header_and_cookie(balancer: Balancer, backend: RawBackend) -> None:
    balancer.admin("PUT", "/admin/backends/other", {"address": "127.0.0.1", "port": 1,
                                                    "pool": "nowhere"})
    # "beta" users go to pool main; everyone else to a pool whose only backend refuses
    balancer.admin("PUT", "/admin/routes", {"routes": {
        "groups": {"beta": "main"}, "default": "nowhere", "group_header": "X-Ring"}})
    conn = connect(balancer)
    for headers in ({"X-Ring": "beta"}, {"x-ring": "beta"},
                    {"Cookie": "theme=dark; group=beta"}, {"Cookie": 'group="beta"'}):
        conn.request("GET", "/echo", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.getheader("X-Upgrader-Backend") == "raw", headers
    before = balancer.admin("GET", "/admin/stats")
    conn.request("GET", "/echo", headers={"Cookie": "group=alpha"})
    response = conn.getresponse()
    response.read()
    # routed to "other", which refused: retried on the pool's... none, so any ready backend
    assert response.getheader("X-Upgrader-Backend") == "raw"
    after = balancer.admin("GET", "/admin/stats")
    assert after["backends"]["other"]["connect_failures"] == \
        before["backends"]["other"]["connect_failures"] + 1
    assert after["retries"] == before["retries"] + 1
