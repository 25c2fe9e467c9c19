"""Fine-tuning (train.init_from) against training from scratch, on classes the source never saw.

The glyphs dataset (scripts/make_glyphs.py, 12 classes of characters; made under --work as
recipe_study.py makes it): one source run is trained on the first 6 classes at 1,000 images per class;
then, on the other 6 classes with N training images per class, runs from train.seed's init and runs
from the source's weights (`--set train.init_from=SOURCE`; every layer below the output is copied, the
output rows are new) train with the default recipe, and each is measured on the 6 classes' 300 test
images per class with the checkpoint `cnn eval` picks. Prints one row per run, then the means.

    python scripts/finetune_study.py [--work /tmp/finetune_study] [--sizes 20,50] [--seeds 0,1]
                                     [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def classes_of(src: Path, dst: Path, names) -> Path:
    """dst/<class>/ for the given classes of src (copied once)."""
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for name in names:
            shutil.copytree(src / name, tmp / name)
        tmp.rename(dst)
    return dst


def run(train_dir, test_dir, seed, out, init_from=None, extra=()):
    """One run with the default recipe and its test accuracy -> (accuracy, epochs run, seconds)."""
    from cnncli import config, train
    from cnncli.evaluate import evaluate
    from cnncli.predictor import run_checkpoint

    sets = [f"data.train={train_dir}", f"train.seed={seed}", f"out={out}", *extra]
    if init_from is not None:
        sets.append(f"train.init_from={init_from}")
    cfg = config.load_config(None, sets)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    lines = []
    run_dir = train.train(cfg, quiet=True, echo=lines.append)
    seconds = time.perf_counter() - t
    if test_dir is None:
        return run_dir
    metrics, _, _ = evaluate(run_checkpoint(run_dir, ("best.npz", "last.npz")), test_dir, cache=False)
    return metrics["accuracy"], sum(1 for line in lines if line.startswith("epoch ")), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/finetune_study", help="folder for datasets, runs and results")
    ap.add_argument("--sizes", default="20,50", help="training images per new class")
    ap.add_argument("--seeds", default="0,1", help="comma list of train.seed values")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for the runs on the new classes (not the source run); repeatable")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    import recipe_study

    sizes = [int(s) for s in args.sizes.split(",")]
    (_, _, full, test), *_ = recipe_study.datasets(work, ["glyphs"], [1000])
    names = sorted(p.name for p in full.iterdir() if p.is_dir())
    old, new = names[:6], names[6:]
    t = time.perf_counter()
    source = run(classes_of(full, work / "source-train", old), None, 0, work / "runs" / "source")
    print(f"source run: classes {', '.join(old)}, 1000 images each, {time.perf_counter() - t:.0f} s", flush=True)
    new_test = classes_of(test, work / "new-test", new)
    rows = []
    print("per_class\tstart\tseed\ttest_acc\tepochs\ttime_s", flush=True)
    for n in sizes:
        small = recipe_study._subset(classes_of(full, work / "new-train", new), work / f"new-train{n}", n)
        for start in ("scratch", "init_from"):
            for seed in (int(s) for s in args.seeds.split(",")):
                out = work / "runs" / f"new{n}-{start}-{seed}"
                acc, epochs, secs = run(small, new_test, seed, out, source if start == "init_from" else None,
                                        args.sets)
                rows.append((n, start, acc))
                print(f"{n}\t{start}\t{seed}\t{acc:.4f}\t{epochs}\t{secs:.0f}", flush=True)
    print("\nmean test accuracy on the 6 new classes")
    groups = {}
    for n, start, acc in rows:
        groups.setdefault((n, start), []).append(acc)
    for (n, start), accs in groups.items():
        print(f"{n}\t{start}\t{statistics.mean(accs):.2%}\t({len(accs)} seed(s))")


if __name__ == "__main__":
    main()
