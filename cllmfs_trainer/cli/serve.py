"""`cllmfs serve --run RUN_DIR [--host 127.0.0.1] [--port 8000]`: an HTTP server for a run folder (the `[serve]`
extra): `POST /extract`, `GET /health`, `GET /info` (`cllmfs_trainer.integrations.server`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from cllmfs_trainer.command_line import OneLineArgumentParser, positive_int
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger("cllmfs")
INSTALL_HINT = "cllmfs serve needs FastAPI and uvicorn: pip install 'cllmfs-trainer[serve]'"


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs serve`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "serve a run folder over HTTP (POST /extract), merging concurrent requests into shared batches"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs serve", description=help_text)
    else:
        parser = subparsers.add_parser("serve", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="run folder written by `cllmfs train`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $CLLMFS_API_KEY, if set)")
    parser.add_argument("--max-texts", type=positive_int, default=256, help="texts per request")
    parser.add_argument("--max-chars", type=positive_int, default=100_000, help="characters per request")
    parser.add_argument("--max-batch-texts", type=positive_int, default=64, help="texts per merged model call")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a request waits for others")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per model batch")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> None:
    """Check the options and the run folder, load the model once, then serve until interrupted."""
    run = RunFolder.load(args.run)  # before anything heavy: a wrong folder costs a second
    run.check_tokenizer()
    try:  # the optional [serve] extra; the server module also brings torch and transformers
        import uvicorn

        from cllmfs_trainer.integrations.server import Limits, app_for_run
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    api_key = args.api_key or os.environ.get("CLLMFS_API_KEY") or None
    if not _loopback(args.host) and api_key is None:
        logger.warning(
            "listening on %s without authentication: anyone who reaches this address can use the model "
            "(set --api-key or CLLMFS_API_KEY)",
            args.host,
        )
    limits = Limits(args.max_texts, args.max_chars, args.max_batch_texts, args.max_wait_ms)
    app = app_for_run(run, limits, api_key, batch_size=args.batch_size, dtype=args.dtype)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
