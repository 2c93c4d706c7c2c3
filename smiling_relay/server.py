"""Serving the app: the listeners (HTTPS when TLS files are set, the optional HTTP → HTTPS
redirect port, the node-internal listener), the connection-level behaviour of
`api.protocol.EnvelopeAppRunner`, and the stop on SIGINT/SIGTERM: stop accepting, drain, stop.

A worker of `smiling_relay.supervisor` binds the public port with SO_REUSEPORT, so the kernel
spreads new connections over the workers, and (with `RELAY_INTERNAL_PORT`) the same app on a
port of its own, without TLS, that the other workers and nodes reach it on.

TLS: TLS 1.2 at least, and for TLS 1.2 only forward-secret AEAD suites (ECDHE with AES-GCM or
ChaCha20-Poly1305; TLS 1.3's suites are all modern and fixed by OpenSSL). WebSockets upgrade on
the same listener, so `wss://` comes with `https://`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field

from aiohttp import web

from api.protocol import HEADER_TIMEOUT, EnvelopeAppRunner
from relay.coalesce import event_loop
from smiling_relay.app import DRAIN_KEY, FLEET_KEY
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
    public_site: web.TCPSite
    redirect_runner: web.AppRunner | None = None
    redirect_site: web.TCPSite | None = None
    internal_site: web.TCPSite | None = None
    urls: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.public_site.port

    @property
    def redirect_port(self) -> int | None:
        return None if self.redirect_site is None else self.redirect_site.port

    @property
    def internal_port(self) -> int | None:
        return None if self.internal_site is None else self.internal_site.port

    async def stop_accepting(self) -> None:
        """Close the public listening sockets (and the redirect one): the load balancer and the
        kernel's SO_REUSEPORT group send new connections elsewhere, while the connections already
        open and the internal listener keep working. A site's `stop()` only closes its server;
        `asyncio.Server.wait_closed()`, which on Python 3.12+ waits for every connection, is not
        awaited here."""
        listeners = ((self.runner, self.public_site), (self.redirect_runner, self.redirect_site))
        for runner, site in listeners:
            if runner is not None and site is not None and site in runner.sites:  # once
                await site.stop()

    async def stop(self) -> None:
        if self.redirect_runner is not None:
            await self.redirect_runner.cleanup()
        await self.runner.cleanup()


async def start(
    app: web.Application, config: Config, *, header_timeout: float = HEADER_TIMEOUT
) -> Running:
    """Start the app's listener (HTTPS with TLS files), with TLS the redirect port, and with
    `internal_port` the internal listener (plain HTTP, meant for loopback or a private network).
    """
    runner = EnvelopeAppRunner(
        app, header_timeout=header_timeout, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    context = None
    if config.tls_cert_file and config.tls_key_file:
        context = tls_context(config.tls_cert_file, config.tls_key_file)
    elif config.is_production:
        log.warning(NO_TLS_WARNING)
    # The supervisor's workers share the public port: the kernel spreads connections over them.
    shared = True if config.worker_index is not None else None
    public = web.TCPSite(runner, config.host, config.port, ssl_context=context, reuse_port=shared)
    await public.start()
    running = Running(runner, public)
    if config.internal_port is not None:
        internal = web.TCPSite(runner, config.internal_host, config.internal_port)
        await internal.start()
        running.internal_site = internal
    if context is not None and config.http_redirect_port is not None:
        redirect = web.AppRunner(redirect_app(config, running.port), access_log=None)
        await redirect.setup()
        site = web.TCPSite(redirect, config.host, config.http_redirect_port, reuse_port=shared)
        await site.start()
        running.redirect_runner, running.redirect_site = redirect, site
    return running


# What an admin's drain of this one worker puts in the stop queue (beside the signals' names).
WORKER_DRAIN = "admin drain"


def run(app: web.Application, config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then drain (`DRAIN_KEY`: the calls in progress continue
    until they end, at most DRAIN_TIMEOUT) and stop; a second signal during the drain stops at
    once.

    A signal drains the whole node: the public port stays open, so `/readyz` tells the load
    balancer (503) and a participant reconnecting to a call held here still reaches it; new
    calls are placed on other nodes or refused. An admin's drain of one worker
    (`POST /api/admin/nodes/{id}/drain`) also stops accepting on the public port, so the
    kernel's SO_REUSEPORT group sends new connections to the machine's other workers."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stops = asyncio.Queue[str]()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stops.put_nowait, sig.name)
        fleet = app.get(FLEET_KEY)
        if fleet is not None:
            fleet.stop = lambda: stops.put_nowait(WORKER_DRAIN)
        running = await start(app, config)
        try:
            first = await stops.get()
            if first == WORKER_DRAIN:
                await running.stop_accepting()
            drain = app.get(DRAIN_KEY)
            if drain is not None:
                log.info("%s: draining (a second signal stops now)", first)
                await _until_either(drain(), stops.get())
        finally:
            log.info("stopping")
            await running.stop()

    # Fewer wake-ups per packet: datagrams gather for a fraction of a millisecond
    with asyncio.Runner(loop_factory=lambda: event_loop(config.media_coalesce_ms / 1000)) as runner:
        runner.run(main())


async def _until_either(drain: Awaitable[None], second_signal: Awaitable[str]) -> None:
    """Wait for the drain to finish or a second signal to arrive, cancel the other."""
    tasks = {asyncio.ensure_future(drain), asyncio.ensure_future(second_signal)}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        result = task.result()  # a failed drain is logged by the traceback it raises
        if isinstance(result, str):
            log.warning("%s during the drain: stopping now", result)
