"""Lists of paths that are not labels files: a plain list, one path a line (# comments and blank lines
left out, a quoted CSV field unquoted), and the bytes of standard input (NUL-separated, UTF-16 or
UTF-8), with the UTF-16 test a config file's reading shares. It does not read labels CSVs
(csvindex.py) nor check that a path exists.
"""

from __future__ import annotations

import os


def path_lines(lines) -> list:
    """The paths of a plain list, one a line: stripped, blank lines and # comment lines left out, a
    line that is one quoted CSV field (Python's csv or pandas write `"a,b.png"`) unquoted."""
    return [unquoted(ln) or ln for ln in (raw.strip() for raw in lines) if ln and not ln.startswith("#")]


def unquoted(line: str) -> str | None:
    """The text of a line that is one CSV field in double quotes (`"a,b.png"`, `"say ""hi"".png"`,
    its quotes doubled inside), else None."""
    if len(line) < 3 or line[0] != '"' or line[-1] != '"' or line[1:-1].replace('""', "").count('"'):
        return None
    return line[1:-1].replace('""', '"')


def utf16_encoding(raw: bytes) -> str | None:
    """"utf-16" when raw starts with UTF-16's byte-order mark; "utf-16-le" / "utf-16-be" when it has
    none but every other byte is a NUL (text of ASCII characters in UTF-16: the NULs all at odd, or
    all at even, positions, which neither binary data nor NUL-separated paths show); else None."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    if len(raw) >= 4 and len(raw) % 2 == 0:
        odd, even = raw[1::2], raw[0::2]
        if not odd.strip(b"\0") and b"\0" not in even:
            return "utf-16-le"
        if not even.strip(b"\0") and b"\0" not in odd:
            return "utf-16-be"
    return None


def stdin_paths(raw: bytes) -> list:
    """The paths of standard input's bytes: NUL-separated, exactly as given, when they hold a NUL
    (`find ... -print0`: a name may hold a newline), else path_lines of the text (UTF-16 with its
    byte-order mark, else UTF-8 whose mark is dropped; bytes that are not UTF-8 kept as the file
    system's, as os.fsdecode keeps them)."""
    encoding = utf16_encoding(raw)
    if encoding:
        try:
            text = raw.decode(encoding)
        except UnicodeError:              # (a file name that starts with bytes FF FE, as `ls` lists it)
            text = ""
        if "\n" in text:                  # (a list ends its lines: PowerShell's pipe writes CRLF)
            raw = text.encode("utf-8", "surrogateescape")
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if b"\0" in raw:
        return [os.fsdecode(item) for item in raw.split(b"\0") if item]
    return path_lines(os.fsdecode(raw).splitlines())
