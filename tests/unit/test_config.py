"""The fleet file loader: every sample loads, and bad input is a ConfigError that names the
file, the key path and the exact line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from upgrader import strategies
from upgrader.config import (
    format_key_path,
    load_fleet,
    loads_fleet,
    parse_key_path,
    strategy_where,
)
from upgrader.errors import ConfigError
from upgrader.lab.fleet_table import LAB_KEYS
from upgrader.lab.layout import LabLayout
from upgrader.model import TEMPLATE_FIELDS, Fleet
from upgrader.plan import estimate
from upgrader.providers.base import ProviderFactory, Setting
from upgrader.strategies.table import COMMON_KEYS, ON_FAILURE
from upgrader.tomlsource import Locator

SAMPLES = Path(__file__).resolve().parents[2] / "sample_fleets"
#: fleet files; sample_fleets/flags.toml is a flags file (tests/unit/test_flags_loader.py)
SAMPLE_FILES = sorted(p for p in SAMPLES.glob("*.toml") if p.name != "flags.toml")


class FakeRegistry:
    """Knows the names the core registers, with the settings the samples use."""

    SETTINGS: ClassVar[dict[str, dict[str, tuple[Setting, ...]]]] = {
        "transport": {
            "local": (Setting("max_parallel", int, 32), Setting("env", dict, {})),
            "noop": (),
        },
        "balancer": {
            "builtin": (Setting("admin_url", str), Setting("token", str, ""),
                        Setting("token_file", str, ""), Setting("token_env", str, ""),
                        Setting("timeout", (int, float), 10.0)),
            "noop": (),
        },
        "health": {
            "http": (Setting("path", str, "/healthz"), Setting("timeout", float, 2.0)),
            "tcp": (Setting("timeout", float, 2.0),),
            "command": (Setting("argv", list),),
            "noop": (),
        },
        "snapshot": {"directory": (Setting("keep", int, 5),), "noop": ()},
        "notifier": {"log": (Setting("level", str, "info"),)},
        "metrics": {"balancer": (), "command": (Setting("timeout", float, 10.0),),
                    "prometheus": (Setting("url", str, "http://127.0.0.1:9090"),
                                   Setting("timeout", float, 5.0))},
    }

    def lookup(self, category: str, name: str) -> ProviderFactory | None:
        settings = self.SETTINGS[category].get(name)
        if settings is None:
            return None
        return ProviderFactory(name=name, factory=lambda s, c: None, settings=settings)

    def names(self, category: str) -> list[str]:
        return sorted(self.SETTINGS[category])


# --------------------------------------------------------------------------------------------
# Samples


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_sample_loads_and_compiles(path: Path) -> None:
    fleet = load_fleet(path)
    assert fleet.source == path
    assert fleet.hosts
    module = strategies.get(fleet.strategy.kind)
    plan = module.compile(fleet, fleet.strategy.params)
    assert estimate(plan, fleet.timing).total_s > 0


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_sample_loads_with_a_registry_of_core_names(path: Path) -> None:
    load_fleet(path, registry=FakeRegistry())


def test_samples_are_all_there() -> None:
    names = {p.name for p in SAMPLE_FILES}
    assert {"canary.toml", "rolling.toml", "takedown.toml", "phased.toml", "shedding.toml",
            "bluegreen.toml", "thousand-hosts.toml", "production-sketch.toml"} <= names


def test_lab_samples_make_lab_hosts() -> None:
    fleet = load_fleet(SAMPLES / "shedding.toml")
    assert isinstance(fleet.lab, LabLayout)
    assert len(fleet.main_hosts) == 8 and len(fleet.new_hosts) == 8
    assert fleet.commands == fleet.lab.commands()
    assert fleet.balancer == fleet.lab.balancer_spec()
    assert fleet.health == fleet.lab.health_spec()
    bluegreen = load_fleet(SAMPLES / "bluegreen.toml")
    assert all(set(h.slots) == {"blue", "green"} for h in bluegreen.hosts)


def test_thousand_hosts_is_generated_and_takes_about_a_week() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_thousand", SAMPLES / "make_thousand.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (SAMPLES / "thousand-hosts.toml").read_text(encoding="utf-8")

    fleet = load_fleet(SAMPLES / "thousand-hosts.toml")
    assert len(fleet.hosts) == 1000
    assert fleet.hosts[999].address == "10.0.3.250"
    plan = strategies.get(fleet.strategy.kind).compile(fleet, fleet.strategy.params)
    days = estimate(plan, fleet.timing).total_s / 86400
    assert 6.5 <= days <= 7.5


# --------------------------------------------------------------------------------------------
# A valid explicit fleet; the bad-input tests change one thing in it. Line numbers matter.

BASE = """\
[fleet]
name = "shop"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["deploy", "--release", "{release}"]
start = ["systemctl", "start", "shop"]
stop = ["systemctl", "stop", "shop"]

[balancer]
kind = "builtin"
admin_url = "http://127.0.0.1:18001"

[verify]
error_rate_max = "1%"
for = "1m"

[strategy]
kind = "rolling"
batch = 2

[[hosts]]
name = "web-01"
address = "10.0.0.1"
port = 8080
labels = {zone = "a"}

[[hosts]]
name = "web-02"
address = "10.0.0.2"
port = 8080
labels = {zone = "b"}
"""


def replaced(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def load_error(tmp_path: Path, text: str, **kwargs: Any) -> ConfigError:
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_fleet(path, **kwargs)
    error = info.value
    assert error.file == str(path)
    assert str(path) in str(error)
    return error


def assert_at(error: ConfigError, key: str | None, line: int, *words: str) -> None:
    assert (error.key, error.line) == (key, line), str(error)
    text = str(error)
    assert f":{line}:" in text
    if key:
        assert key in text
    for word in words:
        assert word in text, (word, text)


def test_base_fleet_loads() -> None:
    fleet = loads_fleet(BASE)
    assert isinstance(fleet, Fleet)
    assert [h.name for h in fleet.hosts] == ["web-01", "web-02"]
    assert fleet.hosts[1].labels == {"zone": "b"}
    assert fleet.transport.kind == "local" and fleet.health.kind == "http"
    assert fleet.verify.for_ == 60.0 and fleet.verify.error_rate_max == 1.0
    assert fleet.strategy.kind == "rolling" and fleet.strategy.on_failure == "rollback"
    assert fleet.lab is None and fleet.source is None
    loads_fleet(BASE, registry=FakeRegistry())


def test_malformed_toml(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('target = "1.1.0"', 'target = "1.1.0'))
    assert_at(error, None, 6, "not valid TOML")


def test_malformed_toml_at_end_of_document(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE + "[[hosts]\n")
    assert error.line is not None and error.line >= 36


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("[verify]\n", "[verfiy]\n"))
    assert_at(error, "verfiy", 17, "unknown key", "did you mean 'verify'", "allowed keys")


def test_unknown_key_in_a_host(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('address = "10.0.0.2"', 'adress = "10.0.0.2"'))
    assert_at(error, "hosts[1].adress", 33, "[[hosts]]", "address", "labels")


def test_unknown_key_in_verify(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('for = "1m"', 'for = "1m"\nerror_rate = "2%"'))
    assert_at(error, "verify.error_rate", 20, "[verify]", "error_rate_max")


def test_unknown_key_in_a_strategy(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("batch = 2", "batch = 2\nbacth = 3"))
    assert_at(error, "strategy.bacth", 24, "bacth", "max_unavailable")


def test_unknown_key_deep_in_strategy_steps(tmp_path: Path) -> None:
    text = replaced('kind = "rolling"\nbatch = 2', 'kind = "canary"\nsteps = [\n'
                    '  {hosts = 1, pause = "10m"},\n  {rate = "1/min", untill = "1%"},\n]')
    error = load_error(tmp_path, text)
    assert_at(error, "strategy.steps[1].untill", 25, "untill")


def test_wrong_type(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("port = 8080\nlabels = {zone = \"b\"}",
                                          'port = "8080"\nlabels = {zone = "b"}'))
    assert_at(error, "hosts[1].port", 34, "expected an integer", "a string ('8080')")


def test_wrong_type_of_a_label_value(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('labels = {zone = "a"}', "labels = {zone = 1}"))
    assert_at(error, "hosts[0].labels.zone", 29, "expected a string", "an integer (1)")


def test_wrong_type_of_a_table(tmp_path: Path) -> None:
    error = load_error(tmp_path, "# top-level keys come first\ntiming = \"fast\"\n" + BASE)
    assert_at(error, "timing", 2, "expected a table")


def test_unknown_provider_kind(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('kind = "builtin"', 'kind = "haproxy"'),
                       registry=FakeRegistry())
    assert_at(error, "balancer.kind", 14, "unknown balancer 'haproxy'", "builtin, noop")


def test_unknown_provider_kind_is_fine_without_a_registry() -> None:
    fleet = loads_fleet(replaced('kind = "builtin"', 'kind = "haproxy"'))
    assert fleet.balancer.kind == "haproxy"


def test_unknown_provider_setting(tmp_path: Path) -> None:
    text = replaced('admin_url = "http://127.0.0.1:18001"',
                    'admin_url = "http://127.0.0.1:18001"\ntoken_envv = "TOKEN"')
    error = load_error(tmp_path, text, registry=FakeRegistry())
    assert_at(error, "balancer.token_envv", 16, "did you mean 'token_env'", "admin_url")


def test_provider_setting_of_wrong_type(tmp_path: Path) -> None:
    text = replaced('admin_url = "http://127.0.0.1:18001"',
                    'admin_url = "http://127.0.0.1:18001"\ntimeout = true')
    error = load_error(tmp_path, text, registry=FakeRegistry())
    assert_at(error, "balancer.timeout", 16, "expected")


def test_missing_required_provider_setting(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('admin_url = "http://127.0.0.1:18001"\n', ""),
                       registry=FakeRegistry())
    assert_at(error, "balancer.admin_url", 13, "missing required setting 'admin_url'")


def test_notifier_kind_is_checked(tmp_path: Path) -> None:
    text = BASE + '\n[[notifiers]]\nkind = "log"\n\n[[notifiers]]\nkind = "slack"\n'
    error = load_error(tmp_path, text, registry=FakeRegistry())
    assert_at(error, "notifiers[1].kind", 41, "unknown notifier 'slack'", "log")


def test_no_hosts(tmp_path: Path) -> None:
    text = "# an empty fleet\nhosts = []\n" + BASE[: BASE.index("[[hosts]]")]
    error = load_error(tmp_path, text)
    assert_at(error, "hosts", 2, "no hosts")


def test_no_hosts_without_any_hosts_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE[: BASE.index("[[hosts]]")])
    assert_at(error, "hosts", 1, "no hosts")


def test_duplicate_host_names(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('name = "web-02"', 'name = "web-01"'))
    assert_at(error, "hosts[1].name", 32, "duplicate host name 'web-01'", "hosts[0].name",
              "line 26")


def test_bad_host_name(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('name = "web-02"', 'name = "web 02"'))
    assert_at(error, "hosts[1].name", 32, "not a valid host name")


def test_percentage_over_100_in_verify(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('error_rate_max = "1%"', 'error_rate_max = "101%"'))
    assert_at(error, "verify.error_rate_max", 18, "between 0% and 100%")


def test_percentage_over_100_in_strategy(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("batch = 2", 'batch = 2\nmax_unavailable = "150%"'))
    assert_at(error, "strategy.max_unavailable", 24, "100%")


def test_percentage_over_100_in_min_capacity(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("batch = 2", 'batch = 2\nmin_capacity = "120%"'))
    assert_at(error, "strategy.min_capacity", 24, "100%")


def test_release_with_shell_syntax(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('target = "1.1.0"', 'target = "1.1.0; rm -rf /"'))
    assert_at(error, "release.target", 6, "not a valid release")


def test_current_equals_target(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('target = "1.1.0"', 'target = "1.0.0"'))
    assert_at(error, "release.target", 6, "nothing to do")


def test_unknown_template_placeholder(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('"{release}"]', '"{relase}"]'))
    assert_at(error, "commands.install", 9, "unknown placeholder {relase}")


def test_placeholder_from_a_var_every_host_has() -> None:
    text = replaced('"{release}"]', '"{release}", "{root}"]') + '\n[defaults]\n' \
        'vars = {root = "/srv/shop"}\n'
    assert loads_fleet(text).commands.install[-1] == "{root}"


def test_placeholder_from_a_var_only_some_hosts_have(tmp_path: Path) -> None:
    text = replaced('"{release}"]', '"{release}", "{root}"]')
    text = replaced('labels = {zone = "a"}', 'labels = {zone = "a"}\nvars = {root = "/srv"}',
                    text)
    error = load_error(tmp_path, text)
    assert_at(error, "commands.install", 9, "unknown placeholder {root}", "every host")


def test_bad_duration(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('for = "1m"', 'for = "1 minute"'))
    assert_at(error, "verify.for", 19, "expected a duration")


def test_missing_fleet_name(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('name = "shop"', 'environment = "staging"'))
    assert_at(error, "fleet.name", 1, "missing required key 'name'")


def test_missing_strategy_kind(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('kind = "rolling"\n', ""))
    assert_at(error, "strategy.kind", 21, "missing required key 'kind'")


def test_unknown_strategy_kind(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('kind = "rolling"', 'kind = "yolo"'))
    assert_at(error, "strategy.kind", 22, "unknown strategy 'yolo'", *strategies.names())


def test_bad_on_failure(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("batch = 2", 'batch = 2\non_failure = "panic"'))
    assert_at(error, "strategy.on_failure", 24, "rollback, shutdown, freeze, pause")


def test_bad_no_data(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('for = "1m"', 'for = "1m"\nno_data = "ignore"'))
    assert_at(error, "verify.no_data", 20, "fail, pass, wait")


def test_port_out_of_range(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced("port = 8080\nlabels = {zone = \"a\"}",
                                          "port = 70000\nlabels = {zone = \"a\"}"))
    assert_at(error, "hosts[0].port", 28, "between 1 and 65535")


def test_label_value_with_a_newline(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('labels = {zone = "b"}', 'labels = {zone = "b\\nc"}'))
    assert_at(error, "hosts[1].labels.zone", 35, "line break")


def test_command_must_be_a_non_empty_list(tmp_path: Path) -> None:
    error = load_error(tmp_path, replaced('stop = ["systemctl", "stop", "shop"]', "stop = []"))
    assert_at(error, "commands.stop", 11, "non-empty array")
    error = load_error(tmp_path, replaced('stop = ["systemctl", "stop", "shop"]',
                                          'stop = "systemctl stop shop"'))
    assert_at(error, "commands.stop", 11, "no shell")


def test_missing_balancer_without_lab(tmp_path: Path) -> None:
    text = replaced('[balancer]\nkind = "builtin"\nadmin_url = "http://127.0.0.1:18001"\n', "")
    error = load_error(tmp_path, text)
    assert_at(error, "balancer", 1, "missing required table [balancer]")


def test_duplicate_group_names(tmp_path: Path) -> None:
    text = BASE + '\n[[groups]]\nname = "beta"\n\n[[groups]]\nname = "beta"\npercent = 5\n'
    error = load_error(tmp_path, text)
    assert_at(error, "groups[1].name", 41, "duplicate group name 'beta'", "line 38")


def test_group_percent_over_100(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE + '\n[[groups]]\nname = "beta"\npercent = "200%"\n')
    assert_at(error, "groups[0].percent", 39, "100%")


def test_lab_table_is_checked(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE + "\n[lab]\nhosts = 8\nslot = true\n")
    assert_at(error, "lab.slot", 39, "did you mean 'slots'")


# --------------------------------------------------------------------------------------------
# Lab, defaults and --strategy


LAB = """\
[fleet]
name = "lab"

[release]
current = "1.0.0"
target = "1.1.0"

[lab]
hosts = 3
new_hosts = 2
base_port = 20000
dir = "labdir"

[strategy]
kind = "canary"
"""


def test_lab_expands_hosts_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fleet = loads_fleet(LAB + '\n[defaults]\nlabels = {team = "web"}\n')
    assert fleet.lab == LabLayout(dir=tmp_path.resolve() / "labdir", hosts=3, new_hosts=2,
                                  base_port=20000, base_release="1.0.0")
    assert [h.name for h in fleet.hosts] == ["web-01", "web-02", "web-03", "web-04", "web-05"]
    assert [h.cluster for h in fleet.hosts] == ["main"] * 3 + ["new"] * 2
    assert fleet.hosts[0].port == 20101
    assert fleet.hosts[0].labels == {"team": "web", "zone": "a"}
    assert fleet.commands == fleet.lab.commands()


def test_lab_with_own_balancer_keeps_it() -> None:
    fleet = loads_fleet(LAB + '\n[balancer]\nkind = "noop"\n')
    assert fleet.balancer.kind == "noop"
    assert fleet.health == fleet.lab.health_spec()


def test_lab_default_dir_is_the_layout_default(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("UPGRADER_LAB_DIR", str(tmp_path / "elsewhere"))
    fleet = loads_fleet(LAB.replace('dir = "labdir"\n', ""))
    assert fleet.lab is not None and fleet.lab.dir == (tmp_path / "elsewhere").resolve()


def test_defaults_apply_under_host_values() -> None:
    text = BASE + '\n[defaults]\nport = 9000\nlabels = {zone = "z", team = "web"}\n' \
        'vars = {root = "/srv"}\n'
    text = replaced("port = 8080\nlabels = {zone = \"a\"}", 'labels = {zone = "a"}', text)
    fleet = loads_fleet(text)
    first, second = fleet.hosts
    assert first.port == 9000 and second.port == 8080
    assert first.labels == {"zone": "a", "team": "web"}
    assert first.vars == {"root": "/srv"}


def test_var_may_not_shadow_a_builtin_placeholder(tmp_path: Path) -> None:
    text = replaced('labels = {zone = "b"}', 'labels = {zone = "b"}\nvars = {release = "x"}')
    error = load_error(tmp_path, text)
    assert_at(error, "hosts[1].vars.release", 36, "built-in command placeholder")
    assert "release" in TEMPLATE_FIELDS


def test_strategy_override_replaces_params_and_keeps_common_keys() -> None:
    text = replaced("batch = 2", 'batch = 2\non_failure = "pause"\nmin_capacity = "75%"')
    fleet = loads_fleet(text, strategy="canary")
    assert fleet.strategy.kind == "canary"
    assert fleet.strategy.params == strategies.get("canary").default_params()
    assert (fleet.strategy.on_failure, fleet.strategy.min_capacity) == ("pause", 75.0)


def test_strategy_override_of_the_same_kind_keeps_the_files_params() -> None:
    fleet = loads_fleet(BASE, strategy="rolling")
    assert fleet.strategy.params == loads_fleet(BASE).strategy.params
    assert fleet.strategy.params != strategies.get("rolling").default_params()


def test_strategy_override_without_a_strategy_table() -> None:
    text = replaced('[strategy]\nkind = "rolling"\nbatch = 2\n', "")
    assert loads_fleet(text, strategy="rolling").strategy.kind == "rolling"
    with pytest.raises(ConfigError) as info:
        loads_fleet(text)
    assert info.value.key == "strategy"


def test_unknown_strategy_override() -> None:
    with pytest.raises(ConfigError) as info:
        loads_fleet(BASE, source="f.toml", strategy="yolo")
    assert info.value.key == "--strategy" and "rolling" in str(info.value)


def test_strategy_where_locates_compile_errors(tmp_path: Path) -> None:
    text = BASE.replace('kind = "rolling"\nbatch = 2',
                        'kind = "phased"\ngroups = ["beta"]')
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    fleet = load_fleet(path)
    with pytest.raises(ConfigError) as info:
        strategies.get("phased").compile(fleet, fleet.strategy.params, strategy_where(fleet))
    assert (info.value.key, info.value.line, info.value.file) == ("strategy.groups[0]", 23,
                                                                   str(path))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_fleet(tmp_path / "missing.toml")
    assert info.value.file == str(tmp_path / "missing.toml")
    (tmp_path / "latin.toml").write_bytes(b'[fleet]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_fleet(tmp_path / "latin.toml")
    assert info.value.line == 2


# --------------------------------------------------------------------------------------------
# Many hosts


def many_hosts(n: int) -> str:
    return BASE[: BASE.index("[[hosts]]")] + "".join(
        f'[[hosts]]\nname = "web-{i:05d}"\naddress = "10.{i // 62500}.{i // 250 % 250}.'
        f'{i % 250 + 1}"\nport = 8080\nlabels = {{zone = "{"abc"[i % 3]}"}}\n\n'
        for i in range(n))


def test_ten_thousand_hosts_load_and_an_error_on_the_last_one_is_located() -> None:
    """What a big fleet file gets right; how fast it loads (linear, against tomllib parsing the
    same text) is measured by bench/config_load.py, not asserted here."""
    text = many_hosts(10_000)
    fleet = loads_fleet(text)
    assert len(fleet.hosts) == 10_000

    last = 'name = "web-09999"'
    bad = text[: text.rindex(last)] + 'name = "web-00000"' + text[text.rindex(last) + len(last):]
    with pytest.raises(ConfigError) as info:
        loads_fleet(bad)
    error = info.value
    assert error.key == "hosts[9999].name"
    assert bad.splitlines()[error.line - 1] == 'name = "web-00000"'
    assert "line 26" in str(error)


# --------------------------------------------------------------------------------------------
# The locator and key paths


def test_key_paths_round_trip() -> None:
    for path in [("hosts", 3, "labels", "zone"), ("strategy", "steps", 1, "pause"),
                 ("labels", "a.b"), ("x",)]:
        assert parse_key_path(format_key_path(path)) == path
    assert format_key_path(("labels", "a.b")) == 'labels."a.b"'
    assert parse_key_path("steps.1.pause") == ("steps", 1, "pause")


LOCATOR_TEXT = '''\
# a comment with [brackets] and key = "value"
title = """
[not.a.table]
fake = 1
"""
literal = \'\'\'
[[hosts]]
\'\'\'

[a.b]
"quoted.key" = 1
dotted.inner.key = "x"   # trailing comment

[[hosts]]
name = "one"
labels = {zone = "a", "odd key" = "b"}

[hosts.vars]
root = "/srv"

[[hosts]]
name = "two"
checks = [
  "first",   # comment inside an array
  {kind = "http", path = "/"},
]

[[hosts.sub]]
x = 1

[[hosts.sub]]
x = 2

  [ c . "d" ]
e = 'single'
'''


@pytest.mark.parametrize(("path", "line"), [
    (("title",), 2),
    (("literal",), 6),
    (("a",), 10),
    (("a", "b"), 10),
    (("a", "b", "quoted.key"), 11),
    (("a", "b", "dotted", "inner", "key"), 12),
    (("a", "b", "dotted"), 12),
    (("hosts",), 14),
    (("hosts", 0), 14),
    (("hosts", 0, "name"), 15),
    (("hosts", 0, "labels", "zone"), 16),
    (("hosts", 0, "labels", "odd key"), 16),
    (("hosts", 0, "vars"), 18),
    (("hosts", 0, "vars", "root"), 19),
    (("hosts", 1), 21),
    (("hosts", 1, "name"), 22),
    (("hosts", 1, "checks"), 23),
    (("hosts", 1, "checks", 0), 24),
    (("hosts", 1, "checks", 1), 25),
    (("hosts", 1, "checks", 1, "path"), 25),
    (("hosts", 1, "sub", 0), 28),
    (("hosts", 1, "sub", 0, "x"), 29),
    (("hosts", 1, "sub", 1), 31),
    (("hosts", 1, "sub", 1, "x"), 32),
    (("c", "d"), 34),
    (("c", "d", "e"), 35),
    # not in the text: the deepest prefix that is
    (("hosts", 1, "port"), 21),
    (("a", "b", "missing", "deeper"), 10),
])
def test_locator_lines(path: tuple, line: int) -> None:
    import tomllib

    tomllib.loads(LOCATOR_TEXT)  # the locator only ever sees text tomllib accepted
    assert Locator(LOCATOR_TEXT).line_of(path) == line


def test_locator_is_best_effort_on_text_it_does_not_understand() -> None:
    locator = Locator('[a]\nb = 1\nc = "unterminated\n')
    assert locator.line_of(("a", "b")) == 2
    assert locator.line_of(("zzz",)) is None


# --------------------------------------------------------------------------------------------
# docs/FLEET.md documents every key


FLEET_DOC = Path(__file__).resolve().parents[2] / "docs" / "FLEET.md"


def test_fleet_doc_names_every_key_the_loader_accepts() -> None:
    from upgrader import config

    doc = FLEET_DOC.read_text(encoding="utf-8")
    groups = [config._TOP_KEYS, config._FLEET_KEYS, config._RELEASE_KEYS, config._COMMAND_KEYS,
              config._VERIFY_KEYS, config._TIMING_KEYS, COMMON_KEYS,
              config._GROUP_KEYS, config._ROUTING_KEYS, config._HOST_KEYS,
              config._DEFAULTS_KEYS, LAB_KEYS, ON_FAILURE, config.NO_DATA,
              TEMPLATE_FIELDS, config._METRIC_KEYS, config.METRIC_KINDS,
              config.METRIC_DIRECTIONS, config.METRIC_NO_DATA]
    missing = [key for keys in groups for key in keys if f"`{key}`" not in doc
               and f"{{{key}}}" not in doc and f"[{key}]" not in doc]
    assert not missing


def test_fleet_doc_names_every_strategy_key() -> None:
    doc = FLEET_DOC.read_text(encoding="utf-8")
    for name in strategies.names():
        module = strategies.get(name)
        assert f'`kind = "{name}"`' in doc
        for key in (*module.KEYS, *getattr(module, "STEP_KEYS", ())):
            assert f"`{key}`" in doc or f"{key} =" in doc, (name, key)


def test_fleet_doc_names_every_core_provider_setting() -> None:
    from upgrader.plugins import Plugins

    doc = FLEET_DOC.read_text(encoding="utf-8")
    registry = Plugins(entrypoints=False)
    for category in ("transport", "balancer", "health", "snapshot", "notifier", "metrics"):
        for factory in registry.factories(category):
            row = f"| {category} | `{factory.name}` |"
            assert row in doc, (category, factory.name)
            line = doc[doc.index(row):].splitlines()[0]
            for setting in factory.settings:     # in the provider's own row
                assert f"`{setting.name}`" in line, (category, factory.name, setting.name)


def test_fleet_doc_names_every_metric_source_setting_and_query() -> None:
    """``[[verify.metrics]]``: each built-in source has a row with its queries and every
    setting it declares, and the example of a prometheus metric loads."""
    from upgrader.plugins import Plugins
    from upgrader.providers.base import FIGURES

    doc = FLEET_DOC.read_text(encoding="utf-8")
    section = doc[doc.index("#### The built-in sources"):doc.index("## `[timing]`")]
    registry = Plugins(entrypoints=False)
    for factory in registry.factories("metrics"):
        row = f"| `{factory.name}` |"
        assert row in section, factory.name
        line = section[section.index(row):].splitlines()[0]
        for setting in factory.settings:
            assert f"`{setting.name}`" in line, (factory.name, setting.name)
    balancer_row = section[section.index("| `balancer` |"):].splitlines()[0]
    assert all(f'"{figure}"' in balancer_row for figure in FIGURES)
    example = section[section.index("```toml") + 7:section.index("```", section.index("```toml") + 7)]
    fleet = loads_fleet(MINIMAL_FLEET_FOR_METRICS + example, registry=registry)
    (metric,) = fleet.verify.metrics
    assert metric.source == "prometheus" and metric.kind == "proportion" and len(metric.query) == 2
    assert metric.settings["url"] == "http://prometheus.internal:9090"


MINIMAL_FLEET_FOR_METRICS = """
[fleet]
name = "docs"
[release]
current = "1.0.0"
target = "1.1.0"
[commands]
install = ["true"]
start = ["true"]
stop = ["true"]
[balancer]
kind = "noop"
[strategy]
kind = "rolling"
[[hosts]]
name = "a"
"""


def test_lab_commands_need_the_lab_vars_on_explicit_hosts(tmp_path: Path) -> None:
    text = LAB + '\n[[hosts]]\nname = "web-01"\nport = 8101\n'
    error = load_error(tmp_path, text)
    assert_at(error, "commands", 1, "{root}", "vars.root")
    fleet = loads_fleet(text.replace("port = 8101\n", 'port = 8101\nvars = {root = "/tmp/x"}\n'))
    assert [h.name for h in fleet.hosts] == ["web-01"] and fleet.lab is not None
