"""Where a lab's pieces live and which ports they use: shared by ``upgrader lab`` (which
starts them) and the fleet loader (which expands a ``[lab]`` table into hosts and providers;
the table itself is checked by :mod:`upgrader.lab.fleet_table`).

Ports, from ``base_port`` B: balancer (users) B, balancer admin B+1, host i (1-based) B+100+i,
its blue-green "green" slot B+300+i ("blue" is the host port).
Host roots: ``DIR/hosts/<name>`` (Capistrano layout: ``releases/<v>/``, ``current`` link,
``installs.log``). Hosts web-01..web-N serve; with ``new_hosts`` M, web-(N+1)..web-(N+M) form
the parallel cluster of a shedding rollout (nothing installed until the rollout).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..model import Commands, Host, ProviderSpec
from .files import LAB_DATABASE as LAB_DATABASE
from .files import LAB_FLAG_STORE as LAB_FLAG_STORE
from .files import LAB_FLAG_STORE_SPEC as LAB_FLAG_STORE_SPEC

MAX_LAB_HOSTS = 190
DEFAULT_BASE_PORT = 18000
DEFAULT_LAB_DIR = ".upgrader/lab"


def default_lab_dir() -> Path:
    return Path(os.environ.get("UPGRADER_LAB_DIR", DEFAULT_LAB_DIR)).expanduser().resolve()


@dataclass(frozen=True, slots=True)
class LabLayout:
    dir: Path
    hosts: int = 8
    new_hosts: int = 0
    slots: bool = False
    base_port: int = DEFAULT_BASE_PORT
    base_release: str = "1.0.0"

    @property
    def balancer_port(self) -> int:
        return self.base_port

    @property
    def admin_port(self) -> int:
        return self.base_port + 1

    @property
    def balancer_url(self) -> str:
        return f"http://127.0.0.1:{self.balancer_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def database_file(self) -> Path:
        """The lab's SQLite database: the apps record visits in it when it exists."""
        return self.dir / LAB_DATABASE

    @property
    def flag_store_file(self) -> Path:
        """``flags.store``: the spec of the flag store the lab's apps read (written by
        ``lab up``; without it, the default SQLite file)."""
        return self.dir / LAB_FLAG_STORE_SPEC

    @property
    def default_flag_store(self) -> Path:
        """``<lab dir>/flags.sqlite``: the flag store unless ``lab up --flag-store`` names
        another."""
        return self.dir / LAB_FLAG_STORE

    @property
    def token_file(self) -> Path:
        return self.dir / "balancer.token"

    @property
    def state_file(self) -> Path:
        """lab.json: pids, ports and paths of a running lab."""
        return self.dir / "lab.json"

    @property
    def traffic_stats_file(self) -> Path:
        return self.dir / "traffic.json"

    def host_root(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def host_objects(self) -> tuple[Host, ...]:
        result = []
        for i in range(1, self.hosts + self.new_hosts + 1):
            name = f"web-{i:02d}"
            port = self.base_port + 100 + i
            slots = {"blue": port, "green": self.base_port + 300 + i} if self.slots else {}
            result.append(Host(
                name=name, address="127.0.0.1", port=port,
                labels={"zone": "abc"[(i - 1) % 3]},
                vars={"root": str(self.host_root(name))},
                cluster="main" if i <= self.hosts else "new",
                slots=slots,
            ))
        return tuple(result)

    def commands(self) -> Commands:
        ctl = (sys.executable, "-m", "upgrader.lab.hostctl")
        common = ("--root", "{root}", "--slot", "{slot}", "--port", "{port}")
        return Commands(
            install=ctl + ("install", "--release", "{release}") + common,
            switch=ctl + ("switch", "--release", "{release}") + common,
            start=ctl + ("start",) + common,
            stop=ctl + ("stop",) + common,
            current=ctl + ("current",) + common,
            system_test=ctl + ("system-test", "--address", "{address}") + common,
        )

    def balancer_spec(self) -> ProviderSpec:
        return ProviderSpec("builtin", {"admin_url": self.admin_url,
                                        "token_file": str(self.token_file)})

    def transport_spec(self) -> ProviderSpec | None:
        """The transport a fleet in this lab uses unless it names one: None, the fleet's
        default (local); an SSH lab's hosts are reached over SSH."""
        return None

    def health_spec(self) -> ProviderSpec:
        return ProviderSpec("http", {"path": "/healthz", "timeout": 2.0})

    # what a lab is, in words and as the command that starts it -------------------------

    @property
    def kind(self) -> str:
        """``local`` (app processes behind the built-in balancer) or ``ssh``."""
        return "local"

    @property
    def kind_text(self) -> str:
        """``a local lab`` / ``an SSH lab``: the kind in a sentence."""
        return "an SSH lab" if self.kind == "ssh" else "a local lab"

    def ports_text(self) -> str:
        """The lab's ports, for messages: users, admin and the hosts' range."""
        first = self.base_port + 101
        last = self.base_port + 100 + self.hosts + self.new_hosts
        hosts = f"{first}" if first == last else f"{first}-{last}"
        return f"users {self.balancer_port}, admin {self.admin_port}, hosts {hosts}"

    def describe(self) -> str:
        """``a local lab of 4 hosts (base port 19000: users 19000, ...; base release 1.0.0)
        in DIR``: what a message says about the lab."""
        extras = []
        if self.new_hosts:
            extras.append(f"{self.new_hosts} new hosts")
        if self.slots:
            extras.append("two slots each")
        more = f", {', '.join(extras)}" if extras else ""
        return (f"{self.kind_text} of {self.hosts} host{'s' if self.hosts != 1 else ''}{more} "
                f"(base port {self.base_port}: {self.ports_text()}; base release "
                f"{self.base_release}) in {self.dir}")

    def up_options(self) -> list[str]:
        """The ``upgrader lab up`` options that make this lab (defaults left out)."""
        options = []
        if self.hosts != 8:
            options += ["--hosts", str(self.hosts)]
        if self.new_hosts:
            options += ["--new-hosts", str(self.new_hosts)]
        if self.slots:
            options.append("--slots")
        if self.base_port != DEFAULT_BASE_PORT:
            options += ["--base-port", str(self.base_port)]
        if self.dir != default_lab_dir():
            options += ["--dir", str(self.dir)]
        return options

    def up_command(self) -> str:
        return " ".join(["upgrader", "lab", "up", *self.up_options()])
