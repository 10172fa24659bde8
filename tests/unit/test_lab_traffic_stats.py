"""The traffic generator's per-second timeline: failed answers by the release that gave them
(``failed_versions``), so a benchmark can count a canary's own failures next to a baseline
that fails some requests too."""

from __future__ import annotations

from upgrader.lab.traffic import Stats


def test_timeline_counts_failed_answers_by_version():
    stats = Stats(rps_target=10, url="http://127.0.0.1:1", users=1)
    t = 1_800_000_000.25
    stats.record(t, "ok", "1.0.0-err1", "free", 0.003)
    stats.record(t, "failed", "1.0.0-err1", "free", 0.003, "http_500")
    stats.record(t + 0.5, "failed", "1.1.0-err6", "paid", 0.003, "http_500")
    stats.record(t + 0.6, "failed", "1.1.0-err6", "paid", 0.003, "http_500")
    stats.record(t + 0.7, "failed", None, "paid", 5.0, "timeout")    # no answer: no version
    stats.record(t + 1.0, "ok", "1.1.0-err6", "paid", 0.003)
    first, second = stats.snapshot()["timeline"]
    assert first["failed"] == 4
    assert first["failed_versions"] == {"1.0.0-err1": 1, "1.1.0-err6": 2}
    assert first["versions"] == {"1.0.0-err1": 2, "1.1.0-err6": 2}
    assert second["failed"] == 0 and second["failed_versions"] == {}
