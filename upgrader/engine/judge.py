"""The statistical canary judge: per metric, the canary against the baseline over the same
samples, with a test and an effect size, and "inconclusive" when the samples cannot tell. Pure:
numbers in, a :class:`MetricJudgement` out (no I/O, no clock).

- A ``proportion`` metric (errors out of requests) is tested on counts: the canary's rate
  against the absolute limit ``max`` (an exact-enough one-sided score test of one proportion)
  and against the baseline's rate raised by ``max_increase`` (a one-sided two-proportion z test
  with the Agresti-Caffo correction, so zero counts are no division by zero).
- A ``value`` metric (latencies, ...) is tested on observations: Mann-Whitney U of the canary
  against the baseline scaled by ``1 + max_increase`` (normal approximation with the tie
  correction: the balancer's latencies are bucket bounds, full of ties), and, for ``max``, a
  binomial test of how many canary observations exceed it (for a p95: more than 5 %).

A metric **fails** only when a test rejects "the canary is within its limits" at ``alpha``
(the rounds look at the data again and again, so ``alpha`` is small: 0.1 % by default, a
Haybittle-Peto boundary); it **passes** when its estimate is within the limits and it has at
least the samples needed to detect the configured change with 80 % power; otherwise it is
**inconclusive** (too few samples, or an excess that is not significant yet). No canary sample
at all is ``no_data``, which the metric's ``no_data`` policy maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model import MetricSpec

#: one-sided level of every test (a Haybittle-Peto boundary: many looks, few false alarms)
ALPHA = 0.001
#: power and level the sample-size figure ("enough data to pass") is computed for
POWER = 0.8
DESIGN_ALPHA = 0.05
#: the smallest rise of a rate the sample size is computed to detect (1 percentage point):
#: doubling a 0.1 % error rate is not worth 40,000 requests of a canary
MIN_DETECTABLE = 0.01
#: the baseline rate assumed when the baseline has no events yet (for sample sizes)
FLOOR_RATE = 0.001
#: a round's score bands (Kayenta's defaults)
PASS_SCORE = 95.0
MARGINAL_SCORE = 75.0


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_isf(p: float) -> float:
    """The z with P(Z > z) = p (0 < p < 1), by bisection on :func:`normal_sf`."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if normal_sf(mid) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True, slots=True)
class TestResult:
    """One one-sided test: its statistic (a z score), its p-value, what it tested."""

    name: str
    statistic: float
    p_value: float
    hypothesis: str

    def to_json(self) -> dict[str, Any]:
        return {"test": self.name, "statistic": round(self.statistic, 4),
                "p_value": float(f"{self.p_value:.4g}"), "hypothesis": self.hypothesis}


def proportion_above(events: int, trials: int, limit: float) -> TestResult:
    """One-sided score test of H0: rate <= ``limit`` (a fraction) for ``events`` of
    ``trials``."""
    limit = min(max(limit, 1e-9), 1 - 1e-9)
    se = math.sqrt(limit * (1 - limit) / trials)
    z = (events / trials - limit) / se
    return TestResult("one-proportion z", z, normal_sf(z), f"rate <= {100 * limit:.4g}%")


def two_proportions(e1: int, n1: int, e0: int, n0: int, ratio: float) -> TestResult:
    """One-sided test of H0: p1 <= ratio * p0 (canary 1, baseline 0), Agresti-Caffo: one
    event and one non-event added to each side."""
    p1 = (e1 + 1) / (n1 + 2)
    p0 = (e0 + 1) / (n0 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + ratio * ratio * p0 * (1 - p0) / (n0 + 2))
    z = (p1 - ratio * p0) / se
    return TestResult("two-proportion z (Agresti-Caffo)", z, normal_sf(z),
                      f"canary rate <= {ratio:.4g} x baseline rate")


def mann_whitney(canary: Sequence[float], baseline: Sequence[float]) -> tuple[float, float,
                                                                                float]:
    """Mann-Whitney U of ``canary`` against ``baseline``: (U of the canary, z with the tie
    correction, one-sided p-value of "the canary tends to be larger"). Needs both sides."""
    n1, n0 = len(canary), len(baseline)
    merged = sorted([(v, 1) for v in canary] + [(v, 0) for v in baseline])
    rank_sum = 0.0
    ties = 0.0
    i = 0
    total = n1 + n0
    while i < total:
        j = i
        while j + 1 < total and merged[j + 1][0] == merged[i][0]:
            j += 1
        size = j - i + 1
        rank = (i + j) / 2 + 1
        rank_sum += rank * sum(1 for k in range(i, j + 1) if merged[k][1])
        ties += size ** 3 - size
        i = j + 1
    u = rank_sum - n1 * (n1 + 1) / 2
    mean = n1 * n0 / 2
    variance = n1 * n0 / 12 * ((total + 1) - ties / (total * (total - 1))) if total > 1 else 0
    if variance <= 0:
        return u, 0.0, 0.5
    z = (u - mean - 0.5) / math.sqrt(variance)       # continuity correction, one-sided
    return u, z, normal_sf(z)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n up to a few thousand)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
             + (n - i) * log_q for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def samples_for_proportion(p0: float, p1: float, *, two_sample: bool,
                           alpha: float = ALPHA, power: float = POWER,
                           baseline_ratio: float = 1.0) -> int | None:
    """Canary samples needed to tell a rate ``p1`` from ``p0`` (fractions) at ``alpha`` with
    ``power``; None when ``p1 <= p0``. Two samples: the baseline has ``baseline_ratio``
    samples for each of the canary's (1: the same size; a baseline of seven hosts beside a
    canary of one knows its rate seven times better, and the canary needs fewer)."""
    if p1 <= p0:
        return None
    za, zb = normal_isf(alpha), normal_isf(1 - power)
    if two_sample:
        k = max(baseline_ratio, 1e-3)
        mean = (p1 + k * p0) / (1 + k)
        n = (za * math.sqrt(mean * (1 - mean) * (1 + 1 / k)) +
             zb * math.sqrt(p1 * (1 - p1) + p0 * (1 - p0) / k)) ** 2
    else:
        n = (za * math.sqrt(p0 * (1 - p0)) + zb * math.sqrt(p1 * (1 - p1))) ** 2
    return math.ceil(n / (p1 - p0) ** 2)


def samples_for_shift(effect: float, *, alpha: float = ALPHA, power: float = POWER) -> int:
    """Samples per side a rank test needs to see P(canary > baseline) = 0.5 + ``effect``
    (Noether's formula)."""
    za, zb = normal_isf(alpha), normal_isf(1 - power)
    return math.ceil((za + zb) ** 2 / (12 * max(effect, 1e-3) ** 2 / 4) / 2)


# ------------------------------------------------------------------------------ judgements


@dataclass(frozen=True, slots=True)
class MetricJudgement:
    """One metric's verdict for one round, with everything that explains it."""

    metric: str
    result: str                      # pass | fail | inconclusive | no_data
    value: float | None              # the canary's figure (percent, p95, mean)
    baseline: float | None
    samples: int                     # the canary's samples (trials or observations)
    baseline_samples: int
    needed: int | None               # samples needed to detect the configured change
    effect: dict[str, float | None] = field(default_factory=dict)
    tests: tuple[TestResult, ...] = ()
    thresholds: dict[str, float | None] = field(default_factory=dict)
    reason: str = ""
    dry_run: bool = False
    critical: bool = False

    @property
    def decides(self) -> bool:
        return not self.dry_run

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "result": self.result, "value": self.value,
                "baseline": self.baseline, "samples": self.samples,
                "baseline_samples": self.baseline_samples, "needed": self.needed,
                "effect": self.effect, "tests": [t.to_json() for t in self.tests],
                "thresholds": self.thresholds, "reason": self.reason,
                "dry_run": self.dry_run, "critical": self.critical}


def _quantile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _quantile_of(metric: MetricSpec) -> float | None:
    """The quantile a value metric stands for (``p95`` ... in its name or query), else None
    (a mean)."""
    for text in (metric.name, metric.query if isinstance(metric.query, str) else ""):
        if text.startswith("p") and text[1:3].isdigit():
            return int(text[1:3]) / 100
        if text == "latency":
            return 0.95
    return None


def judge(metric: MetricSpec, canary: Sequence[float] = (),
          baseline: Sequence[float] = (), canary_counts: tuple[int, int] | None = None,
          baseline_counts: tuple[int, int] | None = None, *,
          alpha: float = ALPHA) -> MetricJudgement:
    """The verdict of one metric on the canary's and the baseline's samples (accumulated over
    the analysis window). See the module docstring for the rules."""
    if metric.kind == "proportion":
        return _judge_proportion(metric, canary, baseline, canary_counts, baseline_counts,
                                 alpha)
    return _judge_values(metric, canary, baseline, alpha)


def _no_data(metric: MetricSpec, baseline: float | None, n0: int) -> MetricJudgement:
    result = {"pass": "pass", "fail": "fail"}.get(metric.no_data, "no_data")
    return MetricJudgement(metric.name, result, None, baseline, 0, n0, None,
                           thresholds={"max": metric.max, "max_increase": metric.max_increase},
                           reason=f"no canary samples (no_data = {metric.no_data})",
                           dry_run=metric.dry_run, critical=metric.critical)


def _limit(metric: MetricSpec) -> float | None:
    """A proportion metric's absolute limit in percent, of the events judged (the non-events
    when fewer events is bad)."""
    if metric.max is not None and metric.direction == "decrease":
        return 100 - metric.max
    return metric.max


def samples_needed(metric: MetricSpec, baseline_rate: float | None = None, *,
                   baseline: bool = True, baseline_ratio: float = 1.0) -> int | None:
    """The canary samples ``metric`` needs before it may pass: enough to detect its
    configured limits (``max``, and ``max_increase`` when there is a ``baseline``) with 80 %
    power at 5 %; the largest of them, None without limits. ``baseline_rate`` (a fraction, a
    proportion's) is the baseline's rate when known (else ``FLOOR_RATE``). The judge uses
    it each round; ``upgrader plan`` before the rollout (no baseline rate yet).
    ``baseline_ratio``: the baseline's samples for each of the canary's (a baseline of seven
    hosts beside a canary of one: about 7; it knows its rate better, the canary needs fewer)."""
    needed: list[int] = []
    if metric.kind == "proportion":
        base = max(baseline_rate or 0.0, FLOOR_RATE)
        limit = _limit(metric)
        if limit is not None and base < limit / 100:
            size = samples_for_proportion(base, limit / 100, two_sample=False,
                                          alpha=DESIGN_ALPHA)
            if size is not None:
                needed.append(size)
        if metric.max_increase is not None and baseline:
            ratio = 1 + metric.max_increase / 100
            size = samples_for_proportion(base, min(0.999, max(base * ratio,
                                                               base + MIN_DETECTABLE)),
                                          two_sample=True, alpha=DESIGN_ALPHA,
                                          baseline_ratio=baseline_ratio)
            if size is not None:
                needed.append(size)
    else:
        if metric.max is not None:
            q = _quantile_of(metric)
            share = 1 - q if q is not None else 0.5
            needed.append(samples_for_proportion(share, min(0.999, 2 * share),
                                                 two_sample=False, alpha=DESIGN_ALPHA) or 1)
        if metric.max_increase is not None and baseline:
            needed.append(samples_for_shift(0.15, alpha=DESIGN_ALPHA))
    return max(needed) if needed else None


def _judge_proportion(metric: MetricSpec, canary: Sequence[float], baseline: Sequence[float],
                      canary_counts: tuple[int, int] | None,
                      baseline_counts: tuple[int, int] | None, alpha: float) -> MetricJudgement:
    if canary_counts is None and canary:        # 0/1 observations as counts
        canary_counts = (sum(1 for v in canary if v), len(canary))
    if baseline_counts is None and baseline:
        baseline_counts = (sum(1 for v in baseline if v), len(baseline))
    e0, n0 = baseline_counts if baseline_counts is not None else (0, 0)
    if metric.direction == "decrease":          # fewer events is bad: judge the non-events
        e0 = n0 - e0
        if canary_counts is not None:
            canary_counts = (canary_counts[1] - canary_counts[0], canary_counts[1])
    rate0 = e0 / n0 if n0 else None
    if canary_counts is None or canary_counts[1] == 0:
        return _no_data(metric, 100 * rate0 if rate0 is not None else None, n0)
    e1, n1 = canary_counts
    rate1 = e1 / n1
    tests: list[TestResult] = []
    over: list[str] = []
    limit = _limit(metric)
    if limit is not None:
        test = proportion_above(e1, n1, limit / 100)
        tests.append(test)
        if rate1 > limit / 100:
            over.append(f"{100 * rate1:.3g}% > max {limit:g}%")
    ratio = None
    if metric.max_increase is not None and n0:
        ratio = 1 + metric.max_increase / 100
        tests.append(two_proportions(e1, n1, e0, n0, ratio))
        if rate0 is not None and rate1 > ratio * max(rate0, 1 / (n0 + 2)):
            over.append(f"{100 * rate1:.3g}% > baseline {100 * rate0:.3g}% + "
                        f"{metric.max_increase:g}%")
    needed = samples_needed(metric, rate0, baseline=bool(n0),
                            baseline_ratio=n0 / n1 if n1 else 1.0)
    effect = {"difference_pct": round(100 * (rate1 - rate0), 4) if rate0 is not None else None,
              "relative_pct": round(100 * (rate1 - rate0) / rate0, 2) if rate0 else None}
    return _decide(metric, 100 * rate1, 100 * rate0 if rate0 is not None else None, n1, n0,
                   needed, effect, tuple(tests), over, alpha,
                   f"{e1} events in {n1}; baseline {e0} in {n0}")


def _judge_values(metric: MetricSpec, canary: Sequence[float], baseline: Sequence[float],
                  alpha: float) -> MetricJudgement:
    sign = -1.0 if metric.direction == "decrease" else 1.0
    q = _quantile_of(metric)

    def figure(values: Sequence[float]) -> float | None:
        if not values:
            return None
        return _quantile(values, q) if q is not None else sum(values) / len(values)

    value, base_value = figure(canary), figure(baseline)
    n1, n0 = len(canary), len(baseline)
    if not n1:
        return _no_data(metric, base_value, n0)
    tests: list[TestResult] = []
    over: list[str] = []
    effect: dict[str, float | None] = {}
    if metric.max is not None:
        share = 1 - q if q is not None else 0.5
        above = sum(1 for v in canary if sign * v > sign * metric.max)
        p = binomial_tail(above, n1, share)
        tests.append(TestResult("binomial exceedance", above / n1, p,
                                f"at most {100 * share:g}% of samples beyond {metric.max:g}"))
        if value is not None and sign * value > sign * metric.max:
            over.append(f"{value:.4g} beyond max {metric.max:g}")
    if metric.max_increase is not None and n0:
        ratio = 1 + sign * metric.max_increase / 100
        scaled = [sign * v * ratio for v in baseline]
        u, z, p = mann_whitney([sign * v for v in canary], scaled)
        tests.append(TestResult("Mann-Whitney U", z, p,
                                f"canary not {'above' if sign > 0 else 'below'} baseline x "
                                f"{ratio:.4g}"))
        delta = round(2 * u / (n1 * n0) - 1, 4)
        effect["cliffs_delta"] = delta
        if value is not None and base_value is not None and \
                sign * value > sign * base_value * ratio and delta > 0:
            over.append(f"{value:.4g} beyond baseline {base_value:.4g} x {ratio:.4g}")
    if value is not None and base_value:
        effect["relative_pct"] = round(100 * (value - base_value) / abs(base_value), 2)
    return _decide(metric, value, base_value, n1, n0,
                   samples_needed(metric, baseline=bool(n0)), effect, tuple(tests), over,
                   alpha, f"{n1} samples; baseline {n0}")


def _decide(metric: MetricSpec, value: float | None, baseline: float | None, n1: int, n0: int,
            needed: int | None, effect: dict[str, float | None], tests: tuple[TestResult, ...],
            over: list[str], alpha: float, counted: str) -> MetricJudgement:
    significant = [t for t in tests if t.p_value < alpha]
    if over and significant:
        result = "fail"
        reason = "; ".join(over) + f" (p = {min(t.p_value for t in significant):.2g} < {alpha:g})"
    elif over:
        result = "inconclusive"
        reason = "; ".join(over) + f", not significant yet (p = " \
            f"{min(t.p_value for t in tests) if tests else 1:.2g} >= {alpha:g})"
    elif needed is not None and n1 < needed:
        result = "inconclusive"
        reason = f"within limits, but {n1} samples < {needed} needed to detect the limit"
    else:
        result = "pass"
        reason = "within limits"
    return MetricJudgement(metric.name, result, value, baseline, n1, n0, needed, effect,
                           tests, {"max": metric.max, "max_increase": metric.max_increase,
                                   "alpha": alpha},
                           f"{reason} ({counted})", dry_run=metric.dry_run,
                           critical=metric.critical)


def round_score(judgements: Sequence[MetricJudgement]) -> tuple[float | None, str]:
    """A round's score (0-100: the share of conclusive deciding metrics that pass; dry-run
    metrics left out) and its band: pass (>= 95), marginal (>= 75), fail, or inconclusive
    when no deciding metric is conclusive."""
    conclusive = [j for j in judgements if j.decides and j.result in ("pass", "fail")]
    if not conclusive:
        return None, "inconclusive"
    score = 100.0 * sum(1 for j in conclusive if j.result == "pass") / len(conclusive)
    band = "pass" if score >= PASS_SCORE else "marginal" if score >= MARGINAL_SCORE else "fail"
    return round(score, 1), band
