"""Sticky bucketing: the documented hash reproduces tests/data/bucketing_vectors.json, and the
properties of issue 4 hold (stable across processes, monotonic, fair within 1 point)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader.flags.evaluate import Reason, compile_flags
from upgrader.flags.loader import loads
from upgrader.hashing import BUCKETS, bucket, bucketer, in_percent, threshold

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "data" / "bucketing_vectors.json"


def documented_bucket(salt: str, key: str) -> int:
    """The formula of docs/FLAGS.md, written out again without upgrader's code."""
    data = (salt + ":" + key) if salt else key
    return int.from_bytes(hashlib.sha256(data.encode("utf-8")).digest()[:8], "big") % 10000


def test_vectors_file_has_enough_varied_cases():
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    vectors = doc["vectors"]
    assert doc["buckets"] == BUCKETS == 10_000
    assert len(vectors) >= 50
    assert any(v["salt"] == "" for v in vectors) and any(v["key"] == "" for v in vectors)
    assert any(not v["key"].isascii() for v in vectors)
    assert {v["in_percent"]["50"] for v in vectors} == {True, False}
    assert "docs/FLAGS.md" in doc["description"]
    assert "tests/data/bucketing_vectors.json" in (ROOT / "docs" / "FLAGS.md").read_text()


def test_vectors_match_the_implementation_and_the_documented_formula():
    for vector in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]:
        salt, key = vector["salt"], vector["key"]
        assert bucket(key, salt) == vector["bucket"] == documented_bucket(salt, key), vector
        assert bucketer(salt)(key) == vector["bucket"]
        for percent, inside in vector["in_percent"].items():
            assert in_percent(key, float(percent), salt) is inside, (vector, percent)
            assert (vector["bucket"] < round(float(percent) * 100)) is inside


def test_vectors_match_flag_evaluation():
    """A flag's percentage rule buckets the sticky value with the flag key as salt."""
    for vector in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]:
        salt = vector["salt"]
        for percent, inside in vector["in_percent"].items():
            text = ("[flags.f.environments.production]\nenabled = true\n"
                    f"rules = [{{ percent = {percent}, salt = {json.dumps(salt)} }}]\n")
            ev = compile_flags(loads(text), "production")
            result = ev.evaluate("f", {"targetingKey": vector["key"]})
            assert (result.reason is Reason.SPLIT) is inside


def test_salt_defaults_to_the_flag_key():
    ev = compile_flags(loads("[flags.new-checkout.environments.production]\nenabled = true\n"
                             "rules = [{ percent = 50 }]\n"), "production")
    for user in ("alice", "bob", "user-1", "user-2", "user-42"):
        inside = bucket(user, "new-checkout") < 5000
        assert (ev.evaluate("new-checkout", {"targetingKey": user}).variant == "on") is inside


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=20), st.integers(0, 10_000))
def test_same_input_same_answer(key, salt, hundredths):
    percent = hundredths / 100
    first = bucket(key, salt)
    assert 0 <= first < BUCKETS
    assert bucket(key, salt) == first == bucketer(salt)(key)
    assert in_percent(key, percent, salt) == (first < threshold(percent))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=20), st.integers(0, 10_000),
       st.integers(0, 10_000))
def test_raising_the_percentage_only_adds_users(key, salt, a, b):
    low, high = sorted((a / 100, b / 100))
    if in_percent(key, low, salt):
        assert in_percent(key, high, salt)


@settings(max_examples=20, deadline=None)
@given(st.text(min_size=1, max_size=10), st.integers(1, 9_999))
def test_over_100000_users_the_share_is_within_one_point(salt, hundredths):
    percent = hundredths / 100
    bucket_of = bucketer(salt)
    limit = threshold(percent)
    inside = sum(1 for i in range(100_000) if bucket_of(f"user-{i}") < limit)
    assert abs(inside / 1000 - percent) <= 1.0, (salt, percent, inside)


def test_the_same_users_in_another_process():
    users = [f"user-{i}" for i in range(300)] + ["Ünïcödé 用户", "", "a:b"]
    here = [bucket(u, "new-checkout") for u in users]
    code = ("import json, sys; from upgrader.hashing import bucket; "
            "users = json.load(sys.stdin); "
            "print(json.dumps([bucket(u, 'new-checkout') for u in users]))")
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}   # str hashes differ: ours must not
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(users), text=True,
                          capture_output=True, check=True, timeout=60, env=env, cwd=ROOT)
    assert json.loads(done.stdout) == here
