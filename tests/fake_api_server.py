"""Runs api.py's app on the real Inference over a ScriptedSession (tests/scripted_session.py), served as
api.py serves it (server/transport.py): python tests/fake_api_server.py --model_dir TINY_MODEL_DIR --port N
[any of api.py's server flags, e.g. --api_key K --header_timeout_s 1]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests folder is no package

from config import ServerOptions  # noqa: E402
from core.flags import add_flags, from_args  # noqa: E402
from scripted_session import scripted_inference  # noqa: E402
from server.app import create_app  # noqa: E402
from server.transport import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True,
                   help="a tiny model directory (tests/tiny_model.py): its config.json, tokenizer and template")
    p.add_argument("--max_input_length", type=int, default=2048)
    add_flags(p, ServerOptions)
    a = p.parse_args()
    options = from_args(ServerOptions, a)
    inference = scripted_inference(a.model_dir, a.max_input_length)
    run(create_app(inference, "fake-model", options), options.host, options.port, options.header_timeout_s,
        options.max_connections)


if __name__ == "__main__":
    main()
