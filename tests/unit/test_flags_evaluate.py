"""Flag evaluation: the documented order, the reasons, every rule kind, tiers, prerequisites,
variant types, compile-once (docs/FLAGS.md, "Evaluation")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from upgrader.errors import ConfigError
from upgrader.flags.evaluate import ErrorCode, Reason, Resolution, compile_flags
from upgrader.flags.loader import load, loads
from upgrader.hashing import bucket

SAMPLE = Path(__file__).resolve().parents[2] / "sample_fleets" / "flags.toml"

TIERS = """
[tiers.bronze]
flags = { f = "b" }
[tiers.silver]
extends = "bronze"
[tiers.gold]
extends = "silver"
flags = { f = "g" }
[tiers.vip]
"""
PLAIN_TIERS = TIERS.replace('flags = { f = "b" }', "").replace('flags = { f = "g" }', "")


def evaluator(text: str, environment: str = "production"):
    return compile_flags(loads('environments = ["production", "staging"]\n' + text), environment)


def flag(body: str = "", env: str = "enabled = true", *, variants: str = "",
         extra: str = "") -> str:
    return f"""
[flags.f]
{variants}
{extra}
[flags.f.environments.production]
{env}
{body}
"""


def test_unknown_flag_is_an_error_resolution_not_an_exception():
    result = evaluator(flag()).evaluate("nope", {})
    assert result == Resolution("nope", None, None, Reason.ERROR, None,
                                ErrorCode.FLAG_NOT_FOUND, "flag 'nope' not found")


def test_disabled_serves_the_off_variant_with_reason_disabled():
    ev = evaluator(flag('targets = { on = ["alice"] }', "enabled = false"))
    result = ev.evaluate("f", {"targetingKey": "alice"})
    assert (result.value, result.variant, result.reason, result.rule) == \
        (False, "off", Reason.DISABLED, None)


def test_an_environment_the_flag_does_not_list_is_off():
    ev = evaluator(flag(), "staging")
    assert ev.evaluate("f", {}).reason is Reason.DISABLED


def test_a_flag_without_targeting_is_static():
    ev = evaluator(flag('default = "on"'))
    result = ev.evaluate("f", {"targetingKey": "x"})
    assert (result.value, result.reason, result.rule) == (True, Reason.STATIC, None)


def test_a_targeted_flag_that_matches_nothing_is_default():
    ev = evaluator(flag('targets = { on = ["alice"] }'))
    result = ev.evaluate("f", {"targetingKey": "bob"})
    assert (result.variant, result.reason) == ("off", Reason.DEFAULT)


def test_individual_targets():
    ev = evaluator(flag('targets = { on = ["alice", "carol"], off = ["bob"] }\ndefault = "on"'))
    assert ev.evaluate("f", {"targetingKey": "alice"}).rule == "targets"
    assert ev.evaluate("f", {"targetingKey": "alice"}).reason is Reason.TARGETING_MATCH
    assert ev.evaluate("f", {"targetingKey": "bob"}).variant == "off"
    assert ev.evaluate("f", {"targetingKey": "dave"}).variant == "on"
    assert ev.evaluate("f", {"targetingKey": ["alice"]}).reason is Reason.DEFAULT


def test_order_targets_before_tier_before_rules_before_default():
    text = TIERS + """
[flags.f]
variants = { a = "a", b = "b", g = "g", r = "r", d = "d" }
default = "d"
[flags.f.environments.production]
enabled = true
targets = { a = ["alice"] }
[[flags.f.environments.production.rules]]
name = "beta"
groups = ["beta"]
variant = "r"
"""
    ev = evaluator(text)
    everything = {"targetingKey": "alice", "tier": "gold", "groups": ["beta"]}
    assert ev.evaluate("f", everything).variant == "a"
    assert ev.evaluate("f", dict(everything, targetingKey="bob")).rule == "tier:gold"
    assert ev.evaluate("f", {"targetingKey": "bob", "groups": ["beta"]}).rule == "beta"
    assert ev.evaluate("f", {"targetingKey": "bob"}).variant == "d"


def test_tiers_resolve_through_extends_and_name_the_tier_whose_entry_applied():
    text = TIERS + """
[flags.f]
variants = { b = "b", g = "g", none = "none" }
off = "none"
[flags.f.environments.production]
enabled = true
"""
    ev = evaluator(text)
    for tier, variant, rule in [("bronze", "b", "tier:bronze"), ("silver", "b", "tier:bronze"),
                                ("gold", "g", "tier:gold")]:
        result = ev.evaluate("f", {"tier": tier})
        assert (result.variant, result.reason, result.rule) == \
            (variant, Reason.TARGETING_MATCH, rule), tier
    assert ev.evaluate("f", {"tier": "vip"}).reason is Reason.DEFAULT
    assert ev.evaluate("f", {"tier": "platinum"}).reason is Reason.DEFAULT
    assert ev.evaluate("f", {}).reason is Reason.DEFAULT


def test_tier_entries_do_not_apply_where_the_flag_is_off():
    text = TIERS + """
[flags.f]
variants = { b = "b", g = "g", none = "none" }
off = "none"
"""
    assert evaluator(text).evaluate("f", {"tier": "gold"}).reason is Reason.DISABLED


def test_tier_rule_matches_the_tier_and_every_tier_extending_it():
    ev = evaluator(PLAIN_TIERS + flag('[[flags.f.environments.production.rules]]\ntiers = ["silver"]\n'
                          'variant = "on"'))
    assert [ev.evaluate("f", {"tier": t}).variant for t in ("bronze", "silver", "gold", "vip")] \
        == ["off", "on", "on", "off"]
    assert ev.evaluate("f", {"tier": "gold"}).rule == "rules[0]"


def test_groups_rule_takes_a_list_or_a_single_group():
    ev = evaluator(flag('[[flags.f.environments.production.rules]]\ngroups = ["beta", "qa"]\n'
                        'variant = "on"'))
    assert ev.evaluate("f", {"groups": ["staff", "qa"]}).variant == "on"
    assert ev.evaluate("f", {"groups": "beta"}).variant == "on"
    assert ev.evaluate("f", {"groups": ["staff"]}).variant == "off"
    assert ev.evaluate("f", {"groups": [["beta"]]}).variant == "off"      # unhashable: no match
    assert ev.evaluate("f", {"groups": 7}).variant == "off"


def test_rules_apply_in_order_and_all_clauses_of_a_rule_must_match():
    ev = evaluator(flag("""
[[flags.f.environments.production.rules]]
name = "beta-de"
groups = ["beta"]
conditions = [{ attribute = "country", op = "equals", value = "DE" }]
variant = "on"
[[flags.f.environments.production.rules]]
name = "everyone-else"
variant = "off"
""", 'enabled = true\ndefault = "on"'))
    assert ev.evaluate("f", {"groups": ["beta"], "country": "DE"}).rule == "beta-de"
    assert ev.evaluate("f", {"groups": ["beta"], "country": "FR"}).rule == "everyone-else"
    assert ev.evaluate("f", {"country": "DE"}).rule == "everyone-else"


@pytest.mark.parametrize("condition, context, expected", [
    ('{ attribute = "c", op = "in", values = ["DE", "AT"] }', {"c": "AT"}, True),
    ('{ attribute = "c", op = "in", values = ["DE", "AT"] }', {"c": "FR"}, False),
    ('{ attribute = "c", op = "in", values = ["DE", "AT"] }', {"c": ["FR", "DE"]}, True),
    ('{ attribute = "c", op = "in", values = [1, 2] }', {"c": True}, False),
    ('{ attribute = "c", op = "in", values = [true] }', {"c": 1}, False),
    ('{ attribute = "c", op = "in", values = [true] }', {"c": True}, True),
    ('{ attribute = "c", op = "in", values = ["x"] }', {"c": {"a": 1}}, False),
    ('{ attribute = "c", op = "not_in", values = ["DE"] }', {"c": "FR"}, True),
    ('{ attribute = "c", op = "not_in", values = ["DE"] }', {"c": "DE"}, False),
    ('{ attribute = "c", op = "not_in", values = ["DE"] }', {}, False),
    ('{ attribute = "c", op = "not_in", values = ["DE"] }', {"c": None}, False),
    ('{ attribute = "c", op = "not_in", values = ["DE"] }', {"c": ["FR", "DE"]}, False),
    ('{ attribute = "c", op = "equals", value = "DE" }', {"c": "DE"}, True),
    ('{ attribute = "c", op = "equals", value = 1 }', {"c": True}, False),
    ('{ attribute = "c", op = "equals", value = 1 }', {"c": 1.0}, True),
    ('{ attribute = "c", op = "not_equals", value = "DE" }', {"c": "FR"}, True),
    ('{ attribute = "c", op = "not_equals", value = "DE" }', {}, False),
    ('{ attribute = "n", op = "lt", value = 10 }', {"n": 9.5}, True),
    ('{ attribute = "n", op = "lt", value = 10 }', {"n": 10}, False),
    ('{ attribute = "n", op = "lte", value = 10 }', {"n": 10}, True),
    ('{ attribute = "n", op = "gt", value = 10 }', {"n": 10 ** 400}, True),
    ('{ attribute = "n", op = "gte", value = 10 }', {"n": "11"}, False),    # numbers only
    ('{ attribute = "n", op = "gte", value = 10 }', {"n": True}, False),
    ('{ attribute = "v", op = "semver_gte", value = "2.4.0" }', {"v": "2.10.0"}, True),
    ('{ attribute = "v", op = "semver_gte", value = "2.4.0" }', {"v": "2.4.0-rc.1"}, False),
    ('{ attribute = "v", op = "semver_lt", value = "2.4.0" }', {"v": "2.4.0-rc.1"}, True),
    ('{ attribute = "v", op = "semver_lt", value = "2.4.0" }', {"v": "garbage"}, False),
    ('{ attribute = "v", op = "semver_lte", value = "2.4" }', {"v": "2.4.0+build.7"}, True),
    ('{ attribute = "v", op = "semver_gt", value = "1.0.0-alpha" }', {"v": "1.0.0-alpha.1"}, True),
    ('{ attribute = "v", op = "semver_gt", value = "1.0.0-alpha.1" }', {"v": "1.0.0-alpha.beta"},
     True),
    ('{ attribute = "v", op = "semver_eq", value = "1.2.0" }', {"v": "1.2"}, True),
    ('{ attribute = "v", op = "semver_eq", value = "1.2.0" }', {"v": 1.2}, False),
    ('{ attribute = "e", op = "contains", value = "@ex" }', {"e": "a@example.com"}, True),
    ('{ attribute = "e", op = "contains", value = "x" }', {"e": ["y", "x"]}, True),
    ('{ attribute = "e", op = "contains", value = "x" }', {"e": ["xy"]}, False),
    ('{ attribute = "e", op = "starts_with", value = "adm" }', {"e": "admin"}, True),
    ('{ attribute = "e", op = "starts_with", value = "adm" }', {"e": ["user", "admin"]}, True),
    ('{ attribute = "e", op = "ends_with", value = ".com" }', {"e": "a.org"}, False),
    ('{ attribute = "e", op = "ends_with", value = ".com" }', {"e": 5}, False),
])
def test_attribute_conditions(condition, context, expected):
    ev = evaluator(flag(f"[[flags.f.environments.production.rules]]\n"
                        f"conditions = [{condition}]\nvariant = \"on\""))
    result = ev.evaluate("f", context)
    assert (result.variant == "on") is expected
    assert result.reason is (Reason.TARGETING_MATCH if expected else Reason.DEFAULT)


def test_percentage_rule_is_a_split_sticky_on_the_targeting_key():
    ev = evaluator(flag("[[flags.f.environments.production.rules]]\nname = \"r\"\npercent = 30"))
    users = [f"user-{i}" for i in range(2000)]
    results = [ev.evaluate("f", {"targetingKey": u}) for u in users]
    for user, result in zip(users, results):
        inside = bucket(user, "f") < 3000
        assert (result.variant, result.reason) == \
            (("on", Reason.SPLIT) if inside else ("off", Reason.DEFAULT))
        assert result.rule == ("r" if inside else None)


def test_percentage_rule_without_the_sticky_attribute_is_skipped():
    ev = evaluator(flag("[[flags.f.environments.production.rules]]\npercent = 100\n"
                        "[[flags.f.environments.production.rules]]\nname = \"fallback\"\n"
                        "variant = \"on\"\n", 'enabled = true'))
    assert ev.evaluate("f", {"targetingKey": "u"}).reason is Reason.SPLIT
    for context in ({}, {"targetingKey": None}, {"targetingKey": 1.5},
                    {"targetingKey": "\ud800"}):
        assert ev.evaluate("f", context).rule == "fallback"
    assert ev.evaluate("f", {"targetingKey": 42}).reason is Reason.SPLIT   # integers hash as text


def test_stickiness_and_salt():
    ev = evaluator(flag('[[flags.f.environments.production.rules]]\npercent = 50\n'
                        'stickiness = "account"\nsalt = "exp-7"'))
    for account in ("a1", "a2", "a3", "a4", "a5", "a6"):
        result = ev.evaluate("f", {"targetingKey": "same-user", "account": account})
        assert (result.variant == "on") is (bucket(account, "exp-7") < 5000)
    assert ev.evaluate("f", {"targetingKey": "u"}).reason is Reason.DEFAULT
    assert not ev.needs_targeting_key("f")


def test_weighted_rollout_assigns_every_user_by_cumulative_weights():
    ev = evaluator(flag("""
[[flags.f.environments.production.rules]]
name = "split"
rollout = [{ variant = "a", weight = 50 }, { variant = "b", weight = 25.5 },
           { variant = "c", weight = 24.5 }]
""", variants='variants = { a = "A", b = "B", c = "C" }'))
    counts = {"a": 0, "b": 0, "c": 0}
    for i in range(4000):
        user = f"u{i}"
        result = ev.evaluate("f", {"targetingKey": user})
        assert result.reason is Reason.SPLIT and result.rule == "split"
        b = bucket(user, "f")
        assert result.variant == ("a" if b < 5000 else "b" if b < 7550 else "c")
        counts[result.variant] += 1
    assert 1850 < counts["a"] < 2150


def test_a_combined_rule_percent_and_tier():
    """The benchmark's rule: 30 % sticky on the user AND tier in [gold, silver]."""
    ev = evaluator(PLAIN_TIERS + flag('[[flags.f.environments.production.rules]]\n'
                                      'tiers = ["gold", "silver"]\npercent = 30'))
    for tier in ("bronze", "vip", None):
        assert not any(ev.evaluate("f", {"targetingKey": f"u{i}", "tier": tier}).value
                       for i in range(500))
    for tier in ("gold", "silver"):
        results = [ev.evaluate("f", {"targetingKey": f"u{i}", "tier": tier})
                   for i in range(5000)]
        assert all(r.value == (bucket(f"u{i}", "f") < 3000) for i, r in enumerate(results))
        assert 1350 < sum(r.value for r in results) < 1650


def test_prerequisites_serve_the_off_variant_with_rule_prerequisite():
    ev = evaluator("""
[flags.base]
[flags.base.environments.production]
enabled = true
targets = { on = ["alice"] }
[flags.f]
default = "on"
prerequisites = [{ flag = "base", variant = "on" }]
[flags.f.environments.production]
enabled = true
""")
    assert ev.evaluate("f", {"targetingKey": "alice"}).reason is Reason.DEFAULT
    failed = ev.evaluate("f", {"targetingKey": "bob"})
    assert (failed.variant, failed.reason, failed.rule) == \
        ("off", Reason.DISABLED, "prerequisite:base")


def test_prerequisite_that_is_off_fails_and_chains_are_followed():
    ev = evaluator("""
[flags.a]
[flags.b]
default = "on"
prerequisites = [{ flag = "a", variant = "off" }]
[flags.b.environments.production]
enabled = true
[flags.c]
default = "on"
prerequisites = [{ flag = "b", variant = "on" }]
[flags.c.environments.production]
enabled = true
""")
    assert ev.evaluate("c", {}).variant == "on"       # a is off, as b requires
    assert ev.evaluate("b", {}).reason is Reason.STATIC   # ...in every context


def test_a_prerequisite_known_at_compile_time_is_folded():
    ev = evaluator("""
[flags.a]
[flags.b]
default = "on"
prerequisites = [{ flag = "a", variant = "on" }]
[flags.b.environments.production]
enabled = true
targets = { on = ["alice"] }
[[flags.b.environments.production.rules]]
percent = 50
[flags.c]
default = "on"
prerequisites = [{ flag = "b", variant = "off" }]
[flags.c.environments.production]
enabled = true
""")
    result = ev.evaluate("b", {"targetingKey": "alice"})      # a is off everywhere
    assert (result.variant, result.reason, result.rule) == \
        ("off", Reason.DISABLED, "prerequisite:a")
    assert not ev.needs_targeting_key("b")
    assert ev.evaluate("c", {}).reason is Reason.STATIC         # b is always "off"


def test_kill_switch_on_and_off():
    fs = load(SAMPLE)
    ev = compile_flags(fs, "production")
    assert ev.evaluate("recommendations", {}).value is True
    flag_ = fs.flags["recommendations"]
    off = dataclasses.replace(flag_, environments={
        **flag_.environments, "production": dataclasses.replace(
            flag_.environments["production"], enabled=False)})
    killed = compile_flags(dataclasses.replace(fs, flags={**fs.flags, "recommendations": off}),
                           "production")
    result = killed.evaluate("recommendations", {"targetingKey": "anyone"})
    assert (result.value, result.reason) == (False, Reason.DISABLED)


def test_string_number_and_object_variants():
    ev = compile_flags(load(SAMPLE), "production")
    export = ev.evaluate("export-format", {"tier": "gold"})
    assert (export.value, export.rule) == ("parquet", "tier:gold")
    assert ev.evaluate("search-page-size", {"screen_width": 1920}).value == 50
    assert ev.evaluate("search-page-size", {"screen_width": 800}).value == 20
    button = ev.evaluate("checkout-button", {"targetingKey": "u1", "platform": "web"})
    assert isinstance(button.value, dict) and button.reason is Reason.SPLIT
    assert ev.flag("checkout-button").value_type == "object"
    assert ev.flag("search-page-size").value_type == "integer"
    assert ev.flag("export-format").value_type == "string"
    assert ev.flag("new-checkout").value_type == "boolean"


def test_sample_environments():
    fs = load(SAMPLE)
    demo = compile_flags(fs, "demo")
    ok = {"country": "DE"}
    assert demo.evaluate("new-checkout", {"targetingKey": "director", **ok}).variant == "on"
    assert demo.evaluate("new-checkout", {"targetingKey": "someone"}).variant == "off"
    staging = compile_flags(fs, "staging")
    assert staging.evaluate("new-checkout", {"groups": ["qa"]}).rule == "qa"
    development = compile_flags(fs, "development")
    assert development.evaluate("new-checkout", {}).reason is Reason.STATIC
    production = compile_flags(fs, "production")
    eu = {"country": "DE", "app_version": "2.5.0", "email": "a@example.com"}
    assert production.evaluate("payments-v2", eu).rule == "modern-apps-in-eu"
    assert production.evaluate("new-checkout", {"targetingKey": "load-test-bot",
                                                "groups": ["beta"], **eu}).variant == "off"
    assert production.evaluate("new-checkout", {"targetingKey": "x", "groups": ["beta"],
                                                **eu}).rule == "beta"


def test_evaluate_all_in_file_order_and_never_raises_on_odd_contexts():
    ev = compile_flags(load(SAMPLE), "production")
    assert [r.key for r in ev.evaluate_all({})] == list(ev.flagset.flags)
    odd = {"targetingKey": {"x": 1}, "tier": ["gold"], "groups": {"a": 1}, "country": [[1]],
           "app_version": 2, "screen_width": "wide", "platform": None}
    for result in ev.evaluate_all(odd):
        assert result.reason is not Reason.ERROR
    bad = ev.evaluate("new-checkout", None)  # type: ignore[arg-type]
    assert (bad.reason, bad.error_code) == (Reason.ERROR, ErrorCode.INVALID_CONTEXT)


def test_needs_targeting_key():
    ev = compile_flags(load(SAMPLE), "production")
    assert ev.needs_targeting_key("new-checkout")          # 30 % sticky on targetingKey
    assert ev.needs_targeting_key("checkout-button")
    assert not ev.needs_targeting_key("payments-v2")        # sticky on account_id
    assert not ev.needs_targeting_key("recommendations")
    assert not ev.needs_targeting_key("nope")
    staging = compile_flags(load(SAMPLE), "staging")
    assert not staging.needs_targeting_key("checkout-button")


def test_compiled_once_per_flag_set_and_environment():
    fs = load(SAMPLE)
    ev = compile_flags(fs, "production")
    assert compile_flags(fs, "production") is ev
    assert compile_flags(fs, "staging") is not ev
    assert compile_flags(fs, "staging") is compile_flags(fs, "staging")
    assert ev.version == fs.version
    # results are precomputed: the same object for the same outcome
    context = {"tier": "gold"}
    assert ev.evaluate("export-format", context) is ev.evaluate("export-format", context)
    again = load(SAMPLE)
    assert compile_flags(again, "production") is not ev


def test_etag_is_stable_across_loads_and_changes_with_content():
    a, b = load(SAMPLE), load(SAMPLE)
    assert compile_flags(a, "production").etag == compile_flags(b, "production").etag
    assert compile_flags(a, "production").etag != compile_flags(a, "staging").etag
    bumped = dataclasses.replace(b, version=b.version + 5)
    assert compile_flags(bumped, "production").etag == compile_flags(a, "production").etag
    changed = loads(SAMPLE.read_text().replace("percent = 30", "percent = 31"))
    assert compile_flags(changed, "production").etag != compile_flags(a, "production").etag
    assert compile_flags(a, "production").etag.startswith('"')


def test_unknown_environment_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        compile_flags(load(SAMPLE), "prod")
