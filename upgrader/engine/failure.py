"""The failure policy: what a rollout does once it has failed or been aborted.

``on_failure`` chooses: roll back (by the plan's ``rollback_mode``: reinstall the old release,
swap blue-green slots back, move traffic back to the old cluster, or turn flags off), shut the
upgraded hosts down while capacity allows, pause for the operator (interactive), or freeze.
Every roll-back ends by reading the balancer back: the target release serves nobody.
"""

from __future__ import annotations

import asyncio
import math

from ..errors import BalancerError, UpgraderError
from ..events import Outcome, RolloutState
from ..model import Fleet, Host, HostPhase
from ..plan import Plan, estimate
from ..providers.base import BalancerState
from .bus import EventBus
from .describe import describe_error
from .flagstep import FlagStep
from .gates import Gates
from .hosts import HostProcedure
from .machine import StateMachine
from .progress import RolloutProgress, backend_name
from .traffic import TrafficControl
from .verification import Verification


class FailurePolicy:
    def __init__(self, fleet: Fleet, plan: Plan, *, interactive: bool, bus: EventBus,
                 machine: StateMachine, progress: RolloutProgress, traffic: TrafficControl,
                 procedure: HostProcedure, gates: Gates, verification: Verification) -> None:
        self.fleet = fleet
        self.plan = plan
        self.interactive = interactive
        self.bus = bus
        self.machine = machine
        self.progress = progress
        self.traffic = traffic
        self.procedure = procedure
        self.gates = gates
        self.verification = verification
        #: the roll-back's first step: the release's flags off, verify again
        self.flag_step = FlagStep(fleet, plan, bus=bus, machine=machine, gates=gates,
                                  verification=verification)
        #: while frozen: {"reason", "choices"} (``status`` and the TUI show it)
        self.frozen: dict[str, object] | None = None

    def named_failing(self) -> set[str]:
        """Hosts that verification or their own install named as failing: a health check
        of one of their backends failed last time, or the host itself failed."""
        failing = {backend.partition("@")[0] for backend in self.verification.health.failing}
        failing.update(n for n, status in self.progress.hosts.items()
                       if status.phase is HostPhase.FAILED)
        return failing

    def first_named(self, names: list[str]) -> list[str]:
        """``names`` with the hosts named as failing first (each part keeps its order)."""
        failing = self.named_failing()
        return ([n for n in names if n in failing] + [n for n in names if n not in failing])

    def touched(self) -> list[str]:
        """Hosts not on the current release (or in doubt): those named as failing first, then
        the most recently upgraded first."""
        current = self.fleet.releases.current
        progress = self.progress
        names = [n for n in self.plan.upgraded_hosts()
                 if progress.hosts_by_name[n].cluster == "main"
                 and (progress.hosts[n].release != current or n in progress.in_doubt
                      or progress.hosts[n].phase not in (HostPhase.PENDING,
                                                         HostPhase.IN_SERVICE))]
        return self.first_named(list(reversed(names)))

    def rollback_estimate(self, touched: int) -> float:
        """Expected seconds to roll back ``touched`` hosts now (no pauses, no analysis)."""
        timing = self.fleet.timing
        if self.plan.rollback_mode in ("swap", "traffic", "flag"):
            return estimate(self.plan, timing).rollback_s
        if touched == 0:
            return 0.0
        return math.ceil(touched / max(1, self.plan.rollback_parallel)) * timing.host_upgrade

    async def respond(self) -> Outcome | None:
        """The forward run stopped (a failure or an abort): act on it. None: the operator
        resumed a paused failure (or aborted it), so the forward run goes on from here."""
        machine = self.machine
        if machine.abort_rollback is not None:
            reason = machine.failure or "aborted by operator"
            if machine.abort_rollback:
                return await self.rollback(reason)
            machine.failure = reason
            return Outcome.FROZEN
        policy = self.fleet.strategy.on_failure
        reason = machine.failure or "failed"
        if policy == "freeze":
            return await self.freeze(reason)
        if policy in ("rollback", "shutdown"):
            irreversible = await self.gates.schema_irreversible()
            if irreversible is not None:
                return await self.freeze(f"{reason}; {irreversible}")
        if policy == "rollback":
            return await self.rollback(reason)
        if policy == "shutdown":
            return await self.shutdown(reason)
        if policy == "pause" and self.interactive:
            machine.running.clear()
            await machine.set_state(RolloutState.PAUSED, f"failure: {reason}")
            await machine.running.wait()
            if machine.abort_rollback is not None:
                return None
            # the operator resumed: accept the failure and go on
            machine.accept_failure()
            self.verification.forget_failures()
            await machine.set_state(RolloutState.RUNNING)
            return None
        return await self.freeze(reason)

    # -- freeze

    def freeze_choices(self) -> dict[str, str]:
        """What each answer to a freeze would do (``status``, the TUI, the ``frozen`` event)."""
        schema = self.gates.schema_irreversible_now
        back = "roll back anyway: hosts, traffic and flags go back to the old release"
        if schema:
            back += " (the schema change stays started: it cannot be reverted)"
        return {"resume": "go on with the rollout from where it stopped (accept the failure)",
                "rollback": back + " (abort)",
                "stop": "end the rollout frozen, both releases serving as they are "
                        '(an abort without roll-back: control API {"rollback": false})'}

    async def freeze(self, reason: str, *, resumed: bool = False) -> Outcome | None:
        """Stop every change: both releases keep serving as they are, flags stay as they are.
        Announce it (journaled, notifiers see it) and wait for an operator when one can
        answer; else end ``frozen``. None: the operator resumed (the forward run goes on) or
        aborted (the caller's roll-back or stop follows)."""
        machine = self.machine
        machine.failure = reason
        choices = self.freeze_choices()
        self.frozen = {"reason": reason, "choices": choices}
        await self.bus.emit("frozen", reason=reason, choices=choices, resumed=resumed)
        if not self.interactive:
            return Outcome.FROZEN
        machine.running.clear()
        machine.before_pause = None
        await machine.set_state(RolloutState.PAUSED, f"frozen: {reason}")
        await machine.running.wait()
        self.frozen = None
        if machine.abort_rollback is not None:
            machine.interrupt.set()
            return None
        machine.accept_failure()
        self.verification.forget_failures()
        await machine.set_state(RolloutState.RUNNING)
        return None

    # -- roll-back

    async def rollback(self, reason: str) -> Outcome:
        machine = self.machine
        machine.interrupt.clear()
        machine.running.set()
        mode = self.plan.rollback_mode
        touched = self.touched()
        await machine.set_state(RolloutState.ROLLING_BACK, reason)
        await self.bus.emit("rollback_started", reason=reason, hosts=touched,
                            estimated_s=self.rollback_estimate(len(touched)), mode=mode)
        if await self.flag_step.run(reason):
            return Outcome.FLAGS_OFF     # flags off, release kept: the operator decides
        errors: list[str] = []
        try:
            if mode == "flag":
                await self.gates.flags_off()
            elif mode == "swap":
                await self._rollback_slots(errors)
            elif mode == "traffic":
                await self._rollback_traffic(errors)
            else:
                await self._rollback_reinstall(touched, errors)
            await self._assert_rolled_back()
        except UpgraderError as exc:
            errors.append(str(exc))
        await self.gates.schema_rollback(errors)
        if errors:
            machine.failure = f"{reason}; roll-back incomplete: {'; '.join(errors[:5])}"
            return Outcome.FAILED
        return Outcome.ROLLED_BACK

    async def _rollback_reinstall(self, touched: list[str], errors: list[str]) -> None:
        current = self.fleet.releases.current
        traffic = self.traffic
        state = await traffic.balancer.state()
        if state.routes is not None:
            await traffic.route((), "current" if any(
                b.pool == current and b.state == "ready" for b in state.backends.values())
                else None)
        if state.split:
            await traffic.set_traffic({"current": 100.0}, check_capacity=False)
        # take the target release out of traffic at once, as far as capacity allows, and
        # again each time a host is back on the old release (so a bad release stops
        # answering users as soon as the old one can carry them)
        need = math.ceil(len(self.fleet.main_hosts) * self.fleet.strategy.min_capacity / 100.0)
        drain_lock = asyncio.Lock()

        async def drain_target(seen: BalancerState | None = None) -> None:
            async with drain_lock:
                await self._shed_target(need, seen)

        await drain_target(state)
        drain = not state.maintenance
        limit = asyncio.Semaphore(max(1, self.plan.rollback_parallel))
        in_flight: set[str] = set()
        came_back = asyncio.Condition()

        async def one(name: str) -> None:
            async with limit:
                try:
                    if drain:
                        await self._leave_a_server(name, in_flight, came_back)
                    in_flight.add(name)
                    # the host ran `current` before this rollout: a switch, where the
                    # fleet has one, makes it current again
                    await self.procedure.upgrade(name, current, mode="rollback", drain=drain,
                                                 slot=None, switch=True)
                    if drain:
                        await drain_target()
                except Exception as exc:
                    text = describe_error(exc, name)
                    status = self.progress.hosts[name]
                    status.phase = HostPhase.FAILED
                    status.error = text
                    await self.bus.emit("host_failed", host=name, error=text, mode="rollback")
                    errors.append(text)
                finally:
                    in_flight.discard(name)
                    async with came_back:
                        came_back.notify_all()

        await asyncio.gather(*(one(n) for n in touched))
        if state.maintenance:
            await traffic.maintenance(False, 0)
        if state.routes is not None:
            await traffic.route((), None)

    async def _shed_target(self, need: int, seen: BalancerState | None) -> None:
        """Drain the target release's backends while ``need`` hosts of the current release
        serve (``seen``: the balancer as just read; the ``traffic`` event follows then)."""
        current, target = self.fleet.releases.current, self.fleet.releases.target
        now = seen if seen is not None else await self.traffic.balancer.state()
        ready_old = sum(1 for b in now.backends.values()
                        if b.pool == current and b.state == "ready")
        drained = False
        failing = self.named_failing()
        serving = [n for n, b in now.backends.items() if b.pool == target and b.state == "ready"]
        # the backends verification named leave first, while capacity allows
        serving.sort(key=lambda n: n.partition("@")[0] not in failing)
        for name in serving:
            if ready_old >= need:
                await self.traffic.set_backend_state(name, "drain")
                drained = True
        if drained or seen is not None:
            await self.traffic.emit_traffic()

    async def _leave_a_server(self, name: str, in_flight: set[str],
                              came_back: asyncio.Condition) -> None:
        """Never drain the last backend that serves users while another host's roll-back
        can still bring one back: wait for it instead (the plan's roll-back parallelism
        knows nothing of hosts a failure took out of service)."""
        own = backend_name(name, None)
        while True:
            now = await self.traffic.balancer.state()
            if any(n != own and b.state == "ready" and b.weight > 0
                   for n, b in now.backends.items()) or not in_flight:
                return
            async with came_back:
                await came_back.wait()

    async def _rollback_slots(self, errors: list[str]) -> None:
        """Every host swaps back first (named failing hosts first): a swap back readies the
        old slot before the bad one drains, so capacity never drops and all traffic is on
        the old release after one balancer change per host. Only then do the bad slots drain
        and stop, ``rollback_parallel`` at a time: they serve nobody any more."""
        progress, traffic, procedure = self.progress, self.traffic, self.procedure
        hosts = [h for h in self.fleet.main_hosts if h.name in progress.live_slot]
        order = self.first_named([h.name for h in hosts])
        hosts.sort(key=lambda h: order.index(h.name))
        swapped: list[Host] = []

        async def swap_back(host: Host) -> None:
            try:
                if progress.live_slot[host.name] != progress.original_slot[host.name]:
                    await procedure.swap_slot(host.name, back=True)
                swapped.append(host)
            except UpgraderError as exc:
                errors.append(f"{host.name}: {exc}")

        for host in hosts:              # balancer changes only: seconds for the whole fleet
            await swap_back(host)
        await traffic.emit_traffic()
        limit = asyncio.Semaphore(max(1, self.plan.rollback_parallel))

        async def retire(host: Host) -> None:
            name = host.name
            async with limit:
                try:
                    idle = progress.idle_slot(host)
                    backend = backend_name(name, idle)
                    seen = await traffic.backend(backend)
                    if seen is not None and seen.state != "maint":
                        await traffic.drain(name, backend)   # let its requests finish first
                        await traffic.set_backend_state(backend, "maint")
                    if seen is not None or progress.hosts[name].phase != HostPhase.PENDING:
                        await procedure.command(host, "stop", self.fleet.releases.target, idle)
                    progress.hosts[name].release = self.fleet.releases.current
                    progress.hosts[name].phase = HostPhase.IN_SERVICE
                except UpgraderError as exc:
                    errors.append(f"{name}: {exc}")

        await asyncio.gather(*(retire(h) for h in swapped))
        await traffic.emit_traffic()

    async def _rollback_traffic(self, errors: list[str]) -> None:
        """Old hosts that were turned down come back (together: they serve nobody yet), all
        traffic moves to the old cluster in one change, then the new hosts drain and stop,
        ``rollback_parallel`` at a time."""
        current = self.fleet.releases.current
        progress, traffic = self.progress, self.traffic
        limit = asyncio.Semaphore(max(1, self.plan.rollback_parallel))

        async def bring_back(name: str) -> None:
            async with limit:
                try:
                    await self.procedure.upgrade(name, current, mode="rollback", drain=False,
                                                 switch=True)
                except Exception as exc:
                    errors.append(describe_error(exc, name))

        await asyncio.gather(*(bring_back(n) for n in sorted(progress.turned_down)))
        share = await traffic.healthy_share(current)
        if share <= 0:
            # nowhere to send the users: keep the new cluster serving rather than nothing
            errors.append(f"the old cluster has no healthy host to take the traffic back "
                          f"(pool {current} at {share:.0f}% of capacity)")
            return
        await traffic.set_traffic({"current": 100.0, "target": 0.0}, check_capacity=False)

        async def turn_down(host: Host) -> None:
            name = host.name
            status = progress.hosts[name]
            async with limit:
                try:
                    if await traffic.backend(name) is not None:
                        await traffic.drain(name, name)
                        await traffic.remove_backend(name)
                    await self.procedure.command(host, "stop", self.fleet.releases.target, None)
                    status.release = None
                    status.phase = HostPhase.OUT_OF_SERVICE
                    await self.bus.emit("host_done", host=name, release=None, slot=None,
                                        mode="turn_down")
                except UpgraderError as exc:
                    errors.append(f"{name}: {exc}")

        await asyncio.gather(*(turn_down(h) for h in self.fleet.new_hosts
                               if not (progress.hosts[h.name].release is None and
                                       progress.hosts[h.name].phase == HostPhase.PENDING)))
        await traffic.emit_traffic()

    async def _assert_rolled_back(self) -> None:
        """An abort ends with the target pool at 0 % and drained."""
        if self.plan.rollback_mode == "flag":
            return      # no release changed; each flag read back off as it was turned off
        target = self.fleet.releases.target
        state = await self.traffic.balancer.state()
        serving = [n for n, b in state.backends.items() if b.pool == target and b.state == "ready"]
        if serving:
            raise BalancerError("after roll-back the target release still serves on "
                                + ", ".join(sorted(serving)[:10]))
        if state.split and state.split.get(target, 0) > 0:
            raise BalancerError(f"after roll-back {state.split[target]:g}% of traffic still "
                                f"goes to {target}")
        if state.routes is not None and target in (
                list(state.routes.groups.values()) + [p for _, p in state.routes.cohorts]
                + [state.routes.default]):
            raise BalancerError("after roll-back routes still send users to " + target)

    # -- shutdown

    async def shutdown(self, reason: str) -> Outcome:
        """Take upgraded hosts out of service while capacity allows; roll back the rest."""
        if self.plan.rollback_mode != "reinstall":
            # a swap or a traffic move IS taking the new release out of service, at once
            return await self.rollback(reason)
        machine, progress, traffic = self.machine, self.progress, self.traffic
        machine.interrupt.clear()
        machine.running.set()
        # journaled like a roll-back, so a crash now resumes by rolling back, never forward
        await self.bus.emit("rollback_started", reason=reason, hosts=self.touched(),
                            estimated_s=self.rollback_estimate(len(self.touched())),
                            mode="shutdown")
        if await self.flag_step.run(reason):
            return Outcome.FLAGS_OFF     # flags off, release kept: no host taken out
        target = self.fleet.releases.target
        main = self.fleet.main_hosts
        need = math.ceil(len(main) * self.fleet.strategy.min_capacity / 100.0)
        in_service = sum(1 for h in main if progress.hosts[h.name].phase in
                         (HostPhase.PENDING, HostPhase.IN_SERVICE))
        await machine.set_state(RolloutState.ROLLING_BACK,
                                f"shutting down upgraded hosts: {reason}")
        rest: list[str] = []
        errors: list[str] = []
        for name in self.touched():
            host = progress.hosts_by_name[name]
            if progress.hosts[name].release == target and in_service - 1 >= need:
                try:
                    await traffic.drain(name, name)
                    await self.procedure.command(host, "stop", target, None)
                    await traffic.set_backend_state(name, "maint")
                    progress.hosts[name].phase = HostPhase.OUT_OF_SERVICE
                    in_service -= 1
                    await self.bus.emit("host_done", host=name, release=target, slot=None,
                                        mode="shutdown")
                except UpgraderError as exc:
                    errors.append(f"{name}: {exc}")
            else:
                rest.append(name)
        if rest:
            await self.bus.emit("log", level="warning", message="capacity allows no more "
                                f"shut-downs; rolling back {len(rest)}")
            await self._rollback_reinstall(rest, errors)
        if errors:
            machine.failure = f"{reason}; shut-down incomplete: {'; '.join(errors[:5])}"
            return Outcome.FAILED
        return Outcome.SHUT_DOWN
