"""Rules for a whole pytest run, shared by tests/chart and tests/release (their conftests import the hooks; their
pytest.ini put this folder on the path): a run where no test ran is a failure, and so is a skipped test under
CI (the environment variable CI set, as .ci/run and GitHub Actions set it). CI installs every tool the tests use
(scripts/install-deps.sh), so a skip there means a test that silently stopped checking anything.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest


def under_ci() -> bool:
    """CI is set to something other than an explicit no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(longrepr: Any) -> str:
    # A skip's longrepr is (file, line, "Skipped: <reason>").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _as_failure(report: Any, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{what} was skipped ({_skip_reason(report.longrepr)}); under CI (CI={os.environ.get('CI')}) every test "
        "must run: install what it needs in scripts/install-deps.sh, or remove the skip"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) also reports as skipped; it ran.
    if report.skipped and not hasattr(report, "wasxfail") and under_ci():
        _as_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # A module that skips itself while being collected (pytest.skip(..., allow_module_level=True)).
    if report.skipped and under_ci():
        _as_failure(report, collector.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests ran" (exit 5, e.g. everything deselected) must never look like a result: make it a failure.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
