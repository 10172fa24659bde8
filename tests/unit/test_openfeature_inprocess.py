"""The in-process OpenFeature provider (upgrader.flags.openfeature) through the real SDK."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openfeature", reason="openfeature-sdk is not installed: "
                    "pip install -e '.[test]'")

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from upgrader.errors import ConfigError
from upgrader.flags.loader import loads
from upgrader.flags.openfeature import UpgraderProvider
from upgrader.flags.store import open_store

pytestmark = pytest.mark.timeout(30)

ENV = "production"
FLAGS_TOML = """
environments = ["staging", "production"]

[tiers.silver]
flags = { support = "on" }
[tiers.gold]
extends = "silver"

[flags.checkout]
[flags.checkout.environments.production]
enabled = true
targets = { on = ["alice"] }
rules = [
  { name = "beta", groups = ["beta"], variant = "on" },
  { name = "members-30", tiers = ["silver"], variant = "on", percent = 30 },
]

[flags.support]
[flags.support.environments.production]
enabled = true

[flags.banner]
variants = { none = "", sale = "50% off" }
off = "none"
default = "sale"
[flags.banner.environments.production]
enabled = true

[flags.max-items]
variants = { low = 10, high = 100 }
off = "low"
[flags.max-items.environments.production]
enabled = true
rules = [{ name = "gold", tiers = ["gold"], variant = "high" }]

[flags.ratio]
variants = { half = 0.5, all = 1 }
off = "half"
[flags.ratio.environments.production]
enabled = true
default = "all"

[flags.layout]
variants = { a = { columns = 2 }, b = { columns = 3, dense = true } }
off = "a"
[flags.layout.environments.production]
enabled = true
default = "b"
"""


@pytest.fixture
def store_spec(tmp_path: Path) -> str:
    spec = str(tmp_path / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(loads(FLAGS_TOML), actor="test")
    return spec


@pytest.fixture
def provider(store_spec: str) -> Iterator[UpgraderProvider]:
    provider = UpgraderProvider(store_spec, ENV, poll_interval=0.05)
    api.set_provider(provider, "inprocess")
    yield provider
    api.clear_providers()      # shuts the provider down


@pytest.fixture
def client(provider: UpgraderProvider) -> Any:
    return api.get_client("inprocess")


def ctx(key: str | None = None, **attributes: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=key, attributes=attributes)


def wait_until(predicate: Callable[[], bool], timeout: float, message: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{message}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started


def test_boolean_by_user_group_and_tier(client):
    alice = client.get_boolean_details("checkout", False, ctx("alice"))
    assert (alice.value, alice.variant, alice.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert alice.flag_metadata == {"rule": "targets"}
    beta = client.get_boolean_details("checkout", False, ctx("bob", groups=["beta"]))
    assert beta.value is True and beta.flag_metadata == {"rule": "beta"}
    gold = client.get_boolean_details("support", False, ctx("x", tier="gold"))
    assert gold.value is True and gold.flag_metadata == {"rule": "tier:silver"}
    nobody = client.get_boolean_details("checkout", True, ctx("carol"))
    assert (nobody.value, nobody.reason) == (False, Reason.DEFAULT)


def test_split_reason_for_the_percentage_rollout(client):
    reasons = [client.get_boolean_details("checkout", False, ctx(f"u{i}", tier="gold")).reason
               for i in range(300)]
    share = reasons.count(Reason.SPLIT) / len(reasons)
    assert 0.2 < share < 0.4
    assert set(reasons) == {Reason.SPLIT, Reason.DEFAULT}


def test_string_integer_float_and_object(client):
    banner = client.get_string_details("banner", "", ctx())
    assert (banner.value, banner.variant, banner.reason) == ("50% off", "sale", Reason.STATIC)
    assert client.get_integer_value("max-items", 0, ctx("u", tier="gold")) == 100
    assert client.get_integer_value("max-items", 0, ctx("u", tier="silver")) == 10
    ratio = client.get_float_details("ratio", 0.0, ctx())
    assert ratio.value == 1.0 and isinstance(ratio.value, float)
    assert client.get_object_value("layout", {}, ctx()) == {"columns": 3, "dense": True}


def test_errors_give_the_default_and_openfeatures_codes(client):
    missing = client.get_boolean_details("nope", True, ctx("alice"))
    assert (missing.value, missing.error_code, missing.reason) == (
        True, ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)
    no_key = client.get_boolean_details("checkout", True, ctx(tier="gold"))
    assert (no_key.value, no_key.error_code) == (True, ErrorCode.TARGETING_KEY_MISSING)
    wrong = client.get_string_details("checkout", "x", ctx("alice"))
    assert (wrong.value, wrong.error_code) == ("x", ErrorCode.TYPE_MISMATCH)
    # a boolean is not an integer here, though Python says True == 1
    assert client.get_integer_details("checkout", 7, ctx("alice")).error_code == \
        ErrorCode.TYPE_MISMATCH
    assert client.get_boolean_details("max-items", False, ctx()).error_code == \
        ErrorCode.TYPE_MISMATCH


def test_a_change_arrives_within_a_second_with_an_event(store_spec, client):
    changed = threading.Event()

    def handler(details: Any) -> None:
        changed.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, handler)
    try:
        assert client.get_string_value("banner", "", ctx()) == "50% off"
        with open_store(store_spec) as store:
            store.set_default("banner", ENV, "none")
        took = wait_until(lambda: client.get_string_value("banner", "?", ctx()) == "", 1.0,
                          "the change did not arrive")
        assert took < 1.0
        assert changed.wait(1.0)
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, handler)


def test_a_broken_flag_set_keeps_the_last_good_one(store_spec, provider, client):
    version = provider.evaluator.version
    with sqlite3.connect(store_spec) as conn:
        conn.execute("UPDATE upgrader_flag_set SET version = version + 1, document = ? "
                     "WHERE id = 1", (json.dumps({"environments": ["staging"]}),))
    wait_until(lambda: provider._watcher.last_error is not None, 10.0,
               "the broken flag set was not noticed")
    assert provider.evaluator.version == version
    assert client.get_integer_value("max-items", 0, ctx("u", tier="gold")) == 100


def test_a_flag_set_that_does_not_load_at_start_is_a_config_error(store_spec):
    with pytest.raises(ConfigError, match="unknown environment"):
        UpgraderProvider(store_spec, "moon")


def test_shutdown_stops_the_poller(store_spec):
    before = {t.name for t in threading.enumerate()}
    provider = UpgraderProvider(store_spec, ENV)
    assert "upgrader-openfeature-watch" in {t.name for t in threading.enumerate()}
    provider.shutdown()
    assert {t.name for t in threading.enumerate()} <= before


def test_the_flag_core_does_not_import_openfeature():
    code = ("import sys, upgrader.flags.store, upgrader.flags.evaluate, upgrader.flags.ofrep, "
            "upgrader.flags.bisect, upgrader.flags.cli, upgrader.flags.watch; "
            "print('openfeature' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
