"""Arrays that start on a 64-byte boundary (a cache line) inside numba kernels: `carve64`. Not an
allocator: it cuts an aligned view out of a plain array a little larger than asked.
"""

# Why: a 16-lane float32 vector is two 32-byte halves on AVX2, and a malloc'ed array starts 16 or 32
# bytes past a cache line, so many of the kernels' vector loads straddle two lines. On the AVX2 VM of
# docs/performance.md the inference kernel ran ~20% slower, and from run to run its speed varied with
# where its scratch happened to land. Alignment changes no arithmetic: the same bits either way.

from __future__ import annotations

from numba import njit

ALIGN = 64     # bytes


@njit(inline="always")
def carve64(buf, at, size):
    # buf (K,) flat, at least ALIGN bytes longer than it is used   ->   its (size,) elements from
    # the first ALIGN-byte boundary plus `at` elements (a multiple of ALIGN // itemsize keeps it there)
    first = ((ALIGN - buf.ctypes.data % ALIGN) % ALIGN) // buf.itemsize
    return buf[first + at:first + at + size]

