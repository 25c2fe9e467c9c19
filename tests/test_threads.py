"""Bitwise the same training step (loss, probabilities, gradients, BN running statistics) and
predictions at 1, 2, 3 and 8 numba threads, for batch sizes that are and are not multiples of the
8-image micro-shard, in a child process started with NUMBA_NUM_THREADS=8: it compares several
thread counts, more than the cores, even on a one- or two-core runner."""

import json
import os
import subprocess
import sys

THREADS = (1, 2, 3, 8)
SIZES = (5, 13, 64, 67)

CHILD = r"""
import hashlib, json, numba, numpy as np
from cnncli import model as M
assert numba.config.NUMBA_NUM_THREADS == 8, numba.config.NUMBA_NUM_THREADS
rng = np.random.default_rng(5)
out = {}
for n in %(sizes)r:
    x = rng.standard_normal((n, 1, 32, 32)).astype(np.float32); y = rng.integers(0, 12, n)
    w = rng.uniform(0.2, 3.0, n)
    for bn in M.BATCHNORM:
        for t in %(threads)r:
            numba.set_num_threads(t)
            net = M.Network(12, bn, seed=0)
            h = hashlib.sha256()
            for step in range(2):          # the second step reuses the plan's buffers
                loss, probs = net.train_step(x, y, w if step else None)
                for a in (np.float64(loss), probs, net.grads.flat, net.buffers.flat):
                    h.update(np.ascontiguousarray(a).tobytes())
            h.update(net.predict_proba(x).tobytes())
            out[f"{bn}/{n}/{t}"] = h.hexdigest()
print(json.dumps(out))
""" % {"sizes": SIZES, "threads": THREADS}


def test_thread_counts_give_the_same_bits():
    env = dict(os.environ, NUMBA_NUM_THREADS="8")
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    digests = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(digests) == 3 * len(SIZES) * len(THREADS)
    for bn in ("none", "unit", "channel"):
        for n in SIZES:
            got = {t: digests[f"{bn}/{n}/{t}"] for t in THREADS}
            assert len(set(got.values())) == 1, (bn, n, got)
