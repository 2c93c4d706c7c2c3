"""TLS in the server itself: HTTPS and WSS with TLS >= 1.2 and modern ciphers, the plain-HTTP
redirect port, and the production warning without TLS files (smiling_relay/server.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from smiling_relay import server
from smiling_relay.app import create_app
from smiling_relay.config import Config, ConfigError
from storage.base import Storage
from tests.tls_cert import SelfSigned, make_self_signed

Start = Callable[..., Awaitable[server.Running]]


@pytest.fixture
def cert(tmp_path: Path) -> SelfSigned:
    return make_self_signed(tmp_path)


@pytest.fixture
async def start(config: Config, storage: Storage) -> AsyncIterator[Start]:
    started: list[server.Running] = []

    async def factory(**overrides: Any) -> server.Running:
        cfg = dataclasses.replace(config, **overrides)
        running = await server.start(create_app(cfg, storage), cfg)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        await running.stop()


def client_context(cert: SelfSigned, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert.cert_file))
    for attribute, version in versions.items():
        setattr(context, attribute, version)
    return context


async def test_https_and_wss(start: Start, cert: SelfSigned, make_token: Any) -> None:
    running = await start(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    base = f"https://127.0.0.1:{running.port}"
    context = client_context(cert)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["data"]["status"] == "ok"
        token = make_token("c" * 24, "client")
        async with session.ws_connect(f"wss://127.0.0.1:{running.port}/ws?token={token}") as ws:
            message = await asyncio.wait_for(ws.receive_json(), 5)
            assert message["event"] == "authenticated"
    # plain HTTP on the TLS port is not served
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{running.port}/healthz")


async def test_tls_1_2_negotiates_a_forward_secret_aead_suite(
    start: Start, cert: SelfSigned
) -> None:
    running = await start(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    context = client_context(cert, maximum_version=ssl.TLSVersion.TLSv1_2)
    _reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.2"
        name, _protocol, _bits = ssl_object.cipher()
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
    finally:
        writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_1_1_is_refused(start: Start, cert: SelfSigned) -> None:
    running = await start(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    context = client_context(
        cert, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1
    )
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", running.port, ssl=context)
    # Control: the same client does get TLS 1.1 from a server that allows it, so the refusal
    # above is our server's.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(cert.cert_file, cert.key_file)
    other = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    try:
        port = other.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        writer.close()
    finally:
        other.close()


async def test_plain_port_redirects_to_https(start: Start, cert: SelfSigned) -> None:
    running = await start(
        tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file), http_redirect_port=0
    )
    assert running.redirect_port is not None
    url = f"http://127.0.0.1:{running.redirect_port}/call/{'ab' * 12}?token=x"
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == (
            f"https://127.0.0.1:{running.port}/call/{'ab' * 12}?token=x"
        )


async def test_production_without_tls_warns(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    await start(environment="production", metrics_auth_token="t")
    assert any(r.getMessage() == server.NO_TLS_WARNING for r in caplog.records)
    caplog.clear()
    await start()  # development: no warning
    assert not any(r.getMessage() == server.NO_TLS_WARNING for r in caplog.records)


def test_tls_settings_are_validated(cert: SelfSigned, tmp_path: Path) -> None:
    base = {"JWT_SECRET": "s" * 40}
    config = Config.from_env(
        {**base, "TLS_CERT_FILE": str(cert.cert_file), "TLS_KEY_FILE": str(cert.key_file)}
    )
    assert config.tls and config.base_url().startswith("https://")
    for env, message in (
        ({"TLS_CERT_FILE": str(cert.cert_file)}, "set together"),
        ({"TLS_CERT_FILE": str(tmp_path / "nope"), "TLS_KEY_FILE": str(cert.key_file)}, "file"),
        ({"HTTP_REDIRECT_PORT": "8081"}, "needs TLS"),
    ):
        with pytest.raises(ConfigError, match=message):
            Config.from_env({**base, **env})
