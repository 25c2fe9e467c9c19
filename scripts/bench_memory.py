"""Peak memory (ru_maxrss) of a training run at batch 128: cnncli's core vs a PyTorch eager twin.

Each measurement runs in a fresh subprocess: the same in-memory uint8 dataset (random, 12 classes),
the same per-batch uint8 -> float32 conversion, `--steps` Adam steps at batch 128, then the peak RSS
of that process. Imports-only processes give the baseline each side starts from. Target: ours <=
torch. Prints numbers and ratios; asserts nothing.

    .venv/bin/python scripts/bench_memory.py [--steps 60] [--images 7200] [--batchnorm none]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys

COMMON = r"""
import json, resource, sys, time
import numpy as np
args = json.loads(sys.argv[1])
def peak_mb():
    # VmHWM: peak RSS of this process image; ru_maxrss (KiB on Linux) also counts the parent's RSS at fork
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
"""

IMPORTS_OURS = COMMON + r"""
import numba, cnncli.model, cnncli.optim
print(json.dumps({"peak_mb": peak_mb(), "maxrss_mb": maxrss_mb()}))
"""

IMPORTS_TORCH = COMMON + r"""
import torch
print(json.dumps({"peak_mb": peak_mb(), "maxrss_mb": maxrss_mb()}))
"""

TRAIN_OURS = COMMON + r"""
from cnncli import model, optim
from cnncli.kernels import set_threads
set_threads(args["threads"])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (args["images"], 32, 32), dtype=np.uint8)     # (N,32,32)
labels = rng.integers(0, 12, args["images"]).astype(np.int64)              # (N,)
table = ((np.arange(256) / 255.0 - 0.5) / 0.25).astype(np.float32)         # (256,) uint8 -> input
net = model.Network(num_classes=12, batchnorm=args["batchnorm"], seed=0)
opt = optim.Optimizer("adam", net.params.flat.size, 1e-3)
before = peak_mb()
bs = args["batch_size"]
t0 = time.perf_counter()
for step in range(args["steps"]):
    idx = rng.integers(0, args["images"], bs)
    x = table[images[idx]][:, None]                                        # (B,1,32,32)
    loss, probs = net.train_step(x, labels[idx])
    opt.step(net.params.flat, net.grads.flat, 1e-3)
    if step == 0:
        first = peak_mb()
print(json.dumps({"peak_mb": peak_mb(), "maxrss_mb": maxrss_mb(), "before_loop_mb": before, "after_step1_mb": first, "loss": loss,
                  "seconds": time.perf_counter() - t0}))
"""

TRAIN_TORCH = COMMON + r"""
import torch
from cnncli.twin import build_torch_twin, torch_loss    # cnncli.twin imports no numba
torch.set_num_threads(args["threads"] or len(__import__("os").sched_getaffinity(0)))
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (args["images"], 32, 32), dtype=np.uint8)
labels = rng.integers(0, 12, args["images"]).astype(np.int64)
table = ((np.arange(256) / 255.0 - 0.5) / 0.25).astype(np.float32)
shapes = {"conv1.w": (6, 1, 5, 5), "conv1.b": (6,), "conv2.w": (16, 6, 5, 5), "conv2.b": (16,),
          "fc1.w": (65, 1024), "fc1.b": (65,), "fc2.w": (12, 65), "fc2.b": (12,)}
bn = {"unit": [(6, 32, 32), (16, 16, 16), (65,)], "channel": [(6,), (16,), (65,)]}.get(args["batchnorm"], [])
params = {k: rng.uniform(-0.1, 0.1, s).astype(np.float32) for k, s in shapes.items()}
buffers = {}
for i, s in enumerate(bn, 1):
    params[f"bn{i}.gamma"], params[f"bn{i}.beta"] = np.ones(s, np.float32), np.zeros(s, np.float32)
    buffers[f"bn{i}.running_mean"], buffers[f"bn{i}.running_var"] = np.zeros(s, np.float32), np.ones(s, np.float32)
twin = build_torch_twin(params, buffers, args["batchnorm"])
opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
twin.train()
before = peak_mb()
bs = args["batch_size"]
t0 = time.perf_counter()
for step in range(args["steps"]):
    idx = rng.integers(0, args["images"], bs)
    x = torch.from_numpy(table[images[idx]][:, None])
    opt.zero_grad(set_to_none=True)
    loss, probs = torch_loss(twin, x, torch.from_numpy(labels[idx]))
    loss.backward()
    opt.step()
    if step == 0:
        first = peak_mb()
print(json.dumps({"peak_mb": peak_mb(), "maxrss_mb": maxrss_mb(), "before_loop_mb": before, "after_step1_mb": first, "loss": loss.item(),
                  "seconds": time.perf_counter() - t0}))
"""


def measure(code: str, args: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"measurement process failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--images", type=int, default=7200, help="size of the in-memory uint8 dataset")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batchnorm", default="none", choices=("none", "unit", "channel"))
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    args = ap.parse_args()
    if importlib.util.find_spec("torch") is None:  # not imported here: it would inflate the children's ru_maxrss
        sys.exit("bench_memory.py compares with PyTorch, which is not installed: pip install torch==2.13.0")

    opts = {"steps": args.steps, "images": args.images, "batch_size": args.batch_size,
            "batchnorm": args.batchnorm, "threads": args.threads}
    base_ours, base_torch = measure(IMPORTS_OURS, opts), measure(IMPORTS_TORCH, opts)
    ours, theirs = measure(TRAIN_OURS, opts), measure(TRAIN_TORCH, opts)

    print(f"peak RSS, fresh process each; batch {args.batch_size}, {args.steps} Adam steps, "
          f"{args.images} uint8 images in memory, batchnorm={args.batchnorm}")
    print(f"{'':28s} {'imports only':>12s} {'before loop':>12s} {'after step 1':>12s} {'peak':>10s} {'ru_maxrss':>10s} {'loop s':>8s}")
    for name, base, run in (("ours (numpy+numba)", base_ours, ours), ("torch eager twin", base_torch, theirs)):
        print(f"{name:28s} {base['peak_mb']:>9.1f} MB {run['before_loop_mb']:>9.1f} MB {run['after_step1_mb']:>9.1f} MB {run['peak_mb']:>7.1f} MB "
              f"{run['maxrss_mb']:>7.1f} MB {run['seconds']:>8.2f}")
    print("(peak = VmHWM of the child; ru_maxrss also includes this parent's RSS at fork, "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB)")
    ratio = ours["peak_mb"] / theirs["peak_mb"]
    growth_ours = ours["peak_mb"] - ours["before_loop_mb"]
    growth_torch = theirs["peak_mb"] - theirs["before_loop_mb"]
    print(f"ours / torch peak: {ratio:.2f} (target <= 1: {'met' if ratio <= 1 else 'MISSED'}); "
          f"growth during the loop: ours {growth_ours:.1f} MB, torch {growth_torch:.1f} MB")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}")


if __name__ == "__main__":
    main()
