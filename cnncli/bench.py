"""`cnn bench`: throughput of the core alone (training step, inference), one-image latency, JIT time.

Measures cnncli.model.Network + cnncli.optim.Optimizer on random in-memory batches; with vs_torch an
identical PyTorch eager twin (same weights, optimizer, threads, float32) runs in the same process,
alternating repeats with ours so machine noise hits both. It is not a data-loading or end-to-end
benchmark (see scripts/bench_data.py, scripts/bench_startup.py, scripts/bench_memory.py).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import numpy as np

from cnncli.errors import CnnError

MFLOP_TRAIN = 4.70    # per trained image (forward + backward), see docs/performance.md
MFLOP_INFER = 1.67    # per inferred image (forward)
TORCH_HINT = "pip install torch==2.13.0"
_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


# ----------------------------------------------------------------------------------------------
# environment

def set_threads(threads: int) -> int:
    """Numba (and, when imported, torch) thread count; 0 means all the threads numba may use."""
    import numba

    n = min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        libs = [f"{d.get('internal_api')} {d.get('version')} ({d.get('num_threads')} threads)"
                for d in threadpool_info() if d.get("user_api") == "blas"]
        if libs:
            return ", ".join(libs)
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # numpy < 1.26 has no mode="dicts"
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(threads: int, torch_module=None) -> dict:
    import numba

    facts = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": getattr(torch_module, "__version__", None),
        "blas": _blas_info(),
        "env": {k: os.environ[k] for k in _OPENBLAS_VARS if k in os.environ},
    }
    if torch_module is not None:
        facts["torch_threads"] = torch_module.get_num_threads()
    return facts


def _numba_dispatchers():
    """Every numba-compiled function defined at module level in cnncli's compute modules."""
    import importlib

    found = []
    for name in ("cnncli.kernels", "cnncli.model", "cnncli.optim"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for obj in vars(mod).values():
            if hasattr(obj, "stats") and hasattr(obj, "signatures") and hasattr(obj, "py_func"):
                found.append(obj)
    return found


def _cache_counts(dispatchers) -> tuple[int, int]:
    hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    misses = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return hits, misses


# ----------------------------------------------------------------------------------------------
# the two implementations behind one interface: train(x, y), infer(x)

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


class Torch:
    """The PyTorch eager twin of Ours (see build_torch_twin), on the same data layout."""

    name = "torch"

    def __init__(self, ours: Ours, batchnorm, optimizer="adam", lr=1e-3):
        import torch

        self.torch = torch
        net = ours.net
        self.model = build_torch_twin(net.params, net.buffers, batchnorm, eps=net.eps, momentum=net.momentum,
                                      dtype=net.dtype)
        if optimizer != "adam":
            raise ValueError(f"optimizer: the torch twin only mirrors 'adam', got {optimizer!r}")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)

    def train(self, x, y):
        xt, yt = self.torch.from_numpy(x), self.torch.from_numpy(y)  # zero-copy views
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss, _ = torch_loss(self.model, xt, yt)
        loss.backward()
        self.opt.step()
        return loss.item()

    def infer(self, x):
        xt = self.torch.from_numpy(x)
        self.model.eval()
        with self.torch.inference_mode():
            return self.torch.sigmoid(self.model(xt))


def torch_loss(model, x, y):
    """(loss, probs): mean over the batch of the sum over classes of BCE(sigmoid(z), onehot) -- our loss."""
    import torch
    import torch.nn.functional as F

    z = model(x)                                                   # (N,C)
    onehot = F.one_hot(y.long(), z.shape[1]).to(z.dtype)           # (N,C)
    loss = F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / z.shape[0]
    return loss, torch.sigmoid(z.detach())


def build_torch_twin(params, buffers, batchnorm, eps=1e-5, momentum=0.1, dtype=np.float32):
    """A torch.nn.Module computing what cnncli.model computes, initialised with `params`/`buffers`.

    conv 5x5x6 pad 2 [BN] ELU maxpool 2, conv 5x5x16 pad 2 [BN] ELU maxpool 2, flatten,
    fc 1024->65 [BN] ELU, fc 65->C. BN "channel" = BatchNorm2d/1d; "unit" = one mean/var per
    unit (C,H,W) over the batch dimension only, written below.
    """
    import torch
    from torch import nn

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]

    class UnitBatchNorm(nn.Module):
        """Per-unit BN: statistics over dim 0 only; biased variance to normalise, unbiased for running_var."""

        def __init__(self, shape):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(shape))
            self.bias = nn.Parameter(torch.zeros(shape))
            self.register_buffer("running_mean", torch.zeros(shape))
            self.register_buffer("running_var", torch.ones(shape))

        def forward(self, x):
            if self.training:
                mean = x.mean(0)
                var = x.var(0, unbiased=False)
                with torch.no_grad():
                    n = x.shape[0]
                    self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                    self.running_var.mul_(1 - momentum).add_(var.detach() * (n / max(n - 1, 1)), alpha=momentum)
            else:
                mean, var = self.running_mean, self.running_var
            return (x - mean) / torch.sqrt(var + eps) * self.weight + self.bias

    def bn(kind, channels, unit_shape):
        if batchnorm == "none":
            return nn.Identity()
        if batchnorm == "unit":
            return UnitBatchNorm(unit_shape)
        return (nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d)(channels, eps=eps, momentum=momentum)

    num_classes = params["fc2.w"].shape[0]

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.bn1 = bn("2d", 6, (6, 32, 32))
            self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
            self.bn2 = bn("2d", 16, (16, 16, 16))
            self.fc1 = nn.Linear(1024, 65)
            self.bn3 = bn("1d", 65, (65,))
            self.fc2 = nn.Linear(65, num_classes)

        def forward(self, x):                                          # (N,1,32,32)
            x = torch.nn.functional.max_pool2d(torch.nn.functional.elu(self.bn1(self.conv1(x))), 2)  # (N,6,16,16)
            x = torch.nn.functional.max_pool2d(torch.nn.functional.elu(self.bn2(self.conv2(x))), 2)  # (N,16,8,8)
            x = torch.nn.functional.elu(self.bn3(self.fc1(x.flatten(1))))                           # (N,65)
            return self.fc2(x)                                                                       # (N,C)

    twin = Twin().to(tdtype)
    names = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
             "running_mean": "running_mean", "running_var": "running_var"}
    state = {}
    for source in (params, buffers or {}):
        for key, value in source.items():
            layer, field = key.split(".", 1)
            state[f"{layer}.{names[field]}"] = torch.from_numpy(np.array(value, dtype=dtype))
    missing, unexpected = twin.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"params: torch twin does not match the parameter layout (missing {missing}, "
                         f"unexpected {unexpected})")
    return twin


# ----------------------------------------------------------------------------------------------
# timing

def _batches(batch_size, num_classes, count=4, seed=0, dtype=np.float32):
    """`count` random (x (B,1,32,32), labels (B,)) batches, rotated so the net never sees one batch only."""
    rng = np.random.default_rng(seed + batch_size)
    return [(rng.standard_normal((batch_size, 1, 32, 32)).astype(dtype),
             rng.integers(0, num_classes, batch_size).astype(np.int64)) for _ in range(count)]


def _rate(fn, batches, seconds) -> float:
    """Images/s of calling fn(x, y) over the rotating batches for about `seconds` (at least one call)."""
    n_imgs, calls = 0, 0
    t0 = time.perf_counter()
    while True:
        x, y = batches[calls % len(batches)]
        fn(x, y)
        calls += 1
        n_imgs += len(y)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n_imgs / elapsed


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


def _alternate(impls, make_fn, batches, seconds, repeats, warmup_seconds) -> dict:
    """{impl.name: summary of images/s}: warm-up each, then repeats alternating ours, theirs, ours..."""
    fns = {impl.name: make_fn(impl) for impl in impls}
    for impl in impls:
        _rate(fns[impl.name], batches, warmup_seconds)
    runs = {impl.name: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            runs[impl.name].append(_rate(fns[impl.name], batches, seconds))
    return {name: _summary(r) for name, r in runs.items()}


def _first_calls(ours: Ours, num_classes) -> dict:
    """Seconds of the first train_step and predict in this process, and numba's cache hits/misses."""
    dispatchers = _numba_dispatchers()
    already = any(d.signatures for d in dispatchers)
    h0, m0 = _cache_counts(dispatchers)
    x, y = _batches(4, num_classes, count=1, seed=123)[0]
    t0 = time.perf_counter()
    ours.net.train_step(x, y)
    t1 = time.perf_counter()
    ours.net.predict_proba(x)
    t2 = time.perf_counter()
    h1, m1 = _cache_counts(dispatchers)
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
              vs_torch=False, as_json=False, echo=print, num_classes=12) -> dict:
    """Measure, print (a table, or one JSON object) through `echo`, and return the result dict."""
    from cnncli import model

    if batchnorm not in model.BATCHNORM:
        raise CnnError(f"--batchnorm: {batchnorm!r} is not one of {', '.join(model.BATCHNORM)}")
    torch = _import_torch() if vs_torch else None
    n_threads = set_threads(threads)
    if torch is not None:
        torch.set_num_threads(n_threads)
    warmup = min(0.5, seconds)

    ours = Ours(num_classes, batchnorm)
    jit = _first_calls(ours, num_classes)
    impls = [ours]
    if torch is not None:
        impls.append(Torch(ours, batchnorm))

    rows = []
    modes = [("train", bs) for bs in batch_sizes] + [("infer", bs) for bs in batch_sizes]
    for mode, bs in modes:
        batches = _batches(bs, num_classes)
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
        rows.append(row)

    x1 = _batches(1, num_classes, count=1, seed=7)[0][0]  # (1,1,32,32)
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

    result = {
        "machine": machine_facts(n_threads, torch),
        "settings": {"batchnorm": batchnorm, "num_classes": num_classes, "optimizer": "adam", "dtype": "float32",
                     "seconds": seconds, "repeats": repeats, "warmup_seconds": warmup, "vs_torch": bool(vs_torch)},
        "jit": jit,
        "rows": rows,
        "latency": latency,
    }
    try:
        import numba

        result["machine"]["numba_threading_layer"] = numba.threading_layer()
    except Exception:  # no parallel kernel has run yet
        result["machine"]["numba_threading_layer"] = None
    echo(json.dumps(result, indent=2) if as_json else format_result(result))
    return result


def _rate_cell(s) -> str:
    if s is None:
        return "-"
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def format_result(result: dict) -> str:
    """The human-readable report: machine header, JIT line, aligned table, latency line."""
    m, s, jit = result["machine"], result["settings"], result["jit"]
    env = ", ".join(f"{k}={v}" for k, v in m["env"].items()) or "none set"
    lines = [
        f"cnn bench: batchnorm={s['batchnorm']}, {s['num_classes']} classes, {s['optimizer']}, {s['dtype']}; "
        f"{s['repeats']} repeat(s) of {s['seconds']:g}s after {s['warmup_seconds']:g}s warm-up (not counted)",
        f"machine:   {m['cpu']}, {m['cores']} core(s); {m['threads']} thread(s) "
        f"(numba layer {m.get('numba_threading_layer') or '?'}"
        + (f", torch {m['torch_threads']}" if m.get("torch_threads") else "") + ")",
        f"versions:  python {m['python']}, numpy {m['numpy']}, numba {m['numba']}"
        + (f", torch {m['torch']}" if m["torch"] else ""),
        f"BLAS:      {m['blas']}; OpenBLAS/OMP env: {env}",
    ]
    if jit["already_compiled"]:
        lines.append("first call: not measured (kernels already compiled in this process)")
    else:
        lines.append(f"first call: train_step {jit['train_step_s']:.2f}s, predict {jit['predict_s']:.2f}s "
                     f"({jit['cache']}: {jit['cache_hits']} hit(s), {jit['cache_misses']} miss(es))")
    lines.append("")
    has_torch = any(r["torch"] is not None for r in result["rows"])
    header = ["mode", "batch", "ours img/s median (min-max)", "GFLOP/s"]
    if has_torch:
        header += ["torch img/s median (min-max)", "ours/torch"]
    table = [header]
    for r in result["rows"]:
        cells = [r["mode"], str(r["batch_size"]), _rate_cell(r["ours"]), f"{r['ours_gflops']:.1f}"]
        if has_torch:
            cells += [_rate_cell(r["torch"]), f"{r['ratio']:.2f}x"]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, cells in enumerate(table):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lat = result["latency"]
    o = lat["ours"]
    text = (f"one-image latency: ours {o['median_us']:,.0f} us median (p10 {o['p10_us']:,.0f}, "
            f"p90 {o['p90_us']:,.0f}; {o['calls']} calls)")
    if "torch" in lat:
        t = lat["torch"]
        text += f"; torch {t['median_us']:,.0f} us median ({t['calls']} calls); torch/ours {lat['ratio']:.2f}x"
    lines += ["", text,
              f"GFLOP/s counts {MFLOP_TRAIN} MFLOP per trained and {MFLOP_INFER} MFLOP per inferred image."]
    return "\n".join(lines)
