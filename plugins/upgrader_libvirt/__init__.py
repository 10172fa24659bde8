"""upgrader_libvirt: the ``libvirt`` snapshot provider, VM snapshots through libvirt.

Works with every libvirt driver that supports snapshots: KVM/QEMU (``qemu:///system``), VMware
ESXi through libvirt's esx driver (``esx://host/?no_verify=1``), and the ``test:///default``
driver the tests use. Each host maps to a libvirt domain: the ``domains`` setting, else the
host var ``libvirt_domain``, else the host's name.

libvirt-python is optional (``pip install 'upgrader[libvirt]'``) and imported only when the
provider is created, so ``upgrader plugins`` works without it. libvirt calls block: they run in
worker threads over ONE connection per provider (libvirt connections are thread-safe; the test
driver keeps its state per connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from upgrader.errors import ConfigError, SnapshotError
from upgrader.hookspecs import Register, hookimpl
from upgrader.providers.base import ProviderContext, Setting, SnapshotProvider

__version__ = "0.1.0"

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'upgrader[libvirt]' (libvirt-python; it builds against libvirt-dev)"
#: the description of every snapshot this provider makes; only those are ever pruned
MARKER = "upgrader:"
HOST_VAR = "libvirt_domain"

SETTINGS: tuple[Setting, ...] = (
    Setting("uri", str, "qemu:///system",
            "libvirt connection URI: qemu:///system (KVM), esx://HOST/?no_verify=1 (VMware "
            "ESXi), test:///default (tests)"),
    Setting("domains", dict, {},
            "host name -> libvirt domain name; a host not listed uses its 'libvirt_domain' "
            "var, else its own name"),
    Setting("keep", int, 3,
            "snapshots made by upgrader kept per domain, older ones deleted; 0 keeps them all"),
    Setting("quiesce", bool, False,
            "freeze the guest's file systems while snapshotting (needs the QEMU guest agent)"),
    Setting("timeout", float, 600.0, "seconds each libvirt call may take"),
    Setting("username", str, "", "user for drivers that ask for one (esx); default: the URI's"),
    Setting("password_env", str, "",
            "name of the environment variable holding the password (esx)"),
    Setting("password_file", str, "", "file whose first line is the password (esx)"),
)

T = TypeVar("T")
_quieted = False


def _import_libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise ConfigError(f"the libvirt snapshot provider needs libvirt-python, which is not "
                          f"installed ({exc}): {INSTALL_HINT}", key="snapshot.kind") from None
    global _quieted
    if not _quieted:
        # libvirt prints every error to stderr by default; we raise them as SnapshotError
        libvirt.registerErrorHandler(
            lambda _ctx, err: log.debug("libvirt: %s", err[2] if len(err) > 2 else err), None)
        _quieted = True
    return libvirt


def safe_label(label: str) -> str:
    """A label reduced to letters, digits, '.', '_' and '-' (a valid snapshot name)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:64]
    return text or "snapshot"


class LibvirtSnapshot:
    """Snapshots of the libvirt domain behind each host."""

    def __init__(self, *, uri: str = "qemu:///system", domains: Mapping[str, str] | None = None,
                 keep: int = 3, quiesce: bool = False, timeout: float = 600.0,
                 username: str = "", password_env: str = "", password_file: str = "",
                 libvirt_module: Any = None) -> None:
        for host, domain in (domains or {}).items():
            if not isinstance(domain, str) or not domain:
                raise ConfigError(f"host {host!r} must map to a domain name, got {domain!r}",
                                  key="snapshot.domains")
        if keep < 0:
            raise ConfigError(f"must be 0 or more, got {keep}", key="snapshot.keep")
        if timeout <= 0:
            raise ConfigError(f"must be above 0 seconds, got {timeout}", key="snapshot.timeout")
        if password_env and password_file:
            raise ConfigError("give password_env or password_file, not both",
                              key="snapshot.password_file")
        if password_env and password_env not in os.environ:
            raise ConfigError(f"environment variable {password_env} is not set",
                              key="snapshot.password_env")
        self.libvirt = libvirt_module if libvirt_module is not None else _import_libvirt()
        self.uri = uri
        self.domains = dict(domains or {})
        self.keep = keep
        self.quiesce = quiesce
        self.timeout = timeout
        self.username = username
        self._password_env = password_env
        self._password_file = password_file
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> LibvirtSnapshot:
        return cls(**settings)

    # -- connection ------------------------------------------------------------------------

    def domain_name(self, host: Any) -> str:
        """The libvirt domain behind ``host``."""
        name = self.domains.get(host.name)
        if name is None:
            name = (host.vars or {}).get(HOST_VAR) or host.name
        return str(name)

    def _password(self) -> str | None:
        if self._password_env:
            return os.environ.get(self._password_env, "")
        if self._password_file:
            with open(self._password_file, encoding="utf-8") as file:
                return file.readline().rstrip("\r\n")
        return None

    def _open(self) -> Any:
        """Open the connection (in a worker thread)."""
        libvirt = self.libvirt
        password = self._password()
        if password is None and not self.username:
            return libvirt.open(self.uri)

        def ask(credentials: list[list[Any]], _data: Any) -> int:
            for cred in credentials:
                if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                    cred[4] = self.username or cred[3] or ""
                elif cred[0] in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                    if password is None:
                        return -1
                    cred[4] = password
            return 0

        auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE,
                 libvirt.VIR_CRED_NOECHOPROMPT], ask, None]
        return libvirt.openAuth(self.uri, auth, 0)

    async def _connection(self, host: Any) -> Any:
        if self._closed:
            raise SnapshotError("the libvirt snapshot provider is closed", host=host.name)
        async with self._conn_lock:
            conn = self._conn
            if conn is not None:
                alive = await self._thread(host, "cannot check the libvirt connection",
                                           conn.isAlive)
                if alive:
                    return conn
                log.warning("libvirt connection to %s was lost; reconnecting", self.uri)
                self._conn = None
                try:
                    await asyncio.to_thread(conn.close)
                except Exception:
                    pass
            self._conn = await self._thread(host, f"cannot connect to libvirt at {self.uri}",
                                            self._open)
            return self._conn

    async def _thread(self, host: Any, what: str, call: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call in a thread; libvirt's errors become SnapshotError."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(call, *args), self.timeout)
        except self.libvirt.libvirtError as exc:
            message = exc.get_error_message() or str(exc)
            raise SnapshotError(f"{what}: {message}", host=host.name) from exc
        except TimeoutError as exc:
            raise SnapshotError(f"{what}: no answer from libvirt within {self.timeout:g} s "
                                f"(the call may still complete)", host=host.name) from exc
        except OSError as exc:   # the password file
            raise SnapshotError(f"{what}: {exc}", host=host.name) from exc

    async def _domain(self, host: Any) -> Any:
        conn = await self._connection(host)
        name = self.domain_name(host)
        return await self._thread(host, f"no libvirt domain {name!r} at {self.uri}",
                                  conn.lookupByName, name)

    def _lock(self, domain: str) -> asyncio.Lock:
        lock = self._locks.get(domain)
        if lock is None:
            lock = self._locks[domain] = asyncio.Lock()
        return lock

    # -- the protocol ----------------------------------------------------------------------

    async def create(self, host: Any, label: str) -> str:
        name = self.domain_name(host)
        async with self._lock(name):
            domain = await self._domain(host)
            return await self._thread(host, f"cannot snapshot domain {name!r}",
                                      self._create, domain, host.name, label)

    def _create(self, domain: Any, host_name: str, label: str) -> str:
        libvirt = self.libvirt
        base = safe_label(label)
        pattern = re.compile(re.escape(base) + r"-([0-9]+)$")
        existing = [s.getName() for s in domain.listAllSnapshots(0)]
        numbers = [int(m.group(1)) for n in existing if (m := pattern.match(n))]
        snapshot_name = f"{base}-{max(numbers, default=0) + 1}"
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = snapshot_name
        ET.SubElement(root, "description").text = f"{MARKER} {label} of host {host_name}"
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if self.quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        domain.snapshotCreateXML(ET.tostring(root, encoding="unicode"), flags)
        if self.keep:
            ours = [s for s in domain.listAllSnapshots(0) if self._is_ours(s)]
            ours.sort(key=self._created_at)
            for old in ours[:-self.keep]:
                if old.getName() != snapshot_name:
                    old.delete(0)
        return snapshot_name

    @staticmethod
    def _is_ours(snapshot: Any) -> bool:
        description = ET.fromstring(snapshot.getXMLDesc(0)).findtext("description") or ""
        return description.startswith(MARKER)

    @staticmethod
    def _created_at(snapshot: Any) -> tuple[int, int, str]:
        """Creation order: libvirt's time (whole seconds), then our counter suffix."""
        created = ET.fromstring(snapshot.getXMLDesc(0)).findtext("creationTime") or "0"
        name = snapshot.getName()
        suffix = re.search(r"-([0-9]+)$", name)
        return (int(created), int(suffix.group(1)) if suffix else 0, name)

    async def revert(self, host: Any, snapshot_id: str) -> None:
        name = self.domain_name(host)
        async with self._lock(name):
            domain = await self._domain(host)
            snapshot = await self._thread(
                host, f"no snapshot {snapshot_id!r} of domain {name!r}",
                domain.snapshotLookupByName, snapshot_id, 0)
            await self._thread(host, f"cannot revert domain {name!r} to {snapshot_id!r}",
                               domain.revertToSnapshot, snapshot, 0)

    async def delete(self, host: Any, snapshot_id: str) -> None:
        name = self.domain_name(host)
        async with self._lock(name):
            domain = await self._domain(host)
            snapshot = await self._thread(
                host, f"no snapshot {snapshot_id!r} of domain {name!r}",
                domain.snapshotLookupByName, snapshot_id, 0)
            await self._thread(host, f"cannot delete snapshot {snapshot_id!r} of {name!r}",
                               snapshot.delete, 0)

    async def list_snapshots(self, host: Any) -> list[str]:
        """Names of the domain's snapshots (every one, not only upgrader's), sorted."""
        domain = await self._domain(host)
        snapshots = await self._thread(host, "cannot list snapshots", domain.listAllSnapshots, 0)
        return sorted(s.getName() for s in snapshots)

    async def aclose(self) -> None:
        self._closed = True
        async with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.to_thread(conn.close)
            except Exception:
                log.debug("closing the libvirt connection failed", exc_info=True)

    async def __aenter__(self) -> LibvirtSnapshot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@hookimpl
def register_snapshot_providers(register: Register[SnapshotProvider]) -> None:
    register("libvirt", LibvirtSnapshot.from_settings, settings=SETTINGS,
             description="VM snapshots through libvirt (KVM, VMware ESXi, test driver)")
