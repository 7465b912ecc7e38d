"""Runs api.py's app on the scripted FakeInference: python tests/fake_api_server.py --port N [--api_key K]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn  # noqa: E402

from server.app import create_app  # noqa: E402
from api_fake import FakeConfig, FakeInference  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api_key", default=None)
    p.add_argument("--max_queue", type=int, default=64)
    p.add_argument("--max_input_length", type=int, default=2048)
    p.add_argument("--token_delay_s", type=float, default=0.0)
    a = p.parse_args()
    fake = FakeInference(FakeConfig(max_input_length=a.max_input_length), token_delay_s=a.token_delay_s)
    app = create_app(fake, "fake-model", api_key=a.api_key, max_queue=a.max_queue)
    uvicorn.run(app, host="127.0.0.1", port=a.port, access_log=False)


if __name__ == "__main__":
    main()
