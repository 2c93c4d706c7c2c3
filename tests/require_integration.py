"""In CI (or with SMILING_REQUIRE_INTEGRATION=1) a skipped test is a failed test.

The media, browser, NAT and Prometheus tests skip when a component they drive is missing, which
is right on a developer's machine without root, but in CI it would turn a failed Debian install
into a green run with the product's heart untested. Only the runs against a real MongoDB may
skip there: no MongoDB server package exists for these machines, so they need `MONGODB_URI`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from typing import Any

import pytest

ALLOWED_SKIPS = ("MONGODB_URI is not set",)


def integration_required(environ: Mapping[str, str] = os.environ) -> bool:
    ci = environ.get("CI", "").lower() == "true"
    return ci or environ.get("SMILING_REQUIRE_INTEGRATION") == "1"


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not integration_required():
        return
    reason = skip_reason(report)
    if any(allowed in reason for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, but CI (or SMILING_REQUIRE_INTEGRATION=1) requires every integration "
        f"component that ./scripts/test installs: {reason}"
    )
