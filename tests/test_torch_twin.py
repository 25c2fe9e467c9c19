"""Loss, every gradient and the running statistics equal a PyTorch autograd twin (float64, 1e-9).

"channel" uses torch's own batch_norm (nn.BatchNorm2d/1d semantics); "unit" is written in torch
with mean/var over dim 0 (biased for normalising, unbiased for running_var, as torch does).
"""

import numpy as np
import pytest

from cnncli import model as M

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the autograd twin is skipped")
F = torch.nn.functional


def torch_loss(P, B, x, labels, bn, eps=1e-5, momentum=0.1):
    """P: name -> leaf tensor (requires_grad); B: name -> tensor of running stats (updated in place)."""
    N = x.shape[0]

    def norm(z, k):
        if bn == "none":
            return z
        g, b = P[f"bn{k}.gamma"], P[f"bn{k}.beta"]
        rm, rv = B[f"bn{k}.running_mean"], B[f"bn{k}.running_var"]
        if bn == "channel" or z.dim() == 2:
            return F.batch_norm(z, rm, rv, g, b, training=True, momentum=momentum, eps=eps)
        mean = z.mean(0)
        var = z.var(0, unbiased=False)
        with torch.no_grad():
            rm.mul_(1 - momentum).add_(momentum * mean)
            rv.mul_(1 - momentum).add_(momentum * z.var(0, unbiased=True))
        return (z - mean) / torch.sqrt(var + eps) * g + b

    a = F.max_pool2d(F.elu(norm(F.conv2d(x, P["conv1.w"], P["conv1.b"], padding=2), 1)), 2)
    a = F.max_pool2d(F.elu(norm(F.conv2d(a, P["conv2.w"], P["conv2.b"], padding=2), 2)), 2)
    a = F.elu(norm(F.linear(a.reshape(N, -1), P["fc1.w"], P["fc1.b"]), 3))
    z = F.linear(a, P["fc2.w"], P["fc2.b"])
    y = F.one_hot(labels, z.shape[1]).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / N


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_loss_gradients_and_running_stats_equal_torch(bn):
    net = M.Network(10, bn, dtype=np.float64, seed=4)
    rng = np.random.default_rng(4)
    for name, arr in net.params.items():            # move BN params/biases off their init values
        if not name.endswith(".w"):
            arr += rng.uniform(-0.3, 0.3, arr.shape)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in net.params.items()}
    B = {k: torch.tensor(v.copy()) for k, v in net.buffers.items()}
    for step in range(3):
        x = rng.standard_normal((6, 1, 32, 32))
        labels = rng.integers(0, 10, 6)
        loss, probs = net.train_step(x, labels)
        for p in P.values():
            p.grad = None
        tloss = torch_loss(P, B, torch.tensor(x), torch.tensor(labels), bn)
        tloss.backward()
        assert abs(loss - tloss.item()) <= 1e-9 * abs(tloss.item())
        for name, g in net.grads.items():
            tg = P[name].grad.numpy()
            if bn != "none" and name in ("conv1.b", "conv2.b", "fc1.b"):
                # zero by construction (BN removes the mean): both are rounding noise
                assert np.max(np.abs(g)) < 1e-12 and np.max(np.abs(tg)) < 1e-12, name
                continue
            err = np.max(np.abs(g - tg)) / np.max(np.abs(tg))
            assert err < 1e-9, f"step {step} {name}: relative error {err:.2e}"
        for name, buf in net.buffers.items():
            tb = B[name].numpy()
            assert np.max(np.abs(buf - tb)) <= 1e-12 * max(1.0, np.max(np.abs(tb))), name
        # the same SGD step on both sides
        net.params.flat -= 0.05 * net.grads.flat
        with torch.no_grad():
            for name, p in P.items():
                p.copy_(torch.tensor(net.params[name]))


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_inference_equals_torch_eval_mode(bn):
    net = M.Network(12, bn, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for _ in range(3):
        net.train_step(rng.standard_normal((8, 1, 32, 32)), rng.integers(0, 12, 8))
        net.params.flat -= 0.02 * net.grads.flat
    x = rng.standard_normal((5, 1, 32, 32))
    P = {k: torch.tensor(v) for k, v in net.params.items()}
    B = {k: torch.tensor(v) for k, v in net.buffers.items()}
    t = torch.tensor(x)

    def norm(z, k):
        if bn == "none":
            return z
        g, b = P[f"bn{k}.gamma"], P[f"bn{k}.beta"]
        rm, rv = B[f"bn{k}.running_mean"], B[f"bn{k}.running_var"]
        if bn == "channel" or z.dim() == 2:
            return F.batch_norm(z, rm, rv, g, b, training=False, eps=1e-5)
        return (z - rm) / torch.sqrt(rv + 1e-5) * g + b

    a = F.max_pool2d(F.elu(norm(F.conv2d(t, P["conv1.w"], P["conv1.b"], padding=2), 1)), 2)
    a = F.max_pool2d(F.elu(norm(F.conv2d(a, P["conv2.w"], P["conv2.b"], padding=2), 2)), 2)
    a = F.elu(norm(F.linear(a.reshape(5, -1), P["fc1.w"], P["fc1.b"]), 3))
    tp = torch.sigmoid(F.linear(a, P["fc2.w"], P["fc2.b"])).numpy()
    np.testing.assert_allclose(net.predict_proba(x), tp, rtol=1e-10, atol=1e-14)
