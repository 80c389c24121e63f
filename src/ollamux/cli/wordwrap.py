"""Word wrap for a streamed answer (pure): text arrives in pieces, lines break between words, not inside one.

A word is held back until the space or newline after it arrives (or the stream ends), so it is known whole
before it is placed; a word longer than a line is split where it must be.
"""

from __future__ import annotations

__all__ = ["StreamWrapper"]


class StreamWrapper:
    def __init__(self, width: int) -> None:
        self.width = max(width, 10)
        self.column = 0
        self.word = ""
        self.spaces = 0  # spaces before `word`: written only if the word stays on this line

    def feed(self, text: str) -> str:
        """The part of the stream that can be shown now, line breaks inserted."""
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                out.append(self._place() + "\n")
                self.column, self.spaces = 0, 0
            elif ch == " ":
                if self.word:
                    out.append(self._place())
                self.spaces += 1
            else:
                self.word += ch
        return "".join(out)

    def flush(self) -> str:
        return self._place()

    def _place(self) -> str:
        word, self.word = self.word, ""
        spaces, self.spaces = self.spaces, 0
        if not word:
            return ""
        out = ""
        if self.column > 0 and self.column + spaces + len(word) > self.width:
            out, self.column = "\n", 0
        elif spaces:
            out, self.column = " " * spaces, self.column + spaces
        while len(word) > self.width:
            out += word[: self.width] + "\n"
            word = word[self.width :]
        self.column += len(word)
        return out + word
