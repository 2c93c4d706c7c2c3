"""`/metrics` in production: the relay refuses to start without METRICS_AUTH_TOKEN, answers 401
without the token, and a real Prometheus scrapes it with deploy/prometheus/prometheus.yml's
`authorization` block (the token in the file next to it)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from smiling_relay.config import Config, ConfigError
from tests.conftest import AppFactory, MakeClient
from tests.helpers import error_of
from tests.metrics import dashboard
from tests.metrics.test_live_prometheus import (
    PROMETHEUS,
    PROMETHEUS_PORT_ARGS,
    listening_port,
    until,
)

TOKEN = "metrics-" + "t" * 32
DEPLOY_PROMETHEUS = dashboard.ROOT / "deploy" / "prometheus" / "prometheus.yml"


def test_production_refuses_to_start_without_a_metrics_token() -> None:
    env = {"NODE_ENV": "production", "JWT_SECRET": "s" * 40}
    with pytest.raises(ConfigError, match="METRICS_AUTH_TOKEN is required in production"):
        Config.from_env(env)
    assert Config.from_env({**env, "METRICS_AUTH_TOKEN": TOKEN}).metrics_auth_token == TOKEN
    assert Config.from_env({"JWT_SECRET": "s" * 40}).metrics_auth_token is None  # development


async def test_metrics_answers_401_without_the_token(make_client: MakeClient) -> None:
    client = await make_client(environment="production", metrics_auth_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await client.get("/metrics", headers=headers)
        error = await error_of(resp, 401)
        assert error["code"] == "UNAUTHORIZED"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    assert "smiling_relay_" in await ok.text()


async def test_prometheus_scrapes_with_the_deploy_config(
    make_app: AppFactory,
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    tmp_path: Path,
) -> None:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} is missing: apt-get install prometheus (Debian package)")
    server = await aiohttp_server(make_app(environment="production", metrics_auth_token=TOKEN))
    # The deploy file as shipped, pointed at this server, plus a job without the token.
    deployed = DEPLOY_PROMETHEUS.read_text()
    assert "credentials_file: metrics-token" in deployed
    config = deployed.replace('"relay:8080"', f'"127.0.0.1:{server.port}"')
    config = config.replace("  - alerts.yml", "  []").replace("rule_files:\n  []", "")
    config += f"""
  - job_name: no-token
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:{server.port}"]
"""
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "metrics-token").write_text(TOKEN + "\n")
    log = (tmp_path / "prometheus.log").open("w")
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        *PROMETHEUS_PORT_ARGS,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port = await listening_port(process, tmp_path / "prometheus.log")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def up() -> dict[str, str] | None:
                assert process.returncode is None, (tmp_path / "prometheus.log").read_text()
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}
                    ) as resp:
                        body = await resp.json()
                except aiohttp.ClientError:
                    return None
                result = {r["metric"]["job"]: r["value"][1] for r in body["data"]["result"]}
                return result if len(result) == 2 else None

            result = await until(up, "both jobs scraped", limit=30)
            assert result == {"smiling-relay": "1", "no-token": "0"}
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()
