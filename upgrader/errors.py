"""The one error tree of upgrader.

    UpgraderError
    ├── ConfigError            bad input: file, key path, line  (CLI exit 2)
    │   └── PluginError        a plugin is broken (upgrader.plugins)
    ├── ProviderError          a provider could not do its job
    │   ├── TransportError     command on a host failed (host, argv, exit status, stderr)
    │   │   └── CommandTimeout a command ran past its timeout (also a TimeoutError)
    │   ├── BalancerError      the balancer refused or did not read back as set
    │   ├── HealthCheckFailed  a host did not become healthy
    │   ├── SnapshotError      a snapshot could not be taken, reverted or deleted
    │   └── MetricSourceError  a metric source could not be read (unreachable, timed out,
    │                          an unreadable answer)
    ├── StorageError           a database (SQLite file, PostgreSQL) could not be used
    │   ├── StoreError         the flag store could not be opened, read or written
    │   ├── JournalError       the rollout journal / shared state could not be read or
    │   │                      written, or holds no rollout to resume
    │   └── SchemaError        a live schema change could not run (another is active, ...)
    ├── ControlError           the control API of a running rollout: not reachable, token
    │                          refused, a control the controller rejected
    ├── BadRequest             a request to one of upgrader's servers (the built-in balancer's
    │                          admin API) was malformed: answered 400 with the message
    ├── LabError               the local lab (app hosts, sshd hosts, networks) could not start
    │   │                      or stop
    │   ├── HostctlError       a lab host command failed (upgrader.lab.hostctl; .status)
    │   ├── SshdError          an sshd host could not start or stop (upgrader.lab.sshd)
    │   └── NetworkError       an ``ip`` command failed (upgrader.lab.sshlab)
    ├── PolicyRefused          a policy (deploy window, fleet lock) refused the rollout (exit 3)
    │   ├── WindowRefused      outside the deploy window (upgrader.policy; .next_opening)
    │   ├── InventoryRefused   the fleet is not what the fleet file says (.problems)
    │   ├── FleetLocked        another controller holds the fleet's lock (.holder: user,
    │   │                      machine, pid, rollout, since)
    │   ├── LabMisfit          the running lab cannot serve the fleet's [lab] table
    │   │                      (upgrader.lab.fleet_table)
    │   └── FlagSchemaRefused  a flag would be turned on where the schema version its code
    │                          needs is not live (.flag, .needs, .live, .database)
    └── RolloutFailed          the rollout ended without reaching its target (exit 1)

Every other UpgraderError exits the CLI with 1. Classes defined outside this module are
named with their module; tests/unit/test_errors.py checks that this drawing and the classes
agree. Errors carry structured fields and never print or render themselves; front ends do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


class UpgraderError(Exception):
    """Root of every error upgrader raises on purpose."""


class ConfigError(UpgraderError):
    """Bad input. Names the file, the key path and (when known) the line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        super().__init__(self.location_text() + message)

    def location_text(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.key:
            parts.append(self.key)
        return ": ".join(parts) + (": " if parts else "")


class ProviderError(UpgraderError):
    """A provider could not do what the engine asked."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        self.message = message
        self.host = host
        super().__init__(f"{host}: {message}" if host else message)


class TransportError(ProviderError):
    """A command on a host failed or could not be run."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        argv: list[str] | tuple[str, ...] | None = None,
        exit_status: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.argv = tuple(argv) if argv is not None else None
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message, host=host)


class BalancerError(ProviderError):
    """The balancer refused a change, or its state did not read back as set."""


class HealthCheckFailed(ProviderError):
    """A host did not pass its health check in time."""


class SnapshotError(ProviderError):
    """A snapshot could not be taken, restored or deleted."""


class MetricSourceError(ProviderError):
    """A metric source could not be read (unreachable, timed out, an unreadable answer)."""


class StorageError(UpgraderError):
    """A database (a SQLite file, a PostgreSQL server) could not be opened, read or written.
    ``database`` names it, with any password in a URL masked."""

    def __init__(self, message: str, *, database: str | None = None) -> None:
        self.message = message
        self.database = database
        super().__init__(f"{database}: {message}" if database else message)


class StoreError(StorageError):
    """A flag store (SQLite file, PostgreSQL database) could not be opened, read or written.
    A change refused because it is invalid is a ConfigError instead, and changes nothing."""

    def __init__(self, message: str, *, store: str | None = None) -> None:
        self.store = store
        super().__init__(message, database=store)


class JournalError(StorageError):
    """The rollout journal or the shared state (fleet lock) could not be read or written, or
    it holds no unfinished rollout to resume."""


class SchemaError(StorageError):
    """A live schema change could not start, complete or roll back (another migration is
    active, the database refused a statement). The database is left as it was."""

    def __init__(self, message: str, *, database: str | None = None,
                 migration: str | None = None) -> None:
        self.migration = migration
        super().__init__(message)
        self.database = database


class ControlError(UpgraderError):
    """The control API of a running rollout could not be reached, refused the token, or the
    controller rejected a control."""


class BadRequest(UpgraderError):
    """A request to one of upgrader's servers (the built-in balancer's admin API) does not
    validate: a body or parameter of the wrong shape. The server answers 400 with the
    message; nothing changed."""


class LabError(UpgraderError):
    """The local lab (app hosts, sshd hosts, network namespaces, its balancer) could not be
    started, reached or stopped."""


class PolicyRefused(UpgraderError):
    """A policy refused the rollout (deploy window, fleet held by another controller)."""


class InventoryRefused(PolicyRefused):
    """The inventory read before a rollout found the fleet unlike its fleet file (a host on
    another release, unreachable or missing from the balancer; a balancer that does not
    answer). Nothing was touched or journaled. ``problems``: one mapping per problem, with
    ``host`` (None: the balancer), ``expected``, ``found``, ``fix`` and ``text``."""

    def __init__(self, message: str, problems: Sequence[Mapping[str, str | None]] = ()) -> None:
        self.problems = tuple(dict(p) for p in problems)
        super().__init__(message)


class FleetLocked(PolicyRefused):
    """Another controller holds the fleet's lock (on the balancer, the hosts or the shared
    state). ``user``, ``machine``, ``pid``, ``rollout`` and ``since`` (a local time text) name
    the holder; ``where`` says which lock refused."""

    def __init__(self, fleet: str, *, user: str | None, machine: str | None, pid: int | None,
                 rollout: str | None, since: str | None, where: str = "",
                 hint: str = "") -> None:
        self.fleet = fleet
        self.user = user
        self.machine = machine
        self.pid = pid
        self.rollout = rollout
        self.since = since
        self.where = where
        who = f"{user or '?'}@{machine or '?'} pid {pid if pid is not None else '?'}"
        text = (f"fleet {fleet} is locked by {who}, rollout {rollout or '(not yet begun)'}, "
                f"since {since or '?'}")
        if where:
            text += f" (lock {where})"
        super().__init__(text + "; one controller per fleet at a time" +
                         (f"; {hint}" if hint else ""))


class FlagSchemaRefused(PolicyRefused):
    """Turning flag ``flag`` on in ``environment`` was refused: its ``schema`` field names the
    schema version ``needs``, and the database ``database`` has only ``live`` (the live
    releases and the migrations started or complete there). Nothing was changed."""

    def __init__(self, flag: str, *, needs: str, live: Sequence[str], database: str,
                 environment: str | None = None) -> None:
        self.flag = flag
        self.needs = needs
        self.live = tuple(live)
        self.database = database
        self.environment = environment
        where = f" in {environment}" if environment else ""
        have = ", ".join(self.live) if self.live else "nothing (no schema change recorded)"
        super().__init__(f"flag {flag} cannot be turned on{where}: it needs schema {needs}, "
                         f"which is not live in {database} (live: {have})")


class RolloutFailed(UpgraderError):
    """The rollout ended without reaching its target release."""


class CommandTimeout(TransportError, TimeoutError):
    """A host command ran past its timeout (also an asyncio/builtin TimeoutError)."""
