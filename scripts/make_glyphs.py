"""A second generated dataset for recipe studies: 12 classes of characters drawn with PIL's font.

Each 32x32 grayscale PNG is one character ("0".."9", "A", "E") in Pillow's scalable default font
(Pillow >= 10.1) with a random size, position, rotation, stroke width, polarity, background
gradient and noise. Deterministic from a seed. It differs from cnncli/demo.py's shapes (thin
glyph strokes, classes that share parts: 3/8, 1/7, E/F-like bars). Not a benchmark of record.

    python scripts/make_glyphs.py OUT_DIR [--train 1000] [--test 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

CLASSES = tuple("0123456789AE")
SUPER = 4


def render(ch: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One random instance of character `ch` -> (size, size) uint8."""
    from PIL import Image, ImageDraw, ImageFont

    big = size * SUPER
    font = ImageFont.load_default(size=float(rng.uniform(0.55, 0.95) * big))
    stroke = int(rng.integers(0, 3)) * SUPER // 2
    canvas = Image.new("L", (2 * big, 2 * big), 0)
    ImageDraw.Draw(canvas).text((big, big), ch, fill=255, font=font, anchor="mm", stroke_width=stroke,
                                stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    box = canvas.getbbox() or (0, 0, 2 * big, 2 * big)
    glyph = canvas.crop(box)
    free_x, free_y = max(big - glyph.width, 0), max(big - glyph.height, 0)
    mask_img = Image.new("L", (big, big), 0)
    mask_img.paste(glyph, (int(rng.uniform(0, free_x + 1)) - max(glyph.width - big, 0) // 2,
                           int(rng.uniform(0, free_y + 1)) - max(glyph.height - big, 0) // 2))
    mask = np.asarray(mask_img.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    bg = rng.uniform(0, 255)
    contrast = rng.uniform(60, 200) * (1 if rng.random() < 0.5 else -1)
    fg = float(np.clip(bg + contrast, 0, 255))
    if abs(fg - bg) < 40:
        fg = float(np.clip(bg - contrast, 0, 255))
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    g = rng.uniform(-50, 50, size=2)
    pixels = (bg + g[0] * xx + g[1] * yy) * (1 - mask) + fg * mask + rng.normal(0, rng.uniform(2, 15), (size, size))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def generate(root, train_per_class=1000, test_per_class=300, seed=0) -> str:
    """Write root/{train,test}/<class>/NNNNN.png; each (split, class) its own seeded stream."""
    from cnncli.demo import png_bytes

    for si, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
        for ci, ch in enumerate(CLASSES):
            folder = os.path.join(os.fspath(root), split, f"c{ch}")
            os.makedirs(folder, exist_ok=True)
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1000 + si, ci]))
            for i in range(count):
                with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                    f.write(png_bytes(render(ch, rng)))
    return os.fspath(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (gets train/ and test/)")
    ap.add_argument("--train", type=int, default=1000, help="training images per class")
    ap.add_argument("--test", type=int, default=300, help="test images per class")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    args = ap.parse_args()
    generate(args.out, args.train, args.test, args.seed)
    print(f"wrote {len(CLASSES)} classes x ({args.train} train + {args.test} test) to {args.out}")


if __name__ == "__main__":
    main()
