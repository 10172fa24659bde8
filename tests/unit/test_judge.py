"""The statistical judge (engine/judge.py): its statistics against known values and
invariants (hypothesis), and its decisions: fail only on evidence, inconclusive on too few
samples, dry-run never decides, the round's score and bands."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader.engine.judge import (
    ALPHA,
    binomial_tail,
    judge,
    mann_whitney,
    normal_isf,
    normal_sf,
    round_score,
    samples_for_proportion,
    two_proportions,
)
from upgrader.model import MetricSpec

ERRORS = MetricSpec("error_rate", "balancer", "error_rate", kind="proportion", max=1.0,
                    max_increase=100.0)
P95 = MetricSpec("p95_latency", "balancer", "p95_latency", kind="value", max=0.3,
                 max_increase=50.0)


def test_normal_tail_known_values() -> None:
    assert math.isclose(normal_sf(0), 0.5)
    assert math.isclose(normal_sf(1.959964), 0.025, rel_tol=1e-5)
    assert math.isclose(normal_isf(0.05), 1.644854, rel_tol=1e-5)


def test_mann_whitney_matches_a_hand_computed_case() -> None:
    # canary 4, 5, 6 against baseline 1, 2, 3: every canary value is larger: U = 9
    u, z, p = mann_whitney([4, 5, 6], [1, 2, 3])
    assert u == 9 and z > 0 and p < 0.05
    # ties: all equal, U = n1 * n0 / 2, no evidence
    u, _, p = mann_whitney([1, 1, 1], [1, 1, 1, 1])
    assert u == 6 and p >= 0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5]), min_size=1, max_size=40),
       st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5]), min_size=1, max_size=40))
def test_mann_whitney_u_is_symmetric_and_in_range(a: list[float], b: list[float]) -> None:
    u_ab, z_ab, p_ab = mann_whitney(a, b)
    u_ba, z_ba, _ = mann_whitney(b, a)
    assert 0 <= u_ab <= len(a) * len(b)
    assert math.isclose(u_ab + u_ba, len(a) * len(b))
    assert 0 <= p_ab <= 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.001, 2.0), min_size=5, max_size=40),
       st.floats(0.01, 1.0))
def test_shifting_the_canary_up_never_lowers_the_evidence(values: list[float],
                                                         shift: float) -> None:
    baseline = sorted(values)
    _, z_same, _ = mann_whitney(values, baseline)
    _, z_up, _ = mann_whitney([v + shift for v in values], baseline)
    assert z_up >= z_same - 1e-9


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 200), st.integers(1, 400), st.integers(0, 200), st.integers(1, 400))
def test_more_canary_errors_never_lower_the_statistic(e1: int, n1: int, e0: int,
                                                      n0: int) -> None:
    # rates a limit is about: the baseline's raised rate well below 1
    e1, e0 = min(e1, n1 - 1) if n1 > 1 else 0, min(e0, n0 // 4)
    low = two_proportions(e1, n1, e0, n0, 2.0)
    high = two_proportions(e1 + 1, n1, e0, n0, 2.0)
    assert high.statistic >= low.statistic and 0 <= high.p_value <= 1


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 50), st.integers(1, 50), st.floats(0.01, 0.5))
def test_binomial_tail_is_a_probability_decreasing_in_k(k: int, extra: int, p: float) -> None:
    n = k + extra
    assert 0 <= binomial_tail(k + 1, n, p) <= binomial_tail(k, n, p) <= 1


def test_samples_needed_grow_as_the_change_shrinks() -> None:
    big = samples_for_proportion(0.001, 0.05, two_sample=True)
    small = samples_for_proportion(0.001, 0.01, two_sample=True)
    assert big is not None and small is not None and small > big
    assert samples_for_proportion(0.01, 0.01, two_sample=True) is None


def test_a_small_canary_of_a_good_release_is_inconclusive_never_failed() -> None:
    """60 requests, no error: too few to say the rate is below 1 %: inconclusive."""
    verdict = judge(ERRORS, canary_counts=(0, 60), baseline_counts=(2, 2000))
    assert verdict.result == "inconclusive" and verdict.needed and verdict.needed > 60
    assert "needed" in verdict.reason


def test_one_error_in_a_tiny_canary_is_not_a_failure_by_noise() -> None:
    """1 error in 30 requests is 3.3 % > 1 %, but not significant: inconclusive."""
    verdict = judge(ERRORS, canary_counts=(1, 30), baseline_counts=(2, 2000))
    assert verdict.result == "inconclusive" and "not significant" in verdict.reason


def test_a_clear_increase_fails_with_its_statistics() -> None:
    verdict = judge(ERRORS, canary_counts=(30, 300), baseline_counts=(2, 2000))
    assert verdict.result == "fail"
    assert any(t.p_value < ALPHA for t in verdict.tests)
    assert verdict.effect["relative_pct"] and verdict.effect["relative_pct"] > 100
    assert verdict.to_json()["tests"][0]["test"]


def test_enough_good_samples_pass() -> None:
    assert judge(ERRORS, canary_counts=(1, 3000), baseline_counts=(3, 6000)).result == "pass"


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_same_distribution_never_fails_at_alpha(seed: int) -> None:
    """Canary and baseline drawn from the same latencies: no failure (alpha is 0.1 %, the
    draw is seeded; a failure here would be one in a thousand)."""
    rng = random.Random(seed)
    buckets = [0.01, 0.025, 0.05, 0.1, 0.25]
    baseline = [rng.choice(buckets) for _ in range(400)]
    canary = [rng.choice(buckets) for _ in range(200)]
    assert judge(P95, canary, baseline).result != "fail"


def test_a_slow_release_fails_on_latency() -> None:
    rng = random.Random(7)
    baseline = [rng.choice([0.01, 0.025, 0.05]) for _ in range(500)]
    canary = [rng.choice([0.25, 0.5, 1.0]) for _ in range(60)]
    verdict = judge(P95, canary, baseline)
    assert verdict.result == "fail" and verdict.effect["cliffs_delta"] == 1.0


def test_no_canary_samples_follow_the_metric_no_data_policy() -> None:
    assert judge(ERRORS, baseline_counts=(0, 10)).result == "no_data"
    failing = MetricSpec("e", kind="proportion", query="error_rate", max=1.0, no_data="fail")
    assert judge(failing).result == "fail"


def test_decrease_is_judged_the_other_way() -> None:
    success = MetricSpec("success", kind="proportion", query="ok", direction="decrease",
                         max=99.0)
    assert judge(success, canary_counts=(800, 1000)).result == "fail"
    assert judge(success, canary_counts=(1000, 1000)).result == "pass"


def test_round_score_bands_and_dry_run() -> None:
    fail = judge(ERRORS, canary_counts=(30, 300), baseline_counts=(2, 2000))
    good = judge(ERRORS, canary_counts=(1, 3000), baseline_counts=(3, 6000))
    assert round_score([good, good]) == (100.0, "pass")
    assert round_score([good, fail]) == (50.0, "fail")
    dry = judge(MetricSpec("e", kind="proportion", query="error_rate", max=1.0, dry_run=True),
                canary_counts=(30, 300))
    assert dry.result == "fail" and not dry.decides
    assert round_score([good, dry]) == (100.0, "pass")
    assert round_score([judge(ERRORS, canary_counts=(0, 10))]) == (None, "inconclusive")


def test_samples_needed_against_a_bigger_baseline_are_fewer() -> None:
    """A baseline k times the canary's size is known k times better: the canary needs fewer
    samples (the same figure as before for a baseline of the canary's size)."""
    same = samples_for_proportion(0.001, 0.011, two_sample=True)
    assert samples_for_proportion(0.001, 0.011, two_sample=True, baseline_ratio=1) == same
    seven = samples_for_proportion(0.001, 0.011, two_sample=True, baseline_ratio=7)
    assert same is not None and seven is not None and seven < same / 2
    # the floor: a very big baseline leaves the one-sample figure against its rate
    huge = samples_for_proportion(0.001, 0.011, two_sample=True, baseline_ratio=1e6)
    one = samples_for_proportion(0.001, 0.011, two_sample=False)
    assert huge is not None and one is not None and abs(huge - one) <= 0.05 * one


def test_a_one_host_canary_of_a_good_release_passes_against_seven_baseline_hosts() -> None:
    """The demo's load: a canary of 1 host of 8 at 200 requests/s sees 25 a second; 300 of
    them without an error, beside 2,100 of the baseline, are enough (737 were asked before,
    as if the baseline were no bigger than the canary: 30 s of a 1-host canary)."""
    metric = MetricSpec("error_rate", "balancer", "error_rate", kind="proportion", max=2.0,
                        max_increase=100.0)
    verdict = judge(metric, canary_counts=(0, 300), baseline_counts=(0, 2100))
    assert verdict.result == "pass", verdict.reason
    assert verdict.needed is not None and verdict.needed <= 300
    assert judge(metric, canary_counts=(0, 300), baseline_counts=(0, 300)).result == \
        "inconclusive"


def test_the_default_window_pools_a_hold_and_its_extension() -> None:
    """20 rounds: the demo's hold (6 s) and its extension (12 s) at 1 s rounds, and the
    default hold (60 s) and its extension at 10 s rounds, are pooled whole."""
    from upgrader.model import VerifySpec

    spec = VerifySpec()
    assert spec.window >= 3 * spec.for_ / spec.interval
    assert spec.window >= 3 * 6 / 1
