"""A ``RolloutHandle`` on a rollout that runs in a controller process, through its control API.

    remote = RemoteRollout(socket_path, token)
    await remote.connect()           # status + history; then live events in the background
    remote.subscribe(on_event)       # as with an in-process Engine
    remote.pause()                   # fire-and-forget; failures arrive as ``log`` events
    remote.watch_hosts(rows)         # per-host figures for these hosts (sent when it changes)
    outcome = await remote.wait_finished()
    await remote.aclose()

The event stream reconnects on its own (with backoff) and resumes after the last seq seen, so
no event is lost or delivered twice while the controller keeps it in its history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import ControlError
from ..events import Event, RolloutState
from .server import ACTIONS, API_PREFIX, HEARTBEAT_S, MAX_WATCH_HOSTS, STREAM_HEADER

log = logging.getLogger("upgrader.control.client")

_BASE = "http://upgrader"       # the host part is ignored on a Unix socket
#: status refreshes while events arrive, at most this often
STATUS_REFRESH_S = 0.5
MAX_LINE = 64 * 1024 * 1024
_OUTCOME_STATE = {"completed": RolloutState.COMPLETED.value,
                  "rolled_back": RolloutState.ROLLED_BACK.value,
                  "frozen": RolloutState.FROZEN.value,
                  "shut_down": RolloutState.SHUT_DOWN.value,
                  "flags_off": RolloutState.FLAGS_OFF.value,
                  "failed": RolloutState.FAILED.value}


def event_from_json(line: dict[str, Any]) -> Event:
    """The inverse of ``Event.to_json``."""
    data = dict(line)
    kind = data.pop("kind")
    ts = float(data.pop("ts", 0.0))
    rollout = str(data.pop("rollout", ""))
    seq = int(data.pop("seq"))
    return Event(kind, ts, rollout, seq, data)


class RemoteRollout:
    """Drives a rollout in another process. Satisfies ``upgrader.control.handle.RolloutHandle``.

    Use it on one event loop (the TUI's). Controls never raise: they are queued and posted in
    order by a background task; a failure becomes a local ``log`` event (``seq`` 0, not in
    ``history``) for subscribers.
    """

    def __init__(self, socket_path: str | Path, token: str, *, history: int = 2000,
                 reconnect_timeout: float = 60.0, heartbeat: float = HEARTBEAT_S) -> None:
        self.socket_path = Path(socket_path)
        self._token = token
        self.history: deque[Event] = deque(maxlen=history)
        #: how long the controller may stay unreachable before the handle gives up on it
        self.reconnect_timeout = reconnect_timeout
        self.heartbeat = heartbeat
        self._status: dict[str, Any] = {}
        self._status_seq = 0
        self._last_seq = 0
        self._rollout = ""
        self._observers: list[Callable[[Event], None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._controls: asyncio.Queue[tuple[str, dict[str, Any]] | None] | None = None
        self._caught_up = asyncio.Event()
        self._dirty = asyncio.Event()
        self._finished = asyncio.Event()
        self._finished_data: dict[str, Any] | None = None
        self._stopped = asyncio.Event()          # the reader is done (finished or lost)
        self._lost: ControlError | None = None
        self._last_refresh = 0.0
        self._connected = False
        self._closed = False
        self._stream_worked = False
        self._outage = False
        #: the open event stream's id (its ``Upgrader-Stream`` header), None between streams
        self._stream_id: str | None = None
        #: the hosts a front end asked to watch, and (stream id, hosts) last sent for them
        self._watch_wanted: tuple[str, ...] = ()
        self._watch_sent: tuple[str | None, tuple[str, ...]] = (None, ())
        self._watch_dirty = asyncio.Event()
        #: how many ``POST /v1/watch`` requests this handle has sent (coalescing shows here)
        self.watch_posts = 0
        #: how many event streams this handle has opened (each new one is told the watch set)
        self.streams_opened = 0

    def __repr__(self) -> str:  # never the token
        return f"RemoteRollout(socket_path={str(self.socket_path)!r}, last_seq={self._last_seq})"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RemoteRollout:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self, *, timeout: float = 10.0) -> RemoteRollout:
        """Fetch the status and the history, then follow live events in the background.

        Raises ``ControlError`` if the controller does not answer or refuses the token."""
        if self._connected:
            return self
        self._session = aiohttp.ClientSession(
            base_url=_BASE,
            # a fresh connection per request: local and cheap, and never a stale keep-alive
            # one after the controller restarted its server
            connector=aiohttp.UnixConnector(path=str(self.socket_path), force_close=True),
            headers={"Authorization": f"Bearer {self._token}"})
        try:
            status = await asyncio.wait_for(self._get_status(), timeout)
            self._apply_status(status)
            loop = asyncio.get_running_loop()
            self._controls = asyncio.Queue()
            self._tasks = [loop.create_task(self._reader(), name="upgrader-control-events"),
                           loop.create_task(self._refresher(), name="upgrader-control-status"),
                           loop.create_task(self._control_worker(),
                                            name="upgrader-control-controls"),
                           loop.create_task(self._watch_worker(),
                                            name="upgrader-control-watch")]
            self._connected = True
            waiter = asyncio.ensure_future(self._caught_up.wait())
            stopper = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait([waiter, stopper], timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            if self._lost is not None:
                raise self._lost
            if not (self._caught_up.is_set() or self._finished.is_set()):
                raise ControlError(f"the controller at {self.socket_path} sent no events "
                                   f"within {timeout:g}s")
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Send the controls still queued (briefly), stop following events, close the session."""
        if self._closed:
            return
        self._closed = True
        if self._controls is not None and self._tasks:
            self._controls.put_nowait(None)
            worker = self._tasks[2]     # the control worker
            try:
                await asyncio.wait_for(asyncio.shield(worker), 5.0)
            except (TimeoutError, Exception):
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._stopped.set()

    # ------------------------------------------------------------------ RolloutHandle

    def snapshot(self) -> dict[str, Any]:
        """The latest status (kept current from events, refreshed from the controller at most
        every 0.5 s while events arrive). Treat it as read-only."""
        return dict(self._status)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self._observers.append(callback)

        def unsubscribe() -> None:
            if callback in self._observers:
                self._observers.remove(callback)

        return unsubscribe

    def pause(self) -> None:
        self._fire("pause", {})

    def resume(self) -> None:
        self._fire("resume", {})

    def promote(self) -> None:
        self._fire("promote", {})

    def promote_all(self) -> None:
        self._fire("promote_all", {})

    def abort(self, rollback: bool = True) -> None:
        self._fire("abort", {"rollback": bool(rollback)})

    def override_window(self, reason: str) -> None:
        """Go on outside the deploy window from now on; the controller journals ``reason``
        (``window_override``). An empty reason is refused here, before any request."""
        if not reason.strip():
            raise ControlError("an override of the deploy window needs a reason")
        self._fire("override_window", {"reason": reason.strip()})

    def watch_hosts(self, hosts: Iterable[str]) -> None:
        """Per-host figures for these hosts in every ``metrics`` event from now on (a front
        end's visible rows), as ``Engine.watch_hosts``. Cheap to call often: the set is sent
        (``POST /v1/watch``) only when it changed, the latest one only while one is on its
        way, and again on each new event stream (the controller forgets a client's set when
        its stream ends). At most ``MAX_WATCH_HOSTS`` names are kept."""
        wanted = tuple(dict.fromkeys(hosts))[:MAX_WATCH_HOSTS]
        if wanted == self._watch_wanted:
            return
        self._watch_wanted = wanted
        self._watch_dirty.set()

    # ------------------------------------------------------------------ extras

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def lost(self) -> ControlError | None:
        """Why the handle stopped following the controller before the end, if it did."""
        return self._lost

    async def wait_finished(self) -> dict[str, Any]:
        """Wait for ``rollout_finished``; return its data (outcome, hosts, duration_s, error).

        Raises ``ControlError`` if the controller goes away before the rollout ends."""
        if not self._connected:
            raise ControlError("connect() first")
        finished = asyncio.ensure_future(self._finished.wait())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait([finished, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            stopped.cancel()
        if self._finished_data is not None:
            return dict(self._finished_data)
        raise self._lost or ControlError("the handle was closed before the rollout finished")

    async def control(self, action: str, *, rollback: bool = True,
                      reason: str | None = None) -> dict[str, Any]:
        """Send one control now and return the controller's answer (``{"ok", "action",
        "state"}``); raises ``ControlError`` on failure. The UI uses the methods above.
        ``override_window`` needs ``reason``."""
        if action not in ACTIONS:
            raise ControlError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        body: dict[str, Any] = {"rollback": bool(rollback)} if action == "abort" else {}
        if action == "override_window":
            body = {"reason": reason or ""}
        return await self._post(action, body)

    # ------------------------------------------------------------------ internals: HTTP

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ControlError("not connected to a controller")
        return self._session

    async def _get_status(self) -> dict[str, Any]:
        session = self._require_session()
        try:
            async with session.get(f"{API_PREFIX}/status",
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
                body = await self._json_body(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ControlError(f"cannot reach the controller at {self.socket_path}: "
                               f"{_describe(exc)}") from exc
        return body

    async def _post(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        session = self._require_session()
        try:
            async with session.post(f"{API_PREFIX}/control/{action}", json=body,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                return await self._json_body(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ControlError(f"{action}: cannot reach the controller at "
                               f"{self.socket_path}: {_describe(exc)}") from exc

    async def _json_body(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ControlError(f"the controller answered {resp.status} without a JSON object")
        if resp.status == 401:
            raise ControlError("the controller refused the token (a different controller now "
                               "serves this fleet?)")
        if resp.status >= 400:
            raise ControlError(f"the controller answered {resp.status}: "
                               f"{body.get('error', '')}")
        return body

    # ------------------------------------------------------------------ internals: events

    async def _reader(self) -> None:
        delay = 0.1
        down_since: float | None = None
        try:
            while not self._finished.is_set():
                try:
                    await self._follow()
                    if self._finished.is_set():
                        break
                    reason = "the controller ended the event stream"
                except asyncio.CancelledError:
                    raise
                except ControlError as exc:          # 401 and the like: do not retry
                    self._lost = exc
                    self._local_log("error", f"control API: {exc}")
                    break
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                    reason = _describe(exc)
                except Exception as exc:              # a bug: say so instead of hanging
                    log.exception("control client failed")
                    self._lost = ControlError(f"the control client failed: {exc!r}")
                    self._local_log("error", str(self._lost))
                    break
                if self._stream_worked:     # that connection delivered: a new outage starts
                    down_since = None
                    delay = 0.1
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    self._outage = True
                    self._local_log("warning", f"lost the controller's event stream ({reason});"
                                    " reconnecting")
                elif now - down_since > self.reconnect_timeout:
                    self._lost = ControlError(
                        f"the controller at {self.socket_path} has not answered for "
                        f"{self.reconnect_timeout:g}s ({reason}); the rollout may still run "
                        "(`upgrader status FLEET`, `upgrader attach FLEET`)")
                    self._local_log("error", str(self._lost))
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            self._stopped.set()

    async def _follow(self) -> None:
        """One connection to ``/v1/events``, from the last seq seen, until it ends."""
        try:
            await self._follow_one()
        finally:
            self._stream_id = None      # the controller dropped what we watched on it

    async def _follow_one(self) -> None:
        session = self._require_session()
        self._stream_worked = False
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5,
                                        sock_read=max(3 * self.heartbeat, 1.0))
        async with session.get(f"{API_PREFIX}/events", params={"since": str(self._last_seq)},
                               timeout=timeout) as resp:
            if resp.status == 401:
                await self._json_body(resp)      # raises ControlError
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history,
                                                  status=resp.status, message=resp.reason or "")
            self._stream_id = resp.headers.get(STREAM_HEADER) or None
            self.streams_opened += 1
            if self._stream_id is not None and self._watch_wanted:
                self._watch_dirty.set()     # a new stream: tell it what we watch
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in resp.content.iter_any():
                if b"\n" not in chunk:
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size > MAX_LINE:
                        raise ValueError(f"an event line longer than {MAX_LINE} bytes")
                    continue
                parts = chunk.split(b"\n")
                parts[0] = b"".join(pending) + parts[0]
                pending = [parts[-1]] if parts[-1] else []
                pending_size = len(parts[-1])
                for raw in parts[:-1]:
                    if raw.strip():
                        self._line(json.loads(raw))
                    if self._finished.is_set():
                        return

    def _line(self, line: Any) -> None:
        if not isinstance(line, dict):
            return
        if not self._stream_worked:
            self._stream_worked = True
            if self._outage:
                self._outage = False
                self._local_log("info", "reconnected to the controller; resuming after "
                                f"event {self._last_seq}")
        if "seq" not in line:
            self._stream_notice(line)
            return
        try:
            event = event_from_json(line)
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed event line from the controller")
            return
        self._receive(event)

    def _stream_notice(self, line: dict[str, Any]) -> None:
        kind = line.get("kind")
        if kind == "caught_up":
            if self._status_seq < self._last_seq:
                self._dirty.set()
            self._caught_up.set()
        elif kind == "gap":
            self._local_log("warning", f"events {line.get('after', 0) + 1}.."
                            f"{line.get('before', 0) - 1} are no longer in the controller's "
                            "history; the status is refreshed")
            self._dirty.set()
        elif kind == "dropped":
            self._local_log("warning", "the controller dropped this client for falling behind;"
                            " catching up")

    def _receive(self, event: Event) -> None:
        if event.seq <= self._last_seq:
            return          # already seen (a replay after a reconnect)
        self._last_seq = event.seq
        self._rollout = event.rollout or self._rollout
        self.history.append(event)
        if event.seq > self._status_seq:      # not yet in the status we hold
            self._apply_event(event)
        if event.kind == "rollout_finished":
            self._finished_data = dict(event.data)
            self._finished.set()
        self._dirty.set()
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        for callback in list(self._observers):
            try:
                callback(event)
            except Exception:
                log.exception("event observer failed")

    def _local_log(self, level: str, message: str) -> None:
        self._deliver(Event("log", time.time(), self._rollout, 0,
                            {"level": level, "message": message, "local": True}))

    # ------------------------------------------------------------------ internals: status

    async def _refresher(self) -> None:
        while True:
            await self._dirty.wait()
            wait = self._last_refresh + STATUS_REFRESH_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            self._last_refresh = time.monotonic()
            try:
                self._apply_status(await self._get_status())
            except ControlError:
                pass        # the reader notices a controller that went away

    def _apply_status(self, status: dict[str, Any]) -> None:
        seq = int(status.get("last_seq") or 0)
        if seq < self._status_seq:
            return          # an older answer than one already applied
        self._status = status
        self._status_seq = seq
        self._rollout = status.get("rollout") or self._rollout
        if seq < self._last_seq:
            # events arrived after the controller made this picture: lay them over it
            for event in self.history:
                if event.seq > seq:
                    self._apply_event(event)
            self._dirty.set()

    def _apply_event(self, event: Event) -> None:
        """Keep the fields that events carry current between status refreshes."""
        status = self._status
        data = event.data
        kind = event.kind
        if kind == "state":
            status["state"] = data.get("state")
            status["reason"] = data.get("reason", "")
        elif kind == "rollout_started":
            status["rollout"] = event.rollout
        elif kind == "step_started":
            status["step"] = data.get("index")
        elif kind == "step_finished":
            done = list(status.get("done_steps") or [])
            if data.get("index") not in done:
                done.append(data.get("index"))
                status["done_steps"] = sorted(done)
        elif kind in ("host_phase", "host_done", "host_failed"):
            hosts = status.setdefault("hosts", {})
            name = data.get("host")
            host = hosts.setdefault(name, {})
            if kind == "host_phase":
                host["phase"] = data.get("phase")
            elif kind == "host_done":
                target = status.get("target")
                before, after = host.get("release") == target, data.get("release") == target
                if before != after:
                    status["hosts_on_target"] = (int(status.get("hosts_on_target") or 0)
                                                 + (1 if after else -1))
                host["release"] = data.get("release")
                host["slot"] = data.get("slot")
            else:
                host["phase"] = "failed"
                host["error"] = data.get("error")
        elif kind == "traffic":
            status["traffic"] = dict(data)
        elif kind == "metrics":
            status["metrics"] = dict(data)
        elif kind == "verdict":
            verdicts = dict(status.get("verdicts") or {})
            verdicts[data.get("metric")] = {k: data.get(k) for k in
                                            ("metric", "result", "value", "threshold",
                                             "samples", "baseline", "detail")}
            status["verdicts"] = verdicts
        elif kind in ("window_override", "window_closed", "window_wait", "window_opened"):
            # the picture of the window changed: show what the event says now, and read the
            # controller's full picture (next opening, countdown) on the next refresh
            window = dict(status.get("window") or {})
            if kind == "window_override":
                window.update(overridden=data.get("reason"), held=False, resumes_in_s=None)
            elif kind == "window_opened":
                window.update(held=False, resumes_in_s=None)
            else:
                window.update(held=True, why=data.get("reason"), resumes=data.get("until"))
            status["window"] = window
            self._dirty.set()
        elif kind == "rollout_finished":
            state = _OUTCOME_STATE.get(str(data.get("outcome")))
            if state:
                status["state"] = state
            status["step"] = None
        status["last_seq"] = max(int(status.get("last_seq") or 0), event.seq)

    # ------------------------------------------------------------------ internals: controls

    def _fire(self, action: str, body: dict[str, Any]) -> None:
        if self._controls is None or self._closed:
            self._local_log("error", f"{action}: not connected to a controller")
            return
        self._controls.put_nowait((action, body))

    async def _control_worker(self) -> None:
        assert self._controls is not None
        while True:
            item = await self._controls.get()
            if item is None:
                return
            action, body = item
            try:
                await self._post(action, body)
            except ControlError as exc:
                self._local_log("error", str(exc))
            else:
                self._dirty.set()


    # ------------------------------------------------------------------ internals: watch

    async def _watch_worker(self) -> None:
        """Send the watched hosts when they (or the event stream) changed: one request in
        flight at a time, always the latest set."""
        while True:
            await self._watch_dirty.wait()
            self._watch_dirty.clear()
            stream, wanted = self._stream_id, self._watch_wanted
            if stream is None or (stream, wanted) == self._watch_sent:
                continue        # no stream yet (the next one sets the flag again)
            if self._watch_sent[0] != stream and not wanted:
                continue        # a new stream knows of nothing to forget
            self.watch_posts += 1
            try:
                await self._post_watch(stream, wanted)
            except _StreamGone:
                continue        # the next stream sends the set again
            except ControlError as exc:
                self._local_log("warning", f"watch: {exc}")
                continue
            self._watch_sent = (stream, wanted)

    async def _post_watch(self, stream: str, hosts: tuple[str, ...]) -> None:
        session = self._require_session()
        try:
            async with session.post(f"{API_PREFIX}/watch",
                                    json={"stream": stream, "hosts": list(hosts)},
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 409:
                    raise _StreamGone
                if resp.status == 501:
                    return      # a rollout without per-host figures: nothing to ask
                await self._json_body(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ControlError(f"cannot reach the controller at {self.socket_path}: "
                               f"{_describe(exc)}") from exc


class _StreamGone(Exception):
    """``POST /v1/watch`` named an event stream that has ended."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
