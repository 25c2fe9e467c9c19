"""cnncli.kernels.reduce: the threaded column-block tree gives distributed.tree_sum's bits for every
shard count, dtype, column segment and thread count, and leaves the columns outside its segments."""

import numba
import numpy as np
import pytest

from cnncli import distributed as D
from cnncli.kernels import reduce as R


def parts_of(s, m, dtype, seed=0):
    """Rows with magnitudes over many decades, so a changed summation order changes float32 bits."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((s, m)) * 10.0 ** rng.integers(-4, 5, (s, m))).astype(dtype)


@pytest.mark.parametrize("s", [1, 2, 3, 5, 8, 9, 16, 17, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_tree_sum_into_is_tree_sum_bitwise(s, dtype, threads):
    m = 2 * R.TASK + 777                          # several tasks and a ragged last block
    parts = parts_of(s, m, dtype, seed=s)
    before = parts.copy()
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = np.full(m, 7.0, dtype)
        assert R.tree_sum_into(parts, out) is out
    finally:
        numba.set_num_threads(old)
    assert out.tobytes() == D.tree_sum(parts).tobytes()
    assert parts.tobytes() == before.tobytes()


def test_tree_sum_into_sums_only_its_segments():
    parts = parts_of(6, 3000, np.float32)
    segments = [(0, 5), (100, 1700), (2999, 3000)]
    out = np.full(3000, -1.0, np.float32)
    R.tree_sum_into(parts, out, segments)
    inside = np.zeros(3000, bool)
    for a, b in segments:
        inside[a:b] = True
    assert out[inside].tobytes() == D.tree_sum(parts)[inside].tobytes()
    assert (out[~inside] == -1.0).all()


def test_tree_sum_into_rejects_bad_arrays():
    with pytest.raises(ValueError, match="parts"):
        R.tree_sum_into(np.zeros((4, 6))[:, ::2], np.zeros(3))
    with pytest.raises(ValueError, match="out"):
        R.tree_sum_into(np.zeros((4, 6)), np.zeros(6, np.float32))


@pytest.mark.parametrize("s", [1, 2, 3, 5, 7, 9, 16, 17, 33])
def test_row_tree_in_any_completion_order_is_tree_sum_bitwise(s):
    parts = parts_of(s, 300, np.float32, seed=s)
    segments = [(0, 40), (60, 300)]
    ref = D.tree_sum(parts)
    rng = np.random.default_rng(s)
    rows = parts.copy()
    tree = R.RowTree(rows, segments)
    for _ in range(3):                          # reset() makes the tree reusable step after step
        rows[...] = parts
        tree.reset()
        for j in rng.permutation(s):
            tree.done(j)
        for a, b in segments:
            assert tree.result()[a:b].tobytes() == ref[a:b].tobytes()
        assert tree.result()[40:60].tobytes() == parts[0, 40:60].tobytes()    # outside: untouched


def test_run_does_every_task_once_and_raises_a_tasks_error():
    from cnncli.kernels.threads import run

    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        hits = np.zeros(200, int)

        def task(j):
            hits[j] += 1
            sum(range(2000))                     # long enough for the worker to take some
        run(task, 200)
        assert (hits == 1).all()
        with pytest.raises(ZeroDivisionError):
            run(lambda j: 1 / (j - 13), 40)
        run(task, 0)
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shards", [1, 2, 3, 5, 6, 7, 8, 11, 16, 17, 33])
@pytest.mark.parametrize("O,I", [(65, 1024), (4, 64), (3, 320)])
def test_fc_grads_tree_is_the_shards_gradients_through_tree_sum_bitwise(dtype, shards, O, I):
    """fcgrad.fc_grads_tree_task (fc1's gradient in the one-call step) sums the shards' fc_grads_into
    values through its stack exactly as tree_sum sums the rows: every shard count (odd nodes
    carried up), a short last shard, an odd O, a partial column group; the order of the tasks
    changes nothing."""
    from cnncli.kernels import fcgrad

    rng = np.random.default_rng(shards * 1000 + O)
    sizes = np.full(shards, 8)
    sizes[-1] = rng.integers(1, 9)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)             # (L+1,)
    B = int(bounds[-1])
    dz = (rng.standard_normal((B, O)) * 10.0 ** rng.integers(-3, 3, (B, O))).astype(dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    rows = np.zeros((shards, O * I + O), dtype)                                     # (L, O*I + O)
    for j in range(shards):
        a, b = bounds[j], bounds[j + 1]
        fcgrad.fc_grads_into(dz[a:b], x[a:b], rows[j, :O * I].reshape(O, I), rows[j, O * I:])
    dw, db = np.full((O, I), np.nan, dtype), np.full(O, np.nan, dtype)
    stk, lev = np.empty((fcgrad.PAIRS * fcgrad.LEVELS, 128), dtype), np.empty(fcgrad.PAIRS * fcgrad.LEVELS, np.int64)
    for task in rng.permutation(fcgrad.fc_grads_tree_tasks(O, I)):
        fcgrad.fc_grads_tree_task(dz, x, bounds, dw, db, task, stk, lev)
    assert np.concatenate([dw.ravel(), db]).tobytes() == D.tree_sum(rows).tobytes()


@pytest.mark.parametrize("s", [1, 2, 3, 5, 9, 16, 17, 33])
@pytest.mark.parametrize("moments", [False, True])
@pytest.mark.parametrize("top", [0, 1, 2, 3, 60])
def test_trees_made_as_rows_finish_are_the_level_by_level_trees_bitwise(s, moments, top):
    """reduce.tree_rows_done (added) and bntree.bn_moments_rows_done (Chan's rule), rows reported
    done in random orders by 1 to 3 threads at once, the climbs stopped at level `top`, then the
    rest of the tree over rows 0, 2^top, .. (tree_cols_step / bn_moments_tree_range with that step,
    in column chunks): the bits of tree_sum / bn_moments_tree_into (odd shard counts carry nodes
    up; a counter array of tree_slots(s)); the two-node tops (S <= 2) take their own loops."""
    from cnncli.kernels import bntree, sync
    from thread_util import run_threads

    rng = np.random.default_rng(s)
    parts = parts_of(s, 2 * 101, np.float64, seed=s)        # 101 statistics: vector blocks and a tail
    counts = np.full(s, 8.0)
    counts[-1] = 5.0 if s % 2 else 8.0       # power-of-two counts merge by exact reciprocals, others divide
    if moments:
        parts[:, 101:] = np.abs(parts[:, 101:])
        want = bntree.bn_moments_tree(parts, counts)
    else:
        want = D.tree_sum(parts)
    for threads in (1, 2, 3):
        rows = parts.copy()
        state = np.zeros(sync.COUNTERS + 1 + R.tree_slots(s), np.int64)
        order = rng.permutation(s).astype(np.int64)
        run_threads(bntree.rows_done_job_into, (state, sync.COUNTERS + 1, rows, counts, moments, order, top),
                    threads)
        step = 1 << min(top, 40)
        for chunk in (40, 101):                            # the chunks of the phase that finishes the tree
            got = np.full(2 * 101, np.nan)
            for d0 in range(0, 101, chunk):
                d1 = min(101, d0 + chunk)
                if moments:
                    bntree.bn_moments_tree_range(rows, counts, got, d0, d1, step)
                elif chunk == 40:
                    R.tree_cols_step(rows, step, got, d0, d1)
                    R.tree_cols_step(rows, step, got, 101 + d0, 101 + d1)
                else:                                      # 128 columns in vectors, then the rest
                    R.tree_cols_step(rows, step, got, 0, 202)
            assert got.tobytes() == want.tobytes(), (threads, order, chunk)
        if (1 << top) >= s:                                # a climb to the root leaves it in row 0
            assert rows[0].tobytes() == want.tobytes(), (threads, order)
