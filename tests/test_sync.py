"""The pieces of kernels/bnstep.py's one-call BN step: sync.py's barrier and counters between
threads (more threads than cores included), an aborted job's waiters returning, threads.run_together
running a job once per thread; the numba fc products against NumPy; the chunked BN statistics
kernels giving the whole-layer kernels' bits."""

import threading

import numba
import numpy as np
import pytest

from cnncli.kernels import bncoef, bnstats, bntree, fc, sync
from cnncli.kernels.threads import run_together

from thread_util import run_threads


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_barrier_and_counters_hand_out_every_item_once_per_round(threads):
    """Each round's items are taken once each, by any thread; after the barrier every thread sees the
    round's writes (count_together_into marks a wrong value -1)."""
    rounds, items = 300, 11
    state = np.zeros(sync.COUNTERS + rounds, np.int64)
    out = np.zeros((rounds, items), np.int64)
    run_threads(sync.count_together_into, (state, threads, rounds, items, out), threads)
    np.testing.assert_array_equal(out, np.arange(1, rounds + 1)[:, None] * np.ones(items, np.int64))
    assert state[sync.GENERATION] == rounds and state[sync.ARRIVED] == 0
    assert (state[sync.COUNTERS:] == items + threads).all()     # each thread's last take finds the round empty


@pytest.mark.parametrize("threads, shards", [(1, 5), (2, 16), (2, 7), (3, 16), (5, 3)])
def test_own_shard_hands_out_every_shard_once_each_phase(threads, shards):
    """own_shard: each phase's shards are taken once each, by one of the job's threads (forward and
    reverse phases alike, shares stolen once a thread's own is done; with more threads than shards
    the empty shares are skipped)."""
    rounds = 40
    bounds = np.arange(shards + 1, dtype=np.int64) * 8
    state = np.zeros(sync.COUNTERS + 1 + rounds * threads, np.int64)
    taken = np.zeros((rounds, 2 * shards), np.int64)
    run_threads(sync.own_shards_into, (state, threads, bounds, rounds, taken), threads)
    assert (taken[:, :shards] == 1).all()                        # each shard once
    takers = taken[:, shards:]
    assert ((takers >= 1) & (takers <= threads)).all()
    if threads == 1:
        assert (takers == 1).all()


def test_an_aborted_job_lets_the_waiting_threads_return():
    """Two of three threads wait at the first barrier for a third that never comes; ABORT set from
    Python lets them return."""
    state = np.zeros(sync.COUNTERS + 4, np.int64)
    out = np.zeros((4, 3), np.int64)
    pool = [threading.Thread(target=sync.count_together_into, args=(state, 3, 4, 3, out)) for _ in range(2)]
    for t in pool:
        t.start()
    pool[0].join(0.2)
    assert all(t.is_alive() for t in pool)          # waiting for the third
    state[sync.ABORT] = 1
    for t in pool:
        t.join(30)
    assert not any(t.is_alive() for t in pool)
    assert state[sync.GENERATION] == 0              # the barrier never opened


def test_run_together_runs_the_job_once_on_each_thread(two_threads):
    t = numba.get_num_threads()
    rounds, items = 50, 7
    state = np.zeros(sync.COUNTERS + rounds, np.int64)
    out = np.zeros((rounds, items), np.int64)
    seen = []
    lock = threading.Lock()

    def job(n):
        with lock:
            seen.append((n, threading.get_ident()))
        sync.count_together_into(state, n, rounds, items, out)

    run_together(job, abort=lambda: state.__setitem__(sync.ABORT, 1))
    assert len(seen) == t and {n for n, _ in seen} == {t} and len({i for _, i in seen}) == t
    assert (out == np.arange(1, rounds + 1)[:, None]).all()


def test_run_together_aborts_the_others_when_one_thread_fails(two_threads):
    """The calling thread's job raises before it reaches the barrier: the worker's wait is aborted,
    and the error reaches the caller (no hang)."""
    if numba.get_num_threads() < 2:
        pytest.skip("needs two numba threads")
    state = np.zeros(sync.COUNTERS + 3, np.int64)
    out = np.zeros((3, 2), np.int64)
    main = threading.get_ident()

    def job(n):
        if threading.get_ident() == main:
            raise RuntimeError("broken before the barrier")
        sync.count_together_into(state, n, 3, 2, out)

    with pytest.raises(RuntimeError, match="broken"):
        run_together(job, abort=lambda: state.__setitem__(sync.ABORT, 1))
    assert state[sync.ABORT] == 1 and state[sync.GENERATION] == 0


# ---- the fc products bnstep runs instead of BLAS ---------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, i", [(1, 1024), (3, 1024), (8, 1024), (7, 40), (5, 16)])
def test_fc_loop_products_match_numpy_and_do_not_depend_on_the_rows_around(dtype, n, i):
    rng = np.random.default_rng(n * 100 + i)
    x, w = rng.standard_normal((n, i)).astype(dtype), rng.standard_normal((65, i)).astype(dtype)
    b, dz = rng.standard_normal(65).astype(dtype), rng.standard_normal((n, 65)).astype(dtype)
    z, dx = np.empty((n, 65), dtype), np.empty((n, i), dtype)
    fc.fc_forward_loop_into(x, w, b, z)
    fc.fc_dx_loop_into(dz, w, dx)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(z, x64 @ w64.T + b, rtol=tol, atol=tol * np.sqrt(i))
    np.testing.assert_allclose(dx, dz.astype(np.float64) @ w64, rtol=tol, atol=tol * 10)
    for r in range(n):            # each row's bits are the same computed alone (any grouping of images)
        z1, dx1 = np.empty((1, 65), dtype), np.empty((1, i), dtype)
        fc.fc_forward_loop_into(x[r:r + 1], w, b, z1)
        fc.fc_dx_loop_into(dz[r:r + 1], w, dx1)
        assert np.array_equal(z1[0], z[r]) and np.array_equal(dx1[0], dx[r]), r


# ---- the statistics in chunks (bnstep) against the whole layer (the per-shard phases) --------------

@pytest.mark.parametrize("d, chunk", [(6144, 512), (65, 16), (70, 512), (37, 5)])
def test_bn_statistics_in_chunks_give_the_whole_layer_bits(d, chunk):
    rng = np.random.default_rng(d)
    S = 5
    z = rng.standard_normal((S, 8, d)) * 3 + 1
    parts = np.stack([bnstats.bn_moments(z[s]) for s in range(S)])               # (S, 2d)
    counts = np.full(S, 8.0)
    gamma, beta = rng.uniform(0.5, 1.5, d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    sums = rng.standard_normal(2 * d)
    whole, chunked = {}, {}
    for name, out in (("whole", whole), ("chunked", chunked)):
        out["moments"] = np.zeros(2 * d)
        out["stats"] = np.zeros((3, d))
        out["rm"], out["rv"] = np.zeros(d, np.float32), np.ones(d, np.float32)
        out["coef"] = np.zeros((6, 2 * d), np.float32)
        keep = np.float32(0.9)
        if name == "whole":
            bntree.bn_moments_tree_into(parts, counts, out["moments"])
            bnstats.bn_stats_into(out["moments"], 40.0, 1e-5, out["stats"], keep, 0.1, 0.1 * 40 / 39,
                                  out["rm"], out["rv"])
            bncoef.bn_coef_forward_into(out["stats"][0], out["stats"][2], gamma, beta, out["coef"])
            bncoef.bn_coef_backward_into(out["stats"][2], gamma, sums, 40.0, out["coef"])
        else:
            for d0 in range(0, d, chunk):
                d1 = min(d, d0 + chunk)
                bntree.bn_moments_tree_range(parts, counts, out["moments"], d0, d1, 1)
                bnstats.bn_stats_range(out["moments"], 40.0, 1e-5, out["stats"], keep, 0.1, 0.1 * 40 / 39,
                                       out["rm"], out["rv"], d0, d1)
                bncoef.bn_coef_forward_range(out["stats"][0], out["stats"][2], gamma, beta, out["coef"], d0, d1)
                bncoef.bn_coef_backward_range(out["stats"][2], gamma, sums, 40.0, out["coef"], d0, d1)
    for key in whole:
        assert np.array_equal(whole[key], chunked[key]), key
    np.testing.assert_allclose(whole["stats"][0], z.reshape(-1, d).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole["stats"][1], z.reshape(-1, d).var(0), rtol=1e-10)
