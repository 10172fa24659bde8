"""Shared test configuration.

Integration tests skip with a clear reason when a service they need is missing on a laptop;
with ``UPGRADER_REQUIRE_INTEGRATION=1`` (CI, `.ci/run`) such a skip is turned into a failure.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_INTEGRATION = os.environ.get("UPGRADER_REQUIRE_INTEGRATION") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (REQUIRE_INTEGRATION and report.skipped and "integration" in str(item.fspath)
            and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = (f"integration test skipped but UPGRADER_REQUIRE_INTEGRATION=1: "
                           f"{reason}")
