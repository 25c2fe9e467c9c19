"""Why a file cannot be used, in words: the reasons decode.py gives for a file it skips (not an image,
damaged, truncated, another format), from the file's first bytes and the Pillow frames that failed;
and why a path typed on the command line names nothing (missing_hint). It does not open images as
images (decode.py) or say which foreign formats exist (foreign.py).
"""

from __future__ import annotations

import os
import re

from . import foreign

LINK_LOOP = "symbolic link loop (links that point at one another, never at a file)"


class _Skip(Exception):
    """One file cannot be used; str() is the short reason."""


def _not_image_reason(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    names = "PNG/JPEG/BMP/GIF/PNM/TIFF/WebP/ICO"
    if head.startswith(b"%PDF"):
        return f"not a {names} image (it is a PDF)"
    if head.startswith(_APPLE_DOUBLE):
        return (f"not a {names} image (it is macOS's AppleDouble metadata, the ._name file a Mac writes beside "
                "each file on a non-Mac disk or in an archive: leave it out or delete it)")
    fmt = _signature_format(head)
    if fmt is not None:
        return f"a damaged or truncated {fmt} file ({_size(path)})"
    other = foreign.format_of(head)
    if other is not None:
        return f"not a {names} image (it is {other}: convert it to PNG or JPEG first)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return f"not a {names} image (it looks like text)"
    except UnicodeDecodeError:
        pass
    if head.startswith(b"BM"):                 # (after the text test: a text may start with BM)
        return f"a damaged or truncated BMP file ({_size(path)})"
    return f"not a {names} image (its first bytes match none of these formats)"


_APPLE_DOUBLE = b"\0\x05\x16\x07"        # a `._name` file's magic number (AppleDouble, RFC 1740)

# the first bytes of the formats we read (a file that starts so but does not open is damaged)
_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"II*\0", "TIFF"),
               (b"MM\0*", "TIFF"))


def _signature_format(head: bytes) -> str | None:
    """The format a file's first bytes announce (BMP is told apart from text by the caller), or None."""
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return None


_PNM_HEADER = re.compile(rb"P4(?:(?:\s|#[^\n]*\n)+\d+){2}\s|P[56](?:(?:\s|#[^\n]*\n)+\d+){3}\s")
_TEXT_BYTES = frozenset(b"\t\n\r\0") | frozenset(range(0x20, 0x7f)) | frozenset(range(0x80, 0x100))


def image_in(head: bytes) -> str | None:
    """What the first bytes of a file that should be text (a list of paths, a labels CSV, standard
    input) are in words, when they are an image ("a JPEG image", "an HEIC image") or another binary
    file ("a zip archive"); None for text: bytes that hold no control character but tab, CR, LF and
    NUL, in any encoding (a list whose first path is GIF89a.png, in UTF-8, Latin-1 or UTF-16)."""
    pnm = _PNM_HEADER.match(head)                # (a whole binary PNM header, comments too)
    if pnm and b"\n" not in head[pnm.end():]:    # (a flat grey raster reads as text but has no line break;
        return "a PNM image"                     # a list "P6 2023 05 12 holiday.png" has one)
    if all(b in _TEXT_BYTES for b in head):
        return None
    if pnm:
        return "a PNM image"
    fmt = _signature_format(head)
    if fmt is None and head.startswith(b"BM") and len(head) >= 18 and \
            int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):   # (a BITMAPINFOHEADER's size)
        fmt = "BMP"
    if fmt is None and head.startswith(b"\0\0\x01\0") and len(head) > 6 and head[4:6] != b"\0\0":
        fmt = "ICO"                              # (reserved 0, type 1, a count of images)
    if fmt is not None:
        return f"{'an' if fmt[0] in 'AEIOU' else 'a'} {fmt} image"
    for magic, what in ((b"PK\x03\x04", "a zip archive (a .npz checkpoint?)"), (b"PK\x05\x06", "an empty zip archive"),
                        (b"\x1f\x8b", "gzip-compressed data"), (b"\x93NUMPY", "a NumPy .npy array")):
        if head.startswith(magic):
            return what
    return foreign.format_of(head)


def _damaged_reason(path: str, e: Exception, msg: str) -> str:
    """The reason for a file Pillow took for an image and then failed on (msg: e in one line): the
    format its first bytes announce, else the one Pillow was reading (_format_in), its size and
    Pillow's words. An error Pillow did not raise (no memory, ...) says no more than its type."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        head = b""
    fmt = _format_in(e.__traceback__)
    if fmt is not None:
        fmt = _signature_format(head) or ("BMP" if head.startswith(b"BM") else fmt or None)
    truncated = "truncated" in msg.lower()
    if fmt is None:
        return f"truncated image ({msg})" if truncated else f"cannot decode: {type(e).__name__}: {msg}"
    if re.fullmatch(r"decoder error -?\d+", msg):                  # a codec's return code, no words
        msg = f"its pixel data does not decode ({msg})"
    return f"a {'truncated' if truncated else 'damaged'} {fmt} file ({_size(path)}): {msg}"


# Pillow's format names that the reasons say otherwise
_SHOWN_FORMATS = {"PPM": "PNM", "MPO": "JPEG", "WEBP": "WebP"}


def _format_in(tb) -> str | None:
    """The format Pillow was reading in a traceback's frames: a plugin's (PIL.PngImagePlugin, ...), or
    that of the image ImageFile.load was loading; "" when Pillow's frames do not tell, None when
    none of the frames is Pillow's."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__", "")
        if module.startswith("PIL."):
            plugin = re.fullmatch(r"PIL\.(\w+)ImagePlugin", module)
            fmt = plugin.group(1).upper() if plugin else getattr(frame.f_locals.get("self"), "format", None)
            if isinstance(fmt, str) and fmt:
                return _SHOWN_FORMATS.get(fmt, fmt)
            found = ""
        tb = tb.tb_next
    return found


def _size(path: str) -> str:
    try:
        return f"{os.path.getsize(path):,} bytes"
    except OSError:
        return "size unknown"


def unreadable_text(files, shown: int = 3) -> str:
    """'N unreadable file(s) (a.png: why; b.png: why; c.png: why; ...)' of files [(path, reason)]: the
    first `shown` with their reasons, for an error line whose data kept no image."""
    why = "; ".join(f"{p}: {w}" for p, w in files[:shown]) + ("; ..." if len(files) > shown else "")
    return f"{len(files)} unreadable file(s) ({why})"


def missing_hint(path: str, root: bool = False) -> str:
    """Why a path typed on the command line may name nothing, when the path shows it: empty, a URL,
    or a ~ or wildcard pattern that was quoted, so no shell expanded it ("" otherwise). root: the
    path is a data folder, which a pattern cannot stand for."""
    import glob

    if not path:
        return " (an empty path)"
    if "://" in path:
        return " (a URL: cnn reads image files on this machine; download it first)"
    if root and os.path.basename(path).lower() in ("none", "nil", "nothing", "false", "no"):   # (val: none)
        return " (none is a folder's name here: a config's no-value is null, or ~, or the key left out)"
    if path.startswith("~"):
        return " (a shell expands ~ only outside quotes)"
    if "$" in path:
        return " (a shell expands $NAME outside single quotes; a config's paths are not expanded)"
    if any(c in path for c in "*?["):
        if root:
            return " (a wildcard pattern: give the one folder that holds the class subfolders)"
        found = len(glob.glob(path))
        if not found:
            return " (a wildcard pattern, and it matches nothing)"
        return (f" (a wildcard pattern that matches {found:,} path(s), but no shell expanded it: write it "
                "without quotes, or give the folder)")
    return _invisible_hint(path)


def _invisible_hint(path: str) -> str:
    """What an error line cannot show: a space (or non-breaking space) at an end of the path, an accented
    letter in the other Unicode form than the name on disk, a tab or newline (a YAML escape), Windows'
    backslashes ("" otherwise)."""
    import unicodedata

    from .names import printable, utf8_text

    parts = path.split(os.sep)
    spaced = [part for part in parts if part != part.strip()]
    if spaced:
        trimmed = os.sep.join(part.strip() for part in parts)
        there = f"; {printable(trimmed)} exists" if os.path.exists(trimmed) else ""
        shown = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
                        for c in utf8_text(spaced[0]))      # (a non-breaking space as \xa0; bad bytes as \xNN)
        return (f" (the name '{shown}' {'begins' if spaced[0][:1].isspace() else 'ends'} with a "
                f"space{there})")
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, path)
        if other != path and os.path.exists(other):
            return (f" (its accented letters are in another Unicode form than the name on disk, {form}: they look "
                    "alike; copy the path from a file listing or the shell's completion)")
    control = next((c for c in path if c in "\a\b\t\n\v\f\r"), None)
    if control is not None:               # ("data\new" in a config's double quotes: a newline)
        what = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}.get(control, "a control character")
        return (f" (it holds {what}, shown as {repr(control)[1:-1]}: in double quotes YAML reads a backslash and a "
                "letter as one character; write the path with / or in single quotes)")
    if "\\" in path and os.sep == "/":
        alt = path.replace("\\", "/")
        return " (a Windows path: folders are separated by / here" + (f"; {printable(alt)} exists)"
                                                                       if os.path.exists(alt) else ")")
    return ""
