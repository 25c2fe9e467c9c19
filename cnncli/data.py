"""Image-folder datasets: indexing, robust decoding to 8-bit grayscale, resizing, caching, splits.

A data folder holds one subfolder per class (like torchvision ImageFolder). Bad files are skipped
with a reason, never crash a load. This module does not batch, scale to [0,1] or normalize: the
trainer does that; a Dataset keeps uint8 pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff", ".webp"}
# Pillow plugins we let parse a file; anything else is "not a supported image" (JPEG covers MPO).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP")
RESIZE_MODES = ("pad", "stretch", "crop")
MAX_PIXELS = 40_000_000          # header-declared width*height above this is skipped, undecoded
CACHE_FORMAT_VERSION = 1         # bump when decoding/resizing changes what pixels come out
IGNORED_DIRS = {"__MACOSX"}      # macOS zip debris; hidden (dot) folders are ignored as well
ALPHA_BACKGROUND = 255           # transparent pixels are composited onto white


@dataclass
class Dataset:
    images: np.ndarray                       # (N, S, S) uint8, C-contiguous
    labels: np.ndarray                       # (N,) int64 in [0, len(classes))
    classes: list[str]
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx) -> "Dataset":
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(np.ascontiguousarray(self.images[idx]), self.labels[idx].copy(),
                       list(self.classes), [self.paths[i] for i in idx])


# ----------------------------------------------------------------------------- decoding

class _Skip(Exception):
    """One file cannot be used; str() is the short reason."""


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _has_image_ext(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _not_image_reason(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    names = "PNG/JPEG/BMP/GIF/PGM/TIFF/WebP"
    if head.startswith(b"%PDF"):
        return f"not a {names} image (it is a PDF)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return f"not a {names} image (it looks like text)"
    except UnicodeDecodeError:
        pass
    return f"not a {names} image (unrecognised or unsupported real format)"


def _to_gray_u8(img) -> np.ndarray:
    """Any Pillow mode -> (H, W) uint8. Alpha is composited on white; 16-bit is scaled by 255/65535."""
    from PIL import Image

    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("L"), dtype=np.uint8)
    if mode.startswith("I"):                                   # I;16, I;16B, I;16L, I (32-bit)
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):        # not a 16-bit range: stretch
            return _stretch(a.astype(np.float64))
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return np.rint(a * 255.0).astype(np.uint8)
        return _stretch(a)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("1", "P", "RGB"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    try:                                                       # CMYK, YCbCr, LAB, HSV, ...
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise _Skip(f"unsupported colour mode {mode}") from e


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


def _decode(path: str, image_size: int, resize: str, max_pixels: int) -> np.ndarray:
    """One file -> (S, S) uint8, or raise _Skip(reason). Catches everything a hostile file can throw."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            raise _Skip("empty file (0 bytes)")
    except OSError as e:
        raise _Skip(f"cannot read file ({e.strerror or e})") from e
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise _Skip("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to accept truncated data")
    try:
        with Image.open(path, formats=list(PIL_FORMATS)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise _Skip(f"too large: {w}x{h} = {w * h / 1e6:.1f} megapixels "
                            f"(limit {max_pixels / 1e6:g}); possible decompression bomb")
            if w < 1 or h < 1:
                raise _Skip(f"empty image ({w}x{h})")
            if img.format == "JPEG" or img.format == "MPO":
                img.draft("L" if img.mode in ("L", "RGB", "YCbCr") else None, (image_size, image_size))
            img.load()                                  # first frame only; truncation raises here
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception:                           # broken EXIF: keep the pixels as stored
                oriented = img
            gray = _to_gray_u8(oriented)
        return resize_gray(gray, image_size, resize)
    except _Skip:
        raise
    except UnidentifiedImageError:
        raise _Skip(_not_image_reason(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Skip(f"too large: possible decompression bomb ({_one_line(e)})") from None
    except Exception as e:                              # noqa: BLE001 - one bad file must not crash
        msg = _one_line(e)
        if "truncated" in msg.lower():
            raise _Skip(f"truncated image ({msg})") from None
        raise _Skip(f"cannot decode: {type(e).__name__}: {msg}") from None


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
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


PROCESS_MIN_IMAGES = 512   # below this, decoding runs in this process (forking costs ~20-50 ms)


def _decode_chunk(jobs) -> list:
    """Worker-process side of decode_many: [(array or None, reason or None)] for a list of jobs."""
    with _PillowWarnings():
        return [_decode_or_reason(j) for j in jobs]


def decode_many(paths, image_size=32, resize="pad", workers=2, max_pixels=MAX_PIXELS):
    """Decode in order. Returns (list of (S,S) uint8 or None, list of reasons or None).

    With workers > 1 and at least PROCESS_MIN_IMAGES files, contiguous chunks go to `workers` forked
    processes: small images are GIL-bound Python work, and 2 threads measured 0.65x of 1 thread on
    7,200 32x32 PNGs. Where fork is unavailable, or a worker dies, the rest decodes in this process.
    """
    jobs = [(p, int(image_size), resize, int(max_pixels)) for p in paths]
    results = None
    if workers is not None and workers > 1 and len(jobs) >= PROCESS_MIN_IMAGES:
        results = _decode_in_processes(jobs, int(workers))
    if results is None:
        results = _decode_chunk(jobs)
    return [r[0] for r in results], [r[1] for r in results]


def _decode_in_processes(jobs, workers):
    """_decode_chunk over ~4 chunks per worker in forked processes, in order; None if not possible."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return None                            # fork is only safe enough on Linux (macOS: system frameworks)
    n = min(len(jobs), workers * 4)
    bounds = [len(jobs) * i // n for i in range(n + 1)]
    chunks = [jobs[bounds[i]:bounds[i + 1]] for i in range(n)]
    try:
        with warnings.catch_warnings():       # Python >= 3.12 warns when forking a threaded process;
            warnings.simplefilter("ignore", DeprecationWarning)   # the children only decode files
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_decode_chunk, chunks))
    except (BrokenProcessPool, OSError, NotImplementedError, ImportError):  # no sem_open (/dev/shm) etc.
        return None
    return [r for part in parts for r in part]


# ----------------------------------------------------------------------------- indexing

def _scan_images(top: str) -> list[tuple[str, int, int]]:
    """(relative path with '/', size, mtime_ns) of every non-hidden image file under top, recursively,
    sorted by path. Follows symlinked folders, each real folder once (no loops)."""
    out: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    stack = [("", top)]
    while stack:
        rel_dir, full_dir = stack.pop()
        real = os.path.realpath(full_dir)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(full_dir) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            name = e.name
            if name[0] == "." or name in IGNORED_DIRS:
                continue
            rel = rel_dir + name
            try:
                if e.is_dir():
                    stack.append((rel + "/", e.path))
                elif "." in name and "." + name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS:
                    try:
                        st = e.stat()
                        out.append((rel, st.st_size, st.st_mtime_ns))
                    except OSError:                    # dangling symlink: the decoder reports it
                        out.append((rel, -1, -1))
            except OSError:
                continue
    out.sort()
    return out


def list_images(path) -> list[str]:
    """A file -> [path]; a folder -> every accepted, non-hidden image file under it, sorted."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or folder")
    prefix = os.path.join(path, "")
    return [prefix + rel for rel, _, _ in _scan_images(path)]


def _check_root(root: str) -> list[str]:
    if not os.path.exists(root):
        raise DataError(f"data folder {root}: does not exist")
    if not os.path.isdir(root):
        raise DataError(f"data folder {root}: is not a folder")
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise DataError(f"data folder {root}: cannot be read ({e.strerror or e})") from None
    return [e for e in entries if not _is_hidden(e) and e not in IGNORED_DIRS
            and os.path.isdir(os.path.join(root, e))]


def _index(root: str, classes):
    """-> (class names, [(rel path, class index, size, mtime_ns)], loose root-level image rel paths)."""
    found = _check_root(root)
    if not found:
        raise DataError(f"data folder {root}: has no class subfolders "
                        f"(expected one subfolder of images per class, e.g. {os.path.join(root, 'cat')})")
    if classes is not None:
        classes = [str(c) for c in classes]
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if extra:
                parts.append("extra " + ", ".join(extra))
            raise DataError(f"data folder {root}: classes do not match the expected ones "
                            f"({'; '.join(parts)})")
    else:
        classes = found
    if len(classes) < 2:
        raise DataError(f"data folder {root}: has only one class ({classes[0]}); need at least 2")
    entries = []
    for ci, name in enumerate(classes):
        head = name + "/"
        entries.extend((head + rel, ci, size, mtime)
                       for rel, size, mtime in _scan_images(os.path.join(root, name)))
    counts = np.bincount(np.array([e[1] for e in entries], dtype=np.int64), minlength=len(classes))
    if len(entries) == 0:
        raise DataError(f"data folder {root}: contains no image files "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"data folder {root}: class folder(s) with no image files: {', '.join(empty)}")
    loose = [n for n in sorted(os.listdir(root)) if not _is_hidden(n) and _has_image_ext(n)
             and os.path.isfile(os.path.join(root, n))]
    return classes, entries, loose


# ----------------------------------------------------------------------------- cache

def cache_dir() -> str:
    d = os.environ.get("CNNCLI_CACHE_DIR")
    if d:
        return d
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache"), "cnncli")


def _cache_names(root, classes, entries, loose, image_size, resize, max_pixels):
    settings = {"v": CACHE_FORMAT_VERSION, "root": os.path.abspath(root), "size": image_size,
                "resize": resize, "max_pixels": max_pixels, "classes": classes}
    slot = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update("\n".join(f"{rel}\0{ci}\0{size}\0{mtime}" for rel, ci, size, mtime in entries)
             .encode("utf-8", "surrogatepass"))
    h.update(json.dumps(loose).encode())
    return os.path.join(cache_dir(), f"dataset-{slot}.npz"), h.hexdigest()


def _cache_read(path, key, image_size, n_entries):
    """-> (images, labels, rel paths, skipped rel paths, reasons) or None if absent/stale/corrupt."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"][()]) != key:
                return None
            images, labels = z["images"], z["labels"]
            rels = z["paths"].tolist()
            srels = z["skipped_paths"].tolist()
            reasons = z["skipped_reasons"].tolist()
        n = len(rels)
        if (images.dtype != np.uint8 or images.shape != (n, image_size, image_size)
                or labels.dtype != np.int64 or labels.shape != (n,) or len(srels) != len(reasons)
                or n + len(srels) < n_entries):
            return None
        return np.ascontiguousarray(images), labels, rels, srels, reasons
    except Exception:                                   # noqa: BLE001 - corrupt cache: rebuild
        return None


def _cache_write(path, key, images, labels, rels, srels, reasons) -> None:
    import tempfile

    def u(strings):
        return np.array(strings, dtype=str) if strings else np.zeros((0,), dtype="<U1")

    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), images=images, labels=labels, paths=u(rels),
                     skipped_paths=u(srels), skipped_reasons=u(reasons))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, ValueError, UnicodeError):        # read-only home, odd names: just no cache
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ----------------------------------------------------------------------------- load_folder

def load_folder(root, image_size: int = 32, resize: str = "pad", classes=None, strict: bool = False,
                workers: int = 2, cache: bool = True, max_pixels: int = MAX_PIXELS
                ) -> tuple[Dataset, list[tuple[str, str]]]:
    """Index, decode (in parallel) and cache a class-per-subfolder image folder.

    Returns (dataset, skipped) with skipped = [(path, reason)]; order is class, then path.
    strict=True raises DataError listing every skipped file instead.
    """
    root = os.fspath(root)
    if resize not in RESIZE_MODES:
        raise DataError(f"resize: {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    image_size = int(image_size)
    classes, entries, loose = _index(root, classes)
    cache_path, key = _cache_names(root, classes, entries, loose, image_size, resize, int(max_pixels))
    prefix = os.path.join(root, "")                   # paths below are prefix + "class/sub/name.png"
    hit = _cache_read(cache_path, key, image_size, len(entries)) if cache else None
    if hit is not None:
        images, labels, rels, srels, reasons = hit
    else:
        full = [prefix + e[0] for e in entries]
        arrays, why = decode_many(full, image_size, resize, workers, max_pixels)
        keep = [i for i, a in enumerate(arrays) if a is not None]
        images = np.zeros((len(keep), image_size, image_size), dtype=np.uint8)   # (N,S,S)
        for j, i in enumerate(keep):
            images[j] = arrays[i]
        labels = np.array([entries[i][1] for i in keep], dtype=np.int64)
        rels = [entries[i][0] for i in keep]
        srels = [n for n in loose] + [entries[i][0] for i, a in enumerate(arrays) if a is None]
        reasons = ["not inside a class subfolder"] * len(loose) + [r for r in why if r is not None]
        if cache:
            _cache_write(cache_path, key, images, labels, rels, srels, reasons)
    skipped = [(prefix + r, why) for r, why in zip(srels, reasons)]
    if strict and skipped:
        lines = [f"data folder {root}: {len(skipped)} unusable file(s) (strict mode)"]
        lines += [f"  {p}: {why}" for p, why in skipped]
        raise DataError("\n".join(lines))
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"data folder {root}: no usable images in class folder(s) {', '.join(empty)} "
                        f"({len(skipped)} file(s) skipped)")
    paths = [prefix + r for r in rels]
    return Dataset(images, labels, list(classes), paths), skipped


# ----------------------------------------------------------------------------- split

def stratified_split(labels, fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """Per class c with n_c images: a seeded permutation; validation takes round(fraction * n_c),
    at least 1 when n_c >= 2 (and fraction > 0), at most n_c - 1. -> (train_idx, val_idx), sorted int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(idx.size)]
        n = idx.size
        k = int(np.floor(fraction * n + 0.5))
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        val.append(perm[:k])
        train.append(perm[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(train), cat(val)
