"""The `smiling-relay` command: `serve`, `demo`, `token` (and `synth`, when installed)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from calls.identity import mint_token
from smiling_relay.config import MAX_WORKERS, Config, ConfigError
from smiling_relay.logs import configure_logging
from storage.base import ROLES, DuplicateError, Storage, UserRecord, format_datetime, is_object_id
from storage.factory import open_storage

log = logging.getLogger("smiling_relay")

DEMO_USERS = (
    ("client", "Demo Client", "demo-client@smiling-relay.local"),
    ("psychologist", "Dr. Demo Psychologist", "demo-psychologist@smiling-relay.local"),
    ("admin", "Demo Admin", "demo-admin@smiling-relay.local"),
)
DEMO_TOKEN_TTL = timedelta(hours=12)
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smiling-relay",
        description="Media relay (SFU) for Smiling Steps video sessions. "
        "Configuration comes from the environment (see README).",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="listen address (default $HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default $PORT or 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (default $RELAY_WORKERS or one per core; 1: a single process)",
    )

    demo = sub.add_parser(
        "demo", help="create demo users and a bookable session; print ids, tokens and links"
    )
    demo.add_argument(
        "--starts-in",
        type=float,
        default=3.0,
        metavar="MINUTES",
        help="minutes from now until the demo session starts (default 3)",
    )
    demo.add_argument("--json", action="store_true", help="print JSON instead of text")

    token = sub.add_parser("token", help="mint a development JWT")
    token.add_argument("--user-id", required=True, help="24-hex ObjectId of the user")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument(
        "--ttl",
        type=float,
        default=12 * 60,
        metavar="MINUTES",
        help="lifetime in minutes (default 720)",
    )
    token.add_argument(
        "--shape",
        choices=("platform", "sub"),
        default="platform",
        help="payload shape: the platform's {user:{id,role}} (default) or top-level sub+role",
    )

    # --- extension point: the `synth` subcommand lives in synth/cli.py (another package).
    # Everything after `synth` is passed untouched to `synth.cli.main(argv)` (see main()).
    sub.add_parser(
        "synth",
        help="synthetic QA calls against a relay: latency, fps, freezes, loss (docs/synth.md)",
        add_help=False,
    )
    return parser


def _split_synth(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split `[top-level options] synth ARGS…` into (`[options…, "synth"]`, ARGS)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    if i < len(argv) and argv[i] == "synth":
        return argv[: i + 1], argv[i + 1 :]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    own_args, synth_args = _split_synth(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own_args)
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    configure_logging(level, "text")  # until the configuration names LOG_FORMAT
    if args.command == "synth":
        return _synth(synth_args or [])
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"smiling-relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(level, config.log_format)
    if args.command == "serve":
        return _serve(
            config, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level
        )
    if args.command == "demo":
        return _demo(config, starts_in_minutes=args.starts_in, as_json=args.json)
    if args.command == "token":
        return _token(config, args.user_id, args.role, args.ttl, args.shape)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # pragma: no cover (parser.error exits)


def _require_stable_secret(config: Config, what: str) -> bool:
    if config.jwt_secret_generated:
        print(
            f"smiling-relay: JWT_SECRET is not set. {what} must be signed with the secret the "
            "server uses; export JWT_SECRET (the same value for `serve`) and try again.",
            file=sys.stderr,
        )
        return False
    return True


# -- serve --------------------------------------------------------------------------------------


def _serve(
    config: Config,
    *,
    host: str | None,
    port: int | None,
    workers: int | None = None,
    log_level: str = "INFO",
) -> int:
    if host:
        config = dataclasses.replace(config, host=host)
    if port is not None:
        if not 0 <= port <= 65535:
            print("smiling-relay: --port must be within 0-65535", file=sys.stderr)
            return EXIT_USAGE
        config = dataclasses.replace(config, port=port)
    if workers is not None:
        if not 1 <= workers <= MAX_WORKERS:
            print(f"smiling-relay: --workers must be within 1-{MAX_WORKERS}", file=sys.stderr)
            return EXIT_USAGE
        config = dataclasses.replace(config, workers=workers)
    if config.jwt_secret_generated:
        # Development only (production refuses to start without one): say it loudly, once.
        log.warning(
            "JWT_SECRET is not set; generated a development secret for this run: %s",
            config.jwt_secret,
        )
    if config.workers > 1 and config.worker_index is None:
        # The supervisor imports no aiohttp or aiortc: it only starts and watches the workers.
        from smiling_relay import supervisor

        try:
            return supervisor.serve(config, log_level=log_level)
        except ConfigError as exc:
            print(f"smiling-relay: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return _serve_here(config)


def _serve_here(config: Config) -> int:
    """This process serves: the single process, or one of the supervisor's workers."""
    from aiohttp import web

    from smiling_relay import server
    from smiling_relay.app import create_app

    app = create_app(config)
    worker = ""
    if config.worker_index is not None:
        ports = config.relay_udp_ports
        worker = (
            f"worker {config.worker_index} (node {config.node_id}, internal "
            f"{config.internal_url}, UDP {f'{ports[0]}-{ports[1]}' if ports else 'any'}) "
        )

    async def announce(_: web.Application) -> None:
        log.info(
            "smiling-relay %sserving on %s (bind %s:%d, %s, storage %s, %s mode)",
            worker,
            config.base_url(),
            config.host,
            config.port,
            "HTTPS" if config.tls else "plain HTTP",
            config.storage_backend,
            config.environment,
        )

    app.on_startup.append(announce)
    server.run(app, config)
    return 0


# -- demo ---------------------------------------------------------------------------------------


async def _demo_user(storage: Storage, role: str, name: str, email: str) -> UserRecord:
    existing = await storage.find_user_by_email(email)
    if existing is not None:
        return existing
    try:
        return await storage.create_user(name=name, email=email, role=role)
    except DuplicateError:  # created concurrently by another `demo`
        again = await storage.find_user_by_email(email)
        if again is None:
            raise
        return again


async def create_demo(config: Config, *, starts_in_minutes: float = 3.0) -> dict[str, Any]:
    """Create (or reuse) the demo users and a new Confirmed + Paid session; return the facts."""
    storage = open_storage(config)
    await storage.initialize()
    try:
        users = {
            role: await _demo_user(storage, role, name, email) for role, name, email in DEMO_USERS
        }
        now = config.clock()
        session = await storage.create_session(
            client_id=users["client"].id,
            psychologist_id=users["psychologist"].id,
            session_date=now + timedelta(minutes=starts_in_minutes),
            status="Confirmed",
            payment_status="Paid",
        )
    finally:
        await storage.close()
    base = config.base_url()
    result: dict[str, Any] = {
        "baseUrl": base,
        "sessionId": session.id,
        "sessionDate": format_datetime(session.session_date),
        "users": {},
    }
    for role, user in users.items():
        token = mint_token(user.id, role, config.jwt_secret, ttl=DEMO_TOKEN_TTL, now=now)
        entry: dict[str, Any] = {"id": user.id, "name": user.name, "token": token}
        if role != "admin":
            entry["link"] = f"{base}/call/{session.id}?token={token}"
        result["users"][role] = entry
    return result


def _demo(config: Config, *, starts_in_minutes: float, as_json: bool) -> int:
    if not _require_stable_secret(config, "Demo tokens"):
        return EXIT_USAGE
    result = asyncio.run(create_demo(config, starts_in_minutes=starts_in_minutes))
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    users = result["users"]
    print(f"Demo session {result['sessionId']} starts at {result['sessionDate']}")
    print("(joinable from 15 minutes before to 2 hours after that time)\n")
    for role in ("client", "psychologist", "admin"):
        user = users[role]
        print(f"{role:>12}: {user['name']} (id {user['id']})")
        print(f"{'token':>12}: {user['token']}")
        if "link" in user:
            print(f"{'open':>12}: {user['link']}")
        print()
    print("Try the API, e.g.:")
    print(
        f"  curl -s -H 'x-auth-token: {users['client']['token']}' "
        f"{result['baseUrl']}/api/video-calls/can-join/{result['sessionId']}"
    )
    return 0


# -- token --------------------------------------------------------------------------------------


def _token(config: Config, user_id: str, role: str, ttl_minutes: float, shape: str) -> int:
    if not is_object_id(user_id):
        print("smiling-relay: --user-id must be a 24-hex ObjectId", file=sys.stderr)
        return EXIT_USAGE
    if ttl_minutes <= 0:
        print("smiling-relay: --ttl must be positive", file=sys.stderr)
        return EXIT_USAGE
    if not _require_stable_secret(config, "Tokens"):
        return EXIT_USAGE
    token = mint_token(
        user_id.lower(),
        role,
        config.jwt_secret,
        ttl=timedelta(minutes=ttl_minutes),
        now=config.clock(),
        shape="sub" if shape == "sub" else "platform",
    )
    print(token)
    return 0


# -- synth (extension point) --------------------------------------------------------------------


def _synth(argv: Sequence[str]) -> int:
    try:
        module = importlib.import_module("synth.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("synth", "synth.cli"):
            raise
        print("smiling-relay: the synth command is not available in this build", file=sys.stderr)
        return EXIT_USAGE
    result = module.main(list(argv))
    return int(result or 0)
