"""Inference images/s of an exported ONNX model in onnxruntime next to `cnn predict`'s in-process path.

Same uint8 images, same batch sizes, alternated in one run: per batch size and repeat, each of
cnncli's Predictor.predict_proba (the call `cnn predict` makes: NumPy path up to 4096 images), its
numba path (fast=True, taken above 4096 images) and onnxruntime on the exported uint8-input graph runs
for --seconds. Prints the median img/s and the ratios onnxruntime / cnn predict and onnxruntime /
numba path. Asserts nothing.

    python scripts/bench_onnx.py [--checkpoint CKPT] [--batchnorm none] [--batch-sizes 1,32,256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _random_checkpoint(folder: Path, batchnorm: str) -> Path:
    """A cnncli checkpoint with Glorot-initialised weights (speed does not depend on their values)."""
    from cnncli import arch, checkpoint

    params = arch.init_params(12, batchnorm, seed=0, dtype=np.float32)
    buffers = arch.init_buffers(12, batchnorm, dtype=np.float32)
    arrays = {f"params/{k}": v for k, v in params.items()} | {f"buffers/{k}": v for k, v in buffers.items()}
    meta = {"num_classes": 12, "batchnorm": batchnorm, "eps": 1e-5, "dtype": "float32",
            "classes": [f"c{i}" for i in range(12)],
            "preprocess": {"image_size": 32, "resize": "pad", "mean": 0.2, "std": 0.3}}
    path = folder / f"random-{batchnorm}.npz"
    checkpoint.save(path, arrays, meta)
    return path


def _rate(fn, images, seconds: float) -> float:
    """Images/s of fn(images) called repeatedly for about `seconds` (at least twice)."""
    n, calls, t0 = 0, 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - t0 < seconds:
        fn(images)
        n += len(images)
        calls += 1
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a .npz checkpoint (default: random weights)")
    ap.add_argument("--batchnorm", default="none", choices=("none", "unit", "channel"),
                    help="variant of the random checkpoint (ignored with --checkpoint)")
    ap.add_argument("--batch-sizes", default="1,32,256,4096", help="comma-separated images per call")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per implementation per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median is shown")
    ap.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    args = ap.parse_args()

    import onnxruntime as ort

    from cnncli.export import export_onnx
    from cnncli.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else _random_checkpoint(Path(tmp), args.batchnorm)
        predictor = Predictor.from_checkpoint(ckpt)
        model_path = export_onnx(ckpt, Path(tmp) / "model.onnx", "uint8")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.ort_threads
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    impls = {
        "cnn predict": lambda im: predictor.predict_proba(im, batch_size=256),
        "numba path": lambda im: predictor.predict_proba(im, batch_size=256, fast=True),
        "onnxruntime": lambda im: session.run(None, {"pixels": im}),
    }
    rng = np.random.default_rng(0)
    print(f"batchnorm {predictor.batchnorm}, onnxruntime {ort.__version__}, ort threads "
          f"{args.ort_threads or 'default'}; median of {args.repeats} alternating repeats of {args.seconds} s")
    print(f"{'batch':>6} " + " ".join(f"{k + ' img/s':>18}" for k in impls) + f" {'ort / predict':>14} {'ort / numba':>12}")
    for b in (int(s) for s in args.batch_sizes.split(",")):
        images = rng.integers(0, 256, (b, 32, 32), dtype=np.uint8)    # (B,32,32)
        for fn in impls.values():                                     # warm-up (numba cache load, ort arenas)
            fn(images)
        rates = {k: [] for k in impls}
        for _ in range(args.repeats):
            for k, fn in impls.items():
                rates[k].append(_rate(fn, images, args.seconds))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{b:>6} " + " ".join(f"{med[k]:>18.0f}" for k in impls) + f" {med['onnxruntime'] / med['cnn predict']:>14.2f}"
              f" {med['onnxruntime'] / med['numba path']:>12.2f}")


if __name__ == "__main__":
    main()
