"""Asks one question and prints the answer as it is generated, piece by piece."""
from __future__ import annotations

import sys

from client.common import connect, parser, run


def main() -> None:
    args = parser(__doc__, "Write a haiku about the sea.").parse_args()
    client, model = connect(args)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens,
        temperature=args.temperature, stream=True, stream_options={"include_usage": True})
    reason, usage = None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            sys.stdout.write(choice.delta.content or "")
            sys.stdout.flush()
            reason = choice.finish_reason or reason
    print()
    if usage:
        print(f"[finish: {reason}; tokens: prompt {usage.prompt_tokens}, completion {usage.completion_tokens}]")


if __name__ == "__main__":
    run(main)
