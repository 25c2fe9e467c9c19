"""Bitwise the same training step, gradients, BN statistics and predictions at 1, 2 and 3 numba
threads, in a child process started with NUMBA_NUM_THREADS=3: it compares several thread counts even
on a one-core runner (where the in-process test of test_model.py can only try one)."""

import json
import os
import subprocess
import sys

CHILD = r"""
import hashlib, json, numba, numpy as np
from cnncli import model as M
assert numba.config.NUMBA_NUM_THREADS == 3, numba.config.NUMBA_NUM_THREADS
rng = np.random.default_rng(5)
x = rng.standard_normal((40, 1, 32, 32)).astype(np.float32); y = rng.integers(0, 12, 40)
out = {}
for bn in M.BATCHNORM:
    for t in (1, 2, 3):
        numba.set_num_threads(t)
        net = M.Network(12, bn, seed=0)
        loss, probs = net.train_step(x, y)
        h = hashlib.sha256()
        for a in (np.float64(loss), probs, net.grads.flat, net.buffers.flat, net.predict_proba(x)):
            h.update(np.ascontiguousarray(a).tobytes())
        out[f"{bn}/{t}"] = h.hexdigest()
print(json.dumps(out))
"""


def test_three_thread_counts_give_the_same_bits():
    env = dict(os.environ, NUMBA_NUM_THREADS="3")
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    digests = json.loads(res.stdout.strip().splitlines()[-1])
    for bn in ("none", "unit", "channel"):
        got = {t: digests[f"{bn}/{t}"] for t in (1, 2, 3)}
        assert len(set(got.values())) == 1, (bn, got)
