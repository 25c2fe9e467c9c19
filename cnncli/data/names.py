"""How path and class names are shown and compared: on one line whatever bytes they hold, as list
items, in one Unicode form. Not where names come from (scan.py, csvindex.py).
"""

from __future__ import annotations

import unicodedata

_CONTROL = {**{c: f"\\x{c:02x}" for c in (*range(32), 127)}, 9: "\\t", 10: "\\n", 13: "\\r"}


def printable(path: str) -> str:
    """A path or name on one line: bytes that are not valid UTF-8 (surrogateescape) shown as \\xNN,
    control characters (a tab, a newline in a folder name) as \\t, \\n, \\xNN. Safe to print or
    write into a tab-separated line."""
    if path.isprintable():
        return path
    return utf8_text(path).translate(_CONTROL)


def utf8_text(path: str) -> str:
    """A path or name as UTF-8 text holds it: bytes that are not valid UTF-8 (surrogateescape) as
    \\xNN, every other character as it is (a newline stays one: JSON escapes it, CSV quotes it)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def listed(name: str) -> str:
    """A class name as an item of a comma-separated list: printable, in double quotes when it holds
    a comma or a quote or starts or ends with a blank (a labels CSV's "cat, tabby" is one class)."""
    text = printable(name)
    return f'"{text}"' if any(ch in text for ch in ',"') or text != text.strip() else text


def shown_classes(classes) -> str:
    """The first 20 class names for a message ("a, b, ..." beyond that)."""
    return ", ".join(map(listed, classes[:20])) + (", ..." if len(classes) > 20 else "")


def same_form(name: str) -> str:
    """A class name in Unicode's composed form (NFC): a folder macOS wrote as e + accent (NFD) and the
    same name typed elsewhere as one character compare equal."""
    return unicodedata.normalize("NFC", name)


def matching_form(*groups):
    """The form two lists of class names are compared in: same_form, unless two names of one list
    differ only in Unicode form (two classes, then compared exactly: str)."""
    unique = all(len({same_form(n) for n in names}) == len(set(names)) for names in groups)
    return same_form if unique else str


def form_twins(names) -> list:
    """[(name, name, ...)] of the names that differ only in Unicode form (an accented folder written
    both composed and, as macOS writes names, decomposed), each group in the given order."""
    groups = {}
    for n in names:
        groups.setdefault(same_form(n), []).append(n)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def spelled(name: str) -> str:
    """A name with its characters beyond ASCII as \\u escapes: two names that print alike told apart."""
    return printable(name).encode("ascii", "backslashreplace").decode("ascii")


def told_apart(names, show=str) -> list:
    """Each of `names` as show(name), but spelled() when another of them differs only in Unicode form."""
    twins = {n for group in form_twins(names) for n in group}
    return [spelled(n) if n in twins else show(n) for n in names]
