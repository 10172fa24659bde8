"""Issue 17 point 2 over the control API: a TUI attached to a detached controller tells it
which rows it shows. A real controller process (no-op providers, 60 hosts: more than the 50
whose figures are always sent) and clients in this process and in another one: the
``metrics`` events carry per-host figures for the hosts the clients watch, the union of the
clients', and a client's hosts go when it dies. Counts and sets, polled with deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap

import pytest

from tests.integration.test_control_process import (
    Processes,
    finish,
    run,
    wait_until,
    write_fleet,
)
from upgrader.control.controller import connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FLEET_NAME = "ctl-watch"
HOSTS = 60

# metrics every 0.2 s and a heartbeat every 0.3 s: a dead client's stream ends soon
CONTROLLER = textwrap.dedent("""\
    import asyncio, sys
    from upgrader.config import load_fleet
    from upgrader.control.controller import serve_rollout
    from upgrader.engine.core import Providers
    from upgrader.plugins import Plugins
    from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
    from upgrader.rollout import Rollout

    async def users(balancer, fleet):
        # every backend serves a few requests between two readings (a balancer in front of
        # a busy fleet); the in-memory balancer knows every backend, as a real one does
        while True:
            for host in fleet.main_hosts:
                balancer.record(host.name, requests=3, latencies=[0.004] * 3)
            await asyncio.sleep(0.05)

    async def main(path, state_dir):
        plugins = Plugins()
        fleet = load_fleet(path, registry=plugins)
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        providers = Providers(NoopTransport(delay=0.02), balancer, NoopHealthCheck())
        traffic = asyncio.ensure_future(users(balancer, fleet))
        async with Rollout(fleet, plugins=plugins, state_dir=state_dir, providers=providers,
                           metrics_interval=0.2) as rollout:
            result = await serve_rollout(rollout, heartbeat=0.3)
        traffic.cancel()
        print("OUTCOME", result.outcome.value, flush=True)
        return result.exit_code

    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
    """)

# a second client in a process of its own: watch two rows, say so once sent, then hang (the
# test kills it: a terminal that went away without a word)
OTHER = textwrap.dedent("""\
    import asyncio, sys
    from upgrader.control.controller import connect

    async def main(state_dir, fleet, hosts):
        remote = await connect(state_dir, fleet, timeout=20)
        remote.watch_hosts(hosts.split(","))
        while remote._watch_sent[1] != tuple(hosts.split(",")):
            await asyncio.sleep(0.02)
        print("WATCHING", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(*sys.argv[1:]))
    """)


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.kill_all()


def host_sets(remote, after: int) -> list[frozenset[str]]:
    """The hosts with figures in each ``metrics`` event after seq ``after``."""
    return [frozenset(e.data["hosts"]) for e in remote.history
            if e.kind == "metrics" and e.seq > after]


def seq_of_first(remote, after: int, hosts: frozenset[str]) -> int | None:
    for e in remote.history:
        if e.kind == "metrics" and e.seq > after and frozenset(e.data["hosts"]) == hosts:
            return e.seq
    return None


def test_attached_clients_watch_rows_of_a_big_fleet(procs, tmp_path):
    fleet = write_fleet(tmp_path, '[{hosts = 1, pause = "promote"}, {hosts = "100%"}]',
                        hosts=HOSTS, name=FLEET_NAME)
    state = tmp_path / "state"
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    controller = procs.start([sys.executable, str(script), str(fleet), str(state)])
    other_script = tmp_path / "other.py"
    other_script.write_text(OTHER)
    mine = frozenset({"web-10", "web-11", "web-12"})
    theirs = frozenset({"web-40", "web-41"})

    async def main():
        remote = await connect(state, FLEET_NAME, timeout=30)
        try:
            await wait_until(lambda: remote.snapshot()["state"] == "WAITING", what="WAITING")
            # nothing watched, and once the canary host's change is 3 s old nothing changed
            # lately: readings carry the pools' figures and no host's (60 > 50 hosts)
            await wait_until(lambda: seq_of_first(remote, 0, frozenset()) is not None,
                             what="a reading without per-host figures")
            quiet = seq_of_first(remote, 0, frozenset())
            await wait_until(lambda: len(host_sets(remote, quiet)) >= 3, what="3 more readings")
            assert set(host_sets(remote, quiet)) == {frozenset()}
            last = [e for e in remote.history if e.kind == "metrics"][-1]
            assert last.data["pools"]["1.0.0"]["requests"] > 0      # the users' traffic
            mark = remote.last_seq
            remote.watch_hosts(sorted(mine))
            remote.watch_hosts(sorted(mine))             # unchanged: not sent again
            await wait_until(lambda: seq_of_first(remote, mark, mine) is not None,
                             what="figures for the watched hosts")
            first = seq_of_first(remote, mark, mine)
            await wait_until(lambda: len(host_sets(remote, first)) >= 5, what="5 more readings")
            assert set(host_sets(remote, first)) == {mine}   # those hosts, and only those
            last = [e for e in remote.history if e.kind == "metrics"][-1]
            assert all(last.data["hosts"][name]["requests"] > 0 for name in mine)
            assert remote.watch_posts == 1
            # a second client elsewhere watches other rows: the controller watches both
            other = procs.start([sys.executable, str(other_script), str(state), FLEET_NAME,
                                 ",".join(sorted(theirs))])
            assert other.stdout is not None
            line = await asyncio.to_thread(other.stdout.readline)
            assert line.strip() == "WATCHING", line
            mark = remote.last_seq
            await wait_until(lambda: seq_of_first(remote, mark, mine | theirs) is not None,
                             what="figures for both clients' hosts")
            both = seq_of_first(remote, mark, mine | theirs)
            await wait_until(lambda: len(host_sets(remote, both)) >= 5, what="5 more readings")
            assert set(host_sets(remote, both)) == {mine | theirs}
            # the other client dies without a word: its rows go when its stream ends
            os.killpg(other.pid, signal.SIGKILL)
            await asyncio.to_thread(other.wait, 10)
            mark = remote.last_seq
            await wait_until(lambda: seq_of_first(remote, mark, mine) is not None,
                             what="the dead client's hosts dropped")
            alone = seq_of_first(remote, mark, mine)
            await wait_until(lambda: len(host_sets(remote, alone)) >= 5, what="5 more readings")
            assert set(host_sets(remote, alone)) == {mine}
            # an empty list: no per-host figures at all any more (no reading carries hosts)
            remote.watch_hosts([])
            await wait_until(lambda: remote.watch_posts == 2, what="the empty set sent")
            await wait_until(lambda: remote._watch_sent[1] == (), what="the empty set applied")
            mark = remote.last_seq
            remote.abort(rollback=True)
            outcome = await asyncio.wait_for(remote.wait_finished(), 30)
            assert outcome["outcome"] == "rolled_back"
            # the abort changes the canary host (and only it): figures for it alone, if any
            assert all(hosts <= {"web-1"} for hosts in host_sets(remote, mark))
        finally:
            await remote.aclose()

    run(main())
    code, out = finish(controller)
    assert code == 1, out
    assert "OUTCOME rolled_back" in out
