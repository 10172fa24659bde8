"""Release-name suffixes of the lab's app: which behaviour a name asks for."""

from __future__ import annotations

import pytest

from upgrader.lab.app import error_rate_of, variant_of


@pytest.mark.parametrize(("release", "variant", "rate"), [
    ("1.1.0", "good", 0.0),
    ("1.1.0-bad", "errors", 0.0),
    ("1.1.0-slow", "slow", 0.0),
    ("1.1.0-err5", "err5", 0.05),
    ("1.0.0-err1", "err1", 0.01),       # a base release with a background error rate
    ("1.1.0-r12-err2", "err2", 0.02),
    ("1.1.0-err30", "err30", 0.30),
    ("1.1.0-err100", "err100", 1.0),
    ("1.1.0-err101", "good", 0.0),      # not a share: an ordinary name
    ("1.1.0-err", "good", 0.0),
    ("1.1.0-err5x", "good", 0.0),
])
def test_error_rate_suffix(release, variant, rate):
    assert variant_of(release) == variant
    assert error_rate_of(variant_of(release)) == rate
