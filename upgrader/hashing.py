"""Sticky bucketing: a user key (and an optional salt) -> a bucket in 0..9999.

Documented so other languages can reproduce it:
``int.from_bytes(sha256((salt + ":" + key) if salt else key)[:8], "big") % 10000``.
The same user gets the same bucket everywhere; a cohort of P percent is buckets < P * 100,
so raising P only ever adds users and smaller cohorts nest inside larger ones.

Feature flags (:mod:`upgrader.flags`) bucket ``key`` = the sticky attribute's value with
``salt`` = the flag key unless a rule sets another; an empty salt gives the buckets of the
balancer's phased cohorts. Test vectors: ``tests/data/bucketing_vectors.json``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

BUCKETS = 10_000


def bucket(key: str, salt: str = "") -> int:
    data = f"{salt}:{key}" if salt else key
    digest = hashlib.sha256(data.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_percent(key: str, percent: float, salt: str = "") -> bool:
    return bucket(key, salt) < threshold(percent)


def threshold(percent: float) -> int:
    """The number of buckets in a cohort of ``percent`` (a key is in it when its bucket is
    below this)."""
    return round(percent * BUCKETS / 100.0)


def bucketer(salt: str = "") -> Callable[[str], int]:
    """``bucket(key, salt)`` for a fixed salt, with the salt's bytes prepared once (hot paths:
    flag evaluation hashes one sticky value per percentage rule)."""
    prefix = f"{salt}:".encode() if salt else b""
    sha256 = hashlib.sha256
    from_bytes = int.from_bytes

    def bucket_of(key: str) -> int:
        return from_bytes(sha256(prefix + key.encode("utf-8")).digest()[:8], "big") % BUCKETS

    return bucket_of
