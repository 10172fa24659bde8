"""Sticky bucketing: a user key (and an optional salt) -> a bucket in 0..9999.

Documented so other languages can reproduce it:
``int.from_bytes(sha256((salt + ":" + key) if salt else key)[:8], "big") % 10000``.
The same user gets the same bucket everywhere; a cohort of P percent is buckets < P * 100,
so raising P only ever adds users and smaller cohorts nest inside larger ones.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(key: str, salt: str = "") -> int:
    data = f"{salt}:{key}" if salt else key
    digest = hashlib.sha256(data.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_percent(key: str, percent: float, salt: str = "") -> bool:
    return bucket(key, salt) < round(percent * BUCKETS / 100.0)
