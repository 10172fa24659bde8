"""Added latency per remote command of the ssh transport's host-lock wrapper: the median of
N runs of `true` over one reused connection to a local unprivileged sshd, with
host_lock = true and false.  Usage: python bench/ssh_wrapper_latency.py [N]"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from upgrader.lab.sshd import Sshd, make_client_key
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import ProviderContext


async def median_ms(settings: dict, host: Host, n: int) -> float:
    transport = Plugins().create("transport", ProviderSpec("ssh", settings), ProviderContext())
    async with transport:
        await transport.run(host, ["true"])                 # connect and log in first
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await transport.run(host, ["true"])
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = make_client_key(root / "key")
        sshd = Sshd(root / "sshd", address="127.0.0.31", authorized_keys=[key.public])
        sshd.start()
        try:
            (root / "known_hosts").write_text(sshd.known_hosts_line() + "\n")
            settings = {"known_hosts": str(root / "known_hosts"),
                        "identity_files": [str(key.private)], "config": "", "agent": False,
                        "username": "root", "port": sshd.port, "lock_dir": tmp}
            host = Host("web-01", sshd.address)
            plain = asyncio.run(median_ms({**settings, "host_lock": False}, host, n))
            locked = asyncio.run(median_ms(settings, host, n))
        finally:
            sshd.stop()
    print(f"median of {n} runs of `true`: plain exec {plain:.1f} ms, with the host lock "
          f"wrapper {locked:.1f} ms, added {locked - plain:.1f} ms")


if __name__ == "__main__":
    main()
