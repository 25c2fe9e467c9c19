"""A helper for the tests of kernels that many threads run at once (numba jobs with atomics).

Not a test module (no test_ prefix); imported by test_sync.py and test_reduce.py.
"""

from __future__ import annotations

import threading


def run_threads(target, args, n):
    """target(*args) on n Python threads at once; fails if one is still running after 120 s."""
    pool = [threading.Thread(target=target, args=args) for _ in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not any(t.is_alive() for t in pool)
