#!/usr/bin/env python
"""Images/second of Network.train_step and predict_proba vs a PyTorch eager twin, same process.

    python scripts/bench_core.py [--threads 2] [--batchnorm none unit channel] [--sizes 32 64 128 256]
                                 [--seconds 0.3] [--repeats 8] [--no-torch] [--cpu]

Training = forward + backward (gradients filled, no optimizer step) on both sides; float32.
The machine may be shared: ours and torch are timed in ALTERNATING windows of about --seconds each,
--repeats times, and each side reports its best window (the least disturbed one).
"""

import argparse
import time

import numpy as np


CLOCK = [time.perf_counter]      # --cpu: time.process_time (CPU seconds of this process)


def _window(fn, n_images, seconds):
    count, t0, w0 = 0, CLOCK[0](), time.perf_counter()
    while True:
        fn()
        count += 1
        if time.perf_counter() - w0 >= seconds:
            return count * n_images / max(CLOCK[0]() - t0, 1e-9)


def rates(fns, n_images, seconds, repeats):
    """Best img/s of each function in fns, timed in alternating windows."""
    for fn in fns:
        fn()                               # warm up (compilation, workspaces)
    best = [0.0] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = max(best[i], _window(fn, n_images, seconds))
    return best


def latency_us(fn, seconds, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            count += 1
        best = min(best, (time.perf_counter() - t0) / count * 1e6)
    return best


def torch_twin(bn, num_classes=12):
    import torch
    from torch import nn

    def norm(kind, c, shape):
        if bn == "none":
            return nn.Identity()
        if bn == "channel" or kind == "fc":
            return nn.BatchNorm2d(c) if kind == "conv" else nn.BatchNorm1d(c)
        return UnitBN(shape)

    class UnitBN(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(shape))
            self.beta = nn.Parameter(torch.zeros(shape))

        def forward(self, z):
            mean = z.mean(0)
            var = z.var(0, unbiased=False)
            return (z - mean) / torch.sqrt(var + 1e-5) * self.gamma + self.beta

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), norm("conv", 6, (6, 32, 32)), nn.ELU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), norm("conv", 16, (16, 16, 16)), nn.ELU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 65), norm("fc", 65, (65,)), nn.ELU(), nn.Linear(65, num_classes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batchnorm", nargs="+", default=["none", "unit", "channel"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128, 256])
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cpu", action="store_true",
                    help="images per CPU-second of this process instead of per wall second: robust "
                         "to other load on the machine; with --threads 1 it compares per-core cost")
    args = ap.parse_args()
    if args.cpu:
        CLOCK[0] = time.process_time

    import numba
    numba.set_num_threads(args.threads)
    from cnncli.model import Network
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch not installed: ours only")
    rng = np.random.default_rng(0)
    unit = "img per CPU-s" if args.cpu else "img/s"
    print(f"threads={args.threads}  float32  {unit} (best of {args.repeats} alternating {args.seconds}s windows)")
    print(f"{'batchnorm':9s} {'mode':7s} {'bs':>4s} {'ours':>9s} {'torch':>9s} {'ratio':>6s}")
    for bn in args.batchnorm:
        net = Network(12, bn, dtype=np.float32, seed=0)
        twin = torch_twin(bn) if torch else None
        for mode in ("train", "infer"):
            for bs in args.sizes:
                x = rng.standard_normal((bs, 1, 32, 32)).astype(np.float32)
                y = rng.integers(0, 12, bs)
                fns = [(lambda: net.train_step(x, y)) if mode == "train" else (lambda: net.predict_proba(x))]
                if twin is not None:
                    tx = torch.from_numpy(x)
                    ty = torch.nn.functional.one_hot(torch.from_numpy(y), 12).float()
                    if mode == "train":
                        def step():
                            twin.train()
                            twin.zero_grad(set_to_none=True)
                            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                                twin(tx), ty, reduction="sum") / bs
                            loss.backward()
                        fns.append(step)
                    else:
                        def infer():
                            twin.eval()
                            with torch.inference_mode():
                                torch.sigmoid(twin(tx))
                        fns.append(infer)
                res = rates(fns, bs, args.seconds, args.repeats)
                ours, theirs = res[0], (res[1] if len(res) > 1 else None)
                t = f"{theirs:9.0f} {ours / theirs:6.2f}" if theirs else f"{'-':>9s} {'-':>6s}"
                print(f"{bn:9s} {mode:7s} {bs:4d} {ours:9.0f} {t}", flush=True)
        x1 = rng.standard_normal((1, 1, 32, 32)).astype(np.float32)
        us = latency_us(lambda: net.predict_proba(x1), args.seconds, args.repeats)
        t_us = ""
        if twin is not None:
            tx1 = torch.from_numpy(x1)
            twin.eval()

            def infer1():
                with torch.inference_mode():
                    torch.sigmoid(twin(tx1))
            t_us = f"  torch {latency_us(infer1, args.seconds, args.repeats):.0f} us"
        print(f"{bn:9s} one image predict_proba: {us:.0f} us{t_us}", flush=True)


if __name__ == "__main__":
    main()
