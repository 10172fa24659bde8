"""The ``[lab]`` table of a fleet file -> a :class:`~upgrader.lab.layout.LabLayout` (or, with
``ssh = true``, an :class:`~upgrader.lab.sshlab.SshLabLayout`), every key checked.

:func:`parse_lab` is what :mod:`upgrader.config` calls for the table; the layout it returns
expands into the fleet's hosts, commands and providers when the file gives none of its own.

A table meets the lab running in its dir (lab.json records the lab's layout): what the table
does not pin (``base_port``; for an SSH lab ``network`` and ``subnet``) comes from the running
lab, so a fleet reaches a lab started with ``lab up --base-port 19000``. A table the running lab
cannot serve (another kind, more hosts or new hosts than the lab has, slots where it has none
or the reverse, a pinned port or subnet the lab does not use) is refused with
:class:`LabMisfit` (CLI exit 3: the file is valid, the running lab does not fit it; nothing was
touched), naming both labs and the commands that fit. :func:`fitting_samples` lists the sample
fleets a lab can run (``lab up`` prints the first as its ``next:`` command).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import PolicyRefused
from ..tomlsource import Checker
from .layout import DEFAULT_BASE_PORT, MAX_LAB_HOSTS, LabLayout, default_lab_dir

__all__ = ["LAB_KEYS", "LabMisfit", "fit_running_lab", "fitting_samples",
           "lab_prometheus_url", "misfits", "next_command", "parse_lab", "running_prometheus",
           "sample_fleets_dir", "sample_requirements"]


class LabMisfit(PolicyRefused):
    """The running lab cannot serve the fleet's ``[lab]`` table (CLI exit 3)."""

LAB_KEYS = ("hosts", "new_hosts", "slots", "base_port", "dir", "base_release", "ssh",
            "network", "subnet")

_RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_RELEASE_WORDS = ("letters, digits, '.', '_', '+' and '-', starting with a letter or digit, "
                  "at most 128 characters")


def parse_lab(value: object, checker: Checker, current: str) -> LabLayout:
    """Check the ``[lab]`` table ``value`` with ``checker`` scoped to it; ``current`` (the
    fleet's current release) is the lab's default ``base_release``."""
    table = checker.table(value, (), LAB_KEYS, "[lab]")
    hosts = checker.integer(table, (), "hosts", 8, minimum=1, maximum=MAX_LAB_HOSTS)
    new_hosts = checker.integer(table, (), "new_hosts", 0, minimum=0, maximum=MAX_LAB_HOSTS)
    if hosts + new_hosts > MAX_LAB_HOSTS:
        checker.error(("new_hosts",), f"a lab has at most {MAX_LAB_HOSTS} hosts; hosts + "
                                      f"new_hosts = {hosts + new_hosts}")
    slots = checker.boolean(table, (), "slots", False)
    base_port = checker.integer(table, (), "base_port", DEFAULT_BASE_PORT, minimum=1024,
                                maximum=65535 - 300 - MAX_LAB_HOSTS)
    dir_text = checker.string(table, (), "dir", None)
    if dir_text is None:
        lab_dir = default_lab_dir()
    else:
        # what the OS refuses (NUL, a name over 255 bytes) is an error here, not at open
        checker.path(table, (), "dir", what="directory path")
        try:  # relative to the current directory, as `upgrader lab` resolves it
            lab_dir = Path(dir_text).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            checker.error(("dir",), f"cannot use {dir_text!r} as the lab directory: {exc}")
    base_release = checker.string(table, (), "base_release", current, pattern=_RELEASE_RE,
                                  what="release", words=_RELEASE_WORDS)
    if checker.boolean(table, (), "ssh", False):
        # hosts with their own sshd, behind HAProxy (upgrader.lab.sshlab)
        from .sshlab import DEFAULT_SUBNET, NETWORKS, SshLabLayout, parse_subnet

        network = checker.string(table, (), "network", "auto")
        if network not in NETWORKS:
            checker.error(("network",), f"expected one of {', '.join(NETWORKS)}, "
                                        f"got {network!r}")
        subnet = checker.string(table, (), "subnet", DEFAULT_SUBNET)
        try:
            parse_subnet(subnet)
        except ValueError as exc:
            checker.error(("subnet",), str(exc))
        layout: LabLayout = SshLabLayout(
            dir=lab_dir, hosts=hosts, new_hosts=new_hosts, slots=slots, base_port=base_port,
            base_release=base_release, network=network, subnet=subnet)
    else:
        for key in ("network", "subnet"):
            if key in table:
                checker.error((key,), f"[lab] {key} is for an SSH lab: add ssh = true")
        layout = LabLayout(dir=lab_dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                           base_port=base_port, base_release=base_release)
    return fit_running_lab(layout, frozenset(table), checker.source)


# --------------------------------------------------------------------------------------------
# the running lab


def fit_running_lab(layout: LabLayout, pinned: frozenset[str],
                    source: object = None) -> LabLayout:
    """``layout`` (a parsed ``[lab]`` table whose keys are ``pinned``) met with the lab
    running in its dir: unpinned ports (and an SSH lab's network) taken from it; LabMisfit
    when the running lab cannot serve it. No running lab: ``layout`` unchanged."""
    from .sshlab import SshLabLayout, running_layout

    running = running_layout(layout.dir)
    if running is None:
        return layout
    adopt: dict[str, Any] = {}
    if "base_port" not in pinned:
        adopt["base_port"] = running.base_port
    if isinstance(layout, SshLabLayout) and isinstance(running, SshLabLayout):
        for key in ("network", "subnet"):
            if key not in pinned:
                adopt[key] = getattr(running, key)
    fitted = dataclasses.replace(layout, **adopt) if adopt else layout
    problems = misfits(fitted, running)
    if problems:
        where = f"{source}: " if source else ""
        lines = [f"{where}[lab] does not fit the lab running in {running.dir}:"]
        lines += [f"  - {problem}" for problem in problems]
        lines.append(f"  running: {running.describe()}")
        lines.append(f"  fix: a lab for this fleet: `upgrader lab down"
                     f"{_dir_option(running)} && {fitted.up_command()}`")
        samples = fitting_samples(running, database=running.database_file.exists(),
                                  prometheus=running_prometheus(running.dir) is not None)
        if samples:
            lines.append("  or a fleet that fits the running lab: "
                         + ", ".join(_shown(p) for p in samples[:4]))
        raise LabMisfit("\n".join(lines))
    return fitted


def running_prometheus(directory: Path) -> str | None:
    """The URL of the Prometheus server (``lab up --prometheus``) of the lab running in
    ``directory``; None when no lab runs there or it runs none."""
    from ..errors import LabError
    from .sshlab import open_lab

    if not (directory / "lab.json").is_file():
        return None
    try:
        lab = open_lab(directory)
    except LabError:
        return None
    url = ((lab.read_state() or {}).get("urls") or {}).get("prometheus")
    if not url or "prometheus" not in lab.running_pids():
        return None
    return str(url)


def lab_prometheus_url(layout: object, metrics: list[str],
                       source: object = None) -> str | None:
    """The URL that the fleet's ``prometheus`` metrics without a ``url`` of their own
    (``metrics``, by name) read: the Prometheus of the lab running in ``layout.dir`` (a
    parsed ``[lab]`` table). None when no lab runs there (the source's default URL stays);
    LabMisfit when the running lab has no Prometheus."""
    from .sshlab import running_layout

    if not isinstance(layout, LabLayout):
        return None
    running = running_layout(layout.dir)
    if running is None:
        return None
    url = running_prometheus(layout.dir)
    if url is not None:
        return url
    where = f"{source}: " if source else ""
    names = ", ".join(metrics)
    lines = [f"{where}[[verify.metrics]] {names} read the lab's Prometheus (source = "
             f"\"prometheus\" without url); the lab running in {running.dir} has none:",
             f"  running: {running.describe()}"]
    if running.kind == "ssh":
        lines.append("  fix: the SSH lab has no Prometheus: give the metrics a url")
    else:
        lines.append(f"  fix: a lab with Prometheus: `upgrader lab down{_dir_option(running)}"
                     f" && {layout.up_command()} --prometheus`, or give the metrics a url")
    raise LabMisfit("\n".join(lines))


def misfits(fleet: LabLayout, lab: LabLayout) -> list[str]:
    """Why the running ``lab`` cannot serve a fleet laid out as ``fleet`` ([] when it can).
    A fleet may drive fewer hosts than the lab has (web-01..web-N; the others keep serving
    what they run)."""
    problems = []
    if fleet.kind != lab.kind:
        problems.append(f"the fleet is for {fleet.kind_text}; the running lab is "
                        f"{lab.kind_text}")
    if fleet.hosts > lab.hosts:
        problems.append(f"the fleet needs {fleet.hosts} hosts; the running lab has "
                        f"{lab.hosts}")
    if fleet.new_hosts > lab.new_hosts:
        problems.append(f"the fleet needs {fleet.new_hosts} new hosts (new_hosts); the running "
                        f"lab has {lab.new_hosts}")
    if fleet.slots != lab.slots:
        problems.append("the fleet needs two slots per host (slots = true); the running lab "
                        "has one" if fleet.slots else
                        "the running lab has two slots per host (lab up --slots); the fleet "
                        "has one")
    if fleet.base_port != lab.base_port:
        problems.append(f"the fleet pins base_port = {fleet.base_port}; the running lab uses "
                        f"{lab.base_port} (drop base_port from [lab] to use the running lab's)")
    subnet, lab_subnet = getattr(fleet, "subnet", None), getattr(lab, "subnet", None)
    if subnet is not None and lab_subnet is not None and subnet != lab_subnet:
        problems.append(f"the fleet pins subnet = {subnet!r}; the running lab uses "
                        f"{lab_subnet!r}")
    return problems


def _dir_option(layout: LabLayout) -> str:
    return "" if layout.dir == default_lab_dir() else f" --dir {layout.dir}"


# --------------------------------------------------------------------------------------------
# sample fleets


def sample_fleets_dir() -> Path:
    """The repository's ``sample_fleets/`` (it may be missing in an installed package)."""
    return Path(__file__).resolve().parents[2] / "sample_fleets"


#: the sample a lab's ``next:`` prefers, first to last (others follow by name)
_PREFERRED = ("canary.toml", "ssh-lab.toml", "schema.toml", "rolling.toml", "bluegreen.toml",
              "shedding.toml")


def fitting_samples(lab: LabLayout, database: bool = False,
                    directory: Path | None = None, prometheus: bool = False) -> list[Path]:
    """The sample fleets (``[lab]`` tables in ``directory``, default
    :func:`sample_fleets_dir`) the running ``lab`` can serve, best first: the same host
    count before fewer, then :data:`_PREFERRED`. A sample with a schema change needs a
    lab with a database (``lab up --database``), one judged by the lab's Prometheus a lab
    with Prometheus (``lab up --prometheus``; such a lab gets it first); one with
    ``[flags]`` is left out (it needs a flag store filled first)."""
    directory = directory or sample_fleets_dir()
    found: list[tuple[tuple[int, int, int, str], Path]] = []
    try:
        paths = sorted(directory.glob("*.toml"))
    except OSError:
        return []
    for path in paths:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        table = data.get("lab")
        if not isinstance(table, dict) or "flags" in data:
            continue
        if _needs_database(data) and not database:
            continue
        if _needs_prometheus(data) and not prometheus:
            continue
        wanted = _sample_layout(table, lab)
        if wanted is None or misfits(wanted, lab):
            continue
        rank = _PREFERRED.index(path.name) if path.name in _PREFERRED else len(_PREFERRED)
        if database and _needs_database(data):
            rank = -1              # a lab with a database is made for the schema sample
        first = 0 if prometheus and _needs_prometheus(data) else 1
        found.append(((first, lab.hosts - wanted.hosts, rank, path.name), path))
    return [path for _, path in sorted(found)]


def _needs_database(data: dict[str, Any]) -> bool:
    """A sample with a live schema change needs a lab made with ``lab up --database``."""
    release = data.get("release")
    return "schema" in data or (isinstance(release, dict) and "migration" in release)


def _needs_prometheus(data: dict[str, Any]) -> bool:
    """A sample judged by PromQL with no ``url`` of its own reads the lab's Prometheus."""
    verify = data.get("verify")
    metrics = verify.get("metrics") if isinstance(verify, dict) else None
    return isinstance(metrics, list) and any(
        isinstance(m, dict) and m.get("source") == "prometheus" and "url" not in m
        for m in metrics)


def _sample_layout(table: dict[str, Any], lab: LabLayout) -> LabLayout | None:
    """A sample's [lab] table as the running ``lab`` would meet it (unpinned keys adopted);
    None when it is not a table upgrader would load."""
    from .sshlab import SshLabLayout

    try:
        hosts = int(table.get("hosts", 8))
        new_hosts = int(table.get("new_hosts", 0))
        base_port = int(table.get("base_port", lab.base_port))
        slots = bool(table.get("slots", False))
    except (TypeError, ValueError):
        return None
    if table.get("ssh"):
        return SshLabLayout(dir=lab.dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                            base_port=base_port,
                            subnet=str(table.get("subnet", getattr(lab, "subnet", ""))))
    return LabLayout(dir=lab.dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                     base_port=base_port)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, or when the working
    directory has a ``sample_fleets/`` of its own with that file (a checkout, a copy); else
    absolute."""
    cwd = Path.cwd()
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        pass
    local = cwd / path.parent.name / path.name
    if local.is_file():
        return str(local.relative_to(cwd))
    return str(path)


def next_command(lab: LabLayout, database: bool = False,
                 prometheus: bool = False) -> str | None:
    """The command ``lab up`` prints as ``next:``: the best sample fleet for ``lab``, with
    what it needs to find the lab (``UPGRADER_LAB_DIR`` for a lab outside the default dir);
    None when no sample fits."""
    samples = fitting_samples(lab, database, prometheus=prometheus)
    if not samples:
        return None
    env = "" if lab.dir == default_lab_dir() else f"UPGRADER_LAB_DIR={lab.dir} "
    return f"{env}upgrader run {_shown(samples[0])} --headless"


def sample_requirements(directory: Path | None = None) -> list[str]:
    """``canary.toml: 8 hosts`` lines for every sample with a [lab] table (for a lab no
    sample fits)."""
    lines = []
    directory = directory or sample_fleets_dir()
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else ():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        table = data.get("lab")
        if not isinstance(table, dict):
            continue
        needs = [f"{table.get('hosts', 8)} hosts"]
        if table.get("ssh"):
            needs.insert(0, "SSH")
        if table.get("new_hosts"):
            needs.append(f"{table['new_hosts']} new hosts")
        if table.get("slots"):
            needs.append("slots")
        if _needs_database(data):
            needs.append("a database (lab up --database)")
        if _needs_prometheus(data):
            needs.append("Prometheus (lab up --prometheus)")
        if "flags" in data:
            needs.append("a flag store")
        lines.append(f"{path.name}: {', '.join(needs)}")
    return lines


