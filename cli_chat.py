"""Chat with the model in the terminal (or through a pipe: one user message per input line)."""
from __future__ import annotations

import argparse
import sys

from config import add_model_args
from core.errors import run_main
from core.flags import ArgumentParser
from inference import Inference, PromptTooLongError, SamplingParams, load_inference
from server.reasoning import ThinkingSplitter, template_thinking

COMMANDS_HELP = "Type a message and press Enter. 'clear' starts a new conversation; 'exit' or 'quit' ends."
DIM, UNDIM = "\033[2m", "\033[0m"  # ANSI faint, then back to normal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description="Chat with a Qwen model in the terminal. " + COMMANDS_HELP)
    add_model_args(p)
    p.add_argument("--system_prompt", default="You are a helpful assistant.",
                   help="the system message that starts every conversation ('' for none)")
    return p.parse_args(argv)


class Reply:
    """One answer as the terminal shows it: the model's thinking (when its template lets it think) first,
    dimmed on a terminal, then the answer; only the answer goes back into the conversation, as the chat
    templates expect."""

    def __init__(self, thinks: bool, starts_inside: bool, dim: bool) -> None:
        self.splitter = ThinkingSplitter(starts_inside) if thinks else None
        self.dim = dim
        self.after_thought = False  # thinking shown, no answer yet: the answer starts on a line of its own
        self.answer: list[str] = []

    def _show(self, parts: list[tuple[str, str]]) -> None:
        for kind, text in parts:
            if kind == "thinking":
                print(DIM if self.dim and not self.after_thought else "", text, sep="", end="", flush=True)
                self.after_thought = True
                continue
            self._end_thought()
            print(text, end="", flush=True)
            self.answer.append(text)

    def _end_thought(self) -> None:
        if self.after_thought:
            print(UNDIM if self.dim else "", flush=True)
            self.after_thought = False

    def feed(self, text: str) -> None:
        self._show(self.splitter.feed(text) if self.splitter else [("answer", text)])

    def finish(self) -> str:
        """The answer, once the model is done."""
        if self.splitter:
            self._show(self.splitter.finish())
        if self.after_thought and self.dim:  # thinking to the end: the stats line is not dimmed
            print(UNDIM, end="", flush=True)
        return "".join(self.answer)


def chat_loop(engine: Inference, params: SamplingParams, system_prompt: str) -> None:
    start = [{"role": "system", "content": system_prompt}] if system_prompt else []
    thinking = template_thinking(engine, None, "")  # the template's default: Qwen3 thinks
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
        reply, stats, finish = Reply(thinking.thinks, thinking.starts_inside, sys.stdout.isatty()), None, None
        try:
            for delta in engine.stream(ids, params):
                reply.feed(delta.text)
                stats, finish = delta.stats or stats, delta.finish_reason or finish
        except KeyboardInterrupt:
            reply.finish()  # the terminal leaves the dimmed thinking
            print("\n(interrupted)", flush=True)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply.finish()})
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
