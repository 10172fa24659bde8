"""Every strategy ``upgrader demo --help`` offers builds a demo fleet and plan; a demo that
fails before its lab starts leaves no temp folder behind."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import pytest

from upgrader.cli import _parser
from upgrader.config import loads_fleet
from upgrader.demo import _demo, demo_fleet_text, fill_demo_flags
from upgrader.errors import ConfigError
from upgrader.plugins import Plugins
from upgrader.rollout import compile_plan, compress


def _offered() -> list[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    demo = sub.choices["demo"]
    strategy = next(a for a in demo._actions if "--strategy" in a.option_strings)
    assert strategy.choices is not None
    return list(strategy.choices)


def test_demo_offers_feature() -> None:
    assert "feature" in _offered()


@pytest.mark.parametrize("strategy", _offered())
@pytest.mark.parametrize("bad", [False, True])
def test_every_offered_strategy_builds_a_demo_fleet_and_plan(strategy: str, bad: bool,
                                                             tmp_path: Path) -> None:
    text = demo_fleet_text(strategy, hosts=8, bad=bad, base_port=18000, lab_dir=tmp_path)
    if strategy == "feature":
        fill_demo_flags(tmp_path)
    fleet = loads_fleet(text, source="<demo fleet>", registry=Plugins())
    plan = compile_plan(fleet)
    fleet, plan = compress(fleet, plan, 10.0)
    assert plan.strategy == strategy
    assert plan.steps


def test_the_feature_demo_has_its_flag_in_its_store(tmp_path: Path) -> None:
    from upgrader.flags.store import open_store

    text = demo_fleet_text("feature", hosts=4, bad=False, base_port=18000, lab_dir=tmp_path)
    fill_demo_flags(tmp_path)
    fleet = loads_fleet(text, source="<demo fleet>", registry=Plugins())
    assert fleet.flags is not None
    with open_store(fleet.flags.store) as store:
        flag = store.load().flags["demo-feature"]
        assert flag.env(fleet.flags.environment).enabled is False
    # the store lives in the lab folder, so it goes away with it
    assert Path(fleet.flags.store).parent == tmp_path


def test_a_demo_that_fails_before_its_lab_starts_leaves_no_temp_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = argparse.Namespace(strategy="no-such-strategy", hosts=4, bad_release=False,
                              speed=1.0, rps=10, headless=True, keep=False)
    with pytest.raises((KeyError, ConfigError)):
        asyncio.run(_demo(args))
    assert list(tmp_path.iterdir()) == []
