"""The engine's event bus: numbers each event, writes it to the journal before the action it
announces, keeps a bounded history, and hands it to observers, ``events()`` streams and
notifiers (each notifier in a task of its own, so a slow webhook never holds the rollout).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import Any

from ..clock import Clock
from ..events import Event
from ..journal import Journal
from ..providers.base import Notifier
from ..redact import redact_data

log = logging.getLogger("upgrader.engine")

#: observations, not transitions: front ends get them, the journal does not
NOT_JOURNALED = frozenset({"metrics"})

#: ``metrics`` events that keep their per-host figures in the history (the latest ones);
#: older ones keep their pools only, so the history's memory is bounded however long the
#: rollout and however many hosts a reading named
METRICS_WITH_HOSTS = 60


class EventBus:
    """Every event of one rollout goes through :meth:`emit`."""

    def __init__(self, clock: Clock, journal: Journal | None, notifiers: Iterable[Notifier], *,
                 observers: Iterable[Callable[[Event], None]] = (), history: int = 2000,
                 rollout_id: str = "", seq: int = 0) -> None:
        self.clock = clock
        self.journal = journal
        self.notifiers = tuple(notifiers)
        #: the journal's id of the rollout ("" until it begins)
        self.rollout_id = rollout_id
        self.seq = seq
        #: the most recent events, oldest first
        self.history: deque[Event] = deque(maxlen=history)
        #: the ``metrics`` events in the history that still carry per-host figures
        self._with_hosts: deque[Event] = deque()
        self._observers: list[Callable[[Event], None]] = list(observers)
        self._queues: list[asyncio.Queue[Event | None]] = []
        self._tasks: set[asyncio.Task[object]] = set()

    async def emit(self, kind: str, /, **data: object) -> Event:
        """Journal (unless an observation), record and hand out one event."""
        self.seq += 1
        payload: Mapping[str, object] = data
        if kind not in NOT_JOURNALED:      # secrets never reach events or the journal
            payload = redact_data(payload)
        event = Event(kind, self.clock.wall(), self.rollout_id, self.seq, payload)
        if self.journal is not None and self.rollout_id and kind not in NOT_JOURNALED:
            await self.journal.aappend(self.rollout_id, event.seq, event.ts, kind, dict(payload))
        self.history.append(event)
        if kind == "metrics" and payload.get("hosts"):
            self._bound_host_figures(event)
        for callback in list(self._observers):
            try:
                callback(event)
            except Exception:
                log.exception("event observer failed")
        for queue in self._queues:
            queue.put_nowait(event)
        for notifier in self.notifiers:
            self.spawn(self._notify(notifier, event))
        return event

    def _bound_host_figures(self, event: Event) -> None:
        """Keep per-host figures in the latest ``METRICS_WITH_HOSTS`` metrics events of the
        history only: the oldest one is replaced there by a copy without them (its pools,
        its place and its number stay; ``hosts_dropped`` says how many figures went)."""
        self._with_hosts.append(event)
        if len(self._with_hosts) <= METRICS_WITH_HOSTS:
            return
        old = self._with_hosts.popleft()
        history = self.history
        if not history or history[0].seq > old.seq:
            return                                  # already out of the history
        index = old.seq - history[0].seq
        if not (0 <= index < len(history) and history[index] is old):
            index = next((i for i, e in enumerate(history) if e is old), -1)
            if index < 0:
                return
        data = dict(old.data)
        data["hosts_dropped"] = len(data.pop("hosts", None) or ())
        data["hosts"] = {}
        history[index] = Event(old.kind, old.ts, old.rollout, old.seq, data)

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` beside the rollout; :meth:`close` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, notifier: Notifier, event: Event) -> None:
        try:
            await notifier.notify(event)
        except Exception:
            log.exception("notifier failed")

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every event from now on; returns the unsubscribe call."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback)

    def stream(self) -> AsyncIterator[Event]:
        """Every event from the moment of this call on, until :meth:`close`."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues.append(queue)
        return self._drain_queue(queue)

    async def _drain_queue(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._queues.remove(queue)

    async def close(self) -> None:
        """The rollout is over: wait for the notifiers, end every stream."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for queue in self._queues:
            queue.put_nowait(None)
