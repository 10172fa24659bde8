"""``upgrader lab up|down|status|reset``: the lab from the command line (a thin front end)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ..errors import ConfigError
from ..units import plural
from .layout import DEFAULT_BASE_PORT, MAX_LAB_HOSTS, LabLayout, default_lab_dir


def _layout_from_args(args: argparse.Namespace) -> LabLayout:
    if args.fleet:
        from ..config import load_fleet

        fleet = load_fleet(args.fleet)
        if fleet.lab is None:
            raise ConfigError("the fleet file has no [lab] table", file=args.fleet, key="lab")
        # the [lab] table's parser (lab.fleet_table) always gives a LabLayout
        assert isinstance(fleet.lab, LabLayout)
        if getattr(args, "flag_store", None) is None and fleet.flags is not None:
            # as `upgrader flags --fleet` does: the apps read the store the fleet's rollouts
            # and `upgrader flags --fleet` switch flags in
            args.flag_store = fleet.flags.store
            args.flag_store_from_fleet = True
        return fleet.lab
    if not 1 <= args.hosts <= MAX_LAB_HOSTS:
        raise ConfigError(f"--hosts must be between 1 and {MAX_LAB_HOSTS}, got {args.hosts}",
                          key="--hosts")
    if not 0 <= args.new_hosts <= MAX_LAB_HOSTS - args.hosts:
        raise ConfigError(f"--new-hosts must be between 0 and {MAX_LAB_HOSTS - args.hosts}",
                          key="--new-hosts")
    base = args.base_port if args.base_port is not None else DEFAULT_BASE_PORT
    if not 1024 <= base <= 65535 - 400:
        raise ConfigError(f"--base-port must be between 1024 and {65535 - 400}", key="--base-port")
    directory = Path(args.dir).expanduser().resolve() if args.dir else default_lab_dir()
    if getattr(args, "ssh", False):
        from .sshlab import DEFAULT_SUBNET, SshLabLayout, parse_subnet

        subnet = args.subnet or DEFAULT_SUBNET
        try:
            parse_subnet(subnet)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--subnet") from None
        return SshLabLayout(dir=directory, hosts=args.hosts, new_hosts=args.new_hosts,
                            slots=args.slots, base_port=base, network=args.network,
                            subnet=subnet)
    if getattr(args, "subnet", None) or getattr(args, "network", "auto") != "auto":
        raise ConfigError("--network and --subnet are for an SSH lab: add --ssh",
                          key="--network" if args.network != "auto" else "--subnet")
    return LabLayout(dir=directory, hosts=args.hosts, new_hosts=args.new_hosts,
                     slots=args.slots, base_port=base)


def down_message(stats: dict[str, object]) -> str:
    """What ``lab down`` says about the traffic the lab served."""
    def count(key: str) -> int:
        value = stats.get(key, 0)
        return int(value) if isinstance(value, (int, float)) else 0

    return (f"lab down; traffic: {plural(count('requests'), 'request')}, "
            f"{count('failed'):,} failed, {count('maintenance'):,} maintenance")


def main(args: argparse.Namespace) -> int:
    if args.lab_command == "up":
        layout = _layout_from_args(args)
        from .sshlab import SshLabLayout, make_lab

        lab = make_lab(layout)
        migration = None
        if getattr(args, "database", None):
            from ..schema import load_migration

            migration = load_migration(args.database)   # bad input: exit 2, nothing started
        flag_store = getattr(args, "flag_store", None)
        try:
            state = asyncio.run(lab.up(traffic_rps=args.rps, database=migration,
                                       prometheus=getattr(args, "prometheus", False),
                                       flag_store=flag_store))
        except ConfigError as exc:      # a store that cannot be used: nothing started
            if exc.key != "--flag-store" or not getattr(args, "flag_store_from_fleet", False):
                raise
            from ..tomlsource import line_in_file

            raise ConfigError(f"{exc.message} (the lab's flag store defaults to the fleet's; "
                              "--flag-store SPEC names another)", file=args.fleet,
                              key="flags.store",
                              line=line_in_file(args.fleet, ("flags", "store"))) from None
        flags_line = (f"  flags:    {state['flag_store']}  (flag new-path, environment lab: "
                      "the -flagged releases read it)" if flag_store is not None else None)
        if isinstance(layout, SshLabLayout):
            hosts = [h for h in layout.host_objects() if h.cluster == "main"]
            print(f"SSH lab up in {layout.dir}: {plural(layout.hosts, 'host')} on "
                  f"{layout.base_release}"
                  + (f", {plural(layout.new_hosts, 'new host')}" if layout.new_hosts else "")
                  + (", two slots each" if layout.slots else "")
                  + (f", each in a network namespace on {layout.subnet}"
                     if state.get("network") == "netns" else ", on loopback addresses"))
            print(f"  hosts:    {hosts[0].address} .. {hosts[-1].address}, sshd on port "
                  f"{layout.ssh_port(1)} ..; known_hosts {layout.known_hosts}")
            print(f"  users:    {layout.balancer_url}  (HAProxy; {args.rps} requests/s of lab "
                  "traffic)")
            print(f"  admin:    {layout.haproxy_site().socket_path}  (HAProxy Runtime API)")
            if flags_line:
                print(flags_line)
            _print_next(layout, database=False)
            return 0
        print(f"lab up in {layout.dir}: {plural(layout.hosts, 'host')} on {layout.base_release}"
              + (f", {plural(layout.new_hosts, 'new host')}" if layout.new_hosts else "")
              + (", two slots each" if layout.slots else ""))
        print(f"  users:    {layout.balancer_url}  ({args.rps} requests/s of lab traffic)")
        print(f"  admin:    {layout.admin_url}  (token in {layout.token_file})")
        if migration is not None:
            print(f"  database: {layout.database_file}  (release {migration.release}'s views)")
        if flags_line:
            print(flags_line)
        if state.get("urls", {}).get("prometheus"):
            print(f"  metrics:  {state['urls']['prometheus']}  (Prometheus, scraping each second)")
        _print_next(layout, database=migration is not None,
                    prometheus=bool(state.get("urls", {}).get("prometheus")))
        return 0
    directory = Path(args.dir).expanduser().resolve() if args.dir else default_lab_dir()
    from .sshlab import open_lab

    lab = open_lab(directory)
    if args.lab_command == "reset":
        before = lab.traffic_stats()
        result = asyncio.run(lab.reset())
        after = lab.traffic_stats()
        failed = int(after.get("failed", 0)) - int(before.get("failed", 0))
        reset, unchanged = result["reset"], result["unchanged"]
        print(f"lab reset in {result['seconds']:.1f} s: every host on "
              f"{lab.layout.base_release} as `lab up` left it; "
              + (f"{len(reset)} reset ({_names(reset)})" if reset else "nothing to reset")
              + (f", {len(unchanged)} already there" if reset and unchanged else ""))
        if before:
            print(f"  traffic during the reset: {plural(failed, 'failed request')}")
        return 0
    if args.lab_command == "down":
        lab_state = lab.read_state()
        was_up = lab_state is not None and lab_state.get("running", True)
        stats = asyncio.run(lab.down())     # idempotent: stops whatever is left either way
        if not was_up:
            # the traffic stats are the old lab's, already printed by the first `lab down`
            print(f"no lab up in {lab.layout.dir}: it is down already "
                  "(`upgrader lab up` starts one)")
            return 0
        print(down_message(stats))
        return 0
    status = asyncio.run(lab.status())
    if getattr(args, "json", False):
        print(json.dumps(status, default=str))
        return 0
    print(f"lab in {status['dir']}: balancer {'up' if status['balancer'].get('up') else 'down'}, "
          f"traffic {'on' if status['traffic']['running'] else 'off'}")
    for host in status["hosts"]:
        ssh = ""
        if "ssh" in host:       # an SSH lab: the host's address, its sshd and its link
            link = {True: "", False: ", link DOWN", None: ""}[host.get("link_up")]
            ssh = (f"  {host['address']:<15} sshd "
                   f"{'up' if host['ssh']['running'] else 'DOWN'}{link}")
        print(f"  {host['name']:<8} {host['cluster']:<5} "
              f"{'running' if host['running'] else 'stopped':<8} {host['version'] or '-':<14} "
              f"installs {host['installs']}{ssh}")
    if status.get("flag_store"):
        print(f"  flags:   {status['flag_store']}")
    stats = status["traffic"]["stats"]
    if stats:
        print(f"  traffic: {stats.get('requests', 0)} requests, {stats.get('failed', 0)} failed, "
              f"{stats.get('maintenance', 0)} maintenance")
    return 0


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{names[0]} .. {names[-1]}"


def _print_next(layout: LabLayout, database: bool, prometheus: bool = False) -> None:
    """``next:`` a command that runs against this lab, or which sample fleets need what."""
    from .fleet_table import next_command, sample_requirements

    command = next_command(layout, database, prometheus)
    if command is not None:
        print(f"  next:     {command}")
        return
    needs = sample_requirements()
    print(f"  next:     no sample fleet fits this {layout.hosts}-host "
          f"{'SSH' if layout.kind == 'ssh' else 'local'} lab"
          + ("; write a fleet with a [lab] table for it (docs/LAB.md)" if not needs else
             "; the samples in sample_fleets/ need:"))
    for line in needs:
        print(f"              {line}")
    if needs:
        fits = ("`upgrader lab up --ssh --hosts 4` runs ssh-lab.toml" if layout.kind == "ssh"
                else "`upgrader lab up` (8 hosts) runs canary.toml")
        print(f"            `upgrader lab down`, then {fits}")
