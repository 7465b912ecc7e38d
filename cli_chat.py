"""Chat with the model in the terminal (or through a pipe: one user message per input line)."""
from __future__ import annotations

import argparse
import sys

from config import add_model_args
from core.errors import run_main
from core.flags import ArgumentParser
from inference import Inference, PromptTooLongError, SamplingParams, load_inference

COMMANDS_HELP = "Type a message and press Enter. 'clear' starts a new conversation; 'exit' or 'quit' ends."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description="Chat with a Qwen model in the terminal. " + COMMANDS_HELP)
    add_model_args(p)
    p.add_argument("--system_prompt", default="You are a helpful assistant.",
                   help="the system message that starts every conversation ('' for none)")
    return p.parse_args(argv)


def chat_loop(engine: Inference, params: SamplingParams, system_prompt: str) -> None:
    start = [{"role": "system", "content": system_prompt}] if system_prompt else []
    history = list(start)
    interactive = sys.stdin.isatty()
    print(COMMANDS_HELP, flush=True)
    while True:
        try:
            line = input("User: " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        text = line.strip()
        if not text:
            continue
        if not interactive:
            print(f"User: {text}")
        if text.lower() in ("exit", "quit"):
            return
        if text.lower() == "clear":
            history = list(start)
            engine.reset()
            print("(conversation cleared)", flush=True)
            continue
        try:
            kept, ids = engine.fit_messages(history + [{"role": "user", "content": text}])
        except PromptTooLongError as e:
            print(f"(message not sent: {e})", flush=True)
            continue
        dropped = len(history) + 1 - len(kept)
        if dropped:
            print(f"(dropped the {dropped} oldest messages to fit the context)", flush=True)
        history = kept
        print("Assistant: ", end="", flush=True)
        answer, stats, finish = [], None, None
        try:
            for delta in engine.stream(ids, params):
                print(delta.text, end="", flush=True)
                answer.append(delta.text)
                stats, finish = delta.stats or stats, delta.finish_reason or finish
        except KeyboardInterrupt:
            print("\n(interrupted)", flush=True)
            history.pop()
            continue
        history.append({"role": "assistant", "content": "".join(answer)})
        note = " [stopped: length limit]" if finish == "length" else ""
        drafts = f" | drafts kept {stats.draft_acceptance:.0%}" if stats.draft_acceptance is not None else ""
        print(f"\n[first token {stats.first_token_s:.2f}s | decode {stats.decode_tok_s:.1f} tok/s | "
              f"total {stats.total_tok_s:.1f} tok/s | {stats.prompt_tokens} prompt tokens "
              f"({stats.reused_tokens} reused), {stats.completion_tokens} new{drafts}]{note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("cli_chat.py", lambda: chat(args))


def chat(args: argparse.Namespace) -> int:
    engine = load_inference(args)
    chat_loop(engine, SamplingParams.from_config(engine.config), args.system_prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
