"""The ``[lab]`` table of a fleet file -> a :class:`~upgrader.lab.layout.LabLayout` (or, with
``ssh = true``, an :class:`~upgrader.lab.sshlab.SshLabLayout`), every key checked.

:func:`parse_lab` is what :mod:`upgrader.config` calls for the table; the layout it returns
expands into the fleet's hosts, commands and providers when the file gives none of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..tomlsource import Checker
from .layout import DEFAULT_BASE_PORT, MAX_LAB_HOSTS, LabLayout, default_lab_dir

__all__ = ["LAB_KEYS", "parse_lab"]

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
        if not dir_text.strip() or "\0" in dir_text:
            checker.error(("dir",), f"expected a directory path, got {dir_text!r}")
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
        return SshLabLayout(dir=lab_dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                            base_port=base_port, base_release=base_release,
                            network=network, subnet=subnet)
    for key in ("network", "subnet"):
        if key in table:
            checker.error((key,), f"[lab] {key} is for an SSH lab: add ssh = true")
    return LabLayout(dir=lab_dir, hosts=hosts, new_hosts=new_hosts, slots=slots,
                     base_port=base_port, base_release=base_release)
