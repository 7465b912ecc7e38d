"""What the three example clients share: the connection flags and a clear line instead of a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import openai


def parser(description: str, prompt: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--base_url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    p.add_argument("--api_key", default="none", help="the key the server was started with (--api_key)")
    p.add_argument("--model", default=None, help="model id (default: the first one the server lists)")
    p.add_argument("--prompt", default=prompt, help="the question to ask")
    p.add_argument("--max_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None, help="0 for greedy (default: the server's)")
    return p


def connect(args: argparse.Namespace) -> tuple[openai.OpenAI, str]:
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=1)
    model = args.model or client.models.list().data[0].id
    return client, model


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except openai.APIConnectionError:
        sys.exit("error: cannot reach the server; is api.py running at --base_url?")
    except openai.APIStatusError as e:
        sys.exit(f"error: the server answered {e.status_code}: {e.message}")
    except KeyboardInterrupt:
        sys.exit(130)
