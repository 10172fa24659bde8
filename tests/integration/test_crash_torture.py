"""Crash torture: for rolling, canary, shedding and blue-green, a controller SIGKILLed at
seeded random points of a real lab rollout under live traffic (and sometimes its resume
too), then `upgrader resume` to the end. Afterwards every host runs the target, installed it
exactly once, the balancer is as the journal says, and no user request failed. A bad release
is rolled back, killed during the roll-back, and the resumed roll-back ends with every host
on the old release.

Reproduce: ``TORTURE_SEED=7 TORTURE_POINTS=5 .venv/bin/python -m pytest -s
tests/integration/test_crash_torture.py`` (each point prints its kill point and result;
``TORTURE_REPORT=FILE`` also appends those lines to FILE).
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
from torture import PointResult, TortureError, TortureLab, points, seed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STRATEGIES = ["rolling", "canary", "shedding", "bluegreen"]


def _points(tmp_path, strategy: str, check, *, bad: bool = False, count: int | None = None):
    rng = random.Random(f"{seed()}-{strategy}-{'bad' if bad else 'good'}")
    results, failures = [], []
    for i in range(count if count is not None else points()):
        where = tmp_path / f"p{i}"
        where.mkdir()
        lab = TortureLab(where, strategy, target="1.1.0-bad" if bad else "1.1.0")
        label = f"seed {seed()} {strategy}{' bad' if bad else ''} point {i + 1}"
        try:
            lab.up()
            result = lab.run_point(rng, label, bad=bad)
            problems = check(lab, result)
            lab.traffic(result, lab.down())
            if not bad and result.failed:
                problems.append(f"{result.failed} user requests failed")
        except TortureError as exc:
            problems, result = [str(exc)], None
        finally:
            lab.cleanup()
        line = (result.line() + (f"; PROBLEMS {problems}" if problems else "")) if result \
            else f"{label}: {problems}"
        print("  " + line)
        if os.environ.get("TORTURE_REPORT"):        # rows for docs/RELIABILITY.md
            with open(os.environ["TORTURE_REPORT"], "a", encoding="utf-8") as report:
                report.write(line + "\n")
        results.append(result)
        if problems:
            failures.append(f"{result.label if result else label}: {problems}")
        shutil.rmtree(where, ignore_errors=True)
    assert not failures, "\n".join(failures)
    return results


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigkilled_controller_resumes_to_a_clean_fleet(tmp_path, strategy):
    print(f"\ncrash torture {strategy}: TORTURE_SEED={seed()} TORTURE_POINTS={points()}")
    _points(tmp_path, strategy, TortureLab.check_completed)


def test_sigkill_during_roll_back_of_a_bad_release_ends_on_the_old_release(tmp_path):
    print(f"\ncrash torture roll-back: TORTURE_SEED={seed()}")
    _points(tmp_path, "rolling", TortureLab.check_rolled_back, bad=True,
            count=max(1, points() // 2))


def test_resume_reconciles_a_fleet_changed_while_no_controller_ran(tmp_path):
    """Killed after the first host; then, with no controller running, web-01's backend is
    drained and the target is installed on web-04 by hand. `upgrader resume` finds both,
    says so (one `reconcile` event each), enables web-01 after a health check and finishes
    web-04 without installing it a second time."""
    lab = TortureLab(tmp_path, "rolling")
    try:
        lab.up()
        first = lab.controller("run")
        event = first.run_to(lambda e, c: e["kind"] == "host_done" and e["host"] == "web-01")
        assert event is not None, first.err()[-2000:]
        first.sigkill()
        tamper(lab)
        resumed = lab.controller("resume")
        code = resumed.finish()
        assert code == 0, resumed.err()[-3000:]
        found = {e["subject"]: e for e in resumed.events if e["kind"] == "reconcile"}
        print("\n" + "\n".join(f"  reconcile {s}: {e['action']}: {e['detail']}"
                               for s, e in sorted(found.items())))
        assert found["web-01"]["action"] == "enable"
        assert found["web-01"]["real"]["state"] == "drain"
        assert found["web-04"]["action"] == "in_doubt"
        assert (found["web-04"]["journal"], found["web-04"]["real"]) == ("1.0.0", "1.1.0")
        assert set(found) == {"web-01", "web-04"}
        result = PointResult("reconcile", outcome=resumed.summary["outcome"])
        problems = lab.check_completed(result)         # web-04 installed the target once
        stats = lab.down()
        assert not problems, problems
        assert stats.get("failed") == 0, stats.get("errors")
    finally:
        lab.cleanup()


def tamper(lab: TortureLab) -> None:
    import asyncio

    from upgrader.lab import hostctl

    client = lab.lab()._balancer_client()

    async def drain() -> None:
        try:
            await client.set_backend_state("web-01", "drain")
        finally:
            await client.aclose()

    asyncio.run(drain())
    hostctl.install(lab.lab().layout.host_root("web-04"), "default", "1.1.0")
