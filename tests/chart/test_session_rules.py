"""tests/session_rules.py, the run's rules both suites import: a small suite run in a subprocess with and
without CI set."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from conftest import REPO

SUITE = {
    "conftest.py": "from session_rules import pytest_make_collect_report, pytest_runtest_makereport, "
    "pytest_sessionfinish  # noqa: F401\n",
    "test_mixed.py": (
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "@pytest.mark.skipif(True, reason='frobnicator not installed')\n"
        "def test_needs_a_tool():\n    pass\n\n"
        "@pytest.mark.xfail(reason='known', strict=True)\n"
        "def test_expected_failure():\n    assert False\n"
    ),
}


def run(tmp_path: pathlib.Path, ci: str | None, files: dict[str, str] = SUITE) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO / "tests")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_skip_fails_the_run_under_ci_naming_the_test_and_why(tmp_path: pathlib.Path) -> None:
    out = run(tmp_path, "true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "test_mixed.py::test_needs_a_tool was skipped (frobnicator not installed)" in out.stdout, out.stdout
    assert "1 passed" in out.stdout and "1 xfailed" in out.stdout, out.stdout


def test_a_skip_is_a_skip_outside_ci(tmp_path: pathlib.Path) -> None:
    for ci in (None, "false"):
        out = run(tmp_path, ci)
        assert out.returncode == 0, f"CI={ci!r}: {out.stdout}{out.stderr}"
        assert "1 skipped" in out.stdout, out.stdout


def test_a_module_that_skips_itself_fails_the_run_under_ci(tmp_path: pathlib.Path) -> None:
    files = {
        "conftest.py": SUITE["conftest.py"],
        "test_module.py": "import pytest\npytest.skip('no cluster', allow_module_level=True)\n",
        "test_other.py": "def test_runs():\n    pass\n",
    }
    out = run(tmp_path, "1", files)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "test_module.py was skipped (no cluster)" in out.stdout, out.stdout


def test_no_tests_is_a_failure(tmp_path: pathlib.Path) -> None:
    out = run(tmp_path, None, {"conftest.py": SUITE["conftest.py"]})
    assert out.returncode == 1, out.stdout + out.stderr
