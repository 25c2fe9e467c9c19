"""Image formats cnn does not read, told by a file's extension or its first bytes, so that a skip
reason or a note can name them (an iPhone's HEIC, a Photoshop file, an SVG) and say to convert them.
Not a decoder, and not the list of formats cnn reads (decode.IMAGE_EXTENSIONS).
"""

from __future__ import annotations

import re

# the extensions of image formats cnn does not read, for the scan's note on the files it left out
EXTENSIONS = frozenset((".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".jpx", ".psd", ".svg", ".svgz", ".tga",
                        ".pcx", ".exr", ".hdr", ".xcf", ".dcm", ".dds", ".icns", ".qoi", ".eps", ".dng", ".cr2",
                        ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw"))

# ISO base media files (HEIF, AVIF, MP4...): the major brand after "ftyp" at byte 4
_BRANDS = {b"heic": "an HEIC image", b"heix": "an HEIC image", b"hevc": "an HEIC image", b"heim": "an HEIC image",
           b"heis": "an HEIC image", b"mif1": "an HEIF image", b"msf1": "an HEIF image", b"avif": "an AVIF image",
           b"avis": "an AVIF image", b"crx ": "a Canon CR3 raw photo"}

# leading bytes -> the format's name
_SIGNATURES = ((b"\xff\x0a", "a JPEG XL image"), (b"\0\0\0\x0cJXL \r\n\x87\n", "a JPEG XL image"),
               (b"\0\0\0\x0cjP  \r\n\x87\n", "a JPEG 2000 image"), (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
               (b"8BPS", "a Photoshop (PSD) file"), (b"gimp xcf", "a GIMP (XCF) file"),
               (b"v/1\x01", "an OpenEXR image"), (b"qoif", "a QOI image"), (b"%!PS", "a PostScript or EPS file"),
               (b"#?RADIANCE", "a Radiance HDR image"), (b"DDS ", "a DDS texture"), (b"icns", "an ICNS icon"))


def format_of(head: bytes) -> str | None:
    """What a file whose first bytes are head (512 of them, or all of a shorter file) is, when it is
    an image format cnn does not read ("an HEIC image"), or None."""
    if head[4:8] == b"ftyp" and head[8:12] in _BRANDS:
        return _BRANDS[head[8:12]]
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if re.search(rb"<svg[\s>]", head[:512], re.IGNORECASE):
        return "an SVG drawing"
    return None


def extensions_note(ignored) -> str:
    """The clause naming the image formats among a scan's ignored extensions (a Counter by extension,
    lower case), e.g. "; .heic and .psd are image formats cnn does not read: convert those files to
    PNG or JPEG", or ""."""
    named = sorted(ext for ext in ignored if ext in EXTENSIONS)
    if not named:
        return ""
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    verb = "is an image format" if len(named) == 1 else "are image formats"
    return f"; {listed} {verb} cnn does not read: convert those files to PNG or JPEG"
