"""How many terminal columns a text takes, and padding or cutting by columns rather than characters,
so the tables of `cnn eval` and `cnn runs` stay aligned for class and run names in any
script (a CJK character takes two columns, a combining accent none); and how many columns they have
($COLUMNS, else the terminal's width). Not a full terminal model: tabs,
emoji joined by zero-width joiners and ambiguous-width characters are measured character by character.
"""

from __future__ import annotations

import os
import sys
import unicodedata


def char_width(ch: str) -> int:
    """Columns of one character: 2 for East Asian wide and full-width, 0 for combining marks and
    zero-width format characters, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    """Columns `text` takes on a terminal."""
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


def fit(text: str, columns: int) -> str:
    """`text` cut to at most `columns` (>= 1) columns, a cut marked with '~' at the end (only '~'
    when not even the first character fits beside it)."""
    if width(text) <= columns:
        return text
    out, used = [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > columns - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "~"


def ljust(text: str, columns: int) -> str:
    """`text` padded with spaces on the right to `columns` columns (as str.ljust counts characters)."""
    return text + " " * max(0, columns - width(text))


def rjust(text: str, columns: int) -> str:
    """`text` padded with spaces on the left to `columns` columns."""
    return " " * max(0, columns - width(text)) + text


def terminal_columns() -> int | None:
    """The columns a table should fit: $COLUMNS when it is a positive number, else the terminal's
    width when stdout is one, else None (a pipe or a file gets the tables at their full width)."""
    value = os.environ.get("COLUMNS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        if sys.stdout.isatty():
            return os.get_terminal_size(sys.stdout.fileno()).columns or None
    except (OSError, ValueError, AttributeError):          # (no real stdout: replaced, closed)
        pass
    return None
