"""Runs api.py's app on the real Inference over a ScriptedSession (tests/scripted_session.py):
python tests/fake_api_server.py --model_dir TINY_MODEL_DIR --port N [--api_key K]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests folder is no package

import uvicorn  # noqa: E402

from scripted_session import scripted_inference  # noqa: E402
from server.app import create_app  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True,
                   help="a tiny model directory (tests/tiny_model.py): its config.json, tokenizer and template")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api_key", default=None)
    p.add_argument("--max_queue", type=int, default=64)
    p.add_argument("--max_input_length", type=int, default=2048)
    a = p.parse_args()
    inference = scripted_inference(a.model_dir, a.max_input_length)
    app = create_app(inference, "fake-model", api_key=a.api_key, max_queue=a.max_queue)
    uvicorn.run(app, host="127.0.0.1", port=a.port, access_log=False)


if __name__ == "__main__":
    main()
