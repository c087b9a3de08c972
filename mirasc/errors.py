"""Errors a user can cause: each names file, line and column and shows the line with a caret."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A place in a source text: 1-based line and column, and the text of that line."""

    file: str
    line: int
    column: int
    line_text: str = ""

    def render(self) -> str:
        text = self.line_text.expandtabs(1).rstrip("\n")
        if len(text) > 160:  # keep the caret on screen for very long lines
            start = max(0, self.column - 80)
            text = text[start : start + 160]
            caret_at = self.column - 1 - start
        else:
            caret_at = self.column - 1
        caret_at = max(0, min(caret_at, len(text)))
        return f"    {text}\n    {' ' * caret_at}^"


class MirascError(Exception):
    """Base of every error a spec or a call can cause; `str()` is the full user-facing message."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        self.message = message
        self.span = span
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        if self.span is None or self.span.line == 0:
            head = f"error: {self.message}"
            body = ""
        else:
            s = self.span
            head = f"{s.file}:{s.line}:{s.column}: error: {self.message}"
            body = "\n" + s.render() if s.line_text else ""
        tail = f"\n    hint: {self.hint}" if self.hint else ""
        return head + body + tail


class SpecSyntaxError(MirascError):
    """The text is not a well-formed spec (lexing or parsing failed)."""


class SpecNameError(MirascError):
    """A name is unknown, duplicated, reserved or unused."""


class SpecTypeError(MirascError):
    """A construct is well formed but used where it does not fit (arity, kind, value range)."""


class SpecLimitError(MirascError):
    """An input exceeds a limit set to keep compilation fast (depth, size, exponent)."""


class CodegenError(MirascError):
    """The derivation produced something a code printer cannot print."""


class BackendError(MirascError):
    """A call into a generated op with arguments it cannot run (shapes, dtypes, backend)."""


def did_you_mean(name: str, candidates) -> str | None:
    """A 'did you mean' hint for an unknown name, or None when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
