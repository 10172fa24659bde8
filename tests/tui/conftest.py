"""Fixtures of the TUI tests; the helpers themselves live in ``tuikit.py`` beside this file
(a fleet builder copied from tests/unit, a live engine in the app's event loop, a bounded wait,
a fake handle with a frozen snapshot)."""

from __future__ import annotations

import pytest
import tuikit


@pytest.fixture
def fake():
    """``fake(kind)``: a frozen app on a fake handle in the named scenario."""

    def build(kind: str, **kwargs):
        return tuikit.frozen_app(tuikit.scenario(kind), **kwargs)

    return build
