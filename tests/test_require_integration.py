"""The CI guard turns a skip for a missing component into a failure, and leaves MongoDB's alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.require_integration import integration_required

ROOT = Path(__file__).resolve().parent.parent


def test_ci_and_the_explicit_switch_require_integration() -> None:
    assert integration_required({"CI": "true"})
    assert integration_required({"SMILING_REQUIRE_INTEGRATION": "1"})
    assert not integration_required({})
    assert not integration_required({"CI": "false", "SMILING_REQUIRE_INTEGRATION": "0"})


@pytest.mark.parametrize(("ci", "expected"), [("true", "1 failed, 1 skipped"), ("", "2 skipped")])
def test_a_missing_component_fails_in_ci_but_a_missing_mongodb_skips(
    tmp_path: Path, ci: str, expected: str
) -> None:
    (tmp_path / "test_guarded.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_needs_chromium():
                pytest.skip("Debian chromium is not installed")

            def test_needs_mongodb():
                pytest.skip("MONGODB_URI is not set: no real MongoDB to test against")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.require_integration", "-p",
         "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CI": ci},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert expected in result.stdout, result.stdout + result.stderr
