"""What a measurement ran on: thread settings for its duration, machine and library facts, JIT cache state.

Used by `cnn bench` (cnncli.bench), the per-kernel profile (cnncli.kernel_profile) and scripts/.
It measures no speed itself and picks no thread counts (cnncli.kernels.set_threads does).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import pkgutil

import numpy as np

from cnncli.cores import cpu_limit
from cnncli.kernels import set_threads

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                 "OMP_WAIT_POLICY")  # cnncli.kernels defaults OMP_WAIT_POLICY to passive (torch sees it too)
COMPUTE_MODULES = ("cnncli.kernels", "cnncli.model", "cnncli.optim")  # where numba functions are defined


@contextlib.contextmanager
def using_threads(threads: int, torch_module=None):
    """set_threads (and torch.set_num_threads) for the duration of a with-block, then restore them."""
    import numba

    blas = openblas_threads_api()
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


def openblas_threads_api():
    """The (get, set) thread-count functions of numpy's OpenBLAS (cnncli.blas), or None."""
    from cnncli.blas import threads_api

    return threads_api()


def _blas_info() -> str:
    api = openblas_threads_api()
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


def load_average():
    """The 1/5/15-minute load averages, rounded, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_facts(threads: int, torch_module=None) -> dict:
    """CPU, core count, library versions, BLAS, the OpenBLAS/OMP environment and the load average."""
    import numba

    facts = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_quota": cpu_limit(),            # CPUs a cgroup quota allows this process (None: no limit)
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_slp_vectorize": bool(numba.config.SLP_VECTORIZE),   # on unless the user set it off (kernels)
        "torch": getattr(torch_module, "__version__", None),
        "blas": _blas_info(),
        "env": {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ},
        "load_average": load_average(),
    }
    if torch_module is not None:
        facts["torch_threads"] = torch_module.get_num_threads()
    return facts


def numba_threading_layer():
    """numba's threading layer in use, or None before the first parallel kernel has run."""
    import numba

    try:
        return numba.threading_layer()
    except Exception:  # no parallel kernel has run yet
        return None


def compute_modules() -> list:
    """The imported modules of COMPUTE_MODULES, and the submodules of any of them that is a package."""
    found = []
    for name in COMPUTE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found.append(mod)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
            found.append(importlib.import_module(f"{name}.{info.name}"))
    return found


def is_dispatcher(obj) -> bool:
    """True for a numba-compiled function (a dispatcher)."""
    return hasattr(obj, "stats") and hasattr(obj, "signatures") and hasattr(obj, "py_func")


def numba_dispatchers() -> list:
    """Every numba-compiled function defined at module level in cnncli's compute modules (each once)."""
    seen = {}
    for mod in compute_modules():
        for obj in vars(mod).values():
            if is_dispatcher(obj):
                seen.setdefault(id(obj), obj)
    return list(seen.values())


def cache_counts(dispatchers) -> tuple[int, int]:
    """(hits, misses) of numba's on-disk cache over these dispatchers, so far in this process."""
    hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    misses = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return hits, misses
