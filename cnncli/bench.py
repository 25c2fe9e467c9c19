"""`cnn bench`: throughput of the core alone (training step, inference), one-image latency, JIT time.

Measures cnncli.model.Network + cnncli.optim.Optimizer on random in-memory batches; with vs_torch an
identical PyTorch eager twin (same weights, optimizer, threads, float32) runs in the same process,
alternating repeats with ours so machine noise hits both. It is not a data-loading or end-to-end
benchmark (see scripts/bench_data.py, scripts/bench_startup.py, scripts/bench_memory.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import threading
import time

import numpy as np

from cnncli.errors import CnnError
from cnncli.kernels import set_threads

MFLOP_TRAIN = 4.70    # per trained image (forward + backward), see docs/performance.md
MFLOP_INFER = 1.67    # per inferred image (forward)
TORCH_HINT = "pip install torch==2.13.0"
_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                  "OMP_WAIT_POLICY")  # cnncli.kernels defaults OMP_WAIT_POLICY to passive (torch sees it too)


# ----------------------------------------------------------------------------------------------
# environment

@contextlib.contextmanager
def using_threads(threads: int, torch_module=None):
    """set_threads (and torch.set_num_threads) for the duration of a with-block, then restore them."""
    import numba

    blas = _openblas_threads_api()
    old = (numba.get_num_threads(), blas[0]() if blas else None,
           torch_module.get_num_threads() if torch_module is not None else None)
    n = set_threads(threads)
    if torch_module is not None:
        torch_module.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(old[0])
        if blas is not None:
            blas[1](old[1])
        if torch_module is not None:
            torch_module.set_num_threads(old[2])


def _openblas_threads_api():
    """The (get, set) thread-count functions of numpy's OpenBLAS (cnncli.blas)."""
    from cnncli.blas import threads_api

    return threads_api()


def _blas_info() -> str:
    api = _openblas_threads_api()
    threads = f", {api[0]()} thread(s)" if api is not None else ""
    return _blas_name() + threads


def _blas_name() -> str:
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


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_facts(threads: int, torch_module=None) -> dict:
    import numba

    facts = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_slp_vectorize": bool(numba.config.SLP_VECTORIZE),   # on unless the user set it off (cnncli/kernels/__init__.py)
        "torch": getattr(torch_module, "__version__", None),
        "blas": _blas_info(),
        "env": {k: os.environ[k] for k in _OPENBLAS_VARS if k in os.environ},
        "load_average": _load_average(),
    }
    if torch_module is not None:
        facts["torch_threads"] = torch_module.get_num_threads()
    return facts


def _numba_dispatchers():
    """Every numba-compiled function defined at module level in cnncli's compute modules."""
    found = []
    for mod in kernel_modules():
        for obj in vars(mod).values():
            if (hasattr(obj, "stats") and hasattr(obj, "signatures") and hasattr(obj, "py_func")
                    and obj.py_func.__module__ == mod.__name__):
                found.append(obj)
    return found


def kernel_modules():
    """cnncli.kernels' modules, imported: the layers' numba kernels live there."""
    import importlib
    import pkgutil

    from cnncli import kernels

    return [importlib.import_module(f"cnncli.kernels.{m.name}") for m in pkgutil.iter_modules(kernels.__path__)]


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
    if batchnorm != "none" and min(batch_sizes) < 2:
        raise CnnError(f"--batch-sizes: training with batchnorm={batchnorm} needs at least 2 images per batch, "
                       f"got {min(batch_sizes)}")
    torch = _import_torch() if vs_torch else None
    with using_threads(threads, torch) as n_threads:
        result = _measure_all(batchnorm, batch_sizes, n_threads, seconds, repeats, torch, num_classes)
    echo(json.dumps(result, indent=2) if as_json else format_result(result))
    return result


def _measure_all(batchnorm, batch_sizes, n_threads, seconds, repeats, torch, num_classes) -> dict:
    warmup = min(0.5, seconds)
    load_before = _load_average()

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
                     "seconds": seconds, "repeats": repeats, "warmup_seconds": warmup, "vs_torch": torch is not None},
        "jit": jit,
        "rows": rows,
        "latency": latency,
    }
    try:
        import numba

        result["machine"]["numba_threading_layer"] = numba.threading_layer()
    except Exception:  # no parallel kernel has run yet
        result["machine"]["numba_threading_layer"] = None
    result["machine"]["load_average"] = load_before
    result["machine"]["load_average_after"] = _load_average()
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
        + (f", torch {m['torch_threads']}" if m.get("torch_threads") else "") + ")"
        + (f"; load average {m['load_average'][0]:.2f} before, {m['load_average_after'][0]:.2f} after"
           if m.get("load_average") and m.get("load_average_after") else ""),
        f"versions:  python {m['python']}, numpy {m['numpy']}, numba {m['numba']}"
        + (f" (SLP vectorizer {'on' if m.get('numba_slp_vectorize') else 'off'})" if "numba_slp_vectorize" in m else "")
        + (f", torch {m['torch']}" if m["torch"] else ""),
        f"BLAS:      {m['blas']}; OpenBLAS/OMP env as the run saw it: {env}",
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


# ----------------------------------------------------------------------------------------------
# profile: where a training step's time goes

def _kernel_flops(name, args):
    """FLOPs of one call when the arguments have the shapes the conv kernels/matmul use, else None."""
    try:
        if name in ("matmul", "dot"):       # (..., M, K) @ (..., K, P), batch dims broadcast
            a, b = args[0], args[1]
            batch = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])))
            return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        if "conv2d_forward" in name:       # (xp, w, b, z): each output = C*K*K multiply-adds
            return 2 * args[3].size * args[1][0].size
        if "conv2d_backward_dx" in name:   # (dz, w, dxp)
            return 2 * args[0].size * args[1][0].size
        if "conv2d_backward_dw" in name:   # (dz, xp, dw, db)
            return 2 * args[0].size * args[2][0].size
        if name.endswith(("conv16_forward", "conv32_forward")):   # (xp, w, z)
            return 2 * args[2].size * args[1][0].size
        if name.endswith("conv16_backward_dx"):                  # (dz, w, dzp, dx)
            return 2 * args[0].size * args[1][0].size
        if name.endswith("conv16_backward_dw"):                  # (dz, xp, dzt, dwt (C,K,K,F))
            return 2 * args[0].size * args[3][..., 0].size
        if name.endswith("conv32_backward_dw"):                  # (dz, xp, dw, db)
            return 2 * args[0].size * args[2][0].size
        if "infer_features" in name or "infer_serial" in name:   # (x, w1, .., w2, .., [w3, ..])
            fc1 = args[9].size if "infer_serial" in name else 0    # convs: 32x32 and 16x16 outputs
            return 2 * args[0].shape[0] * (args[1].size * 32 * 32 + args[5].size * 16 * 16 + fc1)
    except (AttributeError, IndexError, TypeError):
        pass
    return None


_TIMED_NUMPY = ("matmul", "dot", "einsum", "sum", "add", "multiply", "subtract", "copyto")


class _NumpyProxy:
    """Stands in for `numpy` inside the modules that make a step's NumPy calls, so their
    matmul/sum/... calls can be timed (`a @ b` and array methods bypass it and land in "other")."""

    def __init__(self, wrap):
        self._wrap = wrap

    def __getattr__(self, attr):
        value = getattr(np, attr)
        return self._wrap(attr, value) if attr in _TIMED_NUMPY else value


def profile_step(batchnorm="none", batch_size=128, steps=20, threads=0, mode="train", num_classes=12) -> dict:
    """Time every numba kernel (cnncli.kernels' `*_into`) and numpy matmul/sum/... call of a training step
    (or an inference pass) by wrapping them; the rest of the step is reported as "other".

    Returns {"step_ms", "rows": [{"call", "calls_per_step", "ms_per_step", "share", "gflops"}]}.
    The wrappers cost about a microsecond per call; kernels are first run once unwrapped (JIT).
    With more than one thread, calls made concurrently by worker threads are summed, so the shares
    are of thread time, not wall time ("other" can then come out small or negative): profile at
    threads=1 to see where a step's wall time goes.
    """
    with using_threads(threads) as n_threads:
        return _profile(batchnorm, batch_size, steps, n_threads, mode, num_classes)


def _profile(batchnorm, batch_size, steps, n_threads, mode, num_classes) -> dict:
    from cnncli import model, passes
    from cnncli.kernels import conv16, fc

    ours = Ours(num_classes, batchnorm)
    batches = _batches(batch_size, num_classes)
    fn = ours.train if mode == "train" else (lambda x, y: ours.infer(x))
    _rate(fn, batches, 0.3)  # compile / load from cache, warm up
    acc = {}  # label -> [seconds, calls, flops]
    lock = threading.Lock()

    def wrap(name, f):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = f(*args, **kwargs)
            dt = time.perf_counter() - t0
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            shape = "x".join(str(tuple(a.shape) if name in _TIMED_NUMPY or a.ndim == 1 else tuple(a.shape[1:]))
                             for a in arrays[:2])
            label = f"{name.removesuffix('_into')} {shape}"
            flops = _kernel_flops(name.removesuffix("_into"), args) or 0
            with lock:  # the model's conv worker threads call kernels concurrently
                slot = acc.setdefault(label, [0.0, 0, 0])
                slot[0] += dt
                slot[1] += 1
                slot[2] += flops
            return out
        return timed

    callers = kernel_modules() + [model, passes]        # every module that calls a kernel by name
    originals = {(mod, k): v for mod in callers for k, v in vars(mod).items()
                 if k.endswith("_into") and hasattr(v, "py_func")}
    numpy_users = (model, passes, fc, conv16)             # no numba code of theirs reads `np`
    try:
        for (mod, k), v in originals.items():
            setattr(mod, k, wrap(k, v))
        for mod in numpy_users:
            mod.np = _NumpyProxy(wrap)
        t0 = time.perf_counter()
        for i in range(steps):
            x, y = batches[i % len(batches)]
            fn(x, y)
        total = time.perf_counter() - t0
    finally:
        for (mod, k), v in originals.items():
            setattr(mod, k, v)
        for mod in numpy_users:
            mod.np = np
    rows = []
    for label, (sec, calls, flops) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
        rows.append({"call": label, "calls_per_step": calls / steps, "ms_per_step": sec / steps * 1e3,
                     "share": sec / total, "gflops": (flops / sec / 1e9) if flops else None})
    other = total - sum(v[0] for v in acc.values())
    rows.append({"call": "other (python, numpy glue, optimizer)" if mode == "train" else "other (python, numpy glue)",
                 "calls_per_step": None, "ms_per_step": other / steps * 1e3, "share": other / total, "gflops": None})
    return {"mode": mode, "batchnorm": batchnorm, "batch_size": batch_size, "threads": n_threads,
            "steps": steps, "step_ms": total / steps * 1e3, "rows": rows}


def format_profile(prof: dict) -> str:
    lines = [f"profile: {prof['mode']}, batchnorm={prof['batchnorm']}, batch {prof['batch_size']}, "
             f"{prof['threads']} thread(s), {prof['steps']} steps: {prof['step_ms']:.2f} ms per step "
             f"({prof['batch_size'] / prof['step_ms'] * 1e3:,.0f} img/s with the timing wrappers)",
             f"{'call (argument shapes without N)':58s} {'calls':>5s} {'ms/step':>8s} {'share':>6s} {'GFLOP/s':>8s}"]
    for r in prof["rows"]:
        calls = "" if r["calls_per_step"] is None else f"{r['calls_per_step']:.0f}"
        gf = "" if r["gflops"] is None else f"{r['gflops']:.1f}"
        lines.append(f"{r['call'][:58]:58s} {calls:>5s} {r['ms_per_step']:>8.3f} {r['share']:>6.1%} {gf:>8s}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m cnncli.bench [train|infer] [batchnorm] [batch_size]
    import sys

    argv = sys.argv[1:]
    print(format_profile(profile_step(mode=argv[0] if argv else "train",
                                      batchnorm=argv[1] if len(argv) > 1 else "none",
                                      batch_size=int(argv[2]) if len(argv) > 2 else 128)))
