"""The built-in demo dataset: 12 classes of simple shapes drawn as 32x32 grayscale PNGs.

Deterministic from a seed (numpy Generator + PIL ImageDraw), no downloads. Each image has random
position, size, rotation, stroke width, contrast/polarity and noise, so there is something to
learn. Not a benchmark: it only exists so `cnn demo` / configs/demo.yaml work out of the box.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
import zlib

import numpy as np

from .atomic import why_unwritten
from .errors import DataError

DEMO_VERSION = 1                 # bump whenever the pictures change; stale demo folders regenerate
CLASSES = ("arrow", "circle", "cross", "diamond", "frame", "hline",
           "plus", "ring", "square", "star", "triangle", "vline")
MARKER = ".cnncli-demo.json"
SUPERSAMPLE = 4                  # draw at 4x and box-filter down: anti-aliased edges
MAX_ROTATION_DEG = 20.0          # small, so plus/cross, hline/vline, square/diamond stay distinct


def _rotate(points, angle, cx, cy, scale):
    """Unit-coordinate points -> canvas pixels: rotate by angle (radians), scale, translate."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in points]


def _bar(x0, y0, x1, y1, half_width):
    """A rectangle (4 points) around the segment (x0,y0)-(x1,y1), in unit coordinates."""
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    px, py = -dy / n * half_width, dx / n * half_width
    return [(x0 + px, y0 + py), (x1 + px, y1 + py), (x1 - px, y1 - py), (x0 - px, y0 - py)]


def _draw_shape(draw, name, cx, cy, r, angle, stroke, aspect):
    """Draw class `name` filled with 255 on the mask canvas. r: half-size in pixels; stroke: pixels."""
    hw = stroke / (2.0 * r)                              # half stroke width in unit coordinates
    poly = lambda pts: draw.polygon(_rotate(pts, angle, cx, cy, r), fill=255)  # noqa: E731
    if name in ("circle", "ring"):
        rx, ry = r * aspect, r / aspect
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        if name == "ring":
            ix, iy = max(rx - stroke, 1.0), max(ry - stroke, 1.0)
            draw.ellipse([cx - ix, cy - iy, cx + ix, cy + iy], fill=0)
    elif name in ("square", "frame"):
        k = 0.8
        poly([(-k * aspect, -k / aspect), (k * aspect, -k / aspect),
              (k * aspect, k / aspect), (-k * aspect, k / aspect)])
        if name == "frame":
            ia, ib = max(k * aspect - 2 * hw, 0.05), max(k / aspect - 2 * hw, 0.05)
            draw.polygon(_rotate([(-ia, -ib), (ia, -ib), (ia, ib), (-ia, ib)], angle, cx, cy, r), fill=0)
    elif name == "triangle":
        poly([(math.cos(t), math.sin(t) + 0.15) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    elif name == "diamond":
        poly([(0, -1), (0.62 * aspect, 0), (0, 1), (-0.62 * aspect, 0)])
    elif name == "star":
        pts = []
        for i in range(10):
            t = -math.pi / 2 + i * math.pi / 5
            rad = 1.0 if i % 2 == 0 else 0.42
            pts.append((rad * math.cos(t), rad * math.sin(t) + 0.1))
        poly(pts)
    elif name in ("plus", "cross"):
        extra = math.pi / 4 if name == "cross" else 0.0
        for a in (0.0, math.pi / 2):
            draw.polygon(_rotate(_bar(-1, 0, 1, 0, hw), angle + extra + a, cx, cy, r), fill=255)
    elif name in ("hline", "vline"):
        a = 0.0 if name == "hline" else math.pi / 2
        draw.polygon(_rotate(_bar(-1, 0, 1, 0, hw), angle + a, cx, cy, r), fill=255)
    elif name == "arrow":
        poly(_bar(-1, 0, 0.35, 0, hw))
        head = max(0.32, 2.5 * hw)
        poly([(0.2, -head - 0.1), (1.0, 0), (0.2, head + 0.1)])
    else:
        raise ValueError(f"unknown shape {name!r}")


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(s: int):
    if s not in _GRIDS:
        _GRIDS[s] = tuple(np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5)
    return _GRIDS[s]


def png_bytes(a: np.ndarray) -> bytes:
    """(H, W) uint8 -> a minimal 8-bit grayscale PNG (deterministic bytes, much faster than PIL save)."""
    h, w = a.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)           # filter byte 0 (None) before each row
    raw[:, 1:] = a

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def render(name: str, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """One random instance of shape `name` -> (S, S) uint8."""
    from PIL import Image, ImageDraw

    s = image_size
    big = s * SUPERSAMPLE
    r = rng.uniform(0.30, 0.45) * big                    # half-size
    margin = r * 0.9
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    stroke = rng.uniform(0.08, 0.16) * big
    aspect = rng.uniform(0.85, 1.15)
    mask_img = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask_img), name, cx, cy, r, angle, stroke, aspect)
    mask = np.asarray(mask_img.resize((s, s), Image.Resampling.BOX), dtype=np.float32) / 255.0

    bg = rng.uniform(0, 255)
    contrast = rng.uniform(70, 200) * (1 if rng.random() < 0.5 else -1)
    fg = float(np.clip(bg + contrast, 0, 255))
    if abs(fg - bg) < 40:                                 # clipped too far: flip polarity instead
        fg = float(np.clip(bg - contrast, 0, 255))
    yy, xx = _grid(s)                                     # (S,S) each, in [-0.5, 0.5)
    g = rng.uniform(-40, 40, size=2)                      # background gradient
    background = bg + g[0] * xx + g[1] * yy
    noise = rng.normal(0.0, rng.uniform(2, 12), size=(s, s))
    pixels = background * (1 - mask) + fg * mask + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _write_class(job) -> int:
    """Render and write every image of one (split, class): its own seeded stream, so order-free."""
    root, split_index, split, ci, count, seed, image_size = job
    folder = os.path.join(root, split, CLASSES[ci])
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_index, ci]))
    for i in range(int(count)):
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(png_bytes(render(CLASSES[ci], rng, image_size)))
    return int(count)


def generate_demo(root, train_per_class: int = 600, test_per_class: int = 150, seed: int = 0,
                  image_size: int = 32, workers: int = 2) -> str:
    """Write root/{train,test}/<class>/NNNNN.png plus the marker file. Returns root.

    workers > 1 renders classes in that many spawned processes (which end with this one: a killed
    `cnn demo` leaves none behind); the bytes do not depend on it.
    """
    root = os.fspath(root)
    jobs = [(root, si, split, ci, count, seed, image_size)
            for si, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class)))
            for ci in range(len(CLASSES))]
    total = sum(j[4] for j in jobs)
    if workers and workers > 1 and total >= 1000:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        from cnncli.lifeline import die_with_parent, stops_held

        ctx = multiprocessing.get_context("spawn")     # no fork: the caller may have threads running
        try:
            with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                with stops_held():                  # map's submits start the workers
                    done = pool.map(_write_class, jobs)
                list(done)
            jobs = []
        except (OSError, NotImplementedError, BrokenProcessPool):
            pass                                        # no usable multiprocessing here: go serial
    for job in jobs:
        _write_class(job)
    with open(os.path.join(root, MARKER), "w") as f:
        json.dump(_marker(train_per_class, test_per_class, seed, image_size), f, sort_keys=True)
    return root


def _marker(train_per_class, test_per_class, seed, image_size) -> dict:
    return {"generator_version": DEMO_VERSION, "train_per_class": int(train_per_class),
            "test_per_class": int(test_per_class), "seed": int(seed), "image_size": int(image_size),
            "classes": list(CLASSES)}


def _read_marker(root):
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root, train_per_class=600, test_per_class=150, seed=0, image_size=32) -> bool:
    """True when root holds a finished demo generated with exactly these settings (files a user
    added beside the generated ones aside)."""
    root = os.fspath(root)
    if _read_marker(root) != _marker(train_per_class, test_per_class, seed, image_size):
        return False
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            folder = os.path.join(root, split, name)
            try:
                files = [n for n in os.listdir(folder) if _generated(folder, n, count)]
            except OSError:
                return False
            if len(files) != count:
                return False
    return True


def _debris(folder: str, name: str) -> bool:
    """Whether folder/name is a file an OS leaves, nothing of the user's: .DS_Store, ._name
    (macOS), scan.OS_DEBRIS (Thumbs.db, desktop.ini). Folders never are (a NAS's #recycle holds files)."""
    from .data.scan import OS_DEBRIS

    path = os.path.join(folder, name)
    return (name.lower() in OS_DEBRIS | {".ds_store"} or name.startswith("._")) and os.path.isfile(path) \
        and not os.path.islink(path)


def _generated(folder: str, name: str, count: int) -> bool:
    """Whether folder/name is a file generate_demo writes among `count`: 00000.png .. its last."""
    return re.fullmatch(r"[0-9]{5}\.png", name) is not None and int(name[:5]) < count \
        and os.path.isfile(os.path.join(folder, name))


def _not_generated(root: str, counts: dict, shown: int = 3) -> list:
    """The first `shown` paths under the demo folder root (relative, sorted) that generate_demo does
    not write (the marker, train/ and test/, their CLASSES folders, their NNNNN.png below counts[split]):
    files a user added, or a folder renamed, which a regeneration would delete. What an OS leaves
    (_debris) does not count; any other file or folder, hidden or not (.git), does."""
    found = []
    for top in sorted(os.listdir(root)):
        if top == MARKER or _debris(root, top):
            continue
        if top not in ("train", "test") or not os.path.isdir(os.path.join(root, top)):
            found.append(top)
            continue
        for name in sorted(os.listdir(os.path.join(root, top))):
            folder = os.path.join(root, top, name)
            if _debris(os.path.join(root, top), name):
                continue
            if name not in CLASSES or not os.path.isdir(folder):
                found.append(f"{top}/{name}")
                continue
            found += [f"{top}/{name}/{f}" for f in sorted(os.listdir(folder))
                      if not _debris(folder, f) and not _generated(folder, f, counts[top])][:shown]
        if len(found) >= shown:
            break
    return found[:shown]


def _count(value) -> int:
    # a count from an older marker (untrusted JSON): an int >= 0, else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_demo(root, train_per_class: int = 600, test_per_class: int = 150, seed: int = 0,
                image_size: int = 32, say=None) -> str:
    """Generate the demo into root unless a complete one with these settings is already there.

    Generation goes into a temporary sibling folder that is renamed into place only when finished,
    so an interrupted run is never mistaken for a complete one. A root that exists and is neither
    empty nor a cnncli demo folder, or a demo folder that holds files it did not generate, is left
    alone (DataError). say(line), when given, is told before generation starts.
    """
    root = os.path.abspath(os.fspath(root))
    settings = (train_per_class, test_per_class, seed, image_size)
    if is_complete(root, *settings):
        return root
    if os.path.exists(root):
        if not os.path.isdir(root):
            raise DataError(f"demo folder {root}: exists and is not a folder")
        if [n for n in os.listdir(root) if not _debris(root, n)] and _read_marker(root) is None:
            raise DataError(f"demo folder {root}: exists, is not empty and is not a cnncli demo dataset")
        old = _read_marker(root) or {}              # (an older demo's counts: its files are the generator's too)
        counts = {"train": max(train_per_class, _count(old.get("train_per_class"))),
                  "test": max(test_per_class, _count(old.get("test_per_class")))}
        try:
            added = _not_generated(root, counts)
        except OSError as err:
            raise DataError(f"demo folder {root}: cannot be read ({err.strerror or err})") from None
        if added:                                        # (a regeneration replaces the whole folder)
            raise DataError(f"demo folder {root}: is an incomplete or older demo dataset to generate again, but it "
                            f"holds what the generator did not make ({', '.join(added)}); move that out of it, or "
                            "give another folder")
    parent = os.path.dirname(root)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.partial-", dir=parent)
    except OSError as err:                               # (a read-only folder: a raw Errno line named no key)
        raise DataError(f"demo folder {root}: cannot be made ({why_unwritten(err, root)})") from None
    if say is not None:                                  # (once it can be written: not before a refusal)
        say(f"Generating the built-in demo dataset in {root} ...")
    try:
        os.chmod(tmp, 0o777 & ~_umask())                 # (mkdtemp's 0700 would outlive the rename)
        try:
            generate_demo(tmp, *settings)
        except OSError as err:                           # (a full disk: the error named no file)
            raise DataError(f"demo folder {root}: cannot write the demo dataset ({why_unwritten(err, root)}); "
                            "nothing was left behind") from None
        if os.path.exists(root):                         # stale/other-settings demo or empty folder
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=parent)
            os.rename(root, os.path.join(old, "demo"))
            try:
                os.rename(tmp, root)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, root)
            except OSError:
                if not is_complete(root, *settings):     # lost a race to a concurrent generator
                    raise
        return root
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

