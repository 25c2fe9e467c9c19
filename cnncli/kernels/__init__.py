"""The network's numba kernels, one module per layer kind, plus their support (simd, simdlanes, threads,
reduce, sync, lookup, peak). It is not the network (model.py composes these) and has no training loop.
Below: the module list, the shape legend every kernel module uses, the rules they keep, and the
compiler settings made here before numba is first imported.
"""

# Modules: one per layer kind (conv, conv32, conv16, pool, activation, batchnorm, bnstats, bntree,
# bnpool (+ bnunits, bnblock, bncoef), head, fc (+ fcgrad), loss, inference, adam), a BN step's conv
# tasks as single calls (segments), whole training steps in one call per thread (plainstep, bnstep),
# a step's input (lookup; augment_draw and augment_pixels: augmentation) and its tally (tally), plus
# their support: simd and simdlanes (16-lane vectors), aligned (64-byte views), threads, sync, reduce,
# checks, cachestamp (the kernels' cache stamp), peak (the machine's measured FMA peak, for `cnn bench`).
#
# Shape legend (every module; a module's own legend adds the letters only it uses):
#   N images (of a batch, a shard or a block), C input maps (classes in head, loss and tally), F output
#   maps (filters), H, W map height and width, S = H*W positions of a map, K filter side (5), D units of
#   a flat layer or statistics of a BN layer, I / O an fc layer's inputs / outputs, B images of the
#   whole batch, L shards. Read in their module: P is conv.py's padding (K // 2) and a parameter count
#   elsewhere; M is stored images (lookup, augmentation), values per BN statistic (batchnorm, bnpool)
#   or columns (reduce); S counts rows in reduce and bntree.
#
# Rules kept in every module:
#   * Numba kernels (`*_into`) only loop: they write into the arrays the caller passes and never
#     allocate their outputs or check anything. The checked wrappers beside them (`conv16_forward`,
#     `bn_unit_forward`...) check shapes/dtypes (ValueError naming the argument and its shape) and
#     allocate the outputs the caller did not pass in; model.py calls the kernels on its workspaces.
#   * Kernels have no signatures: the same code compiles for float32 and float64.
#   * The network's kernels run on one thread each (`nogil`): threads.run (and run_phases, a BN
#     step's phases as one job) hands a step's 8-image shards, and inference's and augmentation's
#     blocks of images, to the worker threads; each task
#     writes only its own slice and shards meet in a fixed tree, so results are bitwise reproducible
#     run to run and for any thread count. (`prange` stays only in reference layers outside the
#     network's path, conv.py's generic conv2d: a parallel loop costs seconds of first-run compile.)
#   * No fastmath: the gradients are checked against finite differences. The direct convolutions
#     use explicit fused multiply-adds (simd.vfma, llvm.fma: rounded once, the same bits on every
#     CPU), not fastmath contraction.
#
# Numba's on-disk cache stamps each kernel with every numba source file of the package, not only its
# own (cachestamp.py): editing or upgrading any kernel file recompiles the kernels that inline it.
#
# Compiler settings, made here before numba is first imported (unless the user set them):
#   * OMP_WAIT_POLICY=passive: numba's OpenMP layer otherwise busy-waits between parallel loops,
#     and with OpenBLAS's own busy-waiting threads, or any other load, a training step became
#     5-25x slower (scripts/bench_core.py; threads.py keeps OpenBLAS on one thread meanwhile).
#   * NUMBA_NUM_THREADS, the most threads numba runs (and so train.threads 0's count), is the
#     cores this process may use when a cgroup CPU quota allows fewer than its CPU affinity
#     (cnncli.cores: Docker's --cpus, a Kubernetes limit): numba would otherwise start one thread
#     per CPU of the host, whose spinning barriers stall each time the quota runs out.
#   * NUMBA_SLP_VECTORIZE=1: LLVM's SLP vectorizer (numba turned it off by default in 0.57 after
#     miscompilations, numba PR #8852) made the pooling backward 2.9x and the one-image fc1 3x
#     faster (docs/performance.md). Without fastmath it cannot change a float result (no
#     reassociation); tests/test_slp.py checks bitwise that it does not, against a build without it.
#   * NUMBA_DISABLE_JIT set by the user is refused with one line (a CnnError on import): the
#     kernels use numba intrinsics (atomics, SIMD vectors) that have no pure-Python form. So is a
#     NUMBA_NUM_THREADS that is not a whole number >= 1 (numba's import fails, or warns, on it).

import os

from ..cores import affinity_cores, usable_cores

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")
if "NUMBA_NUM_THREADS" not in os.environ and (_usable := usable_cores()) < affinity_cores():
    os.environ["NUMBA_NUM_THREADS"] = str(_usable)

from ..errors import CnnError  # noqa: E402

_GIVEN_THREADS = os.environ.get("NUMBA_NUM_THREADS", "").strip()
if _GIVEN_THREADS and not (_GIVEN_THREADS.isdigit() and int(_GIVEN_THREADS) >= 1):   # (numba: a traceback)
    raise CnnError(f"NUMBA_NUM_THREADS={_GIVEN_THREADS}: not a number of threads (a whole number, 1 or more): give "
                   "one, or unset it to use every core")

from . import cachestamp  # noqa: E402  (numba imported only now, after the settings above)
from numba.core import config as _numba_config  # noqa: E402

if _numba_config.DISABLE_JIT:  # (the kernels' intrinsics cannot run as Python: a traceback mid-step)
    raise CnnError(f"NUMBA_DISABLE_JIT={os.environ.get('NUMBA_DISABLE_JIT', '')} is set: cnn's kernels run only "
                   "compiled (they use numba intrinsics that have no Python form): unset it")

cachestamp.install()          # before any kernel is defined: their caches' stamps cover every numba file

from .lookup import lookup_batch  # noqa: E402,F401  (the trainer's two entry points)
from .threads import set_threads  # noqa: E402,F401
