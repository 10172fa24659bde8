"""The pure flag-bisection search: one culprit in O(log n) runs, a combination that fails only
together by delta debugging (binary reduction)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader.flags.bisect import Outcome, find_culprits

FLAGS = [f"flag-{i:02d}" for i in range(64)]


def failing_when(*groups: set[str]):
    """A test that fails when every flag of any one group is on; counts its runs."""
    calls: list[frozenset[str]] = []

    def test(on: frozenset[str]) -> bool:
        calls.append(on)
        return not any(group <= on for group in groups)

    test.calls = calls  # type: ignore[attr-defined]
    return test


@pytest.mark.parametrize("culprit", FLAGS)
def test_one_culprit_among_64_flags_in_at_most_7_runs(culprit):
    test = failing_when({culprit})
    result = find_culprits(FLAGS, test)
    assert result.outcome is Outcome.CULPRIT
    assert result.culprits == (culprit,)
    assert result.runs <= 7
    assert result.runs == len(test.calls) == len(set(test.calls))   # no run repeated
    assert [s.number for s in result.steps] == list(range(1, result.runs + 1))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 100, 1000])
def test_runs_grow_with_log_n(n):
    flags = [f"f{i}" for i in range(n)]
    for culprit in {flags[0], flags[n // 2], flags[-1]}:
        result = find_culprits(flags, failing_when({culprit}))
        assert result.culprits == (culprit,)
        assert result.runs <= math.ceil(math.log2(n)) + 2


def test_a_pair_that_fails_only_together_is_the_minimal_combination():
    test = failing_when({"flag-05", "flag-40"})
    result = find_culprits(FLAGS, test)
    assert result.outcome is Outcome.COMBINATION
    assert result.culprits == ("flag-05", "flag-40")
    # 1-minimal: turning off either one makes the test pass
    assert test(frozenset({"flag-05"})) and test(frozenset({"flag-40"}))
    assert result.runs <= 24          # 7 for the failed bisection, about 2 * log2(64) more
    assert {s.phase for s in result.steps} >= {"bisect", "minimize"}


@pytest.mark.parametrize("pair", [("flag-00", "flag-01"), ("flag-00", "flag-63"),
                                  ("flag-31", "flag-32"), ("flag-62", "flag-63")])
def test_any_pair_among_64_in_few_runs(pair):
    result = find_culprits(FLAGS, failing_when(set(pair)))
    assert result.culprits == pair and result.runs <= 24


def test_a_triple_that_fails_only_together():
    result = find_culprits(FLAGS, failing_when({"flag-01", "flag-33", "flag-62"}))
    assert result.outcome is Outcome.COMBINATION
    assert result.culprits == ("flag-01", "flag-33", "flag-62")


def test_passes_with_every_flag_on_is_nothing_to_find():
    result = find_culprits(FLAGS, lambda on: True)
    assert result.outcome is Outcome.PASSES_WITH_ALL
    assert result.culprits == () and not result.found
    assert result.steps[-1].on == frozenset(FLAGS) and result.steps[-1].passed


def test_fails_with_no_flag_on_is_nothing_to_find():
    result = find_culprits(FLAGS, lambda on: False)
    assert result.outcome is Outcome.FAILS_WITHOUT_FLAGS
    assert result.culprits == ()
    assert result.steps[-1].on == frozenset() and not result.steps[-1].passed


def test_no_candidates():
    result = find_culprits([], lambda on: True)
    assert result.outcome is Outcome.NO_CANDIDATES and result.runs == 0


def test_duplicates_count_once_and_order_is_kept():
    result = find_culprits(["b", "a", "b", "c"], failing_when({"c"}, {"a"}))
    assert result.found and set(result.culprits) <= {"a", "c"}


def test_on_step_sees_each_run_as_it_happens():
    seen = []
    result = find_culprits(FLAGS[:8], failing_when({"flag-06"}), on_step=seen.append)
    assert tuple(seen) == result.steps


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), data=st.data())
def test_any_single_culprit_or_pair_is_found_exactly(n, data):
    flags = [f"f{i}" for i in range(n)]
    size = data.draw(st.integers(1, min(2, n)))
    group = set(data.draw(st.lists(st.sampled_from(flags), min_size=size, max_size=size,
                                   unique=True)))
    result = find_culprits(flags, failing_when(group))
    assert set(result.culprits) == group
    assert result.outcome is (Outcome.CULPRIT if size == 1 else Outcome.COMBINATION)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 30), data=st.data())
def test_the_result_is_always_a_1_minimal_failing_set(n, data):
    flags = [f"f{i}" for i in range(n)]
    groups = data.draw(st.lists(st.sets(st.sampled_from(flags), min_size=1, max_size=3),
                                min_size=1, max_size=3))
    test = failing_when(*groups)
    result = find_culprits(flags, test)
    assert result.found
    culprits = frozenset(result.culprits)
    assert not test(culprits)
    for key in culprits:
        assert test(culprits - {key})
