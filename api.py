"""OpenAI-compatible HTTP server for the model: python api.py --hf_model_dir ... [--onnx_model_path ...]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config import ArgumentParser, ConfigError, add_model_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    s.add_argument("--api_key", default=None,
                   help="if set, every /v1 request needs 'Authorization: Bearer <key>'")
    s.add_argument("--served_model_name", default=None,
                   help="model id clients see and send (default: the model directory's name)")
    s.add_argument("--max_queue", type=int, default=64,
                   help="requests that may wait for the model; more get 429 (default 64)")
    s.add_argument("--max_request_mb", type=float, default=1.0,
                   help="largest request body accepted, in MiB; larger gets 413 (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from inference import load_inference

    try:
        if not 0 < args.port < 65536 or args.max_queue < 1 or args.max_request_mb <= 0:
            raise ConfigError("--port must be 1-65535, --max_queue at least 1, --max_request_mb positive")
        inference = load_inference(args)
    except ConfigError as e:
        print(f"api.py: error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from server.app import create_app

    name = args.served_model_name or Path(inference.config.hf_model_dir.rstrip("/")).name
    app = create_app(inference, name, api_key=args.api_key, max_queue=args.max_queue,
                     max_body_bytes=int(args.max_request_mb * (1 << 20)))
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
