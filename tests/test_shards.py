"""Micro-shards: the per-shard BN kernels against NumPy, whole-network float64 gradients for batch
sizes that are not multiples of the shard, per-image loss weights against the reference, K ranks
simulated in threads giving one process's bits, and the functional API's reused networks."""

import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import reference as R
from cnncli import model as M
from cnncli.distributed import SHARD, Comm, tree_sum
from cnncli.kernels import batchnorm as bnk
from cnncli.kernels import bnstats as bns
from cnncli.kernels import bntree
from cnncli.kernels import loss as kloss


def rel(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300)


def _net_and_batch(bn, n, seed=1):
    net = M.Network(12, bn, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 10)
    for name, arr in net.params.items():            # non-trivial biases, gammas and betas
        if name.endswith((".b", "gamma", "beta")):
            arr[...] += rng.normal(0, 0.3, arr.shape)
    x = rng.standard_normal((n, 1, 32, 32))
    return net, x, rng.integers(0, 12, n), rng.uniform(0.1, 3.0, n)


# ---- the per-shard BN kernels ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, axes", [((13, 300), (0,)), ((13, 6, 64), (0, 2)), ((13, 3, 20), (0, 2))])
def test_bn_phases_over_shards_match_numpy(dtype, shape, axes):
    """Each shard's [sum | M2] (shards of 8 and 5), combined in the tree, then normalize and backward
    per shard: the whole batch's BN forward and backward (tests/reference.py)."""
    rng = np.random.default_rng(4)
    z = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    d = shape[1]
    g, b = rng.uniform(0.5, 1.5, d).astype(dtype), rng.standard_normal(d).astype(dtype)
    parts = [slice(0, 8), slice(8, 13)]
    count = shape[0] * (shape[2] if len(shape) == 3 else 1)
    per = count // shape[0]
    moments = bntree.bn_moments_tree(np.stack([bns.bn_moments(z[s]) for s in parts]),
                                  np.array([(s.stop - s.start) * per for s in parts], np.float64))
    mean, var = moments[:d] / count, moments[d:] / count
    invstd = 1 / np.sqrt(var + 1e-5)
    xhat, y = (np.concatenate(a) for a in zip(*(bnk.bn_normalize(z[s], mean, invstd, g, b) for s in parts)))
    sums = [bnk.bn_grad_sums(dy[s], xhat[s]) for s in parts]
    sdy, sdyx = tree_sum(np.stack([s[0] for s in sums])), tree_sum(np.stack([s[1] for s in sums]))
    dz = np.concatenate([bnk.bn_backward_given(dy[s], xhat[s], g, invstd, sdy, sdyx, count) for s in parts])
    cshape = (1, d) + (1,) * (len(shape) - 2)
    ry, rxhat, rmean, rvar = R.bn_forward(z.astype(np.float64), g.reshape(cshape), b.reshape(cshape), 1e-5, axes)
    rdz, rdg, rdb = R.bn_backward(dy.astype(np.float64), z.astype(np.float64), g.reshape(cshape), 1e-5, axes)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert rel(mean, rmean.ravel()) < tol and rel(var, rvar.ravel()) < tol
    assert rel(y, ry) < tol and rel(xhat, rxhat) < tol
    tol = 1e-9 if dtype == np.float64 else 1e-3
    assert rel(dz, rdz) < tol and rel(sdyx, rdg) < tol and rel(sdy, rdb) < tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("S", [256, 20])
@pytest.mark.parametrize("per_unit", [False, True])
def test_bias_and_moments_in_one_pass_have_the_bits_of_bias_then_moments(dtype, S, per_unit):
    from cnncli.kernels import conv

    rng = np.random.default_rng(5)
    z = (rng.normal(size=(5, 3, S)) * 3 + 7).astype(dtype)
    b = rng.normal(size=3).astype(dtype)
    ref = z.copy()
    conv.add_bias_into(ref, b)
    want = bns.bn_moments(ref.reshape(5, -1) if per_unit else ref)
    got = np.empty_like(want)
    bns.bn_bias_moments_into(z, b, got)
    assert np.array_equal(z, ref)
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))
    assert np.allclose(want[:want.size // 2], ref.reshape(5, -1).sum(0) if per_unit else ref.sum((0, 2)))


def test_bn_kernels_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\) or \(N, C, S\)"):
        bns.bn_moments(np.zeros(4))
    with pytest.raises(ValueError, match=r"counts has dtype float32"):
        bntree.bn_moments_tree(np.zeros((2, 4)), np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"counts > 0"):
        bntree.bn_moments_tree(np.zeros((2, 4)), np.array([3.0, 0.0]))
    with pytest.raises(ValueError, match=r"gamma has shape \(5,\)"):
        bnk.bn_normalize(np.zeros((2, 4)), np.zeros(4), np.ones(4), np.ones(5), np.zeros(4))


def test_weighted_bce_kernel_matches_reference():
    rng = np.random.default_rng(2)
    z, labels, w = rng.standard_normal((6, 12)) * 4, rng.integers(0, 12, 6), rng.uniform(0, 3, 6)
    loss, p, dz = kloss.sigmoid_bce_forward_backward(z, labels, w)
    rloss, rp, rdz = R.sigmoid_bce(z, labels, w)
    assert abs(loss - rloss) / rloss < 1e-12 and rel(p, rp) < 1e-12 and rel(dz, rdz) < 1e-12
    unweighted = kloss.sigmoid_bce_forward_backward(z, labels)[0]
    assert abs(loss - unweighted) > 1e-3 * unweighted      # the weights do change the loss


# ---- the whole network --------------------------------------------------------------------------

@pytest.mark.parametrize("bn", M.BATCHNORM)
@pytest.mark.parametrize("n", [5, 13, 67])
def test_gradients_match_the_reference_for_any_batch_size(bn, n):
    net, x, y, w = _net_and_batch(bn, n)
    params = {k: v.copy() for k, v in net.params.items()}
    for weights in (None, w):
        loss, probs = net.train_step(x, y, weights)
        ref_loss, ref = R.network_loss_and_grads(params, x, y, bn, net.eps, weights)
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        assert rel(probs, R.network_loss(params, x, y, bn, net.eps)[1]) < 1e-12
        scale = max(np.abs(g).max() for g in ref.values())   # biases before BN ~1e-17: absolute there
        for name, g in ref.items():
            np.testing.assert_allclose(net.grads[name], g, rtol=1e-8, atol=1e-10 * scale, err_msg=name)


def test_weighted_loss_matches_finite_differences():
    """d(loss)/d(fc2.b) and one conv1 weight with weights, by central differences (float64, BN)."""
    net, x, y, w = _net_and_batch("channel", 11)
    net.buffers = None
    loss, _ = net.train_step(x, y, w)
    for name, idx in (("fc2.b", (3,)), ("conv1.w", (2, 0, 1, 4))):
        analytic = net.grads[name][idx]
        old = net.params[name][idx]
        vals = []
        for h in (1e-6, -1e-6):
            net.params[name][idx] = old + h
            vals.append(net.train_step(x, y, w)[0])
        net.params[name][idx] = old
        assert (vals[0] - vals[1]) / 2e-6 == pytest.approx(analytic, rel=1e-5, abs=1e-9), name


def test_weights_are_checked():
    net, x, y, _ = _net_and_batch("none", 3)
    with pytest.raises(ValueError, match=r"weights has shape \(2,\), expected \(3,\)"):
        net.train_step(x, y, np.ones(2))
    with pytest.raises(ValueError, match=r"weights .* must be finite and >= 0"):
        net.train_step(x, y, np.array([1.0, -1.0, 1.0]))


# ---- K ranks in threads: the same bits as one process ------------------------------------------

class _Hub:
    def __init__(self, size):
        self.barrier, self.slots = threading.Barrier(size), [None] * size

    def exchange(self, rank, arr):
        self.slots[rank] = np.array(arr)
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class ThreadComm(Comm):
    """Rank `rank` of `size` ranks that are threads of this process, exchanging rows through a hub
    (what MpiComm's Allgatherv does between processes)."""

    def __init__(self, rank, size, hub):
        self.rank, self.size, self.hub = rank, size, hub

    def _all_parts(self, local_parts, nshards):
        Comm._all_parts(self, local_parts, nshards)          # the shape check
        return np.concatenate(self.hub.exchange(self.rank, local_parts))

    def gather_rows(self, local_rows):
        return np.concatenate(self.hub.exchange(self.rank, local_rows))


def _state(net, loss, probs):
    return [np.float64(loss), probs, net.grads.flat.copy(), net.buffers.flat.copy()]


@pytest.mark.parametrize("bn", M.BATCHNORM)
@pytest.mark.parametrize("ranks, n", [(2, 64), (4, 64), (2, 67)])
def test_k_ranks_give_one_process_bits(bn, ranks, n):
    import numba

    rng = np.random.default_rng(n)
    x, y = rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 12, n)
    w = rng.uniform(0.5, 2.0, n)
    one = M.Network(12, bn, seed=3)
    expected = [_state(one, *one.train_step(x, y, w)) for _ in range(2)]
    hub, results = _Hub(ranks), [None] * ranks

    def rank(r):
        numba.set_num_threads(1)
        net = M.Network(12, bn, seed=3, comm=ThreadComm(r, ranks, hub))
        lo, hi = net.comm.shard_block(-(-n // SHARD))
        results[r] = [_state(net, *net.train_step(x, y, w)) for _ in range(2)], len(net._plan(n).ws), (lo, hi)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for r in range(ranks):
        states, local, (lo, hi) = results[r]
        assert local == hi - lo < -(-n // SHARD)          # each rank computed only its block
        for got, want in zip(states, expected):
            assert all(np.array_equal(a, b) for a, b in zip(got, want)), (bn, r)


@pytest.mark.parametrize("bn", ["none", "unit", "channel"])
def test_one_process_step_without_the_one_call_kernel_gives_its_bits(bn, monkeypatch):
    """While a pre-compile worker builds the one-call step's kernel (plainstep.py, bnstep.py), one
    process runs its steps shard by shard (no BN: threads.run, RowTree) or phase by phase (BN:
    threads.run_phases): loss, probabilities, gradients and running statistics equal the one-call
    step's bit for bit, over steps that reuse the plan (67 images: a short shard)."""
    from cnncli import shards
    from cnncli.kernels import bnstep, plainstep

    rng = np.random.default_rng(8)
    n = 67
    x, y, w = rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 12, n), rng.uniform(0.5, 2, n)
    fused = M.Network(12, bn, seed=3)
    one_call, real = [], shards._one_call_step
    monkeypatch.setattr(shards, "_one_call_step",
                        lambda plan, kernel, *a: one_call.append(kernel) or real(plan, kernel, *a))
    expected = [_state(fused, *fused.train_step(x, y, w if k else None)) for k in range(3)]
    kernel = bnstep.bn_step_into if bn != "none" else plainstep.plain_step_into
    assert one_call == [kernel] * 3                    # the expected bits are the one-call step's
    calls = []
    monkeypatch.setattr(shards, "_compiling", lambda kernel: calls.append(kernel) or True)
    monkeypatch.setattr(shards, "_one_call_step", lambda *a: pytest.fail("the one-call step ran while compiling"))
    phased = M.Network(12, bn, seed=3)
    got = [_state(phased, *phased.train_step(x, y, w if k else None)) for k in range(3)]
    assert calls == [kernel] * 3
    for a_state, b_state in zip(got, expected):
        assert all(np.array_equal(a, b) for a, b in zip(a_state, b_state)), bn


@pytest.mark.parametrize("bn", ["none", "unit", "channel"])
def test_a_transform_that_fails_in_a_one_call_step_raises_and_changes_nothing(bn):
    """The transform runs inside the one-call step's job (each thread its part of the batch, then
    the barrier):
    one that raises ends the step with its error, no thread left waiting, no statistic or gradient
    half-updated: the next good step gives a fresh network's bits."""
    rng = np.random.default_rng(9)
    n = 40
    x, y = rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 12, n)

    def bad(s, none, out):
        if s.stop > n // 2:
            raise RuntimeError("image 33 could not be read")
        out[...] = x[s]

    net = M.Network(12, bn, seed=3)
    with pytest.raises(RuntimeError, match="could not be read"):
        net.train_step(None, y, transform=bad)
    got = _state(net, *net.train_step(x, y))
    fresh = M.Network(12, bn, seed=3)
    want = _state(fresh, *fresh.train_step(x, y))
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_compiling_elsewhere_while_a_live_worker_has_the_kernel():
    from cnncli import precompile
    from cnncli.kernels import bnstep

    class Proc:
        def __init__(self, alive):
            self.alive = alive

        def is_alive(self):
            return self.alive

    job = object.__new__(precompile.Precompile)
    job._disps, job._state, job._procs = [bnstep.bn_step_into], [precompile.TAKEN], [Proc(True)]
    job._go = types.SimpleNamespace(value=0)
    precompile._JOBS.append(job)
    try:
        assert precompile.compiling_elsewhere(bnstep.bn_step_into)
        assert not precompile.compiling_elsewhere(bnstep.SYNC_COUNTERS)      # not one of the job's kernels
        job._state[0] = precompile.FREE                  # not taken yet: a worker will, the run waits for it
        assert precompile.compiling_elsewhere(bnstep.bn_step_into)
        job._procs[0].alive = False                      # the worker died: the run compiles it itself
        assert not precompile.compiling_elsewhere(bnstep.bn_step_into)
        job._procs[0].alive, job._state[0] = True, precompile.DONE
        assert not precompile.compiling_elsewhere(bnstep.bn_step_into)
    finally:
        precompile._JOBS.remove(job)


def test_the_background_kernels_start_once_the_steps_kernels_are_done():
    """A step asking about a BACKGROUND kernel lets the workers start it only when every other
    kernel of the job is done (the first step's compile keeps both cores until then)."""
    from cnncli import precompile
    from cnncli.kernels import conv16, plainstep

    class Proc:
        def is_alive(self):
            return True

    job = object.__new__(precompile.Precompile)
    job._disps = [conv16.conv16_forward_into, plainstep.plain_step_into]
    job._state, job._procs = [precompile.TAKEN, precompile.FREE], [Proc()]
    job._go = types.SimpleNamespace(value=0)
    precompile._JOBS.append(job)
    try:
        assert precompile.compiling_elsewhere(plainstep.plain_step_into) and job._go.value == 0
        job._state[0] = precompile.DONE
        assert precompile.compiling_elsewhere(plainstep.plain_step_into) and job._go.value == 1
    finally:
        precompile._JOBS.remove(job)


def _two_ranks(bn, step):
    """step(net) on 2 simulated ranks (ThreadComm; one numba thread each), each with its own
    Network(12, bn, seed=3)   ->   [rank 0's result, rank 1's]."""
    import numba

    hub, results = _Hub(2), [None] * 2

    def rank(r):
        numba.set_num_threads(1)
        results[r] = step(M.Network(12, bn, seed=3, comm=ThreadComm(r, 2, hub)))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_a_transform_inside_the_shards_equals_the_transformed_batch(bn):
    """train_step(x, y, w, transform=aug.bind(epoch, step)) augments shard by shard inside the shards'
    tasks: loss, probabilities, gradients and BN buffers equal train_step(aug(x, epoch, step), y, w)
    bit for bit, in one process (a short last shard: 67 images) and on 2 simulated ranks."""
    from cnncli.augment import Augmenter, AugmentSettings

    n = 67
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 12, n)
    w = rng.uniform(0.5, 2.0, n)
    settings = AugmentSettings(affine_p=0.9, shift=2.0, rotate=10.0, scale=(0.9, 1.1), jitter_p=0.5,
                               brightness=0.1, contrast=0.2, noise_p=0.3, noise_std=0.05, erase_p=0.3)
    aug = Augmenter(settings, seed=4, pixel_std=0.3, max_batch=n)
    whole = M.Network(12, bn, seed=3)
    expected = [_state(whole, *whole.train_step(aug(x, 1, step).copy(), y, w)) for step in (0, 1)]
    assert not np.array_equal(aug(x, 1, 0), x)
    fused = M.Network(12, bn, seed=3)
    got = [_state(fused, *fused.train_step(x, y, w, transform=aug.bind(1, step))) for step in (0, 1)]
    for a_state, b_state in zip(got, expected):
        assert all(np.array_equal(a, b) for a, b in zip(a_state, b_state)), bn

    def made(step):      # x=None: the transform makes each shard's input alone (as the trainer's lookup)
        augment = aug.bind(1, step)

        def transform(s, none, out):
            assert none is None
            out[...] = x[s]
            augment(s, out, out)
        return transform
    alone = M.Network(12, bn, seed=3)
    got = [_state(alone, *alone.train_step(None, y, w, transform=made(step))) for step in (0, 1)]
    for a_state, b_state in zip(got, expected):
        assert all(np.array_equal(a, b) for a, b in zip(a_state, b_state)), bn
    results = _two_ranks(bn, lambda net: [_state(net, *net.train_step(x, y, w, transform=aug.bind(1, step)))
                                          for step in (0, 1)])
    for r in range(2):
        for a_state, b_state in zip(results[r], expected):
            assert all(np.array_equal(a, b) for a, b in zip(a_state, b_state)), (bn, r)
    with pytest.raises(ValueError, match="transform must be callable"):
        fused.train_step(x, y, transform="augment")
    with pytest.raises(ValueError, match="x is None"):
        fused.train_step(None, y)
    with pytest.raises(ValueError, match="x is None, but this transform augments x: pass x, or make the input"):
        fused.train_step(None, y, transform=aug.bind(1, 0))          # (was numba's TypingError from its kernel)
    with pytest.raises(ValueError, match="labels is empty"):
        fused.train_step(None, y[:0], transform=made(0))
    with pytest.raises(ValueError, match="1-D numpy array"):
        fused.train_step(None, y.reshape(1, -1), transform=made(0))


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_a_step_input_made_inside_the_step_kernel_equals_the_given_batch(bn):
    """The trainer's StepInput (lookup of uint8 images through a table, augmented or not) is made
    inside the one-call step's kernel, shard by shard: loss, probabilities, gradients and BN buffers
    equal train_step(its whole batch given), bit for bit -- and so do the same StepInput called by
    the threads before the step (kernel_args None, as for a read-only image array) and on 2
    simulated ranks; the fills it keeps are those of the whole-batch call."""
    from cnncli.augment import Augmenter, AugmentSettings, StepInput, lookup_input

    n, m = 67, 90
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (m, 32, 32), dtype=np.uint8)             # (M,32,32)
    idx = rng.permutation(m)[:n]                                            # (B,) distinct
    table = ((np.arange(256) - 120.0) / 70.0).astype(np.float32)           # (256,)
    y, w = rng.integers(0, 12, n), rng.uniform(0.5, 2.0, n)
    settings = AugmentSettings(affine_p=0.9, shift=2.0, rotate=10.0, scale=(0.9, 1.1), jitter_p=0.5,
                               brightness=0.1, contrast=0.2, noise_p=0.3, noise_std=0.05, erase_p=0.3)
    aug = Augmenter(settings, seed=4, pixel_std=0.3, max_batch=n)

    def inputs(kind):
        """StepInput makers: each call a fresh one (with fresh fills, all NaN)."""
        if kind == "lookup":
            return lambda: lookup_input(images, idx, table)
        return lambda: aug.bind(1, 0, lookup=(images, idx, table, np.full(m, np.nan)))

    for kind in ("lookup", "augment"):
        make = inputs(kind)
        whole_input = make()
        x = np.empty((n, 1, 32, 32), np.float32)
        whole_input(slice(0, n), None, x)
        assert isinstance(whole_input, StepInput) and whole_input.kernel_args is not None
        net = M.Network(12, bn, seed=3)
        expected = _state(net, *net.train_step(x, y, w))
        inside = make()
        net = M.Network(12, bn, seed=3)
        got = _state(net, *net.train_step(None, y, w, transform=inside))
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)), (bn, kind)
        assert np.array_equal(inside.fills, whole_input.fills, equal_nan=True), (bn, kind)
        if kind == "augment":
            assert np.isfinite(inside.fills[idx]).any()       # the affine images' fills were kept
        before = make()
        before.kernel_args = None                             # the threads make it, then the step
        net = M.Network(12, bn, seed=3)
        got = _state(net, *net.train_step(None, y, w, transform=before))
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)), (bn, kind)
        results = _two_ranks(bn, lambda net: _state(net, *net.train_step(None, y, w, transform=make())))
        for r in range(2):
            assert all(np.array_equal(a, b) for a, b in zip(results[r], expected)), (bn, kind, r)
    frozen = images.copy()
    frozen.flags.writeable = False
    assert lookup_input(frozen, idx, table).kernel_args is None           # read-only: not the compiled types
    assert lookup_input(images, idx, table).kernel_args is not None
    with pytest.raises(ValueError, match="kind"):
        StepInput(7, images, idx, table)
    with pytest.raises(ValueError, match=r"in \[0, 90\)"):
        lookup_input(images, np.array([0, 90]), table)
    with pytest.raises(ValueError, match=r"in \[0, 90\)"):
        lookup_input(images, np.array([-1]), table)
    with pytest.raises(ValueError, match="fills"):
        aug.bind(0, 0, lookup=(images, idx, table, np.full(m - 1, np.nan)))
    with pytest.raises(ValueError, match="images must be"):
        lookup_input(images[:, :16], idx, table)
    with pytest.raises(ValueError, match="makes 66 images' input, labels has 67"):
        net.train_step(None, y, w, transform=lookup_input(images, idx[:-1], table))
    with pytest.raises(ValueError, match="table is float64"):
        net.train_step(None, y, w, transform=lookup_input(images, idx, table.astype(np.float64)))


def test_one_process_does_not_import_mpi4py():
    code = ("import sys, numpy as np; from cnncli import model as M; net = M.Network(12, 'channel');"
            "net.train_step(np.zeros((9, 1, 32, 32), np.float32), np.zeros(9, np.int64));"
            "print('mpi4py' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"


# ---- the functional API reuses its networks ------------------------------------------------------

@pytest.mark.parametrize("bn", ["none", "unit"])
def test_loss_and_grads_reuses_a_network_and_returns_fresh_grads(bn):
    net, x, y, w = _net_and_batch(bn, 12)
    p1 = {k: v.copy() for k, v in net.params.items()}
    p2 = {k: v * 1.01 for k, v in p1.items()}
    loss1, g1 = M.loss_and_grads(p1, x, y, bn, weights=w)
    keep = g1.flat.copy()
    loss2, g2 = M.loss_and_grads(p2, x, y, bn)
    assert np.array_equal(g1.flat, keep)                  # the second call did not overwrite the first
    assert M._network_for(p1, None, bn, 1e-5, 0.1) is M._network_for(p2, None, bn, 1e-5, 0.1)
    for params, loss, g, weights in ((p1, loss1, g1, w), (p2, loss2, g2, None)):
        fresh = M.Network(12, bn, dtype=np.float64)
        fresh.load_arrays(params)
        fresh.buffers = None
        assert fresh.train_step(x, y, weights)[0] == loss
        assert np.array_equal(fresh.grads.flat, g.flat)
