"""Optimizers against torch.optim (when importable), on a quadratic, and LR schedule shapes."""

import math

import re

import numpy as np
import pytest

from cnncli.errors import CheckpointError
from cnncli.optim import OPTIMIZERS, Optimizer, lr_at

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (optional, tests only)")

P = 37  # parameter count for the small problems


def _grad_sequence(seed, steps, size=P):
    """Deterministic gradients that depend on the current parameters (like a real loss)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=size)
    noise = rng.normal(size=(steps, size))
    return lambda p, k: a * p + noise[k]  # gradient of a shifted quadratic plus noise


def _run_ours(name, steps, lrs, seed=0, **kw):
    rng = np.random.default_rng(seed + 100)
    p = rng.normal(size=P)
    grad_of = _grad_sequence(seed, steps)
    opt = Optimizer(name, P, lrs[0], dtype=np.float64, **kw)
    g = np.empty(P)
    for k in range(steps):
        g[:] = grad_of(p, k)
        opt.step(p, g, lrs[k])
    return p


def _run_torch(name, steps, lrs, seed=0, momentum=0.9, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
    rng = np.random.default_rng(seed + 100)
    p = torch.tensor(rng.normal(size=P), dtype=torch.float64, requires_grad=True)
    grad_of = _grad_sequence(seed, steps)
    if name == "sgd":
        opt = torch.optim.SGD([p], lr=lrs[0], weight_decay=weight_decay)
    elif name in ("momentum", "nesterov"):
        opt = torch.optim.SGD([p], lr=lrs[0], momentum=momentum, weight_decay=weight_decay,
                              nesterov=name == "nesterov")
    elif name == "adam":
        opt = torch.optim.Adam([p], lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW([p], lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decay)
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[k]
        p.grad = torch.tensor(grad_of(p.detach().numpy(), k), dtype=torch.float64)
        opt.step()
    return p.detach().numpy()


CASES = [
    ("sgd", {}),
    ("sgd", {"weight_decay": 0.05}),
    ("momentum", {"momentum": 0.9}),
    ("momentum", {"momentum": 0.5, "weight_decay": 0.01}),
    ("nesterov", {"momentum": 0.9}),
    ("nesterov", {"momentum": 0.8, "weight_decay": 0.02}),
    ("adam", {}),
    ("adam", {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adamw", {"weight_decay": 0.1}),
    ("adamw", {"weight_decay": 0.0, "betas": (0.5, 0.9)}),
]


@needs_torch
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_torch_optim(name, kw):
    steps = 12
    lrs = [0.05 * (1 + 0.1 * k) for k in range(steps)]  # a changing lr, passed per step
    ours = _run_ours(name, steps, lrs, seed=3, **kw)
    theirs = _run_torch(name, steps, lrs, seed=3, **kw)
    start = np.random.default_rng(103).normal(size=P)
    assert not np.allclose(ours, start)  # the parameters did move
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_minimizes_a_quadratic(name):
    # f(p) = 0.5 * sum(a * (p - c)^2), minimum at c
    rng = np.random.default_rng(7)
    a = rng.uniform(0.5, 2.0, size=P)
    c = rng.normal(size=P)
    p = np.zeros(P)
    g = np.empty(P)
    lr = 0.05 if name in ("adam", "adamw") else 0.2
    opt = Optimizer(name, P, lr, dtype=np.float64)
    f0 = 0.5 * np.sum(a * c ** 2)
    for _ in range(400):
        np.multiply(a, p - c, out=g)
        opt.step(p, g, lr)
    f = 0.5 * np.sum(a * (p - c) ** 2)
    assert f < 1e-3 * f0, (name, f, f0)


def test_first_sgd_step_by_hand():
    p = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.25, -1.0])
    opt = Optimizer("sgd", 3, 0.1, weight_decay=0.1, dtype=np.float64)
    opt.step(p, g, 0.1)
    np.testing.assert_allclose(p, [1.0 - 0.1 * (0.5 + 0.1), -2.0 - 0.1 * (0.25 - 0.2), 3.0 - 0.1 * (-1.0 + 0.3)])
    np.testing.assert_array_equal(g, [0.5, 0.25, -1.0])  # grads are left alone


def test_first_adam_step_is_lr_times_sign():
    # bias correction makes the first Adam step -lr * g / (|g| + eps') ~= -lr * sign(g)
    p = np.zeros(4)
    g = np.array([3.0, -0.5, 1e-3, -20.0])
    Optimizer("adam", 4, 0.01, dtype=np.float64).step(p, g, 0.01)
    np.testing.assert_allclose(p, -0.01 * np.sign(g), rtol=1e-4)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_float32_stays_float32(name):
    p = np.ones(P, np.float32)
    g = np.full(P, 0.5, np.float32)
    opt = Optimizer(name, P, 0.1, weight_decay=0.01)
    opt.step(p, g, 0.1)
    assert p.dtype == np.float32 and np.all(p < 1)
    for a in opt.state_dict().values():
        assert a.dtype in (np.float32, np.int64)


def test_step_rejects_wrong_buffers():
    opt = Optimizer("adam", P, 0.1)
    with pytest.raises(ValueError, match="params_flat"):
        opt.step(np.zeros(P + 1, np.float32), np.zeros(P, np.float32), 0.1)
    with pytest.raises(ValueError, match="grads_flat.*dtype"):
        opt.step(np.zeros(P, np.float32), np.zeros(P, np.float64), 0.1)
    with pytest.raises(ValueError, match="name"):
        Optimizer("rmsprop", P, 0.1)


@pytest.mark.parametrize("kw, needle", [
    ({"lr": float("nan")}, "lr: must be a finite number >= 0, got nan"),
    ({"lr": -1.0}, "lr: must be a finite number >= 0, got -1.0"),
    ({"lr": None}, "lr: must be a number >= 0, got None"),
    ({"lr": 0.1, "weight_decay": float("nan")}, "weight_decay: must be a finite number >= 0, got nan"),
])
def test_a_rate_that_is_not_a_finite_number_is_refused_naming_it(kw, needle):
    # lr=nan turned every parameter into NaN at the first step; lr=None raised float()'s TypeError
    with pytest.raises(ValueError, match=re.escape(needle)):
        Optimizer("sgd", P, **kw)
    opt = Optimizer("sgd", P, 0.1)
    p = np.ones(P, np.float32)
    with pytest.raises(ValueError, match=re.escape("lr: must be a finite number >= 0, got inf")):
        opt.step(p, np.ones(P, np.float32), float("inf"))
    assert np.all(p == 1.0) and opt.t == 0                          # nothing stepped


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_round_trip_resumes_bitwise(name):
    steps, split = 10, 4
    grad_of = _grad_sequence(11, steps)
    rng = np.random.default_rng(5)
    p0 = rng.normal(size=P).astype(np.float32)
    lrs = [lr_at(k, 3, 4, 0.05, "cosine", warmup_epochs=1) for k in range(steps)]

    def run(p, opt, ks):
        g = np.empty(P, np.float32)
        for k in ks:
            g[:] = grad_of(p.astype(np.float64), k)
            opt.step(p, g, lrs[k])

    straight = p0.copy()
    run(straight, Optimizer(name, P, 0.05, weight_decay=0.01), range(steps))

    resumed = p0.copy()
    first = Optimizer(name, P, 0.05, weight_decay=0.01)
    run(resumed, first, range(split))
    state = first.state_dict()
    second = Optimizer(name, P, 0.05, weight_decay=0.01)
    second.load_state_dict(state)
    run(resumed, second, range(split, steps))
    np.testing.assert_array_equal(resumed, straight)
    assert int(second.state_dict()["optim.t"][0]) == steps


def test_state_dict_is_a_copy():
    opt = Optimizer("adam", P, 0.1)
    state = opt.state_dict()
    assert set(state) == {"optim.m", "optim.v", "optim.t"}
    opt.step(np.ones(P, np.float32), np.ones(P, np.float32), 0.1)
    assert not state["optim.m"].any() and state["optim.t"][0] == 0


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("optim.v"), "missing key 'optim.v'"),
    (lambda d: d.update({"optim.extra": np.zeros(1)}), "unexpected key 'optim.extra'"),
    (lambda d: d.update({"optim.m": np.zeros(P + 1, np.float32)}), "'optim.m' has shape"),
    (lambda d: d.update({"optim.m": np.zeros(P, np.float64)}), "'optim.m' has dtype"),
    (lambda d: d.update({"optim.t": np.zeros(1, np.float32)}), "'optim.t' has dtype"),
    (lambda d: d.update({"optim.t": np.array([-1], np.int64)}), "'optim.t'"),
])
def test_load_state_dict_checks(mutate, match):
    state = Optimizer("adam", P, 0.1).state_dict()
    mutate(state)
    with pytest.raises(CheckpointError, match=match):
        Optimizer("adam", P, 0.1).load_state_dict(state)


def test_load_state_from_another_optimizer_names_the_key():
    with pytest.raises(CheckpointError, match="optim.v"):
        Optimizer("adam", P, 0.1).load_state_dict(Optimizer("momentum", P, 0.1).state_dict())


# -- schedules ------------------------------------------------------------------------------

def test_constant_schedule():
    assert {lr_at(k, 5, 3, 0.01) for k in range(15)} == {0.01}


def test_warmup_is_monotone_and_reaches_base():
    spe, warm = 10, 2.5  # 25 warmup steps
    lrs = [lr_at(k, spe, 10, 0.1, "constant", warmup_epochs=warm) for k in range(40)]
    assert 0 < lrs[0] <= 0.1 / 25 + 1e-15
    assert all(b > a for a, b in zip(lrs[:24], lrs[1:25]))
    assert lrs[24] == pytest.approx(0.1) and lrs[25:] == [0.1] * 15


def test_cosine_endpoints_and_shape():
    spe, epochs, base, low = 7, 4, 0.2, 0.01
    total = spe * epochs
    lrs = [lr_at(k, spe, epochs, base, "cosine", min_lr=low) for k in range(total + 1)]
    assert lrs[0] == pytest.approx(base)
    assert lrs[total] == pytest.approx(low)
    assert lrs[total // 2] == pytest.approx((base + low) / 2)
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    assert lr_at(total + 50, spe, epochs, base, "cosine", min_lr=low) == pytest.approx(low)


def test_cosine_after_warmup_starts_at_base():
    spe, epochs = 10, 5
    lrs = [lr_at(k, spe, epochs, 0.1, "cosine", warmup_epochs=1) for k in range(spe * epochs + 1)]
    assert max(lrs) == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(lrs[:9], lrs[1:10])) and lrs[9] == pytest.approx(0.1)
    assert all(b < a for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)


def test_step_schedule_boundaries():
    spe = 4
    lr = lambda k: lr_at(k, spe, 30, 1.0, "step", step_size=3, gamma=0.5)  # noqa: E731
    assert lr(0) == lr(3 * spe - 1) == 1.0
    assert lr(3 * spe) == 0.5 and lr(6 * spe - 1) == 0.5
    assert lr(6 * spe) == 0.25


@needs_torch
def test_step_schedule_matches_torch_steplr():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.2)
    spe = 5
    for epoch in range(12):
        for i in range(spe):
            assert lr_at(epoch * spe + i, spe, 12, 0.3, "step", step_size=3, gamma=0.2) == \
                pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


@needs_torch
def test_cosine_matches_torch_cosine_annealing():
    spe, epochs = 6, 5
    total = spe * epochs
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.001)
    for k in range(total):
        assert lr_at(k, spe, epochs, 0.1, "cosine", min_lr=0.001) == \
            pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()


def test_lr_at_is_pure_and_validates():
    args = (17, 5, 10, 0.1, "cosine", 1.5)
    assert lr_at(*args) == lr_at(*args)
    assert math.isfinite(lr_at(0, 1, 1, 0.1, "cosine"))
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 5, 10, 0.1, "linear")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_at(0, 0, 10, 0.1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_allocates_no_parameter_sized_arrays(name):
    import tracemalloc

    size = 200_000  # 1.6 MB per float64 temporary: any would show up in the peak
    p = np.zeros(size)
    g = np.full(size, 0.1)
    opt = Optimizer(name, size, 0.1, weight_decay=0.01, dtype=np.float64)
    opt.step(p, g, 0.1)  # first step (may take its own branch)
    tracemalloc.start()
    try:
        opt.step(p, g, 0.1)
        opt.step(p, g, 0.05)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{name}: step allocated {peak} bytes"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,wd", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.0), ("adamw", 0.05)])
def test_fused_adam_is_bitwise_the_numpy_sequence(name, wd, dtype):
    """The one-pass kernel (Optimizer._adam) equals the 14 NumPy passes (_adam_numpy) bit for bit,
    over steps with changing lr, on values spanning many magnitudes (and zero gradients)."""
    rng = np.random.default_rng(7)
    size = 1001
    p0 = (rng.standard_normal(size) * np.exp(rng.uniform(-8, 4, size))).astype(dtype)
    a, b = (Optimizer(name, size, 1e-3, weight_decay=wd, dtype=dtype) for _ in range(2))
    pa, pb = p0.copy(), p0.copy()
    for k, lr in enumerate([1e-3, 3e-2, 1e-4, 1e-3, 0.5]):
        g = (rng.standard_normal(size) * np.exp(rng.uniform(-10, 3, size))).astype(dtype)
        g[:5] = 0
        a.t += 1
        b.t += 1
        a._adam(pa, g, lr)
        b._adam_numpy(pb, g, lr)
        assert pa.dtype == dtype
        assert np.array_equal(pa, pb), f"step {k}: params differ"
        assert np.array_equal(a.m, b.m) and np.array_equal(a.v, b.v), f"step {k}: moments differ"
    assert not np.array_equal(pa, p0)
