"""upgrader_webhook: the ``webhook`` notifier, POSTs rollout events as JSON to a URL.

``notify()`` only puts the event in a bounded queue; one background task POSTs the events in
order, ``batch`` at most per request, retrying a failed POST with bounded exponential backoff.
An endpoint that is down or slow never blocks or fails the rollout: after the retries its
events are dropped with a warning, and ``aclose()`` waits at most ``flush_timeout`` seconds for
what is still queued. Header values (tokens) and the URL's path and query (which often hold a
secret, as chat webhooks do) never appear in logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from upgrader.errors import ConfigError
from upgrader.events import Event
from upgrader.hookspecs import Register, hookimpl
from upgrader.providers.base import Notifier, ProviderContext, Setting

__version__ = "0.1.0"

log = logging.getLogger(__name__)

#: every event kind the engine emits (docs: upgrader/events.py); the ``events`` filter
#: accepts only these, so that a typo cannot silence a notification
EVENT_KINDS: frozenset[str] = frozenset({
    "rollout_started", "state", "step_started", "step_finished", "pause_started", "slots",
    "host_phase", "host_done", "host_failed", "snapshot_taken", "traffic", "verdict",
    "analysis_failed", "metrics", "control", "rollback_started", "rollout_finished", "log",
    "window_closed", "window_wait", "window_opened", "window_override", "reconcile",
    "inventory", "frozen",
})

SETTINGS: tuple[Setting, ...] = (
    Setting("url", str, description="where to POST the events (http:// or https://)"),
    Setting("headers", dict, {},
            "extra request headers, e.g. {Authorization = \"Bearer ...\"}; values are never "
            "logged"),
    Setting("headers_env", dict, {},
            "header name -> environment variable holding its value (keeps tokens out of the "
            "fleet file)"),
    Setting("timeout", float, 5.0, "seconds per POST"),
    Setting("events", list, [], "event kinds to send; empty: every kind"),
    Setting("batch", int, 1,
            "events per POST at most; 1 sends each event as a JSON object, above 1 the body "
            "is a JSON array of the events waiting (it never waits to fill a batch)"),
    Setting("retries", int, 3, "retries of a failed POST before its events are dropped"),
    Setting("backoff", float, 0.5, "seconds before the first retry, doubled for each next one"),
    Setting("backoff_max", float, 10.0, "longest wait between two retries, in seconds"),
    Setting("queue_size", int, 1000, "events waiting at most; more are dropped with a warning"),
    Setting("flush_timeout", float, 10.0,
            "seconds aclose() waits for queued events to be sent before dropping them"),
)

USER_AGENT = f"upgrader-webhook/{__version__}"
#: statuses worth retrying; any other 4xx will not get better by sending the same thing again
_RETRY_STATUSES = frozenset({408, 425, 429})


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no user info, path or query (they hold tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "") + "/…"


def event_payload(event: Any) -> Any:
    """The JSON form of an event: ``Event.to_json()`` (kind, ts, rollout, seq and the event's
    data, flat), else a dataclass's fields or a mapping, else ``{"event": str(event)}``."""
    to_json = getattr(event, "to_json", None)
    if callable(to_json):
        return to_json()
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {"kind": type(event).__name__, **dataclasses.asdict(event)}
    if isinstance(event, Mapping):
        return dict(event)
    return {"kind": type(event).__name__, "event": str(event)}


class _Rejected(Exception):
    """The endpoint answered with a status that retrying will not fix."""


class WebhookNotifier:
    """POSTs rollout events to one URL, in order, without ever blocking the rollout."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 headers_env: Mapping[str, str] | None = None, timeout: float = 5.0,
                 events: list[str] | tuple[str, ...] = (), batch: int = 1, retries: int = 3,
                 backoff: float = 0.5, backoff_max: float = 10.0, queue_size: int = 1000,
                 flush_timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # never echo the URL: it may carry a token
            raise ConfigError("expected an http:// or https:// URL with a host",
                              key="notifier.url")
        merged: dict[str, str] = {}
        for name, value in (headers or {}).items():
            if not isinstance(value, str):
                raise ConfigError(f"header {name!r} must be a string", key="notifier.headers")
            merged[str(name)] = value
        for name, variable in (headers_env or {}).items():
            if not isinstance(variable, str) or variable not in os.environ:
                raise ConfigError(f"header {name!r}: environment variable {variable!r} is not "
                                  f"set", key="notifier.headers_env")
            merged[str(name)] = os.environ[variable]
        unknown = sorted(set(events) - EVENT_KINDS)
        if unknown:
            raise ConfigError(f"unknown event kind(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(sorted(EVENT_KINDS))})", key="notifier.events")
        for key, count, low in (("batch", batch, 1), ("queue_size", queue_size, 1),
                                ("retries", retries, 0)):
            if count < low:
                raise ConfigError(f"must be {low} or more, got {count}", key=f"notifier.{key}")
        for key, seconds in (("timeout", timeout), ("flush_timeout", flush_timeout)):
            if seconds <= 0:
                raise ConfigError(f"must be above 0 seconds, got {seconds}",
                                  key=f"notifier.{key}")
        for key, seconds in (("backoff", backoff), ("backoff_max", backoff_max)):
            if seconds < 0:
                raise ConfigError(f"must be 0 or more seconds, got {seconds}",
                                  key=f"notifier.{key}")
        self.url = url
        self.where = redact_url(url)
        # what must never reach a log: header values, and the URL's user info, path, query
        self._secrets = sorted({v for v in (*merged.values(), parts.path, parts.query,
                                             parts.netloc.rpartition("@")[0])
                                if len(v) >= 4}, key=len, reverse=True)
        self._headers = {"User-Agent": USER_AGENT, **merged,
                         "Content-Type": "application/json"}
        self.timeout = timeout
        self.kinds = frozenset(events)
        self.batch = batch
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.queue_size = queue_size
        self.flush_timeout = flush_timeout
        #: counters, for tests and for whoever embeds the notifier
        self.sent = 0
        self.dropped = 0
        self._queue: asyncio.Queue[Any] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._session: Any = None
        self._in_flight = 0
        self._failing = False      # the last batch was dropped: one attempt per batch until up
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> WebhookNotifier:
        return cls(**settings)

    def __repr__(self) -> str:  # never show headers or the URL's path
        return f"WebhookNotifier({self.where})"

    # -- the protocol ----------------------------------------------------------------------

    async def notify(self, event: Event) -> None:
        """Queue ``event`` and return at once; the background task sends it."""
        if self.kinds and getattr(event, "kind", None) not in self.kinds:
            return
        if self._closed:
            self._drop(1, "the notifier is closed")
            return
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"webhook {self.where}")
        try:
            self._queue.put_nowait(event_payload(event))
        except asyncio.QueueFull:
            self._drop(1, f"{self.queue_size} events are already waiting")

    async def aclose(self) -> None:
        """Send what is queued, for at most ``flush_timeout`` seconds; drop the rest."""
        if self._closed:
            return
        self._closed = True
        queue, worker = self._queue, self._worker
        if queue is not None and worker is not None:
            try:
                await asyncio.wait_for(queue.join(), self.flush_timeout)
            except TimeoutError:
                left = queue.qsize() + self._in_flight
                self._drop(left, f"not sent within flush_timeout ({self.flush_timeout:g} s)")
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WebhookNotifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- sending ---------------------------------------------------------------------------

    def _drop(self, count: int, why: str) -> None:
        if count <= 0:
            return
        self.dropped += count
        log.warning("webhook %s: dropped %d event(s): %s", self.where, count, why)

    async def _run(self) -> None:
        import aiohttp

        assert self._queue is not None
        queue = self._queue
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
        while True:
            batch = [await queue.get()]
            while len(batch) < self.batch and not queue.empty():
                batch.append(queue.get_nowait())
            self._in_flight = len(batch)
            try:
                await self._deliver(batch)
            except Exception as exc:
                self._drop(len(batch), f"{type(exc).__name__}")
                log.debug("webhook %s: unexpected failure", self.where, exc_info=True)
            finally:
                self._in_flight = 0
                for _ in batch:
                    queue.task_done()

    async def _deliver(self, batch: list[Any]) -> None:
        body = json.dumps(batch if self.batch > 1 else batch[0], default=str).encode()
        attempts = 1 if self._failing else self.retries + 1
        delay = self.backoff
        why = ""
        for attempt in range(1, attempts + 1):
            try:
                await self._post(body)
            except _Rejected as exc:
                self._drop(len(batch), f"the endpoint refused them: {exc}")
                return      # the endpoint is up; retrying the same body will not help
            except Exception as exc:
                why = self._describe(exc)
                log.debug("webhook %s: attempt %d of %d failed: %s", self.where, attempt,
                          attempts, why)
            else:
                self.sent += len(batch)
                if self._failing:
                    log.warning("webhook %s: the endpoint takes events again", self.where)
                self._failing = False
                return
            if attempt < attempts:
                await asyncio.sleep(min(delay, self.backoff_max))
                delay *= 2
        self._failing = True
        self._drop(len(batch), f"{attempts} attempt(s) failed, the last: {why}")

    async def _post(self, body: bytes) -> None:
        assert self._session is not None
        async with self._session.post(self.url, data=body) as response:
            await response.read()
            status = response.status
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in _RETRY_STATUSES:
            raise _Rejected(f"HTTP {status}")
        raise RuntimeError(f"HTTP {status}")

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            return f"no answer within {self.timeout:g} s"
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # an exception may quote the URL; never let a token in its path reach the log
        text = text.replace(self.url, self.where)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


@hookimpl
def register_notifiers(register: Register[Notifier]) -> None:
    register("webhook", WebhookNotifier.from_settings, settings=SETTINGS,
             description="POSTs rollout events as JSON to a URL (batched, bounded retries)")
