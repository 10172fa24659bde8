"""The SSH lab: hosts that are machines of their own (an sshd and an app each, in a network
namespace where the machine allows it), HAProxy in front, the lab's users against HAProxy.

Every host command goes over SSH with host keys verified; every balancer change goes through
the haproxy plugin. Each strategy must upgrade every host with not one failed user request; a
bad release must be caught and rolled back. Faults: a host's sshd killed mid-wave, its network
cut mid-wave, and a release whose app crashes after start: the engine names the host, applies
on_failure, and the fleet ends on one release with HAProxy's state (read back through the
plugin) matching it.

Nothing is mocked: real sshd, haproxy, app processes and network namespaces. Every lab is
stopped and its namespaces removed even when a test fails (the fixture's finally).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from upgrader.lab import hostctl
from upgrader.lab.manager import free_base_port
from upgrader.lab.sshlab import SshLab, SshLabLayout, netns_unavailable, open_lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

HOSTS = ["web-01", "web-02", "web-03"]
NEW_HOSTS = ["web-04", "web-05", "web-06"]
RPS = 60
ROLLOUT_TIMEOUT = 90.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

STRATEGY_TABLES = {
    "takedown": 'kind = "takedown"\nretry_after = "5s"',
    "rolling": 'kind = "rolling"\nbatch = [1, 2]\nmax_unavailable = 2\npause = "2s"',
    # one host at a time: web-02 is the second wave, web-03 serves while it fails
    "one-by-one": 'kind = "rolling"\nbatch = 1\nmax_unavailable = 1\npause = "1s"',
    "canary": 'kind = "canary"\nsteps = [{hosts = 1, pause = "6s"}, {rate = "1/s", until = "100%"}]',
    "phased": 'kind = "phased"\ngroups = ["internal", "beta", "free", "paid"]\npause = "2s"',
    "shedding": 'kind = "shedding"\nweights = [10, 50, 100]\npause = "2s"',
    "bluegreen": 'kind = "bluegreen"',
}

FLEET = """
[fleet]
name = "ssh-lab-{strategy}"
environment = "lab"

[release]
current = "1.0.0"
target = "{target}"

[lab]
ssh = true
hosts = {hosts}
new_hosts = {new_hosts}
slots = {slots}
base_port = {base_port}
dir = "{dir}"
network = "{network}"
subnet = "{subnet}"

[verify]
error_rate_max = "2%"
min_requests = {min_requests}
consecutive_failures = 2
interval = "{interval}"
for = "{verify_for}"
no_data = "wait"

[timing]
host_upgrade = "2s"
drain_timeout = "10s"
health_timeout = "10s"
health_interval = "100ms"
command_timeout = "{command_timeout}"

[strategy]
on_failure = "{on_failure}"
{strategy_table}

[[groups]]
name = "internal"
[[groups]]
name = "beta"
[[groups]]
name = "free"
[[groups]]
name = "paid"
"""


# --------------------------------------------------------------------------------------------
# fixtures


def _requirements() -> None:
    from upgrader.lab.haproxy import haproxy_binary
    from upgrader.lab.sshd import sshd_path

    if sshd_path() is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    try:
        import upgrader_haproxy  # noqa: F401
        import upgrader_ssh  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"a plugin is missing: {exc}")


def _free_subnet() -> str:
    """A 10.231.X.0/24 that no address or route of this machine overlaps."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                         text=True).stdout + subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken = set()
    for word in out.split():
        try:
            taken.add(ipaddress.IPv4Interface(word).network)
        except ValueError:
            continue
    rng = random.SystemRandom()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.231.{rng.randrange(1, 250)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    pytest.fail("no free 10.231.X.0/24 subnet")


def network_mode() -> str:
    """Namespaces where the machine allows them; UPGRADER_SSH_LAB_NETWORK=loopback forces the
    loopback fallback (to test it on a machine that has namespaces)."""
    forced = os.environ.get("UPGRADER_SSH_LAB_NETWORK")
    if forced in ("netns", "loopback"):
        return forced
    return "netns" if netns_unavailable() is None else "loopback"


class LabRunner:
    """Starts SSH labs in a test's tmp_path; ``cleanup`` stops them all, whatever happened."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.labs: list[SshLab] = []

    def layout(self, **fields: Any) -> SshLabLayout:
        return SshLabLayout(dir=self.tmp / f"lab{len(self.labs)}", base_port=free_base_port(),
                            network=network_mode(), subnet=_free_subnet(), **fields)

    def up(self, rps: int = RPS, **fields: Any) -> SshLab:
        lab = SshLab(self.layout(**fields))
        self.labs.append(lab)
        asyncio.run(lab.up(traffic_rps=rps, users=300))
        wait_until(lambda: lab.traffic_stats().get("ok", 0) >= 30, 15,
                   "the users' first requests through HAProxy")
        return lab

    def cleanup(self) -> list[str]:
        problems = []
        for lab in self.labs:
            try:
                asyncio.run(asyncio.wait_for(lab.down(), 60))
            except Exception as exc:
                problems.append(f"down: {type(exc).__name__}: {exc}")
            for name, pid in lab.running_pids().items():       # checked against argv
                problems.append(f"{name} (pid {pid}) still ran after down")
                hostctl.terminate(pid, 5.0)
            left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                              text=True).stdout.split()
                    if n.startswith(f"upg{lab.layout.lab_id}-")]
            if left:
                problems.append(f"namespaces left: {left}")
                lab._remove_network()
        return problems


@pytest.fixture
def labs(tmp_path):
    _requirements()
    runner = LabRunner(tmp_path)
    problems: list[str] = []
    try:
        yield runner
    finally:
        problems = runner.cleanup()
    assert not problems, problems


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


# --------------------------------------------------------------------------------------------
# running a rollout in a lab


class Run:
    """The outcome of one rollout: result, events, the users' stats after it."""

    def __init__(self, result: Any, events: list[Any], elapsed: float) -> None:
        self.result, self.events, self.elapsed = result, events, elapsed
        self.stats: dict = {}

    def of_kind(self, kind: str) -> list[dict]:
        return [e.data for e in self.events if e.kind == kind]


def fleet_text(lab: SshLab, strategy: str, target: str, *, on_failure: str = "rollback",
               verify_for: str = "4s", command_timeout: str = "20s", min_requests: int = 5,
               interval: str = "1s") -> str:
    layout = lab.layout
    return FLEET.format(strategy=strategy, target=target, hosts=layout.hosts,
                        new_hosts=layout.new_hosts, slots=str(layout.slots).lower(),
                        base_port=layout.base_port, dir=str(layout.dir),
                        network=layout.network, subnet=layout.subnet,
                        verify_for=verify_for, command_timeout=command_timeout,
                        min_requests=min_requests, interval=interval,
                        on_failure=on_failure, strategy_table=STRATEGY_TABLES[strategy])


def run_rollout(lab: SshLab, text: str, *, speed: float = 1.0, interactive: bool = False,
                observe: Callable[[Any, Any], None] | None = None) -> Run:
    """Load ``text`` with the real plugins and run it to its end; ``observe(event, rollout)``
    sees every event as the engine emits it (before the action it announces)."""
    from upgrader.config import loads_fleet
    from upgrader.plugins import Plugins
    from upgrader.rollout import Rollout, compile_plan, compress

    events: list[Any] = []

    async def main() -> Any:
        plugins = Plugins()
        fleet = loads_fleet(text, source="<ssh lab fleet>", registry=plugins)
        assert fleet.transport.kind == "ssh" and fleet.balancer.kind == "haproxy"
        assert fleet.transport.settings["trust_on_first_use"] is False
        plan = compile_plan(fleet)
        fleet, plan = compress(fleet, plan, speed)
        holder: list[Any] = []

        def on_event(event: Any) -> None:
            events.append(event)
            if observe is not None:
                observe(event, holder[0] if holder else None)

        async with Rollout(fleet, plan, plugins=plugins, state_dir=lab.dir / "state",
                           observers=[on_event], interactive=interactive) as rollout:
            holder.append(rollout)
            return await asyncio.wait_for(rollout.run(), ROLLOUT_TIMEOUT)

    started = time.monotonic()
    result = asyncio.run(main())
    run = Run(result, events, time.monotonic() - started)
    # the users keep being served after the rollout: one more second of their requests
    ended = time.time()
    wait_until(lambda: lab.traffic_stats().get("updated_ts", 0) > ended + 1.0, 10,
               "the users' stats after the rollout")
    run.stats = lab.traffic_stats()
    return run


def record(request, run: Run) -> None:
    stats = run.stats
    summary = {"outcome": run.result.outcome.value, "requests": stats.get("requests"),
               "failed": stats.get("failed"), "maintenance": stats.get("maintenance"),
               "errors": stats.get("errors"),
               "rollout_s": round(run.result.duration_s, 1), "wall_s": round(run.elapsed, 1),
               "error": (run.result.error or "")[:200]}
    request.node.user_properties.append(("summary", json.dumps(summary)))
    print(f"\n{request.node.name}: {summary}")


def served_version(address: str, port: int) -> str | None:
    try:
        with _OPENER.open(f"http://{address}:{port}/", timeout=3) as resp:
            return resp.headers.get("X-Version")
    except (urllib.error.URLError, OSError):
        return None


def assert_fleet_on(lab: SshLab, release: str, hosts: list[str], *, drained: tuple = ()) -> Any:
    """Every host in ``hosts`` has ``release`` installed in its live slot and serves it, and
    HAProxy (read back through the plugin) sends users only to ``release``: each of these
    hosts is a server of that pool, ready (or drained, for ``drained``)."""
    state = asyncio.run(lab.balancer_state())
    live = {}
    for name, backend in state.backends.items():
        host = name.partition("@")[0]
        if backend.state == "ready" and backend.weight > 0:
            live[host] = backend
    for name in hosts:
        host = lab.host(name)
        if name in drained:
            backend = state.backends[name]
            assert backend.pool == release and backend.state in ("drain", "maint"), backend
            port = host.port
            slot = "default"
        else:
            assert name in live, (name, state.backends)
            backend = live[name]
            assert backend.pool == release, backend
            port = backend.port
            slot = next((s for s, p in lab.slots_of(host).items() if p == port), "default")
        root = lab.layout.host_root(name)
        assert hostctl.current_release(root, slot) == release, (name, slot)
        assert served_version(host.address, port) == release, (name, port)
    serving_pools = {b.pool for b in live.values()}
    assert serving_pools == {release}, state.backends
    split = dict(state.split or {})
    assert all(pool == release or share == 0 for pool, share in split.items()), split
    assert not state.maintenance
    return state


def assert_users_served_throughout(run: Run) -> None:
    """Steady traffic: in every whole second of the rollout the users got answers (2xx, or
    the maintenance page during a take-down), and at least 150 requests were sent."""
    start = next(e.ts for e in run.events if e.kind == "rollout_started")
    end = next(e.ts for e in run.events if e.kind == "rollout_finished")
    answered = {entry["t"] for entry in run.stats.get("timeline", [])
                if entry["ok"] + entry["maintenance"] > 0}
    silent = [t for t in range(int(start) + 1, int(end)) if t not in answered]
    assert not silent, f"seconds without an answer: {silent}"
    assert run.stats["requests"] >= 150, run.stats


def ssh_current(lab: SshLab, name: str) -> str:
    """``current`` on ``name`` over SSH, with a fresh transport (host key checked again)."""
    from upgrader.plugins import Plugins

    async def main() -> str:
        transport = Plugins().create("transport", lab.layout.transport_spec())
        try:
            host = lab.host(name)
            argv = lab._render(lab.layout.commands().current, host, "default", host.port or 0)
            return (await transport.run(host, argv, timeout=30)).stdout.strip()
        finally:
            await transport.aclose()

    return asyncio.run(main())


def sshd_logins(lab: SshLab, name: str) -> int:
    log = lab.layout.sshd_dir(name) / "sshd.log"
    try:
        return log.read_text(errors="replace").count("Accepted publickey for ")
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# the lab itself


def test_ssh_lab_up_status_down(labs):
    lab = labs.up(hosts=2)
    layout = lab.layout
    status = asyncio.run(open_lab(layout.dir).status())           # reattached from lab.json
    assert status["network"] == network_mode()
    assert status["balancer"]["kind"] == "haproxy" and status["balancer"]["up"]
    backends = status["balancer"]["state"]["backends"]
    for i, host in enumerate(status["hosts"], start=1):
        assert host["running"] and host["version"] == "1.0.0"
        assert host["ssh"]["running"] and host["ssh"]["port"] == layout.ssh_port(i)
        assert host["address"] == layout.host_address(i)
        assert backends[host["name"]]["address"] == host["address"]
        assert sshd_logins(lab, host["name"]) >= 1          # installed and started over SSH
        if status["network"] == "netns":
            assert host["link_up"] is True
    known = layout.known_hosts.read_text().splitlines()
    assert len(known) == 2 and all(line.startswith("[") for line in known)
    assert oct(layout.client_key.stat().st_mode & 0o777) == "0o600"
    # the apps listen on the hosts' own addresses, not on the controller's loopback
    assert served_version("127.0.0.1", lab.host("web-01").port) is None

    final = asyncio.run(lab.down())
    assert final["failed"] == 0 and final["ok"] > 0
    assert not lab.running_pids()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"upg{layout.lab_id}-" not in names


# --------------------------------------------------------------------------------------------
# every strategy: no user notices (take-down: users are told to come back, nobody fails)

STRATEGY_CASES: dict[str, tuple[dict, float, int, dict]] = {
    # strategy: (lab fields, speed, users' requests/s, verification)
    "takedown": ({"hosts": 3}, 2.0, RPS, {}),
    "rolling": ({"hosts": 3}, 2.0, RPS, {}),
    "canary": ({"hosts": 3}, 2.0, RPS, {}),
    # the first group (internal) is 2 % of the users: enough of them to judge it
    "phased": ({"hosts": 3}, 3.0, 150, {"min_requests": 3, "interval": "2s"}),
    "shedding": ({"hosts": 3, "new_hosts": 3}, 2.0, RPS, {}),
    "bluegreen": ({"hosts": 3, "slots": True}, 2.0, RPS, {}),
}


@pytest.mark.parametrize("strategy", list(STRATEGY_CASES))
def test_every_strategy_upgrades_through_haproxy_without_a_failed_request(labs, request,
                                                                          strategy):
    fields, speed, rps, verify = STRATEGY_CASES[strategy]
    lab = labs.up(rps=rps, **fields)
    logins_before = {h: sshd_logins(lab, h) for h in HOSTS}
    run = run_rollout(lab, fleet_text(lab, strategy, "1.1.0", **verify), speed=speed)
    record(request, run)
    assert run.result.outcome.value == "completed", run.result.error
    stats = run.stats
    assert stats["failed"] == 0, stats.get("errors")
    assert_users_served_throughout(run)
    if strategy == "shedding":
        assert run.result.hosts == {**dict.fromkeys(HOSTS), **dict.fromkeys(NEW_HOSTS, "1.1.0")}
        state = assert_fleet_on(lab, "1.1.0", NEW_HOSTS)
        assert not any(name in state.backends for name in HOSTS)     # turned down, removed
    else:
        assert run.result.hosts == dict.fromkeys(HOSTS, "1.1.0")
        assert_fleet_on(lab, "1.1.0", HOSTS)
    if strategy == "takedown":
        assert stats["maintenance"] > 0, stats          # the maintenance page: not a failure
    else:
        assert stats["maintenance"] == 0, stats
    assert "1.1.0" in stats["versions"]
    # the engine reached the hosts over SSH (one reused connection per host, at least one)
    touched = NEW_HOSTS if strategy == "shedding" else HOSTS
    assert all(sshd_logins(lab, h) > logins_before.get(h, 0) for h in touched)


def test_bad_release_is_caught_and_rolled_back(labs, request):
    lab = labs.up(hosts=3)
    run = run_rollout(lab, fleet_text(lab, "canary", "1.1.0-bad"), speed=2.0)
    record(request, run)
    assert run.result.outcome.value == "rolled_back", run.result.error
    assert run.result.hosts == dict.fromkeys(HOSTS, "1.0.0")
    error = run.result.error or ""
    assert "error_rate FAIL" in error or "system_test failed" in error, error
    assert_fleet_on(lab, "1.0.0", HOSTS)
    assert run.stats["failed"] < 100, run.stats     # the canary hurt few users


# --------------------------------------------------------------------------------------------
# faults


def _on_phase(host: str, phase: str, action: Callable[[Any], None]) -> Callable[[Any, Any], None]:
    """An observer that runs ``action(rollout)`` once, when ``host`` enters ``phase`` of its
    upgrade (the event comes before the action it announces)."""
    done: list[bool] = []

    def observe(event: Any, rollout: Any) -> None:
        data = event.data
        if (not done and event.kind == "host_phase" and data.get("host") == host
                and data.get("phase") == phase and data.get("mode") == "upgrade"):
            done.append(True)
            action(rollout)

    return observe


def test_sshd_killed_mid_wave_is_named_and_the_rest_rolled_back(labs, request):
    """web-02's sshd dies once web-02 is drained (second wave), before it is stopped. The
    engine cannot stop it: it names web-02, rolls the fleet back (on_failure = rollback), and
    reports the roll-back of web-02 incomplete, since it still cannot reach it. web-02 never
    left 1.0.0 and stays drained; every other host is back on 1.0.0; HAProxy serves 1.0.0
    only."""
    lab = labs.up(hosts=3)
    killed: list[int | None] = []
    run = run_rollout(lab, fleet_text(lab, "one-by-one", "1.1.0"), speed=2.0,
                      observe=_on_phase("web-02", "stopping",
                                        lambda _: killed.append(lab.kill_sshd("web-02"))))
    record(request, run)
    assert killed and killed[0] is not None
    failed = run.of_kind("host_failed")
    assert failed and failed[0]["host"] == "web-02", failed
    assert run.of_kind("rollback_started"), "on_failure = rollback was not applied"
    assert run.result.outcome.value == "failed"
    assert "web-02" in (run.result.error or "") and "roll-back incomplete" in run.result.error
    assert all(run.result.hosts[h] == "1.0.0" for h in ("web-01", "web-03")), run.result.hosts
    assert [r["release"] for r in lab.installs("web-02")] == ["1.0.0"]
    assert_fleet_on(lab, "1.0.0", HOSTS, drained=("web-02",))
    # web-02 was drained before its sshd died, and web-03 served all along: nobody failed
    assert run.stats["failed"] == 0, run.stats["errors"]
    # the operator restarts sshd: the host is reachable again, with the same host key
    lab.start_sshd("web-02")
    status = asyncio.run(lab.status())
    assert all(h["ssh"]["running"] for h in status["hosts"])
    assert ssh_current(lab, "web-02") == "1.0.0"


def test_network_cut_mid_wave_pauses_then_operator_rolls_back(labs, request):
    """web-02's link goes down once web-02 is drained, before it is stopped. Its commands
    time out; the engine names web-02 and, on_failure = pause, waits for the operator. The link comes back, the
    operator aborts with roll-back: the whole fleet ends on 1.0.0, HAProxy serving it."""
    if network_mode() != "netns":
        pytest.skip("the lab runs on loopback addresses here (no network namespaces): there "
                    "is no link to cut")
    lab = labs.up(hosts=3)
    actions: list[str] = []

    def repair_and_abort(event: Any, rollout: Any) -> None:
        if event.kind == "state" and event.data.get("state") == "PAUSED" and not actions:
            actions.append("abort")
            lab.set_link("web-02", True)        # the network is back
            rollout.abort(rollback=True)         # the operator's decision

    cut = _on_phase("web-02", "stopping", lambda _: lab.set_link("web-02", False))

    def observe(event: Any, rollout: Any) -> None:
        cut(event, rollout)
        repair_and_abort(event, rollout)

    run = run_rollout(lab, fleet_text(lab, "one-by-one", "1.1.0", on_failure="pause"),
                      speed=2.0, interactive=True, observe=observe)
    record(request, run)
    assert actions == ["abort"], "the rollout did not pause on the failure"
    failed = run.of_kind("host_failed")
    assert failed and failed[0]["host"] == "web-02", failed
    paused = [e for e in run.of_kind("state") if e["state"] == "PAUSED"]
    assert "web-02" in paused[0]["reason"], paused
    assert run.result.outcome.value == "rolled_back", run.result.error
    assert run.result.hosts == dict.fromkeys(HOSTS, "1.0.0")
    assert lab.link_up("web-02") is True
    assert_fleet_on(lab, "1.0.0", HOSTS)
    assert run.stats["failed"] == 0, run.stats["errors"]     # web-02 was drained first


def test_crashing_release_is_named_and_rolled_back(labs, request):
    """1.1.0-crash is healthy at start, then its app exits. The verification's health checks
    name the host; on_failure = rollback reinstalls 1.0.0 over SSH; HAProxy serves 1.0.0."""
    lab = labs.up(hosts=3)
    run = run_rollout(lab, fleet_text(lab, "canary", "1.1.0-crash", verify_for="8s"),
                      speed=1.0)
    record(request, run)
    assert run.result.outcome.value == "rolled_back", run.result.error
    assert run.result.hosts == dict.fromkeys(HOSTS, "1.0.0")
    canary = next(e["host"] for e in run.of_kind("host_done") if e.get("mode") == "upgrade")
    unhealthy = [v for v in run.of_kind("verdict")
                 if v["metric"] == "health" and v["result"] == "fail"]
    assert unhealthy and canary in unhealthy[-1]["detail"], unhealthy
    assert canary in (run.result.error or ""), run.result.error
    assert [r["release"] for r in lab.installs(canary)] == ["1.0.0", "1.1.0-crash", "1.0.0"]
    assert_fleet_on(lab, "1.0.0", HOSTS)
    # requests in flight when the app died, and retries that found no other server in time
    assert run.stats["failed"] < 100, run.stats


# --------------------------------------------------------------------------------------------
# the fleet file's [lab] ssh = true (no lab needs to run)


def test_fleet_file_knows_the_ssh_lab(tmp_path):
    from upgrader.config import load_fleet, loads_fleet
    from upgrader.errors import ConfigError

    sample = load_fleet(Path(__file__).resolve().parents[2] / "sample_fleets" / "ssh-lab.toml")
    assert isinstance(sample.lab, SshLabLayout)
    assert sample.transport.kind == "ssh" and sample.balancer.kind == "haproxy"
    assert sample.transport.settings["trust_on_first_use"] is False
    assert sample.transport.settings["known_hosts"].endswith("ssh/known_hosts")
    assert len(sample.hosts) == 4 and all("ssh_port" in h.vars for h in sample.hosts)
    assert sample.commands.start[-2:] == ("--bind", "{address}")

    base = ('[fleet]\nname = "x"\n[release]\ncurrent = "1.0.0"\ntarget = "1.1.0"\n'
            '[strategy]\nkind = "rolling"\n[lab]\ndir = "%s"\n' % (tmp_path / "lab"))
    fleet = loads_fleet(base + 'ssh = true\nnetwork = "loopback"\nsubnet = "10.231.9.0/24"\n')
    assert [h.address for h in fleet.hosts][:2] == ["127.231.9.11", "127.231.9.12"]
    fleet = loads_fleet(base + 'ssh = true\nnetwork = "netns"\nsubnet = "10.231.9.0/24"\n')
    assert fleet.hosts[0].address == "10.231.9.11"
    explicit = loads_fleet(base + 'ssh = true\n[transport]\nkind = "local"\n')
    assert explicit.transport.kind == "local"          # a table written out wins
    for extra, key in (('ssh = true\nnetwork = "vpn"\n', "lab.network"),
                       ('ssh = true\nsubnet = "8.8.8.0/24"\n', "lab.subnet"),
                       ('ssh = true\nsubnet = "10.1.2.0/28"\n', "lab.subnet"),
                       ('network = "netns"\n', "lab.network")):
        with pytest.raises(ConfigError) as caught:
            loads_fleet(base + extra)
        assert caught.value.key == key, caught.value
