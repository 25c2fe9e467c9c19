"""`cnn bench`: throughput of the core alone (training step, inference), one-image latency, JIT time.
Not a data-loading or end-to-end benchmark (scripts/bench_data.py, bench_startup.py, ...).
"""

# Measures cnncli.model.Network + cnncli.optim.Optimizer on random in-memory batches; with vs_torch the
# PyTorch twin (cnncli.twin: same weights, optimizer, threads, float32) runs in the same process,
# alternating repeats with ours so machine noise hits both. It is not a data-loading or end-to-end
# benchmark (see scripts/bench_data.py, scripts/bench_startup.py, scripts/bench_memory.py).

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from cnncli.errors import CnnError
from cnncli.machine import (cache_counts, load_average, machine_facts, numba_dispatchers, numba_threading_layer,
                            using_threads)

MFLOP_TRAIN = 4.70    # per trained image (forward + backward), see docs/performance.md, "How to measure"
MFLOP_INFER = 1.67    # per inferred image (forward)
TORCH_HINT = "pip install torch==2.13.0"
BN_SLICE_SECONDS = 0.1   # --compare-bn: the three variants take turns this often within each repeat


class Ours:
    """cnncli.model.Network + cnncli.optim.Optimizer, exactly as the trainer calls them."""

    name = "ours"

    def __init__(self, num_classes, batchnorm, optimizer="adam", lr=1e-3, seed=0, dtype=np.float32):
        from cnncli import model, optim

        self.net = model.Network(num_classes=num_classes, batchnorm=batchnorm, dtype=dtype, seed=seed)
        self.opt = optim.Optimizer(optimizer, self.net.params.flat.size, lr, dtype=dtype)
        self.lr = lr

    def train(self, x, y):
        loss, probs = self.net.train_step(x, y)
        self.opt.step(self.net.params.flat, self.net.grads.flat, self.lr)
        return loss

    def infer(self, x):
        return self.net.predict_proba(x)


class StepOnly:
    """Network.train_step alone (no optimizer): the yardstick of the functional API."""

    name = "train_step"

    def __init__(self, num_classes, batchnorm):
        from cnncli import model

        self.net = model.Network(num_classes=num_classes, batchnorm=batchnorm, seed=0)

    def train(self, x, y):
        return self.net.train_step(x, y)[0]


class Functional:
    """model.loss_and_grads as a user calls it: params (and BN buffers) in, loss and new grads out."""

    name = "loss_and_grads"

    def __init__(self, num_classes, batchnorm):
        from cnncli import model

        self.model, self.batchnorm = model, batchnorm
        self.params = model.init_params(num_classes, batchnorm, seed=0)
        self.buffers = model.init_buffers(num_classes, batchnorm) if batchnorm != "none" else None

    def train(self, x, y):
        return self.model.loss_and_grads(self.params, x, y, self.batchnorm, buffers=self.buffers)[0]


# ----------------------------------------------------------------------------------------------
# timing

def random_batches(batch_size, num_classes, count=4, seed=0, dtype=np.float32):
    """`count` random (x (B,1,32,32), labels (B,)) batches, rotated so the net never sees one batch only."""
    rng = np.random.default_rng(seed + batch_size)
    return [(rng.standard_normal((batch_size, 1, 32, 32)).astype(dtype),
             rng.integers(0, num_classes, batch_size).astype(np.int64)) for _ in range(count)]


def images_per_second(fn, batches, seconds) -> float:
    """Images/s of calling fn(x, y) over the rotating batches for about `seconds` (at least one call)."""
    n_imgs, elapsed = _images_and_seconds(fn, batches, seconds)
    return n_imgs / elapsed


def _images_and_seconds(fn, batches, seconds):
    """(images, seconds) of calling fn(x, y) over the rotating batches for about `seconds` (at least one call)."""
    n_imgs, calls = 0, 0
    t0 = time.perf_counter()
    while True:
        x, y = batches[calls % len(batches)]
        fn(x, y)
        calls += 1
        n_imgs += len(y)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n_imgs, elapsed


def _latencies_us(fn, x, seconds, min_calls=50) -> list:
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def _summary(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def _alternate(impls, make_fn, batches, seconds, repeats, warmup_seconds, slice_seconds=None) -> dict:
    """{impl.name: summary of images/s}: warm-up each, then repeats alternating ours, theirs, ours...
    With slice_seconds, each repeat's `seconds` per implementation is cut into slices of about that
    long, the implementations alternating slice by slice, and a repeat's images/s is its slices'
    images over their time: a burst of load from elsewhere on the machine then falls on all of them."""
    fns = {impl.name: make_fn(impl) for impl in impls}
    for impl in impls:
        images_per_second(fns[impl.name], batches, warmup_seconds)
    slices = max(1, round(seconds / slice_seconds)) if slice_seconds else 1
    runs = {impl.name: [] for impl in impls}
    for _ in range(repeats):
        done = {impl.name: [0, 0.0] for impl in impls}             # images, seconds
        for _ in range(slices):
            for impl in impls:
                n, t = _images_and_seconds(fns[impl.name], batches, seconds / slices)
                done[impl.name][0] += n
                done[impl.name][1] += t
        for name, (n, t) in done.items():
            runs[name].append(n / t)
    return {name: _summary(r) for name, r in runs.items()}


def _first_calls(ours: Ours, num_classes) -> dict:
    """Seconds of the first train_step and predict in this process, and numba's cache hits/misses."""
    dispatchers = numba_dispatchers()
    already = any(d.signatures for d in dispatchers)
    h0, m0 = cache_counts(dispatchers)
    x, y = random_batches(4, num_classes, count=1, seed=123)[0]
    t0 = time.perf_counter()
    ours.net.train_step(x, y)
    t1 = time.perf_counter()
    ours.net.predict_proba(x)
    t2 = time.perf_counter()
    h1, m1 = cache_counts(dispatchers)
    hits, misses = h1 - h0, m1 - m0
    if already:
        cache = "already compiled in this process"
    elif not dispatchers:
        cache = "no numba functions found"
    elif misses == 0 and hits > 0:
        cache = "loaded from numba's on-disk cache"
    elif hits == 0 and misses > 0:
        cache = "compiled (numba cache was empty or stale)"
    else:
        cache = "partly loaded from cache, partly compiled"
    return {"train_step_s": t1 - t0, "predict_s": t2 - t1, "already_compiled": already,
            "cache_hits": hits, "cache_misses": misses, "cache": cache, "numba_functions": len(dispatchers)}


# ----------------------------------------------------------------------------------------------
# the command

def _import_torch():
    try:
        import torch
    except ImportError:
        raise CnnError(f"--vs-torch needs PyTorch, which is not installed: {TORCH_HINT}") from None
    return torch


def run_bench(batchnorm="none", batch_sizes=(32, 64, 128, 256), threads=0, seconds=2.0, repeats=3,
              vs_torch=False, as_json=False, echo=print, num_classes=12, compare_bn=False,
              functional=False) -> dict:
    """Measure, print (a table, or one JSON object) through `echo`, and return the result dict."""
    from cnncli import model

    if batchnorm not in model.BATCHNORM:
        raise CnnError(f"--batchnorm: {batchnorm!r} is not one of {', '.join(model.BATCHNORM)}")
    if (batchnorm != "none" or compare_bn) and min(batch_sizes) < 2:
        what = f"batchnorm={batchnorm}" if batchnorm != "none" else "batch norm (--compare-bn)"
        raise CnnError(f"--batch-sizes: training with {what} needs at least 2 images per batch, "
                       f"got {min(batch_sizes)}")
    torch = _import_torch() if vs_torch else None
    if compare_bn:          # the other variants' kernels, compiled first and said (minutes on an empty cache)
        from cnncli import precompile

        for bn in ("none", "unit", "channel"):
            if bn != batchnorm:      # (this one's first call is measured: the 'first call' line)
                precompile.start(bn, "adam", say=precompile.stderr_line, augment=False).wait()
    with using_threads(threads, torch) as n_threads:
        result = _measure_all(batchnorm, batch_sizes, n_threads, seconds, repeats, torch, num_classes)
        jit = result.get("jit") or {}
        if compare_bn and jit.get("already_compiled"):           # (the format's first-call line says why)
            jit["why"] = "--compare-bn compiled the other variants first, which share its kernels"
        if compare_bn:
            result["bn_vs_none"] = [_measure_bn_row(bs, num_classes, seconds, repeats, min(0.5, seconds))
                                    for bs in batch_sizes]
        if functional:
            result["functional"] = [_measure_functional_row(batchnorm, bs, num_classes, seconds, repeats,
                                                            min(0.5, seconds)) for bs in batch_sizes]
    echo(json.dumps(result, indent=2) if as_json else format_result(result))
    return result


def _measure_all(batchnorm, batch_sizes, n_threads, seconds, repeats, torch, num_classes) -> dict:
    """The result dict of run_bench: machine facts, settings, JIT time, one row per (mode, batch), latency,
    the measured FMA peak (each row's fraction of it)."""
    from cnncli.kernels.peak import fma_peak_gflops
    from cnncli.twin import Torch

    warmup = min(0.5, seconds)
    load_before = load_average()
    ours = Ours(num_classes, batchnorm)
    jit = _first_calls(ours, num_classes)
    impls = [ours] if torch is None else [ours, Torch(ours.net, batchnorm)]
    # the peak: the best of measurements before, between and after the rows (a busy host only
    # lowers a measurement, so the best is the fairest yardstick for every row)
    peaks = [fma_peak_gflops(n_threads, seconds=min(0.15, seconds))]
    rows = [_measure_row(impls, "train", bs, num_classes, seconds, repeats, warmup) for bs in batch_sizes]
    peaks.append(fma_peak_gflops(n_threads, seconds=min(0.15, seconds)))
    rows += [_measure_row(impls, "infer", bs, num_classes, seconds, repeats, warmup) for bs in batch_sizes]
    latency = _measure_latency(impls, num_classes, seconds, repeats)
    peak = max(peaks + [fma_peak_gflops(n_threads, seconds=min(0.15, seconds))])
    for row in rows:
        row["ours_peak_fraction"] = row["ours_gflops"] / peak
    result = {
        "machine": machine_facts(n_threads, torch),
        "settings": {"batchnorm": batchnorm, "num_classes": num_classes, "optimizer": "adam", "dtype": "float32",
                     "seconds": seconds, "repeats": repeats, "warmup_seconds": warmup, "vs_torch": torch is not None},
        "jit": jit,
        "rows": rows,
        "latency": latency,
        "fma_peak_gflops": peak,
    }
    result["machine"]["numba_threading_layer"] = numba_threading_layer()
    result["machine"]["load_average"] = load_before
    result["machine"]["load_average_after"] = load_average()
    return result


def _measure_row(impls, mode, bs, num_classes, seconds, repeats, warmup) -> dict:
    """One table row: images/s of each implementation (alternating), GFLOP/s and ours/torch."""
    batches = random_batches(bs, num_classes)
    if mode == "train":
        res = _alternate(impls, lambda impl: impl.train, batches, seconds, repeats, warmup)
    else:
        res = _alternate(impls, lambda impl: (lambda x, y: impl.infer(x)), batches, seconds, repeats, warmup)
    mflop = MFLOP_TRAIN if mode == "train" else MFLOP_INFER
    row = {"mode": mode, "batch_size": bs, "ours": res["ours"],
           "ours_gflops": res["ours"]["median"] * mflop / 1e3,
           "torch": res.get("torch"), "ratio": None}
    if "torch" in res:
        row["ratio"] = res["ours"]["median"] / res["torch"]["median"]
    return row


def _measure_bn_row(bs, num_classes, seconds, repeats, warmup) -> dict:
    """Training images/s of the three variants at batch bs, alternating none, unit, channel every
    BN_SLICE_SECONDS within each repeat (so the machine's drift and bursts hit all three), and each
    BN variant's fraction of no-BN's."""
    impls = []
    for variant in ("none", "unit", "channel"):
        impl = Ours(num_classes, variant)
        impl.name = variant
        impls.append(impl)
    res = _alternate(impls, lambda impl: impl.train, random_batches(bs, num_classes), seconds, repeats, warmup,
                     slice_seconds=BN_SLICE_SECONDS)
    row = {"batch_size": bs, **res}
    for variant in ("unit", "channel"):
        row[f"{variant}_vs_none"] = res[variant]["median"] / res["none"]["median"]
    return row


def _measure_functional_row(batchnorm, bs, num_classes, seconds, repeats, warmup) -> dict:
    """Images/s of model.loss_and_grads and of Network.train_step (neither with an optimizer) at
    batch bs, alternating every BN_SLICE_SECONDS within each repeat, and their ratio."""
    impls = [StepOnly(num_classes, batchnorm), Functional(num_classes, batchnorm)]
    res = _alternate(impls, lambda impl: impl.train, random_batches(bs, num_classes), seconds, repeats, warmup,
                     slice_seconds=BN_SLICE_SECONDS)
    return {"batch_size": bs, **res,
            "functional_vs_step": res["loss_and_grads"]["median"] / res["train_step"]["median"]}


def _measure_latency(impls, num_classes, seconds, repeats) -> dict:
    """One-image predict latency of each implementation: median, p10, p90 (us), alternating repeats."""
    x1 = random_batches(1, num_classes, count=1, seed=7)[0][0]  # (1,1,32,32)
    lat_seconds = max(0.2, seconds / 2)
    latency = {}
    for impl in impls:
        _latencies_us(impl.infer, x1, min(0.2, lat_seconds), min_calls=20)  # warm-up
    for _ in range(repeats):  # alternate here too
        for impl in impls:
            latency.setdefault(impl.name, []).extend(_latencies_us(impl.infer, x1, lat_seconds / repeats))
    latency = {name: {"median_us": statistics.median(v), "calls": len(v),
                      "p10_us": float(np.percentile(v, 10)), "p90_us": float(np.percentile(v, 90))}
               for name, v in latency.items()}
    if "torch" in latency:
        latency["ratio"] = latency["torch"]["median_us"] / latency["ours"]["median_us"]
    return latency


def _rate_cell(s) -> str:
    if s is None:
        return "-"
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def _aligned(table) -> list:
    """Rows of cells -> text lines: the first column left-aligned, the others right, a rule under the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for i, cells in enumerate(table):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_result(result: dict) -> str:
    """The human-readable report: machine header, JIT line, aligned table, latency line."""
    m, s, jit = result["machine"], result["settings"], result["jit"]
    env = ", ".join(f"{k}={v}" for k, v in m["env"].items()) or "none set"
    lines = [
        f"cnn bench: batchnorm={s['batchnorm']}, {s['num_classes']} classes, {s['optimizer']}, {s['dtype']}; "
        f"{s['repeats']} repeat(s) of {s['seconds']:g}s after {s['warmup_seconds']:g}s warm-up (not counted)",
        f"machine:   {m['cpu']}, {m['cores']} core(s)"
        + (f" (a cgroup CPU quota of {m['cpu_quota']:g})" if m.get("cpu_quota") else "")
        + f"; {m['threads']} thread(s) "
        f"(numba layer {m.get('numba_threading_layer') or '?'}"
        + (f", torch {m['torch_threads']}" if m.get("torch_threads") else "") + ")"
        + (f"; load average {m['load_average'][0]:.2f} before, {m['load_average_after'][0]:.2f} after"
           if m.get("load_average") and m.get("load_average_after") else ""),
        f"versions:  python {m['python']}, numpy {m['numpy']}, numba {m['numba']}"
        + (f" (SLP vectorizer {'on' if m.get('numba_slp_vectorize') else 'off'})" if "numba_slp_vectorize" in m else "")
        + (f", torch {m['torch']}" if m["torch"] else ""),
        f"BLAS:      {m['blas']}; OpenBLAS/OMP env as the run saw it: {env}",
    ]
    if jit["already_compiled"]:
        lines.append(f"first call: not measured ({jit.get('why', 'kernels already compiled in this process')})")
    else:
        lines.append(f"first call: train_step {jit['train_step_s']:.2f}s, predict {jit['predict_s']:.2f}s "
                     f"({jit['cache']}: {jit['cache_hits']} hit(s), {jit['cache_misses']} miss(es))")
    lines.append("")
    has_torch = any(r["torch"] is not None for r in result["rows"])
    header = ["mode", "batch", "ours img/s median (min-max)", "GFLOP/s", "% peak"]
    if has_torch:
        header += ["torch img/s median (min-max)", "ours/torch"]
    table = [header]
    for r in result["rows"]:
        cells = [r["mode"], str(r["batch_size"]), _rate_cell(r["ours"]), f"{r['ours_gflops']:.1f}",
                 f"{100 * r['ours_peak_fraction']:.0f}%"]
        if has_torch:
            cells += [_rate_cell(r["torch"]), f"{r['ratio']:.2f}x"]
        table.append(cells)
    lines += _aligned(table)
    lat = result["latency"]
    o = lat["ours"]
    text = (f"one-image latency: ours {o['median_us']:,.0f} us median (p10 {o['p10_us']:,.0f}, "
            f"p90 {o['p90_us']:,.0f}; {o['calls']} calls)")
    if "torch" in lat:
        t = lat["torch"]
        text += f"; torch {t['median_us']:,.0f} us median ({t['calls']} calls); torch/ours {lat['ratio']:.2f}x"
    if result.get("bn_vs_none"):
        lines += ["", f"training with BN vs without, the three variants alternating every {BN_SLICE_SECONDS} s "
                  "in each repeat:"]
        bn_table = [["batch", "none img/s", "unit img/s", "unit/none", "channel img/s", "channel/none"]]
        for r in result["bn_vs_none"]:
            bn_table.append([str(r["batch_size"]), _rate_cell(r["none"]), _rate_cell(r["unit"]),
                             f"{r['unit_vs_none']:.2f}", _rate_cell(r["channel"]), f"{r['channel_vs_none']:.2f}"])
        lines += _aligned(bn_table)
    if result.get("functional"):
        lines += ["", f"the functional API vs the Network it wraps (batchnorm={s['batchnorm']}, no optimizer), "
                  f"alternating every {BN_SLICE_SECONDS} s in each repeat:"]
        f_table = [["batch", "train_step img/s", "loss_and_grads img/s", "loss_and_grads/train_step"]]
        for r in result["functional"]:
            f_table.append([str(r["batch_size"]), _rate_cell(r["train_step"]), _rate_cell(r["loss_and_grads"]),
                            f"{r['functional_vs_step']:.2f}"])
        lines += _aligned(f_table)
    lines += ["", text,
              f"GFLOP/s counts {MFLOP_TRAIN} MFLOP per trained and {MFLOP_INFER} MFLOP per inferred image; "
              f"% peak is of {result['fma_peak_gflops']:,.0f} GFLOP/s, this machine's float32 FMA peak on "
              f"{m['threads']} thread(s): the best of measurements before, between and after the rows "
              f"of this run (kernels/peak.py)."]
    return "\n".join(lines)
