"""A model's thinking split from its answer. Qwen3 (and any template that uses `<think>`) writes its reasoning
as `<think>...</think>` before the answer; a template may also open the `<think>` itself at the end of the
prompt, so that the answer starts inside the thinking and only `</think>` shows. The splitter reads the text
as it streams and hands out each piece as thinking or answer; a piece that may be the start of a tag waits."""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ThinkingSplitter:
    """starts_inside: the prompt ended inside a `<think>` the template opened."""

    def __init__(self, starts_inside: bool = False) -> None:
        self.state = "thinking" if starts_inside else "start"  # start -> thinking -> answer, or start -> answer
        self.held = ""

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """The new pieces as (kind, text), kind "thinking" or "answer"."""
        text, out = self.held + piece, []
        self.held = ""
        while text:
            if self.state == "start":
                stripped = text.lstrip()
                if stripped.startswith(OPEN):
                    self.state, text = "thinking", stripped[len(OPEN):].lstrip("\n")
                elif OPEN.startswith(stripped):  # may still become the opening tag
                    self.held = text
                    return out
                else:
                    self.state = "answer"
            elif self.state == "thinking":
                at = text.find(CLOSE)
                if at >= 0:
                    out.append(("thinking", text[:at]))
                    self.state, text = "answer", text[at + len(CLOSE):].lstrip("\n")
                    continue
                hold = max((n for n in range(1, len(CLOSE)) if text.endswith(CLOSE[:n])), default=0)
                out.append(("thinking", text[:len(text) - hold]))
                self.held = text[len(text) - hold:]
                return [(k, t) for k, t in out if t]
            else:
                out.append(("answer", text))
                text = ""
        return [(k, t) for k, t in out if t]

    def finish(self) -> list[tuple[str, str]]:
        """What was held back, as what it turned out to be."""
        held, self.held = self.held, ""
        if not held:
            return []
        return [("thinking" if self.state == "thinking" else "answer", held)]
