"""The dependency rules of docs/architecture.md hold, and breaking one fails the suite.

The rules themselves are import-linter contracts in `pyproject.toml` (`[tool.importlinter]`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "calls",
    "cluster",
    "relay",
    "signaling",
    "api",
    "metrics",
    "storage",
    "synth",
    "smiling_relay",
)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    selected = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *selected, str(root / "pyproject.toml")],
        cwd=root,
        # the packages of `root`, not the editable install's
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_import_contract_is_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "message"),
    [
        ("relay/rtp.py", "import aiohttp", "relay-alone", "relay.rtp -> aiohttp"),
        ("relay/producer.py", "import relay.forwarder", "relay-inside", "relay.forwarder"),
        ("calls/policy.py", "import relay.rtp", "calls-domain", "calls.policy -> relay.rtp"),
        ("api/errors.py", "import signaling.protocol", "faces-apart", "signaling.protocol"),
        ("metrics/quality.py", "import relay.room", "metrics-reads", "metrics.quality"),
        ("cluster/state.py", "import aiohttp", "cluster-apart", "cluster.state -> aiohttp"),
        (
            "calls/ratelimit.py",
            "import cluster.state",
            "calls-domain",
            "calls.ratelimit -> cluster",
        ),
    ],
)
def test_a_broken_rule_fails_the_check(
    tmp_path: Path, module: str, line: str, contract: str, message: str
) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint_imports(tmp_path, contract)
    assert result.returncode != 0, result.stdout
    assert "1 broken" in result.stdout and message in result.stdout, result.stdout


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(result.stdout.split())


def test_the_media_core_loads_no_http_jwt_metrics_or_database() -> None:
    loaded = _loaded_after("import relay.sfu, relay._aiortc")
    assert "aiortc" in loaded  # the import did happen
    assert not loaded & {"aiohttp", "jwt", "prometheus_client", "motor", "pymongo", "matplotlib"}


def test_the_domain_loads_no_http_or_media() -> None:
    loaded = _loaded_after("import calls.service, calls.identity, calls.policy, calls.audit")
    assert "jwt" in loaded
    assert not loaded & {"aiohttp", "aiortc", "aioice", "av", "prometheus_client"}


def test_the_cluster_state_loads_no_http_or_media() -> None:
    loaded = _loaded_after("import cluster.ratelimit, cluster.sqlite_state, cluster.redis_state")
    assert "redis" in loaded  # the import did happen
    assert not loaded & {"aiohttp", "aiortc", "aioice", "av", "prometheus_client", "motor"}


def test_the_server_loads_neither_the_qa_tool_nor_its_plotting() -> None:
    loaded = _loaded_after("import smiling_relay.app, smiling_relay.cli")
    assert "relay" in loaded and "aiohttp" in loaded
    assert not loaded & {"synth", "matplotlib"}
