"""The whole network: layout, init, validation, loss vs reference, inference, training, determinism."""

import numpy as np
import pytest

from cnncli import model as M

import reference as R

VARIANTS = M.BATCHNORM


def batch(n, dtype=np.float32, seed=0, num_classes=12):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 32, 32)).astype(dtype), rng.integers(0, num_classes, n)


def test_param_specs_order_and_shapes():
    assert M.param_specs(12, "none") == [
        ("conv1.w", (6, 1, 5, 5)), ("conv1.b", (6,)), ("conv2.w", (16, 6, 5, 5)), ("conv2.b", (16,)),
        ("fc1.w", (65, 1024)), ("fc1.b", (65,)), ("fc2.w", (12, 65)), ("fc2.b", (12,))]
    unit = dict(M.param_specs(3, "unit"))
    assert unit["bn1.gamma"] == (6, 32, 32) and unit["bn2.beta"] == (16, 16, 16) and unit["bn3.gamma"] == (65,)
    assert unit["fc2.w"] == (3, 65)
    names = [n for n, _ in M.param_specs(12, "channel")]
    assert names == ["conv1.w", "conv1.b", "bn1.gamma", "bn1.beta", "conv2.w", "conv2.b", "bn2.gamma",
                     "bn2.beta", "fc1.w", "fc1.b", "bn3.gamma", "bn3.beta", "fc2.w", "fc2.b"]
    assert dict(M.param_specs(12, "channel"))["bn2.gamma"] == (16,)
    assert M.buffer_specs(12, "none") == []
    assert M.buffer_specs(12, "channel")[:2] == [("bn1.running_mean", (6,)), ("bn1.running_var", (6,))]


@pytest.mark.parametrize("bn", VARIANTS)
def test_flat_buffer_views(bn):
    p = M.allocate(M.param_specs(12, bn), np.float64)
    assert p.flat.flags.c_contiguous and p.flat.size == sum(a.size for a in p.values())
    p.flat[:] = np.arange(p.flat.size)
    off = 0
    for name, arr in p.items():
        assert np.shares_memory(arr, p.flat)
        assert arr.ravel()[0] == off
        off += arr.size


def test_init_params():
    p = M.init_params(12, "unit", seed=3)
    assert p.flat.dtype == np.float32
    lim = np.sqrt(6 / (25 * 1 + 25 * 6))
    assert np.abs(p["conv1.w"]).max() <= lim and np.abs(p["conv1.w"]).max() > 0.8 * lim
    assert np.abs(p["fc1.w"]).max() <= np.sqrt(6 / (1024 + 65))
    assert np.all(p["conv1.b"] == 0) and np.all(p["bn1.gamma"] == 1) and np.all(p["bn2.beta"] == 0)
    assert np.array_equal(M.init_params(12, "unit", seed=3).flat, p.flat)
    assert not np.array_equal(M.init_params(12, "unit", seed=4).flat, p.flat)
    b = M.init_buffers(12, "channel", np.float64)
    assert np.all(b["bn2.running_mean"] == 0) and np.all(b["bn2.running_var"] == 1)


@pytest.mark.parametrize("bn", VARIANTS)
def test_infer_architecture(bn):
    assert M.infer_architecture(M.init_params(7, bn)) == (7, bn)


def test_infer_architecture_rejects_wrong_shapes():
    p = dict(M.init_params(12, "none"))
    p["conv2.w"] = np.zeros((16, 6, 3, 3))
    with pytest.raises(ValueError, match=r"conv2.w.*\(16, 6, 3, 3\)"):
        M.infer_architecture(p)
    p = dict(M.init_params(12, "none"))
    del p["fc1.b"]
    with pytest.raises(ValueError, match="fc1.b"):
        M.infer_architecture(p)


@pytest.mark.parametrize("bn", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_matches_reference(bn, dtype):
    p = M.init_params(12, bn, seed=1, dtype=dtype)
    rng = np.random.default_rng(5)
    for name, arr in p.items():              # non-trivial gamma/beta/biases
        if not name.endswith(".w"):
            arr += rng.uniform(-0.3, 0.3, arr.shape).astype(dtype)
    x, y = batch(6, dtype)
    loss, grads = M.loss_and_grads(p, x, y, bn)
    rloss = R.network_loss(p, x, y, bn)[0]
    assert abs(loss - rloss) / rloss < (1e-12 if dtype == np.float64 else 1e-5)
    assert grads.flat.dtype == dtype and set(grads) == set(p)


def test_validation_errors():
    net = M.Network(12, "channel")
    x, y = batch(4)
    with pytest.raises(ValueError, match=r"x has shape \(4, 1, 32, 31\)"):
        net.train_step(np.zeros((4, 1, 32, 31), np.float32), y)
    with pytest.raises(ValueError, match=r"x has dtype float64"):
        net.train_step(x.astype(np.float64), y)
    with pytest.raises(ValueError, match=r"labels has shape \(3,\)"):
        net.train_step(x, y[:3])
    with pytest.raises(ValueError, match=r"outside \[0, 12\)"):
        net.train_step(x, np.array([0, 1, 2, 12]))
    with pytest.raises(ValueError, match=r"labels has dtype float64"):
        net.train_step(x, y.astype(np.float64))
    with pytest.raises(ValueError, match="at least 2 images"):
        net.train_step(x[:1], y[:1])
    with pytest.raises(ValueError, match=r"x has shape \(0, 1, 32, 32\)"):
        net.predict_proba(x[:0])
    with pytest.raises(ValueError, match="batchnorm"):
        M.Network(12, "layer")
    with pytest.raises(ValueError, match="dtype"):
        M.Network(12, "none", dtype=np.float16)
    for few in (1, 0, True):                    # checkpoints and data folders need 2 or more classes
        with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2"):
            M.Network(few)
    one = dict(M.init_params(2, "none"))
    one["fc2.w"], one["fc2.b"] = one["fc2.w"][:1], one["fc2.b"][:1]
    with pytest.raises(ValueError, match=r"C >= 2 classes"):
        M.predict_proba(one, x, "none")
    with pytest.raises(ValueError, match="needs buffers"):
        M.predict_proba(M.init_params(12, "unit"), x, "unit")
    with pytest.raises(ValueError, match="params are for batchnorm='unit'"):
        M.loss_and_grads(M.init_params(12, "unit"), x, y, "channel")
    # numpy scalars are numbers; a bad seed or weights named (numpy's words did not name them)
    assert M.Network(12, "channel", eps=np.float64(1e-5), momentum=np.float32(0.1)).momentum == pytest.approx(0.1)
    for bad in (-1, "a", 1.5, True):
        with pytest.raises(ValueError, match=f"seed must be an integer >= 0, got {bad!r}"):
            M.Network(12, seed=bad)
        with pytest.raises(ValueError, match=f"seed must be an integer >= 0, got {bad!r}"):
            M.init_params(12, seed=bad)
    for kw, text in ((dict(eps=float("nan")), "eps must be a positive number"), (dict(momentum=1.5), "momentum"),
                     (dict(momentum=np.bool_(True)), "momentum")):
        with pytest.raises(ValueError, match=text):
            M.Network(12, "unit", **kw)
    with pytest.raises(ValueError, match="weights must be \\(n,\\) numbers, one per image, got str 'a'"):
        M.loss_and_grads(M.init_params(12), x, y, weights="a")


@pytest.mark.parametrize("bn", VARIANTS)
def test_functional_api_equals_network(bn):
    net = M.Network(12, bn, dtype=np.float64, seed=2)
    p = net.params.copy()
    buf = net.buffers.copy()
    x, y = batch(5, np.float64)
    loss_n, _ = net.train_step(x, y)
    loss_f, g = M.loss_and_grads(p, x, y, bn, buffers=buf)
    assert loss_n == loss_f and np.array_equal(g.flat, net.grads.flat)
    assert np.array_equal(buf.flat, net.buffers.flat)
    assert np.array_equal(M.predict_proba(p, x, bn, buffers=buf), net.predict_proba(x))


@pytest.mark.parametrize("bn", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 3, 11])
def test_predict_matches_reference_inference(bn, dtype, n):
    """The fused inference kernels vs the plain NumPy layers, with non-trivial BN statistics
    (negative gammas too: the max must be taken after the BN affine, not before)."""
    net = M.Network(7, bn, dtype=dtype, seed=3)
    rng = np.random.default_rng(n)
    for name, arr in list(net.params.items()) + list(net.buffers.items()):
        if name.endswith(("gamma", "beta", ".b", "running_mean")):
            arr[...] = rng.normal(0, 0.5, arr.shape)
        elif name.endswith("running_var"):
            arr[...] = rng.uniform(0.2, 2.0, arr.shape)
    x, _ = batch(n, dtype, seed=n)
    got = net.predict_proba(x)
    ref = R.network_predict(net.params, net.buffers, x, bn, net.eps)
    np.testing.assert_allclose(got, ref, rtol=1e-10 if dtype == np.float64 else 2e-5, atol=1e-12 if dtype == np.float64 else 1e-6)
    # a non-contiguous input gives the same answer
    wide = np.zeros((n, 1, 32, 64), dtype)
    wide[..., ::2] = x
    assert np.array_equal(net.predict_proba(wide[..., ::2]), got)


@pytest.mark.parametrize("bn", ["unit", "channel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_running_stats_inference_is_per_image(bn, dtype):
    net = M.Network(12, bn, dtype=dtype, seed=0)
    for s in range(4):
        x, y = batch(16, dtype, seed=s)
        net.train_step(x, y)
        net.params.flat -= 0.05 * net.grads.flat
    assert not np.all(net.buffers["bn1.running_mean"] == 0)
    x, _ = batch(37, dtype, seed=99)
    all_at_once = net.predict_proba(x)
    for i in (0, 17, 36):
        one = net.predict_proba(x[i:i + 1])
        np.testing.assert_allclose(one[0], all_at_once[i], rtol=1e-12 if dtype == np.float64 else 1e-6)
        # and inside another batch at another position
        mixed = np.concatenate([x[i:i + 1][::-1], x[:3]])[[1, 0, 2, 3]]
        np.testing.assert_allclose(net.predict_proba(mixed)[1], all_at_once[i],
                                   rtol=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("bn", VARIANTS)
def test_sgd_overfits_one_small_batch(bn):
    net = M.Network(12, bn, seed=0)
    x, y = batch(12, seed=7)
    losses = []
    lr = 0.01 if bn == "none" else 0.1     # raw N(0,1) images without BN need a small step
    for _ in range(40):
        loss, probs = net.train_step(x, y)
        losses.append(loss)
        net.params.flat -= lr * net.grads.flat
    loss, probs = net.train_step(x, y)
    assert loss < 0.3 * losses[0]
    assert np.mean(probs.argmax(1) == y) == 1.0


@pytest.mark.parametrize("bn", VARIANTS)
def test_train_step_is_bitwise_reproducible(bn):
    net = M.Network(12, bn, seed=0)
    x, y = batch(32, seed=3)
    loss1, probs1 = net.train_step(x, y)
    g1 = net.grads.flat.copy()
    net.grads.flat[:] = np.nan          # train_step must overwrite every gradient
    loss2, probs2 = net.train_step(x, y)
    assert loss1 == loss2 and np.array_equal(probs1, probs2)
    assert np.array_equal(g1, net.grads.flat)
    other = M.Network(12, bn, seed=0)
    assert np.array_equal(other.train_step(x, y)[1], probs1) and np.array_equal(other.grads.flat, g1)


def test_train_step_does_not_keep_references_to_outputs():
    net = M.Network(12, "none")
    x, y = batch(4)
    _, p1 = net.train_step(x, y)
    keep = p1.copy()
    net.train_step(x[::-1].copy(), y[::-1].copy())
    assert np.array_equal(p1, keep)


@pytest.mark.parametrize("bn", VARIANTS)
def test_an_image_gets_the_same_probabilities_in_any_batch(bn):
    """predict_proba's blocks (threads) and its one-block small path give each image the same
    bits, wherever it sits in a batch of any size."""
    net = M.Network(12, bn, seed=4)
    net.buffers.flat[:] = np.abs(np.random.default_rng(1).standard_normal(net.buffers.flat.size)) + 0.5
    x, _ = batch(2 * M.PREDICT_BLOCK * 5 + 3)
    p = net.predict_proba(x)
    assert p.shape == (x.shape[0], 12)
    for lo, hi in ((0, 1), (5, 8), (x.shape[0] - 3, x.shape[0]), (3, 3 + M.SMALL_BATCH + 5)):
        assert net.predict_proba(x[lo:hi]).tobytes() == p[lo:hi].tobytes(), (lo, hi)


def test_load_arrays():
    a = M.Network(12, "channel", seed=1)
    b = M.Network(12, "channel", seed=2)
    a.buffers["bn1.running_mean"][...] = 0.5   # (fresh running statistics would be equal anyway)
    b.load_arrays(dict(a.params), dict(a.buffers))
    assert np.array_equal(a.params.flat, b.params.flat)
    assert np.array_equal(a.buffers.flat, b.buffers.flat)
    with pytest.raises(ValueError, match=r"params\['conv1.w'\] has shape \(6, 1, 3, 3\), expected \(6, 1, 5, 5\)"):
        b.load_arrays({"conv1.w": np.zeros((6, 1, 3, 3))})
    with pytest.raises(ValueError, match="params is missing 'conv1.b'"):
        b.load_arrays({"conv1.w": np.zeros((6, 1, 5, 5))})
    short = {k: v for k, v in a.buffers.items() if k != "bn1.running_var"}
    with pytest.raises(ValueError, match="buffers is missing 'bn1.running_var'"):
        b.load_arrays(dict(a.params), short)


@pytest.mark.parametrize("bn", VARIANTS)
def test_results_do_not_depend_on_the_thread_count(bn):
    import numba

    x, y = batch(40, seed=5)
    out = []
    old = numba.get_num_threads()
    try:
        for t in sorted({1, old}):
            numba.set_num_threads(t)
            net = M.Network(12, bn, seed=0)
            loss, probs = net.train_step(x, y)
            out.append((loss, probs, net.grads.flat.copy(), net.buffers.flat.copy(), net.predict_proba(x)))
    finally:
        numba.set_num_threads(old)
    for other in out[1:]:
        assert other[0] == out[0][0]
        assert all(np.array_equal(a, b) for a, b in zip(other[1:], out[0][1:]))


@pytest.mark.parametrize("bn", VARIANTS)
def test_predict_sees_in_place_parameter_changes(bn):
    """predict_proba reuses its BN-folding arrays between calls; it must still read the current
    parameters and running statistics (changed in place by the optimizer and by train_step)."""
    net = M.Network(12, bn, dtype=np.float64, seed=4)
    x, y = batch(3, np.float64)
    before = net.predict_proba(x)
    net.train_step(x, y)
    net.params.flat -= 0.1 * net.grads.flat
    after = net.predict_proba(x)
    fresh = M.Network(12, bn, dtype=np.float64, seed=0)
    fresh.load_arrays(net.params, net.buffers)
    assert not np.allclose(before, after)
    assert np.array_equal(after, fresh.predict_proba(x))


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_chunk_bounds_cover_every_image_once_and_shrink_towards_the_end(threads):
    from cnncli.kernels.inference import chunk_bounds

    for n in list(range(1, 70)) + [127, 128, 129, 1000]:
        b = chunk_bounds(n, threads, M.PREDICT_BLOCK)
        sizes = np.diff(b)
        assert b[0] == 0 and b[-1] == n and b.dtype == np.int64, (n, b)
        assert sizes.min() >= 1 and sizes.max() <= M.PREDICT_BLOCK, (n, sizes)
        assert np.all(np.diff(sizes) <= 0), (n, sizes)            # never a bigger chunk after a smaller one
        assert sizes[-1] == 1, (n, sizes)                         # the last chunk is one image
        if n >= 4 * threads * M.PREDICT_BLOCK:
            assert sizes[0] == M.PREDICT_BLOCK                   # large batches start in full chunks


def test_predict_from_several_python_threads_at_once():
    """Each call has its own chunk counter and scratch: calls from several threads at once on one
    network give each its own batch's probabilities."""
    import threading

    net = M.Network(12, "channel", seed=2)
    xs = [batch(20 + 7 * k, seed=k)[0] for k in range(4)]
    want = [net.predict_proba(x) for x in xs]
    bad = []

    def hammer(k):
        for _ in range(15):
            if not np.array_equal(net.predict_proba(xs[k]), want[k]):
                bad.append(k)

    pool = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not bad


def test_assigning_a_parameter_copies_into_the_buffer_the_optimizer_steps():
    # a new array in place of the view was used by the passes but never trained
    from cnncli import model, optim

    net = model.Network(num_classes=4, seed=0)
    net.params["fc2.b"] = np.full(4, 5.0)                       # (float64: cast into the float32 view)
    assert net.params.flat[-4:].tolist() == [5.0] * 4 and net.params["fc2.b"].base is not None
    opt = optim.Optimizer("sgd", net.params.flat.size, 0.1)
    x = np.random.default_rng(0).random((8, 1, 32, 32), dtype=np.float32)
    net.train_step(x, np.arange(8) % 4)
    opt.step(net.params.flat, net.grads.flat)
    assert not np.array_equal(net.params["fc2.b"], np.full(4, 5.0, np.float32))    # trained from 5.0
    with pytest.raises(ValueError, match=r"params\['fc2.b'\] has shape \(4,\), got \(3,\)"):
        net.params["fc2.b"] = np.zeros(3)
    with pytest.raises(KeyError, match="'fc3.w' is not a parameter of this network"):
        net.params["fc3.w"] = np.zeros(3)


@pytest.mark.parametrize("bn", ["none", "channel"])
def test_an_input_holding_nan_or_inf_is_named_before_it_reaches_the_network(bn):
    # it made the loss, every gradient and (with BN) the running statistics NaN without a word
    net = M.Network(num_classes=4, batchnorm=bn, seed=0)
    x = np.random.default_rng(0).random((8, 1, 32, 32), dtype=np.float32)
    x[3, 0, 5, 7] = np.nan
    before = None if net.buffers is None else net.buffers.flat.copy()
    with pytest.raises(ValueError, match=r"^x holds NaN or inf \(image 3 is the first such\)$"):
        net.train_step(x, np.arange(8) % 4)
    if before is not None:
        assert np.array_equal(net.buffers.flat, before)
    x[3, 0, 5, 7] = np.inf
    with pytest.raises(ValueError, match=r"image 3 is the first such"):
        M.loss_and_grads(net.params, x, np.arange(8) % 4, batchnorm=bn, buffers=net.buffers)
    x[3, 0, 5, 7] = 0.0
    x[6] = np.nan                                                  # a whole NaN image: NaN probabilities
    with pytest.raises(ValueError, match=r"image 6 is the first such"):
        net.predict_proba(x)


def test_submodules_after_a_bare_import_and_a_float64_input_says_how_to_cast():
    import subprocess
    import sys

    code = ("import sys, cnncli; assert 'cnncli.model' not in sys.modules; "
            "print(cnncli.model.Network.__name__, cnncli.data.load_folder.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["Network", "load_folder"], out.stderr
    net = M.Network(num_classes=3)
    with pytest.raises(ValueError, match=r"^x has dtype float64 \(shape \(2, 1, 32, 32\)\), expected float32 "
                                         r"\(x\.astype\(np\.float32\)\)$"):
        net.train_step(np.zeros((2, 1, 32, 32)), np.array([0, 1]))
