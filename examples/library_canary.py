"""A canary rollout driven from Python, in virtual time, with the no-op providers.

Forty hosts go from 1.0.0 to 1.1.0 on the seed's canary schedule: one host and a ten-minute
look, one host a minute until 10 %, a pause until an operator promotes, then one host a second.
Nothing real is touched: the no-op transport records commands, the in-memory balancer keeps
the backends, and a small task plays the users by adding requests to the balancer's counters,
so the analysis has traffic to judge. Virtual time makes the hour-long rollout take a second.

Four tasks share the event loop:

- the rollout itself (``rollout.run()``);
- a watcher that reads ``rollout.events()`` and prints what happens;
- an operator that promotes the pause, and pauses and resumes the rollout once;
- the users (``simulate_users``), so verification sees requests.

Run it:  python examples/library_canary.py          # completes, exit 0
         python examples/library_canary.py --bad    # 1.1.0 answers 5 % errors: rolled back, exit 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import upgrader
from upgrader.clock import LoopClock
from upgrader.engine.core import Providers
from upgrader.events import Event
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

HOSTS = 40
COMMAND_DELAY = 20.0    # virtual seconds each host command (stop, install, start) takes


def fleet_text(hosts: int) -> str:
    """A fleet file, written in code. The same text in a file works with `upgrader run`."""
    head = """
[fleet]
name = "library-example"
environment = "rehearsal"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["deploy", "--release", "{release}"]
start = ["systemctl", "start", "shop"]
stop = ["systemctl", "stop", "shop"]

[transport]
kind = "noop"

[balancer]
kind = "noop"

[health]
kind = "noop"

[verify]
error_rate_max = "1%"
p95_latency_max = "300ms"
min_requests = 50
consecutive_failures = 3
interval = "30s"
for = "2m"
no_data = "fail"

[timing]
host_upgrade = "1m"          # three commands of 20 s each

[strategy]
kind = "canary"
on_failure = "rollback"
steps = [
  {hosts = 1, pause = "10m"},
  {rate = "1/min", until = "10%"},
  {pause = "promote"},
  {rate = "1/s", until = "100%"},
]
"""
    hosts_text = "".join(f'\n[[hosts]]\nname = "web-{i:02d}"\naddress = "10.0.0.{i}"\nport = 8080\n'
                         for i in range(1, hosts + 1))
    return head + hosts_text


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


async def simulate_users(balancer: NoopBalancer, error_share: dict[str, float]) -> None:
    """Every 5 virtual seconds, 25 requests reach each ready backend (20 ms each). A pool
    named in ``error_share`` fails that share of them."""
    latencies = (0.02,) * 25
    while True:
        await asyncio.sleep(5)
        state = await balancer.state()
        for name, backend in state.backends.items():
            if backend.state == "ready":
                errors = round(25 * error_share.get(backend.pool, 0.0))
                balancer.record(name, requests=25, errors=errors, latencies=latencies)


async def watch(rollout: upgrader.Rollout, started: float, seen: list[Event]) -> None:
    """The watcher: every event, until the rollout finishes."""
    async for event in rollout.events():
        seen.append(event)
        data = event.data
        at = "+" + hms(asyncio.get_running_loop().time() - started)
        if event.kind == "step_started":
            print(f"{at}  step {data['index'] + 1}: {data['description']}")
        elif event.kind == "control":
            print(f"{at}  control: {data['action']}")
        elif event.kind == "verdict" and data["result"] != "pass":
            print(f"{at}  verdict {data['metric']} {data['result']}: {data['detail']} "
                  f"({data['consecutive']}/{data['limit']})")
        elif event.kind == "rollback_started":
            print(f"{at}  rolling back {len(data['hosts'])} host(s): {data['reason']}")
        elif event.kind == "rollout_finished":
            print(f"{at}  finished: {data['outcome']}")


async def operate(rollout: upgrader.Rollout) -> None:
    """The operator: look for 15 minutes when the rollout waits to be promoted, then promote;
    a little later, pause for 5 minutes and resume."""
    promoted = False
    async for event in rollout.events():
        if (event.kind == "pause_started" and event.data["duration"] is None
                and not promoted):
            await asyncio.sleep(15 * 60)
            rollout.promote()
            promoted = True
        elif promoted and event.kind == "host_done" and event.data["host"] == "web-20":
            rollout.pause()
            await asyncio.sleep(5 * 60)
            rollout.resume()
            return


async def main(bad: bool) -> int:
    fleet = upgrader.loads_fleet(fleet_text(HOSTS), source="<library example>")
    plan = upgrader.compile_plan(fleet)
    estimate = upgrader.estimate(plan, fleet.timing)
    print(f"plan: {plan.strategy} {fleet.releases.current} -> {fleet.releases.target} on "
          f"{plan.total_hosts} hosts, {len(plan.steps)} steps; estimated "
          f"{hms(estimate.total_s)} plus {estimate.waits_for_promotion} wait(s) until "
          f"promoted; roll-back {hms(estimate.rollback_s)}")

    balancer = NoopBalancer()
    transport = NoopTransport(delay=COMMAND_DELAY)
    providers = Providers(transport=transport, balancer=balancer, health=NoopHealthCheck())
    # the hosts serve the current release behind the balancer, as they would in production
    for host in fleet.hosts:
        await balancer.set_backend(host.name, address=host.address, port=host.port or 80,
                                   pool=fleet.releases.current)
    error_share = {fleet.releases.target: 0.05} if bad else {}

    loop = asyncio.get_running_loop()
    started = loop.time()
    seen: list[Event] = []
    async with upgrader.Rollout(fleet, plan, providers=providers, journal=False,
                                clock=LoopClock()) as rollout:
        users = asyncio.create_task(simulate_users(balancer, error_share))
        watcher = asyncio.create_task(watch(rollout, started, seen))
        operator = asyncio.create_task(operate(rollout))
        try:
            # let both tasks start iterating rollout.events() before the first event is sent:
            # an iterator sees the events sent after its first step, not before
            await asyncio.sleep(0)
            result = await rollout.run()
            await watcher
        finally:
            for task in (users, watcher, operator):
                task.cancel()
            await asyncio.gather(users, watcher, operator, return_exceptions=True)

    installs = sum(1 for call in transport.calls if call.argv[0] == "deploy")
    on_target = sum(1 for release in result.hosts.values() if release == fleet.releases.target)
    controls = [e.data["action"] for e in seen if e.kind == "control"]
    print(f"outcome: {result.outcome.value}")
    print(f"hosts on {fleet.releases.target}: {on_target} of {len(result.hosts)}; "
          f"install commands: {installs}")
    print(f"controls: {', '.join(controls) or 'none'}")
    print(f"virtual duration: {hms(result.duration_s)}; events: {len(seen)}")
    for verdict in result.verdicts:
        print(f"last verdict: {verdict.describe()}")
    if result.error:
        print(f"error: {result.error}")
    return result.exit_code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bad", action="store_true", help="1.1.0 fails 5 % of requests")
    args = parser.parse_args()
    sys.exit(upgrader.run_virtual(lambda: main(args.bad)))
