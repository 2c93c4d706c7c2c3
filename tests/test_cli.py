"""The `smiling-relay` command: token, demo, serve, and the synth extension point."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from calls.identity import Identity, decode_token
from smiling_relay import cli
from storage.sqlite import SQLiteStorage
from tests.helpers import TEST_JWT_SECRET

REPO = Path(__file__).resolve().parent.parent
USER = "507f1f77bcf86cd799439011"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: test secret, temp SQLite file, one process, no platform variables."""
    for name in list(os.environ):
        if name in {"NODE_ENV", "APP_ENV", "MONGODB_URI", "PUBLIC_URL", "HOST", "PORT"}:
            monkeypatch.delenv(name)
    db = tmp_path / "cli.sqlite3"
    # The single process `serve` was before workers (tests/test_supervisor.py runs those): its
    # pid is the server, and a port taken under it makes it exit, which `_serving` relies on.
    monkeypatch.setenv("RELAY_WORKERS", "1")
    monkeypatch.setenv("JWT_SECRET", TEST_JWT_SECRET)
    monkeypatch.setenv("SQLITE_PATH", str(db))
    return db


def test_token_both_shapes(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "--user-id", USER, "--role", "psychologist"]) == 0
    token = capsys.readouterr().out.strip()
    assert decode_token(token, TEST_JWT_SECRET) == Identity(USER, "psychologist")
    assert cli.main(["token", "--user-id", USER.upper(), "--role", "admin", "--shape", "sub"]) == 0
    token = capsys.readouterr().out.strip()
    assert decode_token(token, TEST_JWT_SECRET) == Identity(USER, "admin")


def test_token_refusals(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token", "--user-id", "42", "--role", "client"]) == 2
    assert "ObjectId" in capsys.readouterr().err
    assert cli.main(["token", "--user-id", USER, "--role", "client", "--ttl", "0"]) == 2
    monkeypatch.delenv("JWT_SECRET")
    assert cli.main(["token", "--user-id", USER, "--role", "client"]) == 2
    assert "JWT_SECRET" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["token", "--user-id", USER, "--role", "root"])


def test_bad_configuration_exits_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    assert cli.main(["token", "--user-id", USER, "--role", "client"]) == 2
    assert "PORT" in capsys.readouterr().err


def test_demo_is_repeatable(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(["demo", "--json", "--starts-in", "10"]) == 0
    second = json.loads(capsys.readouterr().out)

    for role in ("client", "psychologist", "admin"):  # users are reused
        assert first["users"][role]["id"] == second["users"][role]["id"]
        identity = decode_token(first["users"][role]["token"], TEST_JWT_SECRET)
        assert identity == Identity(first["users"][role]["id"], role)
    assert first["sessionId"] != second["sessionId"]  # each run books a fresh session
    link = first["users"]["client"]["link"]
    assert link.startswith(f"http://127.0.0.1:8080/call/{first['sessionId']}?token=")
    assert "link" not in first["users"]["admin"]

    async def check() -> None:
        store = SQLiteStorage(env)
        await store.initialize()
        try:
            session = await store.get_session(first["sessionId"])
            assert session is not None
            assert (session.status, session.payment_status) == ("Confirmed", "Paid")
            assert session.client_id == first["users"]["client"]["id"]
        finally:
            await store.close()

    asyncio.run(check())


def test_demo_text_output(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "/call/" in out
    assert "curl" in out


def test_synth_extension_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["synth", "--anything"]) == 2
    assert "not available" in capsys.readouterr().err

    seen: list[list[str]] = []

    class FakeSynth:
        @staticmethod
        def main(argv: list[str]) -> int:
            seen.append(argv)
            return 0

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: FakeSynth)
    assert cli.main(["--log-level", "DEBUG", "synth", "--x", "1", "probe", "-h"]) == 0
    assert seen == [["--x", "1", "probe", "-h"]]


def _start_serve(port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smiling_relay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output


async def _healthz(url: str, proc: subprocess.Popen[str], deadline_s: float = 30) -> dict | None:
    """The `/healthz` body once the server answers; None if the process exited first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    async with aiohttp.ClientSession() as http:
        while proc.poll() is None:
            try:
                async with http.get(url) as resp:
                    return dict(await resp.json())
            except aiohttp.ClientConnectionError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)  # polling for readiness, not standing in for it
    return None


async def _serving() -> tuple[subprocess.Popen[str], int]:
    """`serve` running on a free port, answering /healthz.

    `serve` announces the configured port, not a bound one, so the test picks a free port; if
    another process takes it first the server exits with "address in use": pick again (bounded)
    instead of failing on someone else's race.
    """
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        proc = _start_serve(port)
        if await _healthz(f"http://127.0.0.1:{port}/healthz", proc) is not None:
            return proc, port
        output = _stop(proc)
        assert "address already in use" in output.lower(), output
    raise AssertionError("three free ports were all taken before the server bound them")


async def test_serve_starts_and_answers(env: Path) -> None:
    proc, port = await _serving()
    try:
        body = await _healthz(f"http://127.0.0.1:{port}/healthz", proc)
    finally:
        output = _stop(proc)
    assert body == {"success": True, "data": {"status": "ok", "storage": "sqlite"}}
    assert f"serving on http://127.0.0.1:{port}" in output


def test_serve_refuses_production_without_secret(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv("NODE_ENV", "production")
    result = subprocess.run(
        [sys.executable, "-m", "smiling_relay", "serve"],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "JWT_SECRET is required in production" in result.stderr


def test_serve_refuses_production_without_metrics_token(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.delenv("METRICS_AUTH_TOKEN", raising=False)
    result = subprocess.run(
        [sys.executable, "-m", "smiling_relay", "serve"],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "METRICS_AUTH_TOKEN is required in production" in result.stderr


async def test_serve_in_production_logs_json_lines_and_warns_without_tls(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.setenv("METRICS_AUTH_TOKEN", "m" * 32)
    proc, port = await _serving()
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers={"X-Request-ID": "cli-1"}) as resp,
        ):
            assert resp.headers["X-Request-ID"] == "cli-1"
        proc.terminate()  # SIGTERM: a clean stop
        output, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    assert any("TLS-terminating proxy MUST sit in front" in x["message"] for x in lines)
    (access,) = [x for x in lines if x.get("request_id") == "cli-1"]
    assert access["logger"] == "smiling_relay.access"
    assert (access["method"], access["route"], access["status"]) == ("GET", "/healthz", 200)
