"""The default recipe against the plain one (configs/plain.yaml) on small and large training sets.

Datasets, made here under --work: `demo` (cnncli/demo.py shapes), `glyphs` (scripts/make_glyphs.py
characters) at 100 and 1,000 training images per class with 300 test images per class, and `digits`
(scikit-learn's load_digits, 1,797 real 8x8 handwritten digits upscaled to 32x32; needs
`pip install scikit-learn`, a study-only dependency), split 90 per class to train, the rest to test.
Each run trains in-process from the config defaults (+ --set data.train) and measures accuracy on the
held-out test folder with the run folder's checkpoint that `cnn eval` picks. Prints one row per run
and appends it to WORK/results.tsv; then the mean per (dataset, size, recipe).

    python scripts/recipe_study.py [--work /tmp/recipe_study] [--datasets demo,glyphs,digits]
                                   [--sizes 100,1000] [--recipes plain,default] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEST_PER_CLASS = 300


def _subset(src: Path, dst: Path, per_class: int) -> Path:
    """dst/<class>/ with the first per_class files of each src/<class>/ (copied once)."""
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for cls in sorted(p for p in src.iterdir() if p.is_dir()):
            (tmp / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:per_class]:
                shutil.copyfile(f, tmp / cls.name / f.name)
        tmp.rename(dst)
    return dst


def _digits(root: Path) -> Path:
    """scikit-learn's digits as root/{train,test}/dN/*.png, 90 per class to train (a seeded shuffle)."""
    from sklearn.datasets import load_digits
    from PIL import Image
    from cnncli.demo import png_bytes

    if (root / "test").exists():
        return root
    d = load_digits()
    rng = np.random.default_rng(0)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        for split, part in (("train", idx[:90]), ("test", idx[90:])):
            folder = root / split / f"d{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                img = Image.fromarray(np.uint8(np.rint(d.images[i] * 255 / 16)))
                (folder / f"{i:05d}.png").write_bytes(png_bytes(np.asarray(img.resize((32, 32), Image.BILINEAR))))
    return root


def datasets(work: Path, names, sizes):
    """-> [(name, per_class, train_dir, test_dir)]"""
    from cnncli.demo import generate_demo

    sys.path.insert(0, str(HERE))
    import make_glyphs

    out = []
    for name in names:
        if name == "digits":
            root = _digits(work / "digits")
            out.append((name, 90, root / "train", root / "test"))
            continue
        root = work / name
        if not (root / "test").exists():
            make = generate_demo if name == "demo" else make_glyphs.generate
            make(root / "gen", max(sizes + [1000]), TEST_PER_CLASS, 0)
            (root / "gen" / "test").rename(root / "test")
        for n in sizes:
            out.append((name, n, _subset(root / "gen" / "train", root / f"train{n}", n), root / "test"))
    return out


def run(recipe, train_dir, test_dir, seed, out):
    """Train one run and evaluate it -> (test accuracy, epochs run, seconds)."""
    from cnncli import config, train
    from cnncli.evaluate import evaluate
    from cnncli.predictor import run_checkpoint

    path = HERE.parent / "configs" / "plain.yaml" if recipe == "plain" else None
    cfg = config.load_config(path, [f"data.train={train_dir}", f"train.seed={seed}", f"out={out}"])
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    lines = []
    run_dir = train.train(cfg, quiet=True, echo=lines.append)
    seconds = time.perf_counter() - t
    metrics, _, _ = evaluate(run_checkpoint(run_dir, ("best.npz", "last.npz")), test_dir, cache=False)
    epochs = sum(1 for line in lines if line.startswith("epoch "))
    return metrics["accuracy"], epochs, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/recipe_study", help="folder for datasets, runs and results.tsv")
    ap.add_argument("--datasets", default="demo,glyphs,digits", help="comma list of demo, glyphs, digits")
    ap.add_argument("--sizes", default="100,1000", help="training images per class (demo, glyphs)")
    ap.add_argument("--recipes", default="plain,default", help="comma list of plain, default")
    ap.add_argument("--seeds", default="0,1", help="comma list of train.seed values")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    print("dataset\tper_class\trecipe\tseed\ttest_acc\tepochs\ttime_s", flush=True)
    for name, n, train_dir, test_dir in datasets(work, args.datasets.split(","), sizes):
        for recipe in args.recipes.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                acc, epochs, secs = run(recipe, train_dir, test_dir, seed, work / "runs" / f"{name}{n}-{recipe}-{seed}")
                row = (name, n, recipe, seed, acc, epochs, secs)
                rows.append(row)
                line = f"{name}\t{n}\t{recipe}\t{seed}\t{acc:.4f}\t{epochs}\t{secs:.0f}"
                print(line, flush=True)
                with open(work / "results.tsv", "a") as f:
                    f.write(line + "\n")
    print("\nmean test accuracy")
    groups = {}
    for name, n, recipe, _, acc, _, _ in rows:
        groups.setdefault((name, n, recipe), []).append(acc)
    for (name, n, recipe), accs in groups.items():
        print(f"{name}\t{n}\t{recipe}\t{statistics.mean(accs):.2%}\t({len(accs)} seed(s))")


if __name__ == "__main__":
    main()
