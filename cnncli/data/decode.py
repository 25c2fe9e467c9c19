"""Decoding one image file to 8-bit grayscale (any Pillow mode) and resizing it.

Bad files raise _Skip(reason) inside and come out as a reason (its words: reasons.py), never a
crash. This module does not decode many files (decodemany.py: in order, in worker processes), scan
folders (scan.py) or cache results (cache.py).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import warnings

import numpy as np

from ..errors import DataError, Stopped, one_line
from .reasons import LINK_LOOP, _Skip, _damaged_reason, _not_image_reason

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm",
                    ".tif", ".tiff", ".webp", ".ico"}
# Pillow plugins we let parse a file; anything else is "not a supported image" (JPEG covers MPO,
# PPM the whole PBM/PGM/PPM/PNM family).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP", "ICO")
RESIZE_MODES = ("pad", "stretch", "crop")
# Header-declared width*height above the limit is skipped, undecoded (per call: max_pixels). A file
# that decodes at full size holds its pixels and their copies at once: a 40 MP RGBA PNG peaks near
# 0.9 GB. A JPEG decodes at up to 1/8 scale (draft), so it may have JPEG_PIXEL_FACTOR times as many
# (200 MP): a baseline one decodes in strips (a few MB); a progressive one keeps its DCT coefficients,
# 2 bytes a pixel per colour channel, up to 1.2 GB at 200 MP. (Per decoding process: one per core.)
MAX_PIXELS = 40_000_000
JPEG_PIXEL_FACTOR = 5
# Transparent pixels are composited onto white, or onto black when the visible content is light (its
# alpha-weighted mean grey is above 127), so dark ink and white shapes on transparency both stay visible.
ALPHA_BACKGROUND = 255


# ----------------------------------------------------------------------------- decoding

def _to_gray_u8(img, sixteen_bit: bool = False) -> np.ndarray:
    """Any Pillow mode -> (H, W) uint8. Alpha is composited on white, or on black for light content
    (ALPHA_BACKGROUND). Integer and float samples are scaled by their range (_by_range); sixteen_bit:
    the file stores 16-bit samples (_stores_16_bit), scaled by 255/65535 whatever their range."""
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            mode in ("P", "L", "RGB") and "transparency" in img.info):
        return _on_background(img.convert("RGBA"))
    if mode.startswith("I"):                                   # I;16, I;16B, I;16L, I (32-bit)
        raw = np.asarray(img)
        grey = _by_range(raw, (65535,) if sixteen_bit or mode != "I" else (255, 65535))
        key = img.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):   # a 16-bit grey PNG's transparent sample
            from PIL import Image

            alpha = Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8), mode="L")
            return _on_background(Image.merge("LA", (Image.fromarray(grey, mode="L"), alpha)).convert("RGBA"))
        return grey
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        return _by_range(a, (1.0, 255.0, 65535.0))
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("1", "P", "RGB"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    try:                                                       # CMYK, YCbCr, LAB, HSV, ...
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise _Skip(f"unsupported colour mode {mode}") from e


def _by_range(a: np.ndarray, full_scales: tuple) -> np.ndarray:
    """Samples -> uint8 scaled by the first of full_scales that holds them all (e.g. 0..255 as 8-bit,
    0..65535 as 16-bit), else by their max; samples with negative values are stretched min..max."""
    lo, hi = a.min(), a.max()
    if lo < 0:
        return _stretch(a.astype(np.float64))
    top = next((t for t in full_scales if hi <= t), hi)
    return np.rint(a * (255.0 / top)).astype(np.uint8)


def _stores_16_bit(img) -> bool:
    """Whether a file stores at most 16 bits an integer sample: Pillow widens 16-bit PNG and PGM to
    mode I, as it does 32-bit TIFF; dark 16-bit data must not be taken for 8-bit."""
    if img.format in ("PNG", "PPM"):
        return True
    bits = getattr(img, "tag_v2", {}).get(258, ())            # TIFF BitsPerSample
    return img.format == "TIFF" and tuple(bits)[:1] == (16,)


def dark_reason(path, flat: bool = False) -> str | None:
    """Why the image file at path decodes nearly black, when its samples show it: 16-bit integer samples
    that reach only N of 65535 (10- or 12-bit camera data), float samples a little above 1.0 (read
    as 0..255: 0..1 holds only up to 1.0), or NaN samples (read as 0); else None (also for anything
    that does not open). flat: the file decodes to one grey level, which only NaN samples explain here."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f, formats=list(PIL_FORMATS)) as img:
            if img.mode.startswith("I") and _stores_16_bit(img) and not flat:
                top = int(np.asarray(img).max())
                return (f"its 16-bit samples reach only {top} of 65535 ({max(1, top.bit_length())}-bit data); "
                        "scale such files to their full range first")
            if img.mode == "F":
                samples = np.asarray(img, dtype=np.float64)
                nan = int(np.isnan(samples).sum())
                if nan:
                    return f"{nan} of its {samples.size} float samples are NaN, read as 0"
                top = float(np.nan_to_num(samples, posinf=0.0, neginf=0.0).max())
                if 1.0 < top <= 2.0 and not flat:
                    return (f"its float samples reach {top:.7g}, so they are read as 0..255 (as 0..1 only up to "
                            "1.0); clip such files to 0..1 first")
            return None
    except Exception:  # noqa: BLE001 -- a file gone or damaged since it decoded: no
        return None


def _on_background(rgba) -> np.ndarray:
    """An RGBA image -> (H, W) uint8 composited on black when its visible content is light (its
    alpha-weighted mean grey is above 127), else on ALPHA_BACKGROUND."""
    on_black = _composite(rgba, 0)                         # grey * alpha / 255 in each pixel
    alpha_sum = int(np.asarray(rgba.getchannel("A")).sum(dtype=np.uint64))
    light = int(on_black.sum(dtype=np.uint64)) * 255 > 127 * alpha_sum   # alpha-weighted mean grey > 127
    return on_black if light else _composite(rgba, ALPHA_BACKGROUND)


def _composite(rgba, background: int) -> np.ndarray:
    from PIL import Image

    under = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
    return np.asarray(Image.alpha_composite(under, rgba).convert("L"), dtype=np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def resize_gray(a: np.ndarray, image_size: int, resize: str) -> np.ndarray:
    """(H, W) uint8 -> (S, S) uint8.

    stretch: resize to S x S ignoring aspect. crop: centre square of side min(H, W), then resize.
    pad: keep aspect, fit inside S x S, centre, fill with the median of the resized image's border
    pixels (its background), so dark-on-light and light-on-dark images both pad invisibly.
    """
    from PIL import Image

    s = image_size
    h, w = a.shape
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if resize == "crop":
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        a = a[top:top + m, left:left + m]
        h = w = m
    if resize in ("crop", "stretch") or h == w:
        if (h, w) == (s, s):
            return np.ascontiguousarray(a, dtype=np.uint8)
        img = Image.fromarray(np.ascontiguousarray(a), mode="L")
        return np.asarray(img.resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8)
    scale = s / max(h, w)
    nh = min(s, max(1, int(round(h * scale))))
    nw = min(s, max(1, int(round(w * scale))))
    img = Image.fromarray(np.ascontiguousarray(a), mode="L")
    small = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.uint8)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    fill = int(np.median(border))
    out = np.full((s, s), fill, dtype=np.uint8)
    top, left = (s - nh) // 2, (s - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


_PIL_LIMIT_LOCK = threading.Lock()
_LIBTIFF_QUIET = []          # [True] once this process has switched libtiff's messages off


def _quiet_libtiff():
    """Switch off the stderr messages of the libtiff that Pillow decodes compressed TIFFs with
    ("tempfile.tif: Using code not yet in table.", dozens for one damaged file, naming a file the
    user does not have): the file's skip reason says what matters. Once per process, in the copy
    Pillow loaded (found in /proc/self/maps, or a macOS wheel's PIL/.dylibs); where there is none
    to be found (Windows wheels link it into Pillow), nothing changes."""
    import ctypes
    import glob

    import PIL.Image            # (loads Pillow's _imaging, and the libtiff it links)

    _LIBTIFF_QUIET.append(True)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "/libtiff" in line}
    except OSError:
        paths = set(glob.glob(os.path.join(os.path.dirname(PIL.__file__), ".dylibs", "libtiff*.dylib")))
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                setter = getattr(lib, name)
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)
        except (OSError, AttributeError):      # not loadable, or not libtiff after all
            continue


def _open(f):
    """-> (Image.open of the binary file f restricted to PIL_FORMATS, whether it is a JPEG). Pillow's
    own pixel limit, which is the same for every format, is off while a JPEG opens: _decode checks the
    JPEG limit next, before any decoding. (One open per file: f is read from its first bytes.)"""
    from PIL import Image

    if not _LIBTIFF_QUIET:
        _quiet_libtiff()
    jpeg = f.read(3) == b"\xff\xd8\xff"
    f.seek(0)
    if not jpeg:
        return Image.open(f, formats=list(PIL_FORMATS)), False
    with _PIL_LIMIT_LOCK:                     # (threads of one process: the setting is Pillow's global)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(f, formats=["JPEG"]), True
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode(path: str, image_size: int, resize: str, max_pixels: int) -> np.ndarray:
    """One file -> (S, S) uint8, or raise _Skip(reason). Catches everything a hostile file can throw."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):          # a FIFO would block the read, a device never end
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")
            raise _Skip(f"not a regular file ({kind})")
        if st.st_size == 0:
            raise _Skip("empty file (0 bytes)")
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):
            raise _Skip(LINK_LOOP) from e
        if os.path.islink(path) and not os.path.exists(path):
            raise _Skip("broken symbolic link (what it points to does not exist)") from e
        if isinstance(e, FileNotFoundError):     # (a list's path: as a PATH typed on the command line is told)
            raise _Skip("no such file or folder") from e
        raise _Skip(f"cannot read file ({e.strerror or e})") from e
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise _Skip("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to accept truncated data")
    try:
        with open(path, "rb") as f:
            img, jpeg = _open(f)
            gray = _gray_of(img, jpeg, image_size, max_pixels)
        return resize_gray(gray, image_size, resize)
    except _Skip:
        raise
    except UnidentifiedImageError:
        raise _Skip(_not_image_reason(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # (Pillow's own limit refused it at open: said as _gray_of says ours, with the lower of the two)
        size = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(e))
        if size is None:
            raise _Skip(f"too large: possible decompression bomb ({_one_line(e)})") from None
        limit = min(max_pixels, int(size.group(2)))
        raise _Skip(f"too large: {int(size.group(1)) / 1e6:.1f} megapixels (limit {limit / 1e6:g}); possible "
                    "decompression bomb") from None
    except Stopped:                                     # (a stop signal's line: not a bad file)
        raise
    except Exception as e:                              # noqa: BLE001 - one bad file must not crash
        raise _Skip(_damaged_reason(path, e, _one_line(e))) from None


def _gray_of(img, jpeg: bool, image_size: int, max_pixels: int) -> np.ndarray:
    """An opened image -> (H, W) uint8 of its first frame, upright, or raise _Skip (too large, empty)."""
    from PIL import ImageOps

    with img:
        w, h = img.size
        limit = max_pixels * JPEG_PIXEL_FACTOR if jpeg else max_pixels
        if w * h > limit:
            raise _Skip(f"too large: {w}x{h} = {w * h / 1e6:.1f} megapixels (limit {limit / 1e6:g}"
                        f"{' for a JPEG' if jpeg else ''}); possible decompression bomb")
        if w < 1 or h < 1:
            raise _Skip(f"empty image ({w}x{h})")
        if img.format == "JPEG" or img.format == "MPO":
            img.draft("L" if img.mode in ("L", "RGB", "YCbCr") else None, (image_size, image_size))
        img.load()                                  # first frame only; truncation raises here
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:                           # broken EXIF: keep the pixels as stored
            oriented = img
        return _to_gray_u8(oriented, _stores_16_bit(img))


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = one_line(e)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _PillowWarnings(warnings.catch_warnings):
    """For one load: Pillow's DecompressionBombWarning becomes an exception (hence a skip); its other
    warnings about odd metadata ("Corrupt EXIF data", ...) are silenced. Enter it from one thread only:
    worker threads see the filters, but catch_warnings itself is not thread-safe."""

    def __enter__(self):
        from PIL import Image

        super().__enter__()
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return self


def load_image(path, image_size: int = 32, resize: str = "pad",
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image file to (S, S) uint8 grayscale; DataError("<path>: <reason>") if unusable."""
    if resize not in RESIZE_MODES:
        raise DataError(f"resize: {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    for name, value in (("image_size", image_size), ("max_pixels", max_pixels)):   # (not the file's fault)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    path = os.fspath(path)
    with _PillowWarnings():
        try:
            return _decode(path, int(image_size), resize, int(max_pixels))
        except _Skip as e:
            raise DataError(f"{path}: {e}") from None


def _decode_or_reason(args) -> tuple[np.ndarray | None, str | None]:
    path, image_size, resize, max_pixels = args
    try:
        return _decode(path, image_size, resize, max_pixels), None
    except _Skip as e:
        return None, str(e)


def decode_jobs(jobs) -> list:
    """[(array (S,S) uint8 or None, reason or None)] for a list of jobs (path, image_size, resize,
    max_pixels): what a decode worker process runs (decodemany.py), and this process for a few files."""
    with _PillowWarnings():
        return [_decode_or_reason(j) for j in jobs]
