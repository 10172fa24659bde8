"""The ``directory`` snapshot provider: a tar archive of a host's release folder, made and
restored THROUGH THE TRANSPORT (so it works over SSH as it does locally).

Layout on the host: ``ROOT/.snapshots/<label>-<n>.tar``. Top-level ``.snapshots`` and the
excluded entries (``run`` and ``logs`` by default) are neither saved nor touched on revert.
Commands are argument lists (tar, find, rm, mv, mkdir); GNU tar is expected on the host.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, SnapshotError, TransportError
from ..hookspecs import Register, hookimpl
from ..model import Host
from .base import CommandResult, ProviderContext, Setting, SnapshotProvider, Transport
from .local import host_fields

SNAPSHOT_DIR = ".snapshots"

SETTINGS: tuple[Setting, ...] = (
    Setting("path", str, "{root}",
            "folder to snapshot, an absolute path; a template of {host} {address} {port} and "
            "the host's vars (default: the host's 'root' var)"),
    Setting("keep", int, 5, "snapshots kept per host, older ones deleted; 0 keeps them all"),
    Setting("exclude", list, ["run", "logs"],
            "top-level entries neither saved nor replaced on revert (.snapshots always is)"),
    Setting("tar", str, "tar", "the (GNU) tar program on the host"),
    Setting("timeout", float, 600.0, "seconds each snapshot command may run"),
)

_ID_RE = re.compile(r"^(?P<label>[A-Za-z0-9_][A-Za-z0-9._-]*)-(?P<n>[0-9]+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def safe_label(label: str) -> str:
    """A label reduced to letters, digits, '.', '_' and '-', usable in a file name."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:64]
    return text or "snapshot"


def parse_snapshot_id(snapshot_id: str) -> tuple[str, int] | None:
    match = _ID_RE.match(snapshot_id)
    return (match["label"], int(match["n"])) if match else None


class DirectorySnapshot:
    """Snapshots of a directory on each host, as tar archives beside it."""

    def __init__(self, transport: Transport | None, *, path: str = "{root}", keep: int = 5,
                 exclude: Sequence[str] = ("run", "logs"), tar: str = "tar",
                 timeout: float = 600.0) -> None:
        if transport is None:
            raise ConfigError("the directory snapshot needs the fleet's transport",
                              key="snapshot.kind")
        if keep < 0:
            raise ConfigError(f"must be 0 or more, got {keep}", key="snapshot.keep")
        for name in exclude:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ConfigError(f"expected top-level entry names (no '/'), got {name!r}",
                                  key="snapshot.exclude")
        if timeout <= 0:
            raise ConfigError(f"must be above 0 seconds, got {timeout}", key="snapshot.timeout")
        self.transport = transport
        self.path = path
        self.keep = keep
        self.exclude = tuple(dict.fromkeys((SNAPSHOT_DIR, *exclude)))
        self.tar = tar
        self.timeout = timeout
        self._counters: dict[tuple[str, str], int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext | None = None) -> DirectorySnapshot:
        transport = context.transport if context is not None else None
        return cls(transport, path=settings["path"], keep=settings["keep"],
                   exclude=settings["exclude"], tar=settings["tar"],
                   timeout=settings["timeout"])

    # -- paths ---------------------------------------------------------------------------------

    def root(self, host: Host) -> str:
        try:
            root = self.path.format_map(host_fields(host))
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise SnapshotError(f"cannot build the snapshot path from {self.path!r}: missing "
                                f"host var {exc}", host=host.name) from None
        root = posixpath.normpath(root) if root else root
        # revert removes what is in ROOT: never let that be "/" or a relative path
        if not root.startswith("/") or root == "/" or root.startswith("//"):
            raise SnapshotError(f"the snapshot path must be an absolute folder below '/', "
                                f"got {root!r}", host=host.name)
        return root

    def archive(self, host: Host, snapshot_id: str) -> str:
        if parse_snapshot_id(snapshot_id) is None:
            raise SnapshotError(f"not a snapshot id: {snapshot_id!r}", host=host.name)
        return posixpath.join(self.root(host), SNAPSHOT_DIR, snapshot_id + ".tar")

    # -- commands ------------------------------------------------------------------------------

    async def _run(self, host: Host, argv: list[str], what: str, *,
                   check: bool = True) -> CommandResult:
        try:
            return await self.transport.run(host, argv, timeout=self.timeout, check=check)
        except TransportError as exc:
            raise SnapshotError(f"{what}: {exc.message}", host=host.name) from exc

    async def list_snapshots(self, host: Host) -> list[str]:
        """Snapshot ids on ``host``, oldest first."""
        root = self.root(host)
        folder = posixpath.join(root, SNAPSHOT_DIR)
        result = await self._run(
            host, ["find", folder, "-mindepth", "1", "-maxdepth", "1", "-type", "f",
                   "-name", "*.tar"], "cannot list snapshots", check=False)
        if result.exit_status != 0:
            return []   # no snapshot folder yet
        ids = []
        for line in result.stdout.splitlines():
            name = posixpath.basename(line.strip())
            if name.endswith(".tar") and parse_snapshot_id(name[:-4]) is not None:
                ids.append(name[:-4])
        return sorted(ids, key=lambda i: parse_snapshot_id(i)[1])  # type: ignore[index]

    def _lock(self, host: Host) -> asyncio.Lock:
        lock = self._locks.get(host.name)
        if lock is None:
            lock = self._locks[host.name] = asyncio.Lock()
        return lock

    async def create(self, host: Host, label: str) -> str:
        root = self.root(host)
        folder = posixpath.join(root, SNAPSHOT_DIR)
        async with self._lock(host):
            found = await self._run(host, ["test", "-d", root], f"cannot look at {root}",
                                    check=False)
            if found.exit_status != 0:
                raise SnapshotError(f"cannot snapshot {root}: no such folder", host=host.name)
            await self._run(host, ["mkdir", "-p", folder], "cannot create the snapshot folder")
            existing = await self.list_snapshots(host)
            key = (host.name, root)
            last = max([self._counters.get(key, 0)]
                       + [parse_snapshot_id(i)[1] for i in existing])  # type: ignore[index]
            number = last + 1
            self._counters[key] = number
            snapshot_id = f"{safe_label(label)}-{number}"
            final = posixpath.join(folder, snapshot_id + ".tar")
            partial = final + ".partial"
            argv = [self.tar, "-C", root, "-cf", partial]
            argv += [f"--exclude=./{name}" for name in self.exclude]
            argv.append(".")
            result = await self._run(host, argv, "cannot archive " + root, check=False)
            # GNU tar exits 1 when a file changed while it was read: the archive is complete
            changed_only = (result.exit_status == 1
                            and "file changed as we read it" in result.stderr)
            if result.exit_status != 0 and not changed_only:
                await self._run(host, ["rm", "-f", partial], "cannot clean up", check=False)
                tail = result.stderr.strip().splitlines()[-3:]
                raise SnapshotError(f"cannot archive {root}: {self.tar} exited with status "
                                    f"{result.exit_status}: {' / '.join(tail)}",
                                    host=host.name)
            await self._run(host, ["mv", "-f", partial, final], "cannot store the snapshot")
            if self.keep:
                for old in [*existing, snapshot_id][:-self.keep]:
                    await self._delete(host, old)
        return snapshot_id

    async def revert(self, host: Host, snapshot_id: str) -> None:
        root = self.root(host)
        archive = self.archive(host, snapshot_id)
        async with self._lock(host):
            # read the whole archive first: never remove the release folder for a bad one
            await self._run(host, [self.tar, "-tf", archive],
                            f"snapshot {snapshot_id} is missing or unreadable")
            keep_args: list[str] = []
            for name in self.exclude:
                keep_args += ["!", "-name", name]
            await self._run(host, ["find", root, "-mindepth", "1", "-maxdepth", "1",
                                   *keep_args, "-exec", "rm", "-rf", "--", "{}", "+"],
                            f"cannot clear {root} before restoring {snapshot_id}")
            await self._run(host, [self.tar, "-C", root, "-xf", archive],
                            f"cannot restore {snapshot_id} into {root}")

    async def delete(self, host: Host, snapshot_id: str) -> None:
        async with self._lock(host):
            await self._delete(host, snapshot_id)

    async def _delete(self, host: Host, snapshot_id: str) -> None:
        archive = self.archive(host, snapshot_id)
        await self._run(host, ["rm", "-f", archive], f"cannot delete snapshot {snapshot_id}")

    async def aclose(self) -> None:
        pass  # the transport belongs to the fleet


@hookimpl
def register_snapshot_providers(register: Register[SnapshotProvider]) -> None:
    register("directory", DirectorySnapshot.from_settings, settings=SETTINGS,
             description="tar archive of a host's release folder, through the transport")
