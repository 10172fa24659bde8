"""Keeps a compiled Evaluator current: a thread polls the store's cheap ``version()`` and
recompiles on change. Shared by the OFREP server and the in-process OpenFeature provider.

A flag set that fails to load or compile never replaces the last good one: the error is
logged once per store version and the previous evaluator keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("upgrader.flags")

#: how often the store's version is checked: a change reaches services well within a second
POLL_INTERVAL_S = 0.2


class FlagWatcher:
    """The current compiled flags of one environment of a store.

    ``store`` is a store spec (opened, used and closed on the watcher's own thread, so a
    SQLite connection never crosses threads) or an object with ``load()`` and ``version()``
    (used only from the watcher's thread after ``start()``). ``on_change(evaluator)`` runs
    on that thread after each successful reload, not for the first load.
    """

    def __init__(self, store: Any, environment: str, *, interval: float = POLL_INTERVAL_S,
                 on_change: Callable[[Any], None] | None = None, name: str = "flags") -> None:
        self._store_arg = store
        self.environment = environment
        self.interval = interval
        self._on_change = on_change
        self._name = name
        self._evaluator: Any = None
        self._loaded_version: Any = None
        self._failed_version: Any = _NOTHING
        self._version_error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: successful loads, the first one included
        self.loads = 0
        #: the last load error (None after a good load), for status displays and tests
        self.last_error: str | None = None

    @property
    def evaluator(self) -> Any:
        """The current compiled Evaluator (replaced whole, so reading it needs no lock)."""
        if self._evaluator is None:
            raise RuntimeError("FlagWatcher.start() has not loaded the flags yet")
        return self._evaluator

    def start(self) -> None:
        """Start the thread and wait for the first load; its error (a ConfigError for a bad
        flag set, an unknown environment, ...) is raised here."""
        if self._thread is not None:
            raise RuntimeError("FlagWatcher already started")
        self._thread = threading.Thread(target=self._run, name=f"upgrader-{self._name}-watch",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---------------------------------------------------------------- the watcher's thread

    def _run(self) -> None:
        store, owned = None, False
        try:
            try:
                store, owned = self._open()
                self._reload(store, store.version())
            except BaseException as exc:
                self._startup_error = exc
                return
            finally:
                self._ready.set()
            while not self._stop.wait(self.interval):
                self._poll(store)
        finally:
            if owned and store is not None:
                close = getattr(store, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        log.debug("closing the flag store failed", exc_info=True)

    def _open(self) -> tuple[Any, bool]:
        if isinstance(self._store_arg, str):
            from .store import open_store

            return open_store(self._store_arg), True
        return self._store_arg, False

    def _poll(self, store: Any) -> None:
        try:
            version = store.version()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._version_error:
                log.error("cannot read the flag store's version (keeping the last good flag "
                          "set): %s", message)
                self._version_error = message
            return
        self._version_error = None
        if version == self._loaded_version or version == self._failed_version:
            return
        try:
            self._reload(store, version)
        except Exception as exc:
            self._failed_version = version
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("flag set version %s does not load; still serving version %s: %s",
                      version, self._loaded_version, self.last_error)
            return
        if self._on_change is not None:
            try:
                self._on_change(self._evaluator)
            except Exception:
                log.exception("flag change callback failed")

    def _reload(self, store: Any, version: Any) -> None:
        from .evaluate import compile_flags

        evaluator = compile_flags(store.load(), self.environment)
        self._evaluator = evaluator
        self._loaded_version = version
        self._failed_version = _NOTHING
        self.last_error = None
        self.loads += 1
        if self.loads > 1:
            log.info("flags reloaded: version %s", version)


class _Nothing:
    def __repr__(self) -> str:
        return "<nothing>"


_NOTHING: Any = _Nothing()
