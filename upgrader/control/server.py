"""The local control API of a controller process: HTTP over a Unix socket, with a bearer token.

    GET  /v1/status                     the rollout's snapshot (``RolloutHandle.snapshot()``)
    GET  /v1/events?since=SEQ           NDJSON: history after SEQ, then live events, then the end
    POST /v1/control/{action}           pause | resume | promote | promote_all | abort |
                                        override_window ({"reason": "..."}: required)
    POST /v1/watch                      {"stream": ID, "hosts": [...]}: per-host figures for
                                        these hosts while that event stream is open

The socket file is 0600 in a 0700 folder and every request must carry
``Authorization: Bearer <token>``; docs/CONTROL.md describes the protocol.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import socket
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import ControlError, PolicyRefused, UpgraderError
from ..events import Event
from ..redact import redact_data
from ..tokens import bearer_token, token_matches
from .handle import RolloutHandle

log = logging.getLogger("upgrader.control")

API_PREFIX = "/v1"
NDJSON = "application/x-ndjson"
ACTIONS = ("pause", "resume", "promote", "promote_all", "abort", "override_window")
#: a client further behind than this is dropped (it reconnects and resumes from its last seq)
MAX_BACKLOG = 10_000
HEARTBEAT_S = 5.0
#: a Unix socket path must fit in ``sockaddr_un.sun_path`` (108 bytes with the NUL)
MAX_SOCKET_PATH = 107
#: ``POST /v1/watch``: at most this many host names (the engine's per-host figure limit) ...
MAX_WATCH_HOSTS = 2000
#: ... of at most this many characters each
MAX_HOST_NAME = 255
#: a request body larger than this is refused (2,000 names of 255 characters, quoted)
MAX_WATCH_BODY = 1024 * 1024
#: the response header of ``GET /v1/events`` that names the stream (for ``POST /v1/watch``)
STREAM_HEADER = "Upgrader-Stream"


class WatchRequestError(ValueError):
    """A ``POST /v1/watch`` body that is not ``{"stream": ID, "hosts": [NAME, ...]}``."""


def parse_watch_body(text: str) -> tuple[str, tuple[str, ...]]:
    """``(stream id, host names)`` of a ``POST /v1/watch`` body, names de-duplicated in
    order. ``WatchRequestError`` says what is wrong and where."""
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise WatchRequestError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WatchRequestError('body must be a JSON object {"stream": ID, "hosts": [...]}')
    unknown = sorted(set(body) - {"stream", "hosts"})
    if unknown:
        raise WatchRequestError(f"unknown key(s) {', '.join(map(repr, unknown))}; the body is "
                                '{"stream": ID, "hosts": [...]}')
    stream = body.get("stream")
    if not isinstance(stream, str) or not stream:
        raise WatchRequestError('"stream" must be the id of one of your open event streams '
                                "(its Upgrader-Stream header), a non-empty string")
    if "hosts" not in body:
        raise WatchRequestError('"hosts" is missing: a list of host names ([] to stop)')
    hosts = body["hosts"]
    if not isinstance(hosts, list):
        raise WatchRequestError(f'"hosts" must be a list of host names, not '
                                f"{type(hosts).__name__}")
    if len(hosts) > MAX_WATCH_HOSTS:
        raise WatchRequestError(f'"hosts" has {len(hosts)} names; at most {MAX_WATCH_HOSTS}')
    for index, name in enumerate(hosts):
        if not isinstance(name, str) or not name:
            shown = repr(name)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise WatchRequestError(f'"hosts"[{index}] must be a non-empty string, not {shown}')
        if len(name) > MAX_HOST_NAME:
            raise WatchRequestError(f'"hosts"[{index}] is {len(name)} characters long; '
                                    f"at most {MAX_HOST_NAME}")
    return stream, tuple(dict.fromkeys(hosts))


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _json_response(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=_dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


class _Stream:
    """One client's live event feed: a bounded queue filled by the handle's callback."""

    __slots__ = ("id", "overflowed", "queue")

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = False
        #: named to the client in the ``Upgrader-Stream`` header; ``POST /v1/watch`` names it
        self.id = secrets.token_urlsafe(12)

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.overflowed = True   # the writer is busy, not waiting; it checks this flag


class ControlServer:
    """Serves one ``RolloutHandle`` (usually ``Rollout.engine``) on a Unix socket.

    ``async with ControlServer(engine, socket_path=..., token=...):`` or ``await start()`` /
    ``await aclose()``. The token is compared in constant time and never logged or echoed.
    """

    def __init__(self, handle: RolloutHandle, *, socket_path: str | Path, token: str,
                 heartbeat: float = HEARTBEAT_S, max_backlog: int = MAX_BACKLOG) -> None:
        if not token:
            raise ControlError("the control API needs a non-empty token")
        self.handle = handle
        self.socket_path = Path(socket_path)
        self._token = token.encode()
        self.heartbeat = heartbeat
        self.max_backlog = max_backlog
        self._runner: web.AppRunner | None = None
        self._streams: set[_Stream] = set()
        #: open stream id -> the hosts its client watches (``POST /v1/watch``)
        self._watches: dict[str, tuple[str, ...]] = {}
        #: what the handle was last asked to watch: the union of ``_watches``
        self.watched: tuple[str, ...] = ()
        self._finished_seq: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._inode: tuple[int, int] | None = None
        self._closing = False
        #: how many event streams have been opened (controllers linger only if someone watched)
        self.streams_opened = 0

    def __repr__(self) -> str:  # never the token
        return f"ControlServer(socket_path={str(self.socket_path)!r})"

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._runner is not None:
            raise ControlError("control server already started")
        path = self.socket_path
        if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
            raise ControlError(f"control socket path is too long for a Unix socket "
                               f"({len(os.fsencode(str(path)))} bytes, at most "
                               f"{MAX_SOCKET_PATH}): {path}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._clear_stale(path)
        sock = _bind_private(path)
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        for event in reversed(list(self.handle.history)):
            if event.kind == "rollout_finished":
                self._finished_seq = event.seq
                break
        self._unsubscribe = self.handle.subscribe(self._on_event)
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get(f"{API_PREFIX}/status", self._status)
        app.router.add_get(f"{API_PREFIX}/events", self._events)
        app.router.add_post(f"{API_PREFIX}/control/{{action}}", self._control)
        app.router.add_post(f"{API_PREFIX}/watch", self._watch)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0,
                               access_log=logging.getLogger("upgrader.control.access"),
                               access_log_format='%r %s %b %Tfs')
        try:
            await runner.setup()
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            self._remove_socket()
            if self._unsubscribe is not None:
                self._unsubscribe()
            raise
        self._runner = runner
        self._closing = False
        log.info("control API on %s", path)

    async def aclose(self) -> None:
        """Stop serving: end every event stream, close the socket and remove its file."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        for stream in list(self._streams):
            stream.close()
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except ValueError:
                pass
            self._unsubscribe = None
        try:
            await runner.cleanup()
        finally:
            self._remove_socket()

    def drop_streams(self) -> None:
        """End every open event stream now; clients reconnect and resume from their last seq."""
        for stream in list(self._streams):
            stream.close()

    async def _clear_stale(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
        if await socket_answers(path):
            raise PolicyRefused(f"a controller already serves the control socket {path}")
        log.info("removing stale control socket %s", path)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            pass

    def _remove_socket(self) -> None:
        if self._inode is None:
            return
        try:
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._inode:   # ours, not a successor's
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None

    # ------------------------------------------------------------------ events in

    def _stream_ids(self) -> dict[str, _Stream]:
        return {stream.id: stream for stream in self._streams}

    def _set_watch(self, stream_id: str, hosts: Iterable[str]) -> None:
        """Record one stream's watched hosts (none: forget it) and give the handle the union
        of every open stream's, when that changed."""
        hosts = tuple(hosts)
        if hosts:
            self._watches[stream_id] = hosts
        elif self._watches.pop(stream_id, None) is None:
            return
        union = tuple(dict.fromkeys(name for names in self._watches.values() for name in names))
        if union == self.watched:
            return
        self.watched = union
        watch = getattr(self.handle, "watch_hosts", None)
        if watch is not None:
            watch(union)

    def _on_event(self, event: Event) -> None:
        if event.kind == "rollout_finished":
            self._finished_seq = event.seq
        for stream in self._streams:
            stream.offer(event)

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _auth_middleware(self, request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                               ) -> web.StreamResponse:
        if not token_matches(bearer_token(request.headers.get("Authorization")), self._token):
            response = _json_response(401, {"ok": False, "error": "unauthorized: a valid "
                                            "'Authorization: Bearer <token>' header is required"})
            response.headers["WWW-Authenticate"] = 'Bearer realm="upgrader"'
            return response
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json_response(exc.status, {"ok": False, "error": exc.reason})

    async def _status(self, request: web.Request) -> web.Response:
        history = self.handle.history
        last_seq = history[-1].seq if len(history) else 0
        return _json_response(200, {**redact_data(self.handle.snapshot()), "last_seq": last_seq})

    async def _control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            return _json_response(404, {"ok": False, "error": f"unknown action {action!r}; "
                                        f"one of {', '.join(ACTIONS)}"})
        kwargs: dict[str, Any] = {}
        if action == "abort":
            text = await request.text()
            rollback: Any = True
            if text.strip():
                try:
                    body = json.loads(text)
                except ValueError:
                    return _json_response(400, {"ok": False, "error": "body is not JSON"})
                if not isinstance(body, dict) or set(body) - {"rollback"}:
                    return _json_response(400, {"ok": False,
                                                "error": 'body must be {"rollback": true|false}'})
                rollback = body.get("rollback", True)
                if not isinstance(rollback, bool):
                    return _json_response(400, {"ok": False,
                                                "error": "rollback must be true or false"})
            kwargs["rollback"] = rollback
        elif action == "override_window":
            try:
                body = json.loads(await request.text() or "null")
            except ValueError:
                return _json_response(400, {"ok": False, "error": "body is not JSON"})
            reason = body.get("reason") if isinstance(body, dict) else None
            if not isinstance(body, dict) or set(body) - {"reason"} \
                    or not isinstance(reason, str) or not reason.strip():
                return _json_response(400, {"ok": False, "error": 'body must be {"reason": '
                                            '"why the window is overridden"} (not empty)'})
            if getattr(self.handle, "override_window", None) is None:
                return _json_response(409, {"ok": False, "error": "this rollout cannot "
                                            "override its deploy window"})
            kwargs["reason"] = reason.strip()
        try:
            getattr(self.handle, action)(**kwargs)
        except UpgraderError as exc:
            return _json_response(409, {"ok": False, "error": str(exc)})
        log.info("control: %s%s", action, "".join(f" {k}={v!r}" for k, v in kwargs.items()))
        return _json_response(200, {"ok": True, "action": action,
                                    "state": self.handle.snapshot().get("state")})

    async def _watch(self, request: web.Request) -> web.Response:
        if getattr(self.handle, "watch_hosts", None) is None:
            return _json_response(501, {"ok": False, "error": "this rollout does not take "
                                        "watched hosts"})
        if (request.content_length or 0) > MAX_WATCH_BODY:
            return _json_response(413, {"ok": False, "error": f"POST {API_PREFIX}/watch: body "
                                        f"larger than {MAX_WATCH_BODY} bytes"})
        text = await request.text()
        try:
            stream_id, hosts = parse_watch_body(text)
        except WatchRequestError as exc:
            return _json_response(400, {"ok": False, "error": f"POST {API_PREFIX}/watch: {exc}"})
        if stream_id not in self._stream_ids():
            # the stream ended (its set went with it) or never was: the client re-sends its
            # set on the stream it opens next
            return _json_response(409, {"ok": False, "error": f"no open event stream "
                                        f"{stream_id!r}: a watch lives as long as the event "
                                        "stream it names"})
        self._set_watch(stream_id, hosts)
        log.debug("watch: stream %s, %d host(s); %d in all", stream_id, len(hosts),
                  len(self.watched))
        return _json_response(200, {"ok": True, "stream": stream_id, "hosts": len(hosts),
                                    "watched": len(self.watched)})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        try:
            since = int(request.query.get("since", "0"))
            if since < 0:
                raise ValueError
        except ValueError:
            return _json_response(400, {"ok": False, "error": "since must be an integer >= 0"})
        stream = _Stream(self.max_backlog)
        # subscribe and copy the history in one step of the loop: nothing can fall between
        self._streams.add(stream)
        backlog = list(self.handle.history)
        self.streams_opened += 1
        response = web.StreamResponse(headers={"Content-Type": NDJSON,
                                               "Cache-Control": "no-store",
                                               STREAM_HEADER: stream.id})
        try:
            await response.prepare(request)
            last = since
            lines: list[str] = []
            if since > 0 and backlog and backlog[0].seq > since + 1:
                lines.append(_dumps({"kind": "gap", "after": since, "before": backlog[0].seq}))
            for event in backlog:
                if event.seq > last:
                    lines.append(event.dumps())
                    last = event.seq
            lines.append(_dumps({"kind": "caught_up", "last_seq": last}))
            await response.write(("\n".join(lines) + "\n").encode())
            while not (self._finished_seq is not None and last >= self._finished_seq):
                if stream.overflowed or self._closing:
                    if stream.overflowed and not self._closing:
                        log.warning("control client fell more than %d events behind; dropped",
                                    self.max_backlog)
                        await response.write((_dumps({"kind": "dropped", "reason":
                                                      "too far behind"}) + "\n").encode())
                    break
                try:
                    first = await asyncio.wait_for(stream.queue.get(), self.heartbeat)
                except TimeoutError:
                    await response.write(b'{"kind":"heartbeat"}\n')
                    continue
                batch = [first]
                while not stream.queue.empty() and len(batch) < 500:
                    batch.append(stream.queue.get_nowait())
                lines = []
                end = False
                for item in batch:
                    if item is None:
                        end = True
                        break
                    if item.seq > last:
                        lines.append(item.dumps())
                        last = item.seq
                if lines:
                    await response.write(("\n".join(lines) + "\n").encode())
                if end:
                    break
            await response.write_eof()
        except ConnectionError:
            pass    # the client went away; it reconnects with its last seq if it wants more
        finally:
            self._streams.discard(stream)
            self._set_watch(stream.id, ())    # its client's rows go with it
        return response


def _bind_private(path: Path) -> socket.socket:
    """A listening-ready Unix socket at ``path``, created 0600 (umask around bind, then chmod:
    no moment where another user could connect)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PolicyRefused(f"a controller already serves the control socket {path}") from exc
        raise ControlError(f"cannot create the control socket {path}: {exc}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.setblocking(False)
    return sock


async def socket_answers(path: str | Path, timeout: float = 1.0) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except TimeoutError:
        return True     # a listener with a full backlog is still a listener
    except OSError:
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
