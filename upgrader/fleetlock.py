"""One controller per fleet, held ON THE FLEET ITSELF (docs/STATE.md, "The fleet lock").

A controller's own state folder or database only guards against controllers that share it.
This lock lives where every controller that can reach the fleet sees it, whatever its working
directory or ``--state``:

- a balancer that keeps it (:class:`~upgrader.providers.base.FleetLockHolder`; the built-in
  balancer's ``/admin/lock``): one atomic request;
- any other fleet: a lock file on every host, through the transport, as Deployer's
  ``deploy:lock`` does (:class:`HostFileKeeper`).

The holder is a JSON object: ``id`` (random, one per acquisition), ``fleet``, ``user``,
``machine``, ``pid``, ``rollout``, ``since`` and ``heartbeat`` (Unix times). The holder renews
it every :data:`HEARTBEAT_SECONDS`. A lock whose holder is dead is taken over, and the reason
journaled: a holder on this machine whose pid is gone, or one on another machine whose last
heartbeat is older than :data:`LEASE_SECONDS` (judged on an injectable clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .errors import FleetLocked, TransportError
from .model import Fleet, Host
from .providers.base import FleetLockHolder, Transport

log = logging.getLogger("upgrader.fleetlock")

#: a holder on another machine whose last heartbeat is older than this is dead (seconds)
LEASE_SECONDS = 30.0
#: how often a holder renews its lock (a third of the lease: two renewals may be lost)
HEARTBEAT_SECONDS = 10.0
#: host lock files: the folder, and the host variable that overrides the whole path
HOST_LOCK_DIR = "/tmp"
HOST_LOCK_VAR = "upgrader_lock_file"


def current_user() -> str:
    try:
        import getpass

        return os.environ.get("USER") or getpass.getuser()
    except Exception:           # no login name (containers without a passwd entry)
        return f"uid {os.getuid()}"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie is dead: a detached controller killed with SIGKILL
    stays one when nothing reaps it (a container whose init does not), and its lock must
    still be taken over."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rpartition(")")[2].split()
    except OSError:             # no /proc (not Linux): trust the signal
        return True
    return not state or state[0] not in ("Z", "X")


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a fleet's lock."""

    id: str
    fleet: str
    user: str
    machine: str
    pid: int
    since: float
    heartbeat: float
    rollout: str | None = None
    #: seconds since the last heartbeat as the lock's keeper measured it (the built-in
    #: balancer, on its own clock); None: judge by ``heartbeat`` on ours
    age: float | None = None
    #: host lock files: the host whose file is renewed (the first one taken)
    anchor: str | None = None

    @classmethod
    def mine(cls, fleet: str, *, now: float, rollout: str | None = None) -> Holder:
        return cls(id=uuid.uuid4().hex, fleet=fleet, user=current_user(),
                   machine=socket.gethostname(), pid=os.getpid(), since=now, heartbeat=now,
                   rollout=rollout)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "fleet": self.fleet, "user": self.user,
                                "machine": self.machine, "pid": self.pid,
                                "since": self.since, "heartbeat": self.heartbeat,
                                "rollout": self.rollout}
        if self.anchor is not None:
            data["anchor"] = self.anchor
        return data

    def dumps(self) -> str:
        """Compact JSON with sorted keys (host lock files match ``"id":"..."`` in it)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Holder:
        """A holder read back; ValueError for something that is not one."""
        try:
            lock_id = data["id"]
            if not isinstance(lock_id, str) or not lock_id:
                raise ValueError("no id")
            age = data.get("age")
            return cls(id=lock_id, fleet=str(data.get("fleet") or "?"),
                       user=str(data.get("user") or "?"),
                       machine=str(data.get("machine") or "?"), pid=int(data.get("pid", -1)),
                       since=float(data.get("since", 0)),
                       heartbeat=float(data.get("heartbeat", data.get("since", 0))),
                       rollout=data.get("rollout") or None,
                       age=None if age is None else float(age),
                       anchor=data.get("anchor") or None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a lock holder: {data!r} ({exc})") from None

    def since_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(self.since))

    def describe(self) -> str:
        return (f"{self.user}@{self.machine} pid {self.pid}, rollout "
                f"{self.rollout or '(not yet begun)'}, since {self.since_text()}")

    def refused(self, where: str, fleet: str | None = None) -> FleetLocked:
        return FleetLocked(fleet or self.fleet, user=self.user, machine=self.machine, pid=self.pid,
                           rollout=self.rollout, since=self.since_text(), where=where,
                           hint=f"a dead holder's lock is taken over (on its machine at once, "
                                f"from another after {LEASE_SECONDS:g} s without heartbeat); "
                                f"`upgrader unlock FLEET --reason ...` removes it by hand")


def stale_reason(holder: Holder, *, now: float, lease: float = LEASE_SECONDS,
                 machine: str | None = None,
                 alive: Callable[[int], bool] = pid_alive) -> str | None:
    """Why ``holder`` is dead (its lock may be taken over), or None while it may be alive.
    On this machine: its pid is gone. Elsewhere: no heartbeat for longer than ``lease``."""
    here = machine if machine is not None else socket.gethostname()
    if holder.machine == here:
        if alive(holder.pid):
            return None
        return f"holder {holder.user}@{holder.machine} pid {holder.pid} is not alive"
    age = holder.age if holder.age is not None else now - holder.heartbeat
    if age > lease:
        return (f"holder {holder.user}@{holder.machine} pid {holder.pid} sent no heartbeat "
                f"for {age:.0f} s (lease {lease:g} s)")
    return None


class Keeper(Protocol):
    """Where a fleet lock is kept: the balancer, or the hosts' lock files."""

    where: str

    async def take(self, holder: Holder, replace: str | None = None) -> Holder | None: ...

    async def renew(self, holder: Holder) -> bool: ...

    async def release(self, lock_id: str | None) -> list[Holder]: ...

    async def read(self) -> Holder | None: ...


class BalancerKeeper:
    """The lock on a balancer that keeps it (``FleetLockHolder``)."""

    def __init__(self, balancer: FleetLockHolder, where: str = "on the balancer") -> None:
        self.balancer = balancer
        self.where = where

    async def take(self, holder: Holder, replace: str | None = None) -> Holder | None:
        current = await self.balancer.take_fleet_lock(holder.to_json(), replace)
        return None if current is None else Holder.from_json(current)

    async def renew(self, holder: Holder) -> bool:
        return await self.balancer.renew_fleet_lock(holder.to_json())

    async def release(self, lock_id: str | None) -> list[Holder]:
        removed = await self.balancer.release_fleet_lock(lock_id)
        return [] if removed is None else [Holder.from_json(removed)]

    async def read(self) -> Holder | None:
        current = await self.balancer.read_fleet_lock()
        return None if current is None else Holder.from_json(current)


def host_lock_path(host: Host) -> str:
    """Where ``host``'s lock file is: the host variable ``upgrader_lock_file``, else
    ``/tmp/upgrader-host-<port>.lock``: one lock per service instance on a machine (two
    fleets, or two controllers naming the host differently, still meet there)."""
    custom = host.vars.get(HOST_LOCK_VAR)
    if custom:
        return str(custom)
    return f"{HOST_LOCK_DIR}/upgrader-host-{host.port if host.port is not None else 0}.lock"


# The host side, in POSIX sh (argv: path, holder JSON, id). A file is created by a hard link
# from a complete temporary file, so it appears atomically with its content (link(2) fails
# when the name exists); a takeover is guarded by ``mkdir path.steal`` and only replaces the
# holder it judged dead.
_TAKE = r"""p=$1; t="$p.$$.tmp"
printf '%s\n' "$2" > "$t" || exit 4
chmod 644 "$t"
if ln "$t" "$p" 2>/dev/null; then rm -f "$t"; exit 0; fi
if [ -n "$3" ] && mkdir "$p.steal" 2>/dev/null; then
  if grep -q "\"id\":\"$3\"" "$p" 2>/dev/null && mv -f "$t" "$p"; then rmdir "$p.steal"; exit 0; fi
  rmdir "$p.steal"
fi
rm -f "$t"
cat "$p" 2>/dev/null
exit 1"""
_RENEW = r"""p=$1; t="$p.$$.tmp"
grep -q "\"id\":\"$3\"" "$p" 2>/dev/null || exit 1
printf '%s\n' "$2" > "$t" && chmod 644 "$t" && mv -f "$t" "$p"
"""
_RELEASE = r"""p=$1
if [ -f "$p" ] && { [ -z "$3" ] || grep -q "\"id\":\"$3\"" "$p"; }; then cat "$p"; rm -f "$p"; fi
rmdir "$p.steal" 2>/dev/null
exit 0"""
_READ = r"""cat "$1" 2>/dev/null; exit 0"""


class HostFileKeeper:
    """The lock as a file on every host of the fleet, through the transport.

    Every host, not a subset: two fleet files that share a host (or name it differently) meet
    on it, and the cost is one short command per host at the start and at the end, next to the
    several commands a rollout runs on each host anyway. The first host (the anchor) is taken
    first and released last, and only its file is renewed: a controller racing for the same
    fleet is refused on the anchor before it touches another host, and a file on another host
    is alive only while its holder still holds its anchor."""

    def __init__(self, transport: Transport, hosts: Sequence[Host], *,
                 max_parallel: int = 64) -> None:
        if not hosts:
            raise ValueError("a host lock needs at least one host")
        self.transport = transport
        self.hosts = tuple(hosts)
        self.anchor = self.hosts[0]
        self.where = f"in the host lock files ({host_lock_path(self.anchor)} on " \
                     f"{self.anchor.name}, ...)"
        self._parallel = asyncio.Semaphore(max_parallel)
        self.clock: Callable[[], float] = time.time
        self.lease = LEASE_SECONDS

    async def _sh(self, host: Host, script: str, holder: Holder | None,
                  lock_id: str | None) -> tuple[int, str]:
        argv = ["sh", "-c", script, "upgrader-lock", host_lock_path(host),
                holder.dumps() if holder is not None else "", lock_id or ""]
        # beside the host's command lock when the transport can: a rollout's install holds it
        run = getattr(self.transport, "run_unlocked", None) or self.transport.run
        async with self._parallel:
            result = await run(host, argv, timeout=30, check=False)
        if result.exit_status not in (0, 1):
            raise TransportError(f"the fleet lock file {host_lock_path(host)} could not be "
                                 f"written: {result.stderr.strip() or result.exit_status}",
                                 host=host.name, argv=argv[:2], exit_status=result.exit_status,
                                 stderr=result.stderr)
        return result.exit_status, result.stdout

    @staticmethod
    def _parse(text: str) -> Holder | None:
        text = text.strip()
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            data = {"id": hashlib.sha256(text.encode()).hexdigest()[:16], "user": "?"}
        return Holder.from_json(data if isinstance(data, dict) else {"id": "?"})

    async def _take_one(self, host: Host, holder: Holder,
                        replace: str | None) -> Holder | None:
        for _ in range(3):      # the file vanished between link and cat: try again
            status, out = await self._sh(host, _TAKE, holder, replace)
            if status == 0:
                return None
            current = self._parse(out)
            if current is not None and current.id == holder.id:
                return None     # ours already (two hosts sharing one lock file)
            if current is not None:
                return current
        raise TransportError("the fleet lock file keeps changing; try again", host=host.name)

    async def _orphan(self, other: Holder, mine: Holder) -> bool:
        """Whether ``other``, found on a host after we took our anchor, is a leftover of a
        dead holder: its anchor is ours (it lost it), or its anchor's file no longer names
        it, or its own liveness says so."""
        if other.anchor is None or other.anchor == self.anchor.name:
            return True
        anchors = [h for h in self.hosts if h.name == other.anchor]
        if anchors:
            _, out = await self._sh(anchors[0], _READ, None, None)
            there = self._parse(out)
            if there is None or there.id != other.id:
                return True
            return stale_reason(there, now=self.clock(), lease=self.lease) is not None
        # its anchor is not one of our hosts: only a dead pid on this machine is certain
        return other.machine == socket.gethostname() and not pid_alive(other.pid)

    async def take(self, holder: Holder, replace: str | None = None) -> Holder | None:
        holder = replace_anchor(holder, self.anchor.name)
        current = await self._take_one(self.anchor, holder, replace)
        if current is not None:
            return current
        rest = self.hosts[1:]
        results = await asyncio.gather(*(self._take_one(h, holder, replace) for h in rest),
                                       return_exceptions=True)
        refusal: Holder | None = None
        failure: BaseException | None = None
        for host, result in zip(rest, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            elif result is not None:
                if await self._orphan(result, holder):
                    log.warning("fleet lock: %s on %s is a leftover (%s); replacing it",
                                result.id, host.name, result.describe())
                    again = await self._take_one(host, holder, result.id)
                    if again is None:
                        continue
                    result = again
                refusal = refusal or result
        if refusal is not None or failure is not None:
            await self.release(holder.id)
            if failure is not None:
                raise failure
            return refusal
        return None

    async def renew(self, holder: Holder) -> bool:
        holder = replace_anchor(holder, self.anchor.name)
        status, _ = await self._sh(self.anchor, _RENEW, holder, holder.id)
        return status == 0

    async def release(self, lock_id: str | None) -> list[Holder]:
        removed: dict[str, Holder] = {}
        results = await asyncio.gather(*(self._sh(h, _RELEASE, None, lock_id)
                                         for h in self.hosts[1:]), return_exceptions=True)
        _, out = await self._sh(self.anchor, _RELEASE, None, lock_id)
        for result in (*results, (0, out)):
            if isinstance(result, BaseException):
                log.warning("fleet lock: a host lock file was not removed: %s", result)
                continue
            holder = self._parse(result[1])
            if holder is not None:
                removed.setdefault(holder.id, holder)
        return list(removed.values())

    async def read(self) -> Holder | None:
        _, out = await self._sh(self.anchor, _READ, None, None)
        return self._parse(out)


def replace_anchor(holder: Holder, anchor: str) -> Holder:
    return holder if holder.anchor == anchor else replace(holder, anchor=anchor)


def keeper_for(fleet: Fleet, transport: Transport, balancer: object) -> Keeper:
    """The balancer when it keeps locks, else lock files on the fleet's hosts."""
    if isinstance(balancer, FleetLockHolder):
        return BalancerKeeper(balancer)
    return HostFileKeeper(transport, fleet.hosts)


@dataclass(frozen=True, slots=True)
class Takeover:
    """A dead holder's lock, taken over: whom, and why."""

    previous: Holder
    reason: str


class FleetLock:
    """Take, renew and release a fleet's lock in one keeper. ``clock`` is the wall clock
    (Unix seconds) the lease is judged on."""

    def __init__(self, fleet: str, keeper: Keeper, *, clock: Callable[[], float] = time.time,
                 lease: float = LEASE_SECONDS, heartbeat: float = HEARTBEAT_SECONDS,
                 machine: str | None = None, alive: Callable[[int], bool] = pid_alive) -> None:
        self.fleet = fleet
        self.keeper = keeper
        self.clock = clock
        self.lease = lease
        self.heartbeat_every = heartbeat
        self.machine = machine
        self.alive = alive
        self.holder: Holder | None = None
        self.takeover: Takeover | None = None
        self.lost = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def stale(self, holder: Holder) -> str | None:
        return stale_reason(holder, now=self.clock(), lease=self.lease, machine=self.machine,
                            alive=self.alive)

    async def acquire(self, rollout: str | None = None) -> Holder:
        """Take the lock; FleetLocked naming a live holder. A dead holder's lock is taken
        over (``self.takeover`` says whose and why)."""
        me = Holder.mine(self.fleet, now=self.clock(), rollout=rollout)
        if self.machine is not None:
            me = replace(me, machine=self.machine)
        current = await self.keeper.take(me)
        for _ in range(3):
            if current is None:
                self.holder = me
                return me
            reason = self.stale(current)
            if reason is None:
                raise current.refused(self.keeper.where, self.fleet)
            previous = current
            current = await self.keeper.take(me, replace=previous.id)
            if current is None:
                self.takeover = Takeover(previous, reason)
                log.warning("fleet lock of %s taken over: %s", self.fleet, reason)
                self.holder = me
                return me
        assert current is not None
        raise current.refused(self.keeper.where, self.fleet)

    async def renew(self, rollout: str | None = None) -> bool:
        if self.holder is None:
            return False
        holder = replace(self.holder, heartbeat=self.clock(),
                         rollout=rollout or self.holder.rollout)
        ok = await self.keeper.renew(holder)
        if ok:
            self.holder = holder
        return ok

    def start_heartbeat(self, rollout: Callable[[], str | None],
                        on_lost: Callable[[], None] | None = None) -> None:
        """Renew every ``heartbeat`` seconds (and at once when :meth:`nudge` is called, e.g.
        when the rollout id becomes known) until :meth:`release`. ``on_lost`` is called once
        when the lock turns out to be someone else's (removed by hand, or taken over after
        heartbeats failed for a whole lease)."""
        async def beat() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.heartbeat_every)
                self._wake.clear()
                try:
                    if not await self.renew(rollout()):
                        self.lost = True
                        log.error("the fleet lock of %s is no longer ours (removed by "
                                  "`upgrader unlock` or taken over)", self.fleet)
                        if on_lost is not None:
                            on_lost()
                        return
                except Exception as exc:     # a missed heartbeat: the lease allows two
                    log.warning("fleet lock heartbeat failed: %s", exc)

        self._task = asyncio.get_running_loop().create_task(beat(), name="fleet-lock")

    def nudge(self) -> None:
        self._wake.set()

    async def release(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        holder, self.holder = self.holder, None
        if holder is not None and not self.lost:
            try:
                await self.keeper.release(holder.id)
            except Exception as exc:    # the lease ends it; never mask the rollout's result
                log.warning("the fleet lock of %s was not released: %s", self.fleet, exc)
