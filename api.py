"""OpenAI-compatible HTTP server for the model: python api.py --hf_model_dir ... [--onnx_model_path ...]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config import CPU_SERVER_MAX_BATCH, ServerOptions, add_model_args
from core.errors import run_main
from core.flags import ArgumentParser, add_flags, from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    add_flags(p, ServerOptions, "server")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("api.py", lambda: serve(args))


def serve(args: argparse.Namespace) -> int:
    server = from_args(ServerOptions, args)
    if args.max_batch is None and args.session_type != "acl":
        # A CPU serves several conversations at once for little more than one (docs/serving.md: slots and batching);
        # an .om runs the batch it was compiled for, so acl keeps 1 unless told.
        args.max_batch = CPU_SERVER_MAX_BATCH
    from inference import load_inference

    inference = load_inference(args)
    from server.app import create_app
    from server.transport import run

    name = server.served_model_name or Path(inference.config.session.hf_model_dir.rstrip("/")).name
    run(create_app(inference, name, server), server.host, server.port, server.header_timeout_s,
        server.max_connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
