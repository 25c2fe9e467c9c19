"""Loss, every gradient and the running statistics equal a PyTorch autograd twin (float64, 1e-9).

The twin is cnncli.twin's (the one `cnn bench --vs-torch` runs): "channel" is torch's own
nn.BatchNorm2d/1d; "unit" is written in torch with mean/var over dim 0 (biased for normalising,
unbiased for running_var, as torch does).
"""

import numpy as np
import pytest

from cnncli import model as M

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the autograd twin is skipped")
from cnncli import twin as T  # noqa: E402  (after the skip: it needs torch)


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_loss_gradients_and_running_stats_equal_torch(bn):
    net = M.Network(10, bn, dtype=np.float64, seed=4)
    rng = np.random.default_rng(4)
    for name, arr in net.params.items():            # move BN params/biases off their init values
        if not name.endswith(".w"):
            arr += rng.uniform(-0.3, 0.3, arr.shape)
    tw = T.build_torch_twin(net.params, net.buffers, bn, eps=net.eps, momentum=net.momentum, dtype=np.float64)
    named = dict(tw.named_parameters())
    for step in range(3):
        x = rng.standard_normal((6, 1, 32, 32))
        labels = rng.integers(0, 10, 6)
        loss, probs = net.train_step(x, labels)
        tw.train()
        tw.zero_grad(set_to_none=True)
        tloss, _ = T.torch_loss(tw, torch.tensor(x), torch.tensor(labels))
        tloss.backward()
        assert abs(loss - tloss.item()) <= 1e-9 * abs(tloss.item())
        for name, g in net.grads.items():
            tg = named[T.twin_name(name)].grad.numpy()
            if bn != "none" and name in ("conv1.b", "conv2.b", "fc1.b"):
                # zero by construction (BN removes the mean): both are rounding noise
                assert np.max(np.abs(g)) < 1e-12 and np.max(np.abs(tg)) < 1e-12, name
                continue
            err = np.max(np.abs(g - tg)) / np.max(np.abs(tg))
            assert err < 1e-9, f"step {step} {name}: relative error {err:.2e}"
        state = tw.state_dict()
        for name, buf in net.buffers.items():
            tb = state[name].numpy()
            assert np.max(np.abs(buf - tb)) <= 1e-12 * max(1.0, np.max(np.abs(tb))), name
        # the same SGD step on both sides
        net.params.flat -= 0.05 * net.grads.flat
        T.copy_params(tw, net.params)


@pytest.mark.parametrize("bn", M.BATCHNORM)
def test_inference_equals_torch_eval_mode(bn):
    net = M.Network(12, bn, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for _ in range(3):
        net.train_step(rng.standard_normal((8, 1, 32, 32)), rng.integers(0, 12, 8))
        net.params.flat -= 0.02 * net.grads.flat
    x = rng.standard_normal((5, 1, 32, 32))
    tw = T.build_torch_twin(net.params, net.buffers, bn, eps=net.eps, momentum=net.momentum, dtype=np.float64)
    tw.eval()
    with torch.no_grad():
        tp = torch.sigmoid(tw(torch.tensor(x))).numpy()
    np.testing.assert_allclose(net.predict_proba(x), tp, rtol=1e-10, atol=1e-14)
