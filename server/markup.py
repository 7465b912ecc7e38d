"""Chat-template markup cut out of an answer's text: a small model sometimes writes the tags its template
wraps turns and tool results in (`</tool_response>` after a tool result, a stray `<|im_start|>`), and
they are not answer text. Streamed text is cut as it comes; a piece that may be the start of a tag waits
for the next one."""
from __future__ import annotations

TEMPLATE_MARKUP = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_response>", "</tool_response>")


class MarkupFilter:
    def __init__(self, tags: tuple[str, ...] = TEMPLATE_MARKUP) -> None:
        self.tags = tags
        self.held = ""  # the end of the text so far that may be the start of a tag

    def feed(self, piece: str) -> str:
        """The text of piece (and of what was held) without markup, less a tail that may start a tag."""
        text = self.held + piece
        for tag in self.tags:
            text = text.replace(tag, "")
        hold = max((n for tag in self.tags for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)
        self.held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def finish(self) -> str:
        """What was held: at the end of the answer it is text, not the start of a tag."""
        out, self.held = self.held, ""
        return out
