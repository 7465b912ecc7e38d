"""Asks one question and prints the whole answer once it is complete (no streaming)."""
from __future__ import annotations

from client.common import connect, parser, run


def main() -> None:
    args = parser(__doc__, "What is the capital of France? Answer in one sentence.").parse_args()
    client, model = connect(args)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": args.prompt}],
        max_tokens=args.max_tokens, temperature=args.temperature)
    choice = reply.choices[0]
    print(choice.message.content)
    u = reply.usage
    print(f"[finish: {choice.finish_reason}; tokens: prompt {u.prompt_tokens}, completion {u.completion_tokens}]")


if __name__ == "__main__":
    run(main)
