"""`smiling-relay synth`: synthetic calls against a relay (or Janus) with quality thresholds.

Called as ``synth.cli.main(argv)`` by ``smiling_relay.cli`` with everything after ``synth``.
Exit status: 0 when every threshold given holds, 1 when one was missed, 2 for usage or setup
errors (bad options, unreachable relay, provisioning refused, impairment unavailable).
See docs/synth.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from synth.impair import ClientNamespace, Impairment, ImpairmentError
from synth.load import LoadError, LoadOptions, MediaSettings, run_load
from synth.report import THRESHOLDS, ProgressBar, build_report, format_table, write_plots

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2

EPILOG = """\
examples:
  # one 1:1 call for 10 s against a local relay (JWT_SECRET is the relay's secret)
  smiling-relay synth http://127.0.0.1:8080 --jwt-secret "$JWT_SECRET"

  # 20 calls, cheap mode over 2 processes, CI gate on latency and loss
  smiling-relay synth http://10.0.0.5:8080 --calls 20 --cheap --procs 2 --duration 30 \\
      --max-video-latency-ms 500 --max-audio-latency-ms 200 --max-loss-pct 1 \\
      --json report.json --plots plots/

  # 100 calls from one 2-core machine: lean clients, one fully measured call, 4 processes
  smiling-relay synth http://10.0.0.5:8080 --calls 100 --lean --procs 4 --jwt-secret S

  # clients behind 3 % loss and 600 kbit/s (root): loss = nftables random drop, rate = tbf
  smiling-relay synth http://127.0.0.1:8080 --jwt-secret S --loss 3 --rate 600

network impairment (root only; the clients run in a namespace of their own):
  --loss and --rate work on any kernel with nftables and tbf. --delay and --jitter need
  netem (sch_netem); on kernels without it (like the one this tool was built on) they are
  refused with an error rather than faked.
"""


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("use WIDTHxHEIGHT, e.g. 640x480") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smiling-relay synth",
        description="Run M synthetic calls of K participants against a relay over its real REST "
        "and WebSocket API; measure join time, latency, fps, freezes, loss, bitrate and picture "
        "integrity; print a table, write a JSON report and plots; fail on missed thresholds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="?", help="the relay's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--janus", metavar="WS_URL", help="drive a Janus VideoRoom instead (ws://host:8188)"
    )

    load = parser.add_argument_group("load")
    load.add_argument("-m", "--calls", type=int, default=1, help="concurrent calls (default 1)")
    load.add_argument(
        "-k", "--participants", type=int, default=2, help="participants per call (default 2)"
    )
    load.add_argument(
        "--duration", type=float, default=10.0, help="measurement window, s (default 10)"
    )
    load.add_argument(
        "--ramp", type=float, default=5.0, help="joins per second while ramping up (default 5)"
    )
    load.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="s between the last scheduled join and the window (default 2)",
    )
    load.add_argument(
        "--setup-timeout", type=float, default=20.0, help="s per participant to join (default 20)"
    )
    load.add_argument("--procs", type=int, default=1, help="client worker processes (default 1)")
    load.add_argument("--seed", type=int, help="seed for the choice of decoding subscribers")

    media = parser.add_argument_group("media")
    media.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    media.add_argument(
        "--e2ee",
        action="store_true",
        help="encrypt end to end as the browser client does (VP8 + Opus; docs/e2ee.md)",
    )
    media.add_argument("--resolution", type=_resolution, default=(640, 480), metavar="WxH")
    media.add_argument("--fps", type=int, default=15)
    media.add_argument(
        "--bitrate",
        type=int,
        default=500,
        metavar="KBPS",
        help="the cheap clip's video bitrate (live encoders follow congestion control)",
    )
    media.add_argument(
        "--cheap",
        action="store_true",
        help="publish a pre-encoded clip (no encoder) and count without decoding, except in "
        "--full-calls and a --decode-fraction of subscribers",
    )
    media.add_argument(
        "--sample-resolution",
        type=_resolution,
        metavar="WxH",
        help="with --cheap/--lean: the full calls' live video size (default: --resolution)",
    )
    media.add_argument(
        "--lean",
        action="store_true",
        help="implies --cheap: the cheap participants replay pre-packetized media and count at "
        "the socket, decrypting a sample (synth/lean.py): 100+ calls from one machine",
    )
    media.add_argument(
        "--full-calls", type=int, default=1, help="with --cheap: fully measured calls (default 1)"
    )
    media.add_argument(
        "--decode-fraction",
        type=float,
        default=0.0,
        help="with --cheap: share of the other subscribers that decode and check pictures",
    )

    auth = parser.add_argument_group("sessions and tokens (relay)")
    auth.add_argument(
        "--jwt-secret",
        default=os.environ.get("JWT_SECRET"),
        help="the relay's JWT secret: users, sessions and tokens are created for the run "
        "(default $JWT_SECRET)",
    )
    auth.add_argument(
        "--admin-token", help="admin token for the admin API (default: minted with the secret)"
    )
    auth.add_argument(
        "--session",
        action="append",
        default=[],
        metavar="ID",
        help="an existing bookable session (repeat, one per call)",
    )
    auth.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="JWT",
        help="participant tokens, K per --session in order (repeat)",
    )

    net = parser.add_argument_group("client-side network impairment (root)")
    net.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="UDP loss each way")
    net.add_argument("--rate", type=int, metavar="KBIT", help="link rate each way (tbf, shared)")
    net.add_argument("--delay", type=float, default=0.0, metavar="MS", help="needs netem")
    net.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="needs netem")

    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here")
    out.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write latency.png, bitrate.png (needs the qa extra: pip install .[qa])",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("-q", "--quiet", action="store_true", help="print the verdict only")

    gates = parser.add_argument_group("thresholds (exit status 1 when one is missed)")
    for dest, (_metric, _op, text) in THRESHOLDS.items():
        unit = "MS" if dest.endswith("_ms") else "PCT" if dest.endswith("_pct") else None
        gates.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            metavar=unit or ("FPS" if dest == "min_fps" else "N"),
            type=float,
            default=0.0 if dest == "max_failures" else None,
            help=text.replace("%", "%%"),
        )
    return parser


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    width, height = args.resolution
    url = args.janus or args.url
    return LoadOptions(
        url=url or "",
        target="janus" if args.janus else "relay",
        calls=args.calls,
        participants=args.participants,
        duration=args.duration,
        ramp=args.ramp,
        warmup=args.warmup,
        media=MediaSettings(
            codec=args.codec, width=width, height=height, fps=args.fps, bitrate=args.bitrate * 1000
        ),
        cheap=args.cheap or args.lean,
        lean=args.lean,
        sample_size=args.sample_resolution,
        e2ee=args.e2ee,
        full_calls=args.full_calls,
        decode_fraction=args.decode_fraction,
        procs=args.procs,
        setup_timeout=args.setup_timeout,
        jwt_secret=args.jwt_secret,
        admin_token=args.admin_token,
        sessions=list(args.session),
        tokens=list(args.token),
        seed=args.seed,
    )


def _quiet_libraries() -> None:
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for name in ("aioice", "aiortc", "aiohttp.access", "synth.janus"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.url and args.janus:
        parser.error("give either a relay URL or --janus, not both")
    _quiet_libraries()
    try:
        options = options_from_args(args)
        impairment = Impairment(args.loss, args.rate, args.delay, args.jitter)
        impairment.validate()
        options.validate()
    except (ValueError, LoadError, ImpairmentError) as exc:
        print(f"smiling-relay synth: {exc}", file=sys.stderr)
        return EXIT_USAGE
    limits = {dest: getattr(args, dest) for dest in THRESHOLDS}
    bar = None if args.no_progress or args.quiet else ProgressBar()
    namespace: ClientNamespace | None = None
    try:
        if impairment.active:
            namespace = ClientNamespace(impairment).__enter__()
            options.worker_prefix = namespace.worker_prefix
            options.worker_url = namespace.url_for_clients(options.url)
            if not args.quiet:
                print(
                    f"clients in namespace {namespace.name}: {impairment.describe()} "
                    f"(relay reached as {options.worker_url})",
                    file=sys.stderr,
                )
        result = run_load(options, progress=bar)
    except (LoadError, ImpairmentError) as exc:
        print(f"smiling-relay synth: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"smiling-relay synth: cannot reach {options.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if bar is not None:
            bar.close()
        if namespace is not None:
            namespace.close()
    report = build_report(result, limits)
    if impairment.active:
        report["impairment"] = {
            "loss_pct": impairment.loss_pct,
            "rate_kbit": impairment.rate_kbit,
            "delay_ms": impairment.delay_ms,
            "jitter_ms": impairment.jitter_ms,
        }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.plots is not None:
        samples: dict[str, list[float]] = {"video": [], "audio": []}
        for call in result.calls:
            for kind in samples:
                samples[kind].extend(call.get("samples", {}).get(kind, []))
        files, why_not = write_plots(report, samples, args.plots)
        if why_not:
            print(f"smiling-relay synth: {why_not}", file=sys.stderr)
        elif not args.quiet:
            print("plots: " + ", ".join(str(f) for f in files), file=sys.stderr)
    if args.quiet:
        print("PASSED" if report["passed"] else "FAILED")
    else:
        print(format_table(report))
    return EXIT_OK if report["passed"] else EXIT_THRESHOLD
