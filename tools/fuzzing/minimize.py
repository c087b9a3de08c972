"""Shrinking a defect to its minimal spec: greedy deletion of lines, then of balanced
parenthesised groups, then of single tokens, keeping every edit after which the input still
shows the same outcome. The result is what a regression test keeps."""

from __future__ import annotations

import re
from collections.abc import Callable

TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\S")


def _groups(text: str) -> list[tuple[int, int]]:
    """(start, end) of every balanced '(...)' in the text, innermost last."""
    spans, open_at = [], []
    for i, ch in enumerate(text):
        if ch == "(":
            open_at.append(i)
        elif ch == ")" and open_at:
            spans.append((open_at.pop(), i + 1))
    return sorted(spans, key=lambda s: s[0] - s[1])  # largest first


def _candidates(text: str):
    """Smaller texts, biggest cuts first."""
    lines = text.splitlines(keepends=True)
    for i in range(len(lines)):
        yield "".join(lines[:i] + lines[i + 1 :])
    for a, b in _groups(text):
        yield text[:a] + text[b:]
        yield text[:a] + text[a + 1 : b - 1] + text[b:]  # drop the call, keep the argument
        yield text[:a] + "(1)" + text[b:]
    for m in TOKEN.finditer(text):
        yield text[: m.start()] + text[m.end() :]


def minimize(text: str, same: Callable[[str], bool], max_tries: int = 2000) -> str:
    """The smallest text found for which `same(text)` holds (it must hold for `text`)."""
    tries, improved = 0, True
    while improved and tries < max_tries:
        improved = False
        for smaller in _candidates(text):
            tries += 1
            if tries > max_tries:
                break
            if len(smaller) < len(text) and same(smaller):
                text, improved = smaller, True
                break
    return text
