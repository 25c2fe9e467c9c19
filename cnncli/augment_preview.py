"""`cnn augment-preview`: an image grid (PNG, or the format the output's extension names) of a
config's augmentations applied to the user's own images.

Row r shows one training image (labelled with its class, classes in turn): the original first, then
augmented variants drawn as training batches are (cnncli.augment, epoch 0, steps 0, 1, ...). PIL
only; this module does not train, and it does not check the variants (a person looks at them).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np

from .atomic import folder_problem, kept, picture_target_problem, why_unwritten, write_atomic
from .config import require_train
from .errors import CnnError

CELL = 96          # pixels per image in the grid (32x32 scaled 3x, nearest neighbour)
GAP = 4            # pixels between cells
LABEL_W = 100      # left column with the class names
HEADER_H = 18      # top row with the column titles


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) of the PNG for rows x cols cells."""
    return LABEL_W + cols * (CELL + GAP) + GAP, HEADER_H + rows * (CELL + GAP) + GAP


def pick_images(labels, n_classes, rows, seed):
    """rows image indices: class r % n_classes for row r, a seeded choice within the class, no repeats
    while a class has unused images."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    return np.array([pools[r % n_classes][(r // n_classes) % len(pools[r % n_classes])] for r in range(rows)])


def augmented_grid(images, settings, mean, std, cols, seed):
    """images (R,32,32) uint8 -> (R, cols, 32, 32) uint8: column 0 the originals, then variants."""
    from .augment import Augmenter
    from .predictor import input_table

    table = input_table(mean, std, np.float32)                       # (256,)
    x = np.ascontiguousarray(table[images][:, None])                 # (R,1,32,32)
    aug = Augmenter(settings, seed=seed, pixel_std=std, max_batch=len(images))
    out = np.empty((len(images), cols, 32, 32), np.uint8)            # (R,cols,32,32)
    out[:, 0] = images
    for j in range(1, cols):
        y = aug(x, epoch=0, step=j - 1)[:, 0].astype(np.float64)     # (R,32,32)
        out[:, j] = np.clip(np.rint((y * std + mean) * 255.0), 0, 255).astype(np.uint8)
    return out


def label_font():
    """A font for the class names: DejaVu Sans (Latin, Greek, Cyrillic...) from matplotlib when
    cnncli[plots] is installed, else from the system's fonts, else Pillow's own (its scalable
    default where FreeType is available), which has ASCII only: fit_label then drops accents."""
    from PIL import ImageFont

    from .plotting import matplotlib_config_folder

    matplotlib_config_folder()
    try:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), 11)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", 11)   # (Pillow looks in the system's font folders)
    except OSError:
        pass
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError, ImportError):             # an old Pillow, or no FreeType
        font = ImageFont.load_default()
    font.ascii_only = True
    return font


def _drawable(font, c: str) -> bool:
    """Whether `font` has a glyph for the character c: it does not draw c as its missing-glyph mark
    (the glyph of a private-use code point no font maps, made once per font)."""
    from PIL import Image, ImageDraw

    def drawn(ch):
        im = Image.new("L", (48, 48))                                # (48,48) uint8
        ImageDraw.Draw(im).text((4, 4), ch, font=font, fill=255)
        return im.tobytes()
    if not hasattr(font, "missing_mark"):
        font.missing_mark = drawn("\U0010fffd")
    return drawn(c) != font.missing_mark


def fit_label(name: str, font, width: int) -> str:
    """`name` (data.printable) cut to fit `width` pixels in `font`, a cut marked with '~'; in an
    ASCII-only font (label_font) without its accents (é as e: a box otherwise); a character the font
    has no glyph for as its \\u escape."""
    from .data import printable

    name = printable(str(name))
    if getattr(font, "ascii_only", False):
        name = "".join(c for c in unicodedata.normalize("NFD", name) if not unicodedata.combining(c))
    name = "".join(c if c.isascii() or _drawable(font, c) else c.encode("unicode_escape").decode("ascii")
                   for c in name)             # (a box otherwise: DejaVu has no CJK, say; report.py's figure_name)
    if font.getlength(name) <= width:
        return name
    while len(name) > 1 and font.getlength(name + "~") > width:
        name = name[:-1]
    return name + "~"


def draw_grid(cells, names):
    """cells (R,cols,32,32) uint8 and R row names -> a PIL image of grid_size(R, cols)."""
    from PIL import Image, ImageDraw

    rows, cols = cells.shape[:2]
    canvas = Image.new("L", grid_size(rows, cols), 255)
    pen = ImageDraw.Draw(canvas)
    font = label_font()
    pen.text((LABEL_W + GAP, 3), "original", fill=0, font=font)
    pen.text((LABEL_W + GAP + CELL + GAP, 3), "augmented ->", fill=0, font=font)
    for r in range(rows):
        top = HEADER_H + GAP + r * (CELL + GAP)
        pen.text((4, top + CELL // 2 - 6), fit_label(names[r], font, LABEL_W - 8), fill=0, font=font)
        for c in range(cols):
            tile = Image.fromarray(cells[r, c]).resize((CELL, CELL), Image.NEAREST)
            canvas.paste(tile, (LABEL_W + GAP + c * (CELL + GAP), top))
    return canvas


def named_format(out) -> str | None:
    """The Pillow format the extension of `out` names (out.jpg: JPEG), or None when it names none
    Pillow writes (no extension, .xyz, or one Pillow only reads): the preview is then a PNG."""
    from PIL import Image

    kind = Image.registered_extensions().get(Path(out).suffix.lower())
    return kind if kind in Image.SAVE else None


def write_preview(cfg: dict, out, rows: int | None = None, cols: int = 8, seed: int | None = None,
                  echo=None) -> Path:
    """Render the grid for config `cfg` (validated) to the image file `out` (PNG unless its extension
    names another format), atomically; returns its path. rows None: one per class, at most 12.
    echo (a line -> None): where the skipped files and the data's notes are said, as cnn train says them."""
    from . import data
    from .augment import AugmentSettings
    from .data import printable

    d = cfg["data"]
    require_train(cfg)
    problem = picture_target_problem(out, (d["train"], d["val"], d["test"])) or folder_problem(out)
    if problem:                                          # (before the data is read: a training image, a config)
        raise CnnError(f"{printable(str(out))}: {problem}")
    ds, skipped = data.load_folder(d["train"], image_size=d["image_size"], resize=d["resize"])
    if echo is not None:
        from .runfolder import skipped_lines

        for line in (skipped_lines(skipped) if skipped else []) + ds.notes:
            echo(line)
    mean, std = 0.0, 1.0
    if d["normalize"]:  # as the trainer normalizes (the augmenter works on normalized inputs)
        mean, std = data.pixel_mean_std(ds.images)       # (no float64 copy of the whole set)
    seed = cfg["train"]["seed"] if seed is None else seed
    rows = min(len(ds.classes), 12) if rows is None else rows
    idx = pick_images(ds.labels, len(ds.classes), rows, seed)
    cells = augmented_grid(ds.images[idx], AugmentSettings.from_config(cfg["augment"]), mean, std, cols, seed)
    out = Path(out)
    grid = draw_grid(cells, [ds.classes[ds.labels[i]] for i in idx])
    kind = named_format(out) or "PNG"
    previous = kept(out)
    try:
        write_atomic(out, lambda f: grid.save(f, format=kind))
    except (OSError, ValueError) as err:
        why = why_unwritten(err, out) if isinstance(err, OSError) else err
        raise CnnError(f"{printable(str(out))}: cannot write the preview ({why}){previous}") from None
    return out
