"""A small async client of HAProxy's Runtime API (the ``stats socket``), and parsers for the
answers the balancer reads: ``show servers state``, ``show stat`` and ``show map``.

One connection per command (or per batch of commands joined with ``;``), as ``socat`` does:
HAProxy answers and closes. Every failure is a ``BalancerError`` naming the command.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass

from upgrader.errors import BalancerError

#: HAProxy's own answers that mean success for commands that do not answer an empty line
_SUCCESS_TEXTS = ("New server registered.", "Server deleted.")
#: a batch line stays well below HAProxy's CLI buffer (tune.bufsize, 16 kB by default)
_BATCH_BYTES = 8000

# srv_admin_state bits (src/server.h): forced / inherited / config / resolver / hostname maint
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_ADMIN_DRAIN = 0x08 | 0x10

_PLAIN_ARG = re.compile(r"^[!-~]+$")


def check_arg(value: str, what: str) -> str:
    """A Runtime API argument: printable ASCII without spaces, ``;``, ``\\`` or ``#``."""
    if not value or not _PLAIN_ARG.match(value) or any(c in value for c in ";\\#"):
        raise BalancerError(f"{what} {value!r} cannot be sent to HAProxy's Runtime API: use "
                            "printable ASCII without spaces, ';', '\\' or '#'")
    return value


class RuntimeAPI:
    """``address``: a Unix socket path, or ``tcp:HOST:PORT``."""

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        if address.startswith("tcp:"):
            host, sep, port = address[4:].rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected tcp:HOST:PORT, got {address!r}")
            self._tcp: tuple[str, int] | None = (host.strip("[]"), int(port))
        else:
            self._tcp = None

    def __repr__(self) -> str:
        return f"RuntimeAPI({self.address!r})"

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._tcp is not None:
            return await asyncio.open_connection(*self._tcp)
        return await asyncio.open_unix_connection(self.address)

    async def send(self, line: str) -> str:
        """Send one line (one command, or several joined with ``;``); the whole answer."""
        what = line if len(line) < 120 else line[:117] + "..."
        writer = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                writer.write(line.encode("ascii") + b"\n")
                await writer.drain()
                data = await reader.read()
        except TimeoutError as exc:
            raise BalancerError(f"HAProxy Runtime API at {self.address}: no answer to "
                                f"{what!r} within {self.timeout:g} s") from exc
        except OSError as exc:
            raise BalancerError(f"HAProxy Runtime API at {self.address}: {what!r}: "
                                f"{exc.strerror or exc}") from exc
        finally:
            if writer is not None:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
        text = data.decode("utf-8", "replace")
        if text.startswith("Permission denied") or "Unknown command" in text[:200]:
            raise BalancerError(f"HAProxy refused {what!r}: {text.strip()} (the stats socket "
                                "needs `level admin`, see docs/HAPROXY.md)")
        return text

    async def command(self, command: str, *, expect: str = "") -> str:
        """A command that changes something: its answer must be empty or ``expect``."""
        answer = (await self.send(command)).strip()
        if answer and answer != expect and answer not in _SUCCESS_TEXTS:
            raise BalancerError(f"HAProxy refused {command!r}: {answer}")
        return answer

    async def batch(self, commands: list[str]) -> None:
        """Several silent commands (``add map ...``) in as few connections as fit."""
        line: list[str] = []
        size = 0
        for command in commands:
            if line and size + len(command) + 1 > _BATCH_BYTES:
                await self._batch_line(line)
                line, size = [], 0
            line.append(command)
            size += len(command) + 1
        if line:
            await self._batch_line(line)

    async def _batch_line(self, commands: list[str]) -> None:
        answer = (await self.send(";".join(commands))).strip()
        if answer:
            raise BalancerError(f"HAProxy refused one of {len(commands)} commands "
                                f"({commands[0]!r}, ...): {answer.splitlines()[0]}")


# --------------------------------------------------------------------------------------------
# Answers


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One line of ``show servers state``."""

    backend: str
    server: str
    address: str
    port: int
    op_state: int        # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int     # bit field
    weight: int          # the user weight (srv_uweight)

    @property
    def state(self) -> str:
        if self.admin_state & _ADMIN_MAINT:
            return "maint"
        if self.admin_state & _ADMIN_DRAIN:
            return "drain"
        return "ready"


def parse_servers_state(text: str) -> list[ServerRow]:
    rows: list[ServerRow] = []
    columns: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# "):
            columns = line[2:].split()
            continue
        if not line.strip() or columns is None:
            continue    # the format version line, or the end
        fields = dict(zip(columns, line.split()))
        try:
            rows.append(ServerRow(
                backend=fields["be_name"], server=fields["srv_name"],
                address=fields["srv_addr"], port=int(fields["srv_port"]),
                op_state=int(fields["srv_op_state"]),
                admin_state=int(fields["srv_admin_state"]),
                weight=int(fields["srv_uweight"])))
        except (KeyError, ValueError) as exc:
            raise BalancerError(f"unexpected `show servers state` line {line!r}") from exc
    return rows


def parse_stat(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """``show stat`` CSV: (proxy, server or FRONTEND/BACKEND) -> field -> text."""
    if not text.startswith("# "):
        raise BalancerError(f"unexpected `show stat` answer: {text[:200]!r}")
    reader = csv.DictReader(io.StringIO(text[2:]))
    return {(row["pxname"], row["svname"]): row for row in reader
            if row.get("pxname") and row.get("svname")}


def stat_int(row: dict[str, str] | None, field: str) -> int:
    if row is None:
        return 0
    value = row.get(field) or ""
    return int(value) if value.lstrip("-").isdigit() else 0


def parse_map(text: str) -> list[tuple[str, str]]:
    """``show map <file>``: ``<ref> <key> <value>`` lines -> [(key, value)]."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[0].startswith("0x"):
            raise BalancerError(f"unexpected `show map` line {line!r}: {text.strip()[:200]}")
        entries.append((parts[1], parts[2]))
    return entries


def parse_map_list(text: str) -> list[str]:
    """``show map``: the files of the loaded maps."""
    return re.findall(r"^-?\d+ \((.*?)\)", text, flags=re.MULTILINE)
