"""Slow, obviously-correct NumPy reference of every layer and of the whole network's loss.

Written straight from the formulas (docs: ../shared/seed, sections 1-7, 16-20), independent of
cnncli.kernels; the tests compare the Numba kernels against it.
"""

import numpy as np


def pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def conv2d_forward(x, w, b, p):
    # x (N,C,H,W) w (F,C,K,K) b (F,) -> (N,F,H,W); z = b + sum_{c,ky,kx} w * xp[.., y+ky, x+kx]
    N, C, H, W = x.shape
    F, _, K, _ = w.shape
    xp = pad(x, p)
    Ho, Wo = H + 2 * p - K + 1, W + 2 * p - K + 1
    z = np.zeros((N, F, Ho, Wo), dtype=np.float64) + b.reshape(1, F, 1, 1)
    for ky in range(K):
        for kx in range(K):
            z += np.einsum("nchw,fc->nfhw", xp[:, :, ky:ky + Ho, kx:kx + Wo], w[:, :, ky, kx])
    return z


def conv2d_backward(dz, x, w, p):
    # -> dx (N,C,H,W), dw (F,C,K,K), db (F,)
    N, C, H, W = x.shape
    F, _, K, _ = w.shape
    xp = pad(x, p)
    Ho, Wo = dz.shape[2:]
    dxp = np.zeros(xp.shape)
    dw = np.zeros(w.shape)
    for ky in range(K):
        for kx in range(K):
            dw[:, :, ky, kx] = np.einsum("nfhw,nchw->fc", dz, xp[:, :, ky:ky + Ho, kx:kx + Wo])
            dxp[:, :, ky:ky + Ho, kx:kx + Wo] += np.einsum("nfhw,fc->nchw", dz, w[:, :, ky, kx])
    db = dz.sum(axis=(0, 2, 3))
    return dxp[:, :, p:p + H, p:p + W], dw, db


def maxpool_forward(a):
    # a (N,C,H,W) -> out (N,C,H/2,W/2), argmax in 0..3 (2*dy+dx), first maximum on ties
    N, C, H, W = a.shape
    win = a.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)
    return win.max(axis=-1), win.argmax(axis=-1)


def maxpool_backward(dout, arg):
    N, C, Ho, Wo = dout.shape
    da = np.zeros((N, C, Ho, 2, Wo, 2))
    for k in range(4):
        dy, dx = divmod(k, 2)
        da[:, :, :, dy, :, dx] = np.where(arg == k, dout, 0)
    return da.reshape(N, C, 2 * Ho, 2 * Wo)


def elu(z):
    return np.where(z >= 0, z, np.expm1(np.minimum(z, 0)))


def elu_grad(z):
    return np.where(z >= 0, 1.0, np.exp(np.minimum(z, 0)))


def bn_forward(z, gamma, beta, eps, axes):
    # statistics over `axes` (biased variance); gamma/beta broadcast over them
    mean = z.mean(axis=axes, keepdims=True)
    var = ((z - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = (z - mean) / np.sqrt(var + eps)
    return gamma * xhat + beta, xhat, mean, var


def bn_backward(dy, z, gamma, eps, axes):
    # plain chain rule through mean and variance (the seed's section 19 formula)
    M = np.prod([z.shape[a] for a in axes])
    mean = z.mean(axis=axes, keepdims=True)
    var = ((z - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    xhat = (z - mean) * inv
    dxhat = dy * gamma
    dvar = np.sum(dxhat * (z - mean), axis=axes, keepdims=True) * -0.5 * inv ** 3
    dmean = -np.sum(dxhat * inv, axis=axes, keepdims=True) + dvar * np.mean(-2 * (z - mean), axis=axes, keepdims=True)
    dz = dxhat * inv + dvar * 2 * (z - mean) / M + dmean / M
    dgamma = np.sum(dy * xhat, axis=axes)
    dbeta = np.sum(dy, axis=axes)
    return dz, dgamma, dbeta


def sigmoid_bce(z, labels, weights=None):
    # mean over batch of weight * sum over classes of BCE(sigmoid(z), onehot); plain (not
    # log-sigmoid) form; weights (N,) default 1
    N, C = z.shape
    w = np.ones(N) if weights is None else np.asarray(weights, np.float64)
    y = np.eye(C)[labels]
    p = 1 / (1 + np.exp(-z))
    loss = -np.sum(w[:, None] * (y * np.log(p) + (1 - y) * np.log(1 - p))) / N
    return loss, p, (p - y) * w[:, None] / N


def network_loss(params, x, labels, batchnorm="none", eps=1e-5, weights=None):
    """Training-mode loss of the whole network, from the reference layers, in float64."""
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x, dtype=np.float64)
    N = x.shape[0]

    def bn(z, k):
        if batchnorm == "none":
            return z
        g, b = P[f"bn{k}.gamma"], P[f"bn{k}.beta"]
        if batchnorm == "unit" or z.ndim == 2:
            return bn_forward(z, g, b, eps, (0,))[0]
        return bn_forward(z, g.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1), eps, (0, 2, 3))[0]

    a = elu(bn(conv2d_forward(x, P["conv1.w"], P["conv1.b"], 2), 1))
    a = maxpool_forward(a)[0]
    a = elu(bn(conv2d_forward(a, P["conv2.w"], P["conv2.b"], 2), 2))
    a = maxpool_forward(a)[0].reshape(N, -1)
    a = elu(bn(a @ P["fc1.w"].T + P["fc1.b"], 3))
    z = a @ P["fc2.w"].T + P["fc2.b"]
    return sigmoid_bce(z, labels, weights)


def network_predict(params, buffers, x, batchnorm="none", eps=1e-5):
    """Inference-mode probabilities (running statistics) from the reference layers, in float64."""
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    B = {k: np.asarray(v, dtype=np.float64) for k, v in (buffers or {}).items()}
    x = np.asarray(x, dtype=np.float64)
    N = x.shape[0]

    def bn(z, k):
        if batchnorm == "none":
            return z
        stats = [P[f"bn{k}.gamma"], P[f"bn{k}.beta"], B[f"bn{k}.running_mean"], B[f"bn{k}.running_var"]]
        if batchnorm == "channel" and z.ndim == 4:
            stats = [s.reshape(1, -1, 1, 1) for s in stats]
        g, b, m, v = stats
        return g * (z - m) / np.sqrt(v + eps) + b

    a = maxpool_forward(elu(bn(conv2d_forward(x, P["conv1.w"], P["conv1.b"], 2), 1)))[0]
    a = maxpool_forward(elu(bn(conv2d_forward(a, P["conv2.w"], P["conv2.b"], 2), 2)))[0].reshape(N, -1)
    a = elu(bn(a @ P["fc1.w"].T + P["fc1.b"], 3))
    return 1 / (1 + np.exp(-(a @ P["fc2.w"].T + P["fc2.b"])))


def network_loss_and_grads(params, x, labels, batchnorm="none", eps=1e-5, weights=None):
    """Training-mode loss and the gradient of every parameter tensor (name -> array), in float64:
    the reference layers' backward functions chained by hand, independently of cnncli.model."""
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x, dtype=np.float64)
    N = x.shape[0]
    G = {}

    def bn(z, k):
        """-> (y, backward(dy) -> dz) for the batch norm of layer k (identity without BN)."""
        if batchnorm == "none":
            return z, lambda dy: dy
        g, b = P[f"bn{k}.gamma"], P[f"bn{k}.beta"]
        axes = (0,) if (batchnorm == "unit" or z.ndim == 2) else (0, 2, 3)
        shape = g.shape if axes == (0,) else (1, -1, 1, 1)
        y = bn_forward(z, g.reshape(shape), b.reshape(shape), eps, axes)[0]

        def back(dy):
            dz, G[f"bn{k}.gamma"], G[f"bn{k}.beta"] = bn_backward(dy, z, g.reshape(shape), eps, axes)
            G[f"bn{k}.gamma"] = G[f"bn{k}.gamma"].reshape(g.shape)
            G[f"bn{k}.beta"] = G[f"bn{k}.beta"].reshape(g.shape)
            return dz
        return y, back

    y1, back1 = bn(conv2d_forward(x, P["conv1.w"], P["conv1.b"], 2), 1)
    p1, arg1 = maxpool_forward(elu(y1))
    y2, back2 = bn(conv2d_forward(p1, P["conv2.w"], P["conv2.b"], 2), 2)
    p2, arg2 = maxpool_forward(elu(y2))
    f = p2.reshape(N, -1)
    y3, back3 = bn(f @ P["fc1.w"].T + P["fc1.b"], 3)
    a3 = elu(y3)
    loss, _, dz4 = sigmoid_bce(a3 @ P["fc2.w"].T + P["fc2.b"], labels, weights)
    # backward: the forward reversed
    G["fc2.w"], G["fc2.b"] = dz4.T @ a3, dz4.sum(0)
    dz3 = back3(dz4 @ P["fc2.w"] * elu_grad(y3))
    G["fc1.w"], G["fc1.b"] = dz3.T @ f, dz3.sum(0)
    dz2 = back2(maxpool_backward((dz3 @ P["fc1.w"]).reshape(p2.shape), arg2) * elu_grad(y2))
    dp1, G["conv2.w"], G["conv2.b"] = conv2d_backward(dz2, p1, P["conv2.w"], 2)
    dz1 = back1(maxpool_backward(dp1, arg1) * elu_grad(y1))
    _, G["conv1.w"], G["conv1.b"] = conv2d_backward(dz1, x, P["conv1.w"], 2)
    return loss, G
