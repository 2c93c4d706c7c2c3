"""Serving the app: the listeners (HTTPS when TLS files are set, the optional HTTP → HTTPS
redirect port), the connection-level behaviour of `api.protocol.EnvelopeAppRunner`, and a clean
stop on SIGINT/SIGTERM.

TLS: TLS 1.2 at least, and for TLS 1.2 only forward-secret AEAD suites (ECDHE with AES-GCM or
ChaCha20-Poly1305; TLS 1.3's suites are all modern and fixed by OpenSSL). WebSockets upgrade on
the same listener, so `wss://` comes with `https://`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from api.protocol import HEADER_TIMEOUT, EnvelopeAppRunner
from smiling_relay.config import Config

log = logging.getLogger(__name__)

TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1"
SHUTDOWN_TIMEOUT = 10.0
NO_TLS_WARNING = (
    "production mode without TLS_CERT_FILE/TLS_KEY_FILE: serving plain HTTP. A TLS-terminating "
    "proxy MUST sit in front (browsers allow cameras only over HTTPS, tokens travel in headers)"
)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server's TLS settings: TLS >= 1.2, modern ciphers, no compression or renegotiation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_file, key_file)
    return context


def redirect_app(config: Config, https_port: int) -> web.Application:
    """Every plain-HTTP request → 308 to the same path over HTTPS (PUBLIC_URL's origin when it
    is an https URL, else the requested host on the HTTPS port)."""
    public = config.public_url.rstrip("/") if config.public_url else None

    async def redirect(request: web.Request) -> web.StreamResponse:
        if public and public.startswith("https://"):
            base = public
        else:
            host = request.url.host or "localhost"
            if ":" in host:
                host = f"[{host}]"
            base = f"https://{host}" + ("" if https_port == 443 else f":{https_port}")
        raise web.HTTPPermanentRedirect(base + request.rel_url.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


@dataclass
class Running:
    """The started listeners; `stop()` closes them (the app's cleanup runs there)."""

    runner: web.AppRunner
    redirect_runner: web.AppRunner | None = None
    urls: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.runner.addresses[0][1])

    @property
    def redirect_port(self) -> int | None:
        if self.redirect_runner is None:
            return None
        return int(self.redirect_runner.addresses[0][1])

    async def stop(self) -> None:
        if self.redirect_runner is not None:
            await self.redirect_runner.cleanup()
        await self.runner.cleanup()


async def start(
    app: web.Application, config: Config, *, header_timeout: float = HEADER_TIMEOUT
) -> Running:
    """Start the app's listener (HTTPS with TLS files) and, with TLS, the redirect port."""
    runner = EnvelopeAppRunner(
        app, header_timeout=header_timeout, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    context = None
    if config.tls_cert_file and config.tls_key_file:
        context = tls_context(config.tls_cert_file, config.tls_key_file)
    elif config.is_production:
        log.warning(NO_TLS_WARNING)
    await web.TCPSite(runner, config.host, config.port, ssl_context=context).start()
    running = Running(runner)
    if context is not None and config.http_redirect_port is not None:
        redirect = web.AppRunner(redirect_app(config, running.port), access_log=None)
        await redirect.setup()
        await web.TCPSite(redirect, config.host, config.http_redirect_port).start()
        running.redirect_runner = redirect
    return running


def run(app: web.Application, config: Config) -> None:
    """Serve until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running = await start(app, config)
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await running.stop()

    asyncio.run(main())
