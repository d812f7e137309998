"""Command line: `gofiddle serve` (and `gofiddle bench`)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
import time
from typing import Any

import uvicorn

from . import config


class JsonFormatter(logging.Formatter):
    """One JSON object per line; job records carry their fields under `job`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job = getattr(record, "job", None)
        if job is not None:
            out.update(job)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: config.Settings) -> int:
    from .app import create_app
    from .sandbox import SandboxUnavailable

    setup_logging(settings.log_level)
    log = logging.getLogger("gofiddle")
    if settings.sandbox == "none":
        log.warning("!!! SANDBOX DISABLED (--sandbox none): user programs run as this user "
                    "with only rlimits/cgroups. Development only. !!!")
        if not is_loopback(settings.host):
            log.error("refusing to listen on %s with --sandbox none: use 127.0.0.1 or "
                      "enable the bwrap sandbox", settings.host)
            return 2
    app = create_app(settings)
    try:
        # before uvicorn: a sandbox that cannot work is a one-line error, not a traceback
        app.state.server.sandbox.setup()
    except SandboxUnavailable as e:
        log.error("cannot start: %s", e)
        return 2
    uv_config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None,
        ws_max_size=settings.frame_bytes, ws_ping_interval=settings.ping_interval_seconds,
        ws_ping_timeout=settings.ping_interval_seconds,
        timeout_graceful_shutdown=int(settings.shutdown_seconds) + 2, access_log=False,
        loop=settings.event_loop)
    GracefulServer(uv_config, app.state.server).run()
    return 0


class GracefulServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM/SIGINT first draining our jobs and sessions (so
    running programs may finish and queued sessions are told), then letting uvicorn stop.
    A second signal skips the drain."""

    def __init__(self, config: uvicorn.Config, gofiddle_server: Any) -> None:
        super().__init__(config)
        self.gofiddle = gofiddle_server
        self.draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.draining:
            return super().handle_exit(sig, frame)
        self.draining = True
        loop = asyncio.get_event_loop()

        async def drain_then_exit() -> None:
            try:
                await self.gofiddle.drain()
            finally:
                super(GracefulServer, self).handle_exit(sig, frame)

        loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_exit()))


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=64, help="distinct programs (a) and (b)")
    p.add_argument("--sessions", type=int, default=16, help="concurrent sessions in (b)")
    p.add_argument("--idle-sessions", type=int, default=500, help="idle sessions in (d)")
    p.add_argument("--repeats", type=int, default=25, help="sequential runs in (c) and (e)")
    p.add_argument("--gocache-dir", default="",
                   help="shared Go build cache (default: .cache/gocache of the checkout, "
                   "as the tests use)")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--server-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the benchmarked servers, e.g. fast_path=false")
    p.add_argument("--ideas", action="store_true",
                   help="instead: micro-benchmarks of the alternatives (in-process)")


def bench(args: argparse.Namespace) -> int:
    """The benchmark lives in bench/ at the repository root, beside backend/: a checkout
    (editable install) has it, and it needs nothing a checkout does not have."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if (root / "bench" / "e2e.py").exists() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from bench import e2e, ideas
    except ImportError as e:
        print(f"gofiddle bench needs the repository checkout (bench/): {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    gocache = Path(args.gocache_dir).resolve() if args.gocache_dir else root / ".cache" / "gocache"
    if args.ideas:
        results = ideas.run_ideas(gocache)
    else:
        options = dict(o.split("=", 1) for o in args.server_option if "=" in o)
        results = e2e.run(n=args.n, sessions=args.sessions, idle=args.idle_sessions,
                          repeats=args.repeats, gocache=gocache, options=options)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gofiddle", description="An online Go playground.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="start the server")
    config.add_arguments(p_serve)
    p_bench = sub.add_parser("bench", help="measure the playground against plain go build")
    add_bench_arguments(p_bench)
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = config.from_args(args)
        except (TypeError, ValueError) as e:
            parser.error(str(e))
        return serve(settings)
    if args.command == "bench":
        return bench(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
