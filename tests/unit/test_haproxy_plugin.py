"""The ``haproxy`` balancer plugin without a haproxy: entry point, settings, pure helpers."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upgrader.errors import ConfigError
from upgrader.hashing import BUCKETS, bucket
from upgrader.model import ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import Balancer, Cohort, ProviderContext, RouteTable
from upgrader_haproxy.balancer import (
    Declared,
    backend_name,
    bucket_ranges,
    cohort_ranges,
    server_name,
)


def test_plugins_find_haproxy_under_balancers_through_the_entry_point() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group="upgrader")}
    assert declared.get("haproxy") == "upgrader_haproxy"
    plugins = Plugins()
    assert "haproxy" in plugins.names("balancer")
    factory = plugins.lookup("balancer", "haproxy")
    assert factory.plugin == "haproxy"          # loaded as the entry point, not a built-in
    assert {s.name for s in factory.settings} >= {"socket", "backend", "slots", "maps"}
    balancer = plugins.create("balancer", ProviderSpec("haproxy", {"socket": "/run/h.sock"}),
                              ProviderContext())
    assert isinstance(balancer, Balancer)
    assert balancer.slots == ["upgrader_1", "upgrader_2", "upgrader_3"]
    assert balancer.map_files["split"] == "/etc/haproxy/upgrader/split.map"


@pytest.mark.parametrize("settings, key", [
    ({}, "socket"),
    ({"socket": "tcp:localhost"}, "socket"),
    ({"socket": "/s", "backend": "shop web"}, "backend"),
    ({"socket": "/s", "slots": 1}, "slots"),
    ({"socket": "/s", "maps": "/etc/my maps"}, "maps"),
    ({"socket": "/s", "server_options": ["check inter"]}, "server_options"),
    ({"socket": "/s", "timeout": 0}, "timeout"),
    ({"socket": "/s", "sockte": "/s"}, "sockte"),
])
def test_bad_settings_name_their_key(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Plugins().create("balancer", ProviderSpec("haproxy", settings), ProviderContext())
    assert info.value.key is not None and info.value.key.endswith(key)


@given(st.text(min_size=1, max_size=30))
def test_server_names_round_trip(name: str) -> None:
    encoded = server_name(name)
    assert set(encoded) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "0123456789._-:")
    assert backend_name(encoded) == name


def test_blue_green_names_stay_readable() -> None:
    assert server_name("web-01@blue") == "web-01:40blue"
    assert server_name("web_01.a") == "web_01.a"


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=5))
def test_bucket_ranges_cover_every_bucket_in_proportion(weights: list[float]) -> None:
    entries = bucket_ranges([(f"b{i}", w) for i, w in enumerate(weights)])
    if sum(weights) == 0:
        assert entries == []
        return
    covered = []
    for key, target in entries:
        low, high = map(int, key.split(":"))
        covered.extend(range(low, high + 1))
        share = (high - low + 1) / BUCKETS
        assert abs(share - weights[int(target[1:])] / sum(weights)) <= 1 / BUCKETS + 1e-9
    assert covered == list(range(BUCKETS))


def test_cohort_ranges_follow_the_first_cohort_that_holds_the_bucket() -> None:
    entries = cohort_ranges([(1.0, "shop_2"), (0.5, "shop_3"), (10.0, "shop_3")])
    assert entries == [("0:99", "shop_2"), ("100:999", "shop_3")]
    # the same decision as upgrader.hashing for a few users
    for user in ("alice", "bob", "carol"):
        b = bucket(user)
        want = "shop_2" if b < 100 else "shop_3" if b < 1000 else None
        got = next((t for k, t in entries
                    if int(k.split(":")[0]) <= b <= int(k.split(":")[1])), None)
        assert got == want


def test_the_state_map_round_trips() -> None:
    declared = Declared(split={"1.4.0": 95.0, "1.5.0": 5.0},
                        routes=RouteTable(groups={"beta": "1.5.0"},
                                          cohorts=((Cohort("early", 1.5), "1.5.0"),),
                                          default="1.4.0"),
                        maintenance=True, retry_after=120,
                        bindings={"shop_1": "1.4.0", "shop_2": "1.5.0 rc/1"},
                        baselines={"shop_1": (10, 2)})
    entries = declared.entries()
    assert ("default", "shop_1") in entries
    assert all(" " not in k and " " not in v for k, v in entries)
    again = Declared.parse(entries)
    assert again == declared
