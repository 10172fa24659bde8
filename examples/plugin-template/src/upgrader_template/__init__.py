"""upgrader_template: a template upgrader plugin with a transport and a notifier.

- transport ``record``: runs nothing; appends every command to a JSON-lines file per host and
  answers exit 0 (a dry run you can read afterwards);
- notifier ``jsonl``: appends every rollout event to a JSON-lines file.

Both import only upgrader's public plugin API (``upgrader.hookspecs``,
``upgrader.providers.base``, ``upgrader.errors``, ``upgrader.model``) and do their file work in
a thread, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from upgrader.errors import ConfigError, TransportError
from upgrader.events import Event
from upgrader.hookspecs import Register, hookimpl
from upgrader.model import Host
from upgrader.providers.base import CommandResult, Notifier, ProviderContext, Setting, Transport

__version__ = "0.2.0"


def _append(path: str, line: str) -> None:
    """Append one line to ``path``, creating its folder (runs in a worker thread)."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")


# ---------------------------------------------------------------------------------------------
# transport "record"

RECORD_SETTINGS: tuple[Setting, ...] = (
    Setting("path", str, description="JSON-lines file per host; a template of {host}, "
                                     "{address}, {port} and the host's vars"),
    Setting("fail_on", list, [], "commands whose first word 'fails' with exit status 1"),
)


class RecordTransport:
    """A transport that runs nothing and writes down what it was asked to run."""

    def __init__(self, path: str, fail_on: Sequence[str] = ()) -> None:
        if not path:
            raise ConfigError("must not be empty", key="transport.path")
        self.path = path
        self.fail_on = frozenset(fail_on)
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext) -> RecordTransport:
        # settings arrive validated, with every default filled in
        return cls(settings["path"], settings["fail_on"])

    def file_for(self, host: Host) -> str:
        fields = {**{str(k): str(v) for k, v in host.vars.items()}, "host": host.name,
                  "address": host.address, "port": "" if host.port is None else str(host.port)}
        try:
            return self.path.format_map(fields)
        except (KeyError, IndexError, ValueError) as exc:
            # a run-time failure on one host: a TransportError that names it
            raise TransportError(f"cannot build the record path from {self.path!r}: {exc!r}",
                                 host=host.name) from exc

    async def run(self, host: Host, argv: Sequence[str], *, timeout: float | None = None,
                  check: bool = True) -> CommandResult:
        path = self.file_for(host)
        exit_status = 1 if argv and argv[0] in self.fail_on else 0
        line = json.dumps({"host": host.name, "argv": list(argv), "exit_status": exit_status})
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:                  # lines of one file stay whole and in order
            try:
                await asyncio.to_thread(_append, path, line)
            except OSError as exc:
                raise TransportError(f"cannot record to {path}: {exc}", host=host.name,
                                     argv=list(argv)) from exc
        if check and exit_status != 0:
            raise TransportError(f"{argv[0]} exited with status {exit_status}", host=host.name,
                                 argv=list(argv), exit_status=exit_status)
        return CommandResult(exit_status)

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> RecordTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------------------------
# notifier "jsonl"

JSONL_SETTINGS: tuple[Setting, ...] = (
    Setting("path", str, description="the JSON-lines file events are appended to"),
    Setting("events", list, [], "event kinds to write; empty: every kind"),
)


def event_as_dict(event: Any) -> dict[str, Any]:
    """An upgrader event as JSON data (``Event.to_json()``), or a dataclass's fields."""
    if callable(getattr(event, "to_json", None)):
        data: dict[str, Any] = event.to_json()
        return data
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {"kind": type(event).__name__, **dataclasses.asdict(event)}
    return {"kind": type(event).__name__, "event": str(event)}


class JsonlNotifier:
    """Appends every rollout event to a file, one JSON object per line."""

    def __init__(self, path: str, events: Sequence[str] = ()) -> None:
        if not path:
            raise ConfigError("must not be empty", key="notifier.path")
        self.path = path
        self.kinds = frozenset(events)
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext) -> JsonlNotifier:
        return cls(settings["path"], settings["events"])

    async def notify(self, event: Event) -> None:
        if self.kinds and getattr(event, "kind", None) not in self.kinds:
            return
        line = json.dumps(event_as_dict(event), default=str)
        async with self._lock:
            await asyncio.to_thread(_append, self.path, line)

    async def aclose(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# the hooks: one per category; upgrader calls each once and collects what is registered


@hookimpl
def register_transports(register: Register[Transport]) -> None:
    register("record", RecordTransport.from_settings, settings=RECORD_SETTINGS,
             description="runs nothing; records each command to a JSON-lines file per host")


@hookimpl
def register_notifiers(register: Register[Notifier]) -> None:
    register("jsonl", JsonlNotifier.from_settings, settings=JSONL_SETTINGS,
             description="appends every rollout event to a JSON-lines file")
