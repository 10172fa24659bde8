"""Rebuild a rollout's progress from its journal, so ``upgrader resume`` neither repeats nor
skips a host. Pure: journal entries in, :class:`ResumeState` out.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..journal import JournalEntry, RolloutRecord
from ..model import Fleet
from .progress import ResumeState

#: a host whose last recorded phase is one of these was mid-procedure when the controller died
_FINAL_MODES = {"upgrade", "rollback", "swap", "turn_down", "shutdown", "prepare"}


def replay(record: RolloutRecord, entries: Iterable[JournalEntry], fleet: Fleet) -> ResumeState:
    state = ResumeState(rollout=record.id)
    state.releases = {h.name: (record.current if h.cluster == "main" else None)
                      for h in fleet.hosts}
    current_step: int | None = None
    last_phase: dict[str, str] = {}
    heading: dict[str, str | None] = {}
    for entry in entries:
        data = entry.data
        state.seq = max(state.seq, entry.seq)
        kind = entry.kind
        if kind == "rollout_started" and state.started_wall is None:
            state.started_wall = entry.ts
        elif kind == "step_started":
            current_step = data["index"]
        elif kind == "step_finished":
            state.done_steps.add(data["index"])
        elif kind == "traffic":
            state.traffic = {key: data.get(key) for key in ("split", "routes", "maintenance")}
        elif kind == "pause_started":
            state.pause_started[data["index"]] = entry.ts
        elif kind == "host_phase":
            last_phase[data["host"]] = data["phase"]
            state.hosts_back_begun |= state.rolling_back
            heading[data["host"]] = data.get("release")
        elif kind == "host_done":
            host = data["host"]
            last_phase.pop(host, None)
            mode = data.get("mode")
            if mode == "turn_down":
                state.turned_down.add(host)
            elif mode in ("upgrade", "rollback") and host in state.turned_down:
                state.turned_down.discard(host)
            if mode == "ok":            # found done by the inventory before the first step
                state.already_done.add(host)
            if mode in ("upgrade", "rollback", "swap", "turn_down", "ok"):
                state.releases[host] = data.get("release")
            if mode == "swap" or (mode == "rollback" and data.get("slot")):
                state.live_slots[host] = data["slot"]
            if current_step is not None and mode in ("upgrade", "prepare", "swap", "turn_down"):
                state.hosts_done.setdefault(current_step, set()).add(host)
        elif kind == "slots":
            for host, slot in data.get("live", {}).items():
                state.live_slots.setdefault(host, slot)
            for host, slot in data.get("original", {}).items():
                state.original_slots.setdefault(host, slot)
        elif kind == "snapshot_taken":
            state.snapshots[data["host"]] = data["snapshot"]
        elif kind == "flag":
            if data.get("on"):
                state.flags_on.add(data["key"])
            else:
                state.flags_on.discard(data["key"])
        elif kind == "analysis_failed":
            state.flags_first_applies = True
        elif kind == "flags_first":
            if data.get("phase") == "begin":
                state.flags_first = "begun"
                state.flags_first_begin = dict(data)
            else:
                state.flags_first = "cured" if data.get("cured") else "not cured"
        elif kind == "rollback_started":
            state.rolling_back = True
            state.rollback_reason = data.get("reason", "")
            state.frozen = None
        elif kind == "frozen":
            state.frozen = data.get("reason") or "frozen"
        elif kind == "control" and data.get("action") == "resume":
            state.frozen = None     # an operator answered the freeze: go on
        elif kind == "control" and data.get("action") == "abort":
            state.flags_first_applies = False       # an operator's abort: no flag step
            # roll back (rollback_started follows), or stop where it stands: frozen
            state.frozen = (None if data.get("rollback", True) else
                            state.frozen or "aborted by operator without roll-back")
    if current_step is not None and current_step not in state.done_steps:
        state.step_in_progress = current_step
    state.in_doubt = dict(last_phase)
    state.in_doubt_release = {host: heading.get(host) for host in last_phase}
    return state
