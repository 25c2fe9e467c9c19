"""OpenBLAS thread control for numpy's matmul, through ctypes: find get/set_num_threads once, and
keep OpenBLAS on one thread while a block runs. NumPy only (no numba), so both the numba fast path
(kernels, model, bench) and the NumPy predict path (infer) use it. It does not pick thread counts.
"""

from __future__ import annotations

import contextlib

_API = []   # [(get_num_threads, set_num_threads) of the OpenBLAS numpy loaded, or None]


def threads_api():
    """(get_num_threads, set_num_threads) of the OpenBLAS that numpy loaded (Linux, ctypes), or None."""
    if _API:
        return _API[0]
    import ctypes

    import numpy  # noqa: F401  (OpenBLAS is in the process map once numpy is imported)

    api = None
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                api = (get, put)
                break
        if api:
            break
    _API.append(api)
    return api


@contextlib.contextmanager
def single_thread():
    """OpenBLAS on one thread inside the block (restored after); a no-op where it can't be reached.
    cnncli's GEMMs are small: several threads calling a multi-threaded OpenBLAS, or one beside
    another process on 2 cores, was measured 6-100x slower."""
    api = threads_api()
    old = api[0]() if api else 1
    if old != 1:
        api[1](1)
    try:
        yield
    finally:
        if old != 1:
            api[1](old)
