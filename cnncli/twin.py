"""The PyTorch twin of cnncli's network: the same layers, loss, BN variants and parameter layout.
It is not a trainer (it mirrors one step at a time) and imports torch only inside its functions.
"""

# `cnn bench --vs-torch`, scripts/bench_memory.py and the autograd tests (tests/test_torch_twin.py,
# tests/test_bench.py) all build their PyTorch copy here, so there is one definition to keep equal
# to cnncli.model. torch is imported only inside the functions (it is a test-only extra); this module
# imports neither numba nor cnncli's kernels. It is not a trainer: it mirrors one step at a time.

from __future__ import annotations

import numpy as np

# our parameter/buffer field -> torch's ("conv1.w" -> "conv1.weight", "bn1.gamma" -> "bn1.weight")
_FIELDS = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
           "running_mean": "running_mean", "running_var": "running_var"}


def twin_name(name: str) -> str:
    """The twin's state_dict name of one of our parameter or buffer names."""
    layer, field = name.split(".", 1)
    return f"{layer}.{_FIELDS[field]}"


def our_name(twin_param: str) -> str:
    """Our parameter name of one of the twin's parameter names (the inverse of twin_name on parameters)."""
    layer, field = twin_param.split(".")
    if layer.startswith("bn"):
        return f"{layer}.{ {'weight': 'gamma', 'bias': 'beta'}[field] }"
    return f"{layer}.{ {'weight': 'w', 'bias': 'b'}[field] }"


def torch_loss(model, x, y):
    """(loss, probs): mean over the batch of the sum over classes of BCE(sigmoid(z), onehot) -- our loss."""
    import torch
    import torch.nn.functional as F

    z = model(x)                                                   # (N,C)
    onehot = F.one_hot(y.long(), z.shape[1]).to(z.dtype)           # (N,C)
    loss = F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / z.shape[0]
    return loss, torch.sigmoid(z.detach())


def _unit_batchnorm(shape, eps, momentum):
    """Per-unit BN: statistics over dim 0 only; biased variance to normalise, unbiased for running_var."""
    import torch
    from torch import nn

    class UnitBatchNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(shape))
            self.bias = nn.Parameter(torch.zeros(shape))
            self.register_buffer("running_mean", torch.zeros(shape))
            self.register_buffer("running_var", torch.ones(shape))

        def forward(self, x):
            if self.training:
                mean = x.mean(0)
                var = x.var(0, unbiased=False)
                with torch.no_grad():
                    n = x.shape[0]
                    self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                    self.running_var.mul_(1 - momentum).add_(var.detach() * (n / max(n - 1, 1)), alpha=momentum)
            else:
                mean, var = self.running_mean, self.running_var
            return (x - mean) / torch.sqrt(var + eps) * self.weight + self.bias

    return UnitBatchNorm()


def _twin_module(batchnorm, num_classes, eps, momentum):
    """An uninitialised torch.nn.Module with cnncli.model's layers and names."""
    import torch.nn.functional as F
    from torch import nn

    def bn(kind, channels, unit_shape):
        if batchnorm == "none":
            return nn.Identity()
        if batchnorm == "unit":
            return _unit_batchnorm(unit_shape, eps, momentum)
        return (nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d)(channels, eps=eps, momentum=momentum)

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.bn1 = bn("2d", 6, (6, 32, 32))
            self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
            self.bn2 = bn("2d", 16, (16, 16, 16))
            self.fc1 = nn.Linear(1024, 65)
            self.bn3 = bn("1d", 65, (65,))
            self.fc2 = nn.Linear(65, num_classes)

        def forward(self, x):                                          # (N,1,32,32)
            x = F.max_pool2d(F.elu(self.bn1(self.conv1(x))), 2)        # (N,6,16,16)
            x = F.max_pool2d(F.elu(self.bn2(self.conv2(x))), 2)        # (N,16,8,8)
            x = F.elu(self.bn3(self.fc1(x.flatten(1))))                # (N,65)
            return self.fc2(x)                                         # (N,C) logits

    return Twin()


def build_torch_twin(params, buffers, batchnorm, eps=1e-5, momentum=0.1, dtype=np.float32):
    """A torch.nn.Module computing what cnncli.model computes, initialised with `params`/`buffers`.

    conv 5x5x6 pad 2 [BN] ELU maxpool 2, conv 5x5x16 pad 2 [BN] ELU maxpool 2, flatten,
    fc 1024->65 [BN] ELU, fc 65->C. BN "channel" = BatchNorm2d/1d; "unit" = one mean/var per
    unit (C,H,W) over the batch dimension only. Raises ValueError when the names do not match.
    """
    import torch

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
    twin = _twin_module(batchnorm, params["fc2.w"].shape[0], eps, momentum).to(tdtype)
    state = {twin_name(key): torch.from_numpy(np.array(value, dtype=dtype))
             for source in (params, buffers or {}) for key, value in source.items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"params: torch twin does not match the parameter layout (missing {missing}, "
                         f"unexpected {unexpected})")
    return twin


def copy_params(twin, params) -> None:
    """Overwrite the twin's parameters with ours (name by name, in place, dtype kept)."""
    import torch

    named = dict(twin.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            named[twin_name(name)].copy_(torch.from_numpy(np.asarray(value)))


class Torch:
    """The twin of a cnncli.model.Network with torch.optim.Adam, behind the bench's train(x, y)/infer(x)."""

    name = "torch"

    def __init__(self, net, batchnorm, optimizer="adam", lr=1e-3):
        import torch

        if optimizer != "adam":
            raise ValueError(f"optimizer: the torch twin only mirrors 'adam', got {optimizer!r}")
        self.torch = torch
        self.model = build_torch_twin(net.params, net.buffers, batchnorm, eps=net.eps, momentum=net.momentum,
                                      dtype=net.dtype)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)

    def train(self, x, y):
        xt, yt = self.torch.from_numpy(x), self.torch.from_numpy(y)  # zero-copy views
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss, _ = torch_loss(self.model, xt, yt)
        loss.backward()
        self.opt.step()
        return loss.item()

    def infer(self, x):
        xt = self.torch.from_numpy(x)
        self.model.eval()
        with self.torch.inference_mode():
            return self.torch.sigmoid(self.model(xt))
