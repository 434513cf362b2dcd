"""Hand-written NumPy RNN / GRU / LSTM training steps: the strong-engineer baseline for bench.py.

Same model and conventions as seqgraph's built-in cells (PyTorch gate order, weights stored
input-major `x @ W_ih`, two biases), a linear readout and per-step softmax cross-entropy
summed over steps and averaged over the batch. Done the way one would by hand: one GEMM
for the input projection of all steps before the loop, one fused gate GEMM per step,
preallocated arrays, and the weight gradients as one GEMM each after the backward loop.

    loss, grads = loss_and_grads("lstm", params, x, y)   # params/grads keyed like seqgraph
"""

from __future__ import annotations

import numpy as np

try:
    from scipy.special import expit
except ImportError:  # pragma: no cover
    expit = None


EXPIT_MAX_SIZE = 512  # the same rule as the sigmoid kernel's (seqgraph/engine/ops/core.py)


def sigmoid(a, out=None):
    """1 / (1 + exp(-a)). SciPy's expit is a scalar loop, several times slower than the
    vectorised tanh form on gate-sized blocks (89 vs 14 us on 64 x 256 float32 here); it
    wins only on small arrays, so this takes whichever is faster for the size."""
    if expit is not None and a.size <= EXPIT_MAX_SIZE:
        return expit(a, out=out)
    out = np.multiply(a, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _readout(hs, W, b, y, B):
    """Per-step softmax CE on hs (T, B, H) -> (loss, dlogits (T*B, C), dW, db)."""
    T, _, H = hs.shape
    logits = hs.reshape(T * B, H) @ W
    logits += b
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    total = logits.sum(axis=1, keepdims=True)
    rows = np.arange(T * B)
    targets = y.T.reshape(-1)
    loss = float(np.sum(np.log(total[:, 0]) - np.log(logits[rows, targets]))) / B
    logits /= total * B  # (softmax - onehot) / B
    logits[rows, targets] -= 1.0 / B
    return loss, logits, hs.reshape(T * B, H).T @ logits, logits.sum(axis=0)


def _project(x, W_ih, bias):
    """x (B, T, I) -> x W_ih + bias for every step at once, (T, B, G*H), and x as (T*B, I)."""
    B, T, n_in = x.shape
    xs = np.ascontiguousarray(x.transpose(1, 0, 2), dtype=W_ih.dtype).reshape(T * B, n_in)
    proj = xs @ W_ih
    proj += bias
    return proj.reshape(T, B, -1), xs


def lstm(p, x, y):
    W_ih, W_hh, W, b = p["l0.W_ih"], p["l0.W_hh"], p["out.W"], p["out.b"]
    B, T, _ = x.shape
    H = W_hh.shape[0]
    acts, xs = _project(x, W_ih, p["l0.b_ih"] + p["l0.b_hh"])  # becomes i, f, g, o
    hs = np.zeros((T + 1, B, H), W_hh.dtype)
    cs = np.zeros((T + 1, B, H), W_hh.dtype)
    tc = np.empty((T, B, H), W_hh.dtype)
    tmp = np.empty((B, H), W_hh.dtype)
    for t in range(T):
        a = acts[t]
        a += hs[t] @ W_hh
        sigmoid(a[:, : 2 * H], out=a[:, : 2 * H])
        np.tanh(a[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
        sigmoid(a[:, 3 * H :], out=a[:, 3 * H :])
        np.multiply(a[:, H : 2 * H], cs[t], out=cs[t + 1])
        np.multiply(a[:, :H], a[:, 2 * H : 3 * H], out=tmp)
        cs[t + 1] += tmp
        np.tanh(cs[t + 1], out=tc[t])
        np.multiply(a[:, 3 * H :], tc[t], out=hs[t + 1])
    loss, dlogits, dW, db = _readout(hs[1:], W, b, y, B)
    dhs = (dlogits @ W.T).reshape(T, B, H)
    dG = np.empty_like(acts)
    dc = np.zeros((B, H), W_hh.dtype)
    for t in reversed(range(T)):
        a, d, dh = acts[t], dG[t], dhs[t]
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        np.multiply(dh, tc[t], out=d[:, 3 * H :])  # do
        d[:, 3 * H :] *= o * (1 - o)
        np.multiply(dh, o, out=tmp)  # dc += dh * o * (1 - tanh(c)^2)
        tmp *= 1 - tc[t] * tc[t]
        dc += tmp
        np.multiply(dc, g, out=d[:, :H])
        d[:, :H] *= i * (1 - i)
        np.multiply(dc, cs[t], out=d[:, H : 2 * H])
        d[:, H : 2 * H] *= f * (1 - f)
        np.multiply(dc, i, out=d[:, 2 * H : 3 * H])
        d[:, 2 * H : 3 * H] *= 1 - g * g
        dc *= f
        if t:
            dhs[t - 1] += d @ W_hh.T
    return loss, _cell_grads(p, xs, hs, dG, dW, db)


def _cell_grads(p, xs, hs, dG, dW, db):
    T, B, N = dG.shape
    flat = dG.reshape(T * B, N)
    bias = flat.sum(axis=0)
    H = hs.shape[2]
    return {
        "l0.W_ih": xs.T @ flat,
        "l0.W_hh": hs[:-1].reshape(T * B, H).T @ flat,
        "l0.b_ih": bias,
        "l0.b_hh": bias.copy(),
        "out.W": dW,
        "out.b": db,
    }


def rnn(p, x, y):
    W_ih, W_hh, W, b = p["l0.W_ih"], p["l0.W_hh"], p["out.W"], p["out.b"]
    B, T, _ = x.shape
    H = W_hh.shape[0]
    pre, xs = _project(x, W_ih, p["l0.b_ih"] + p["l0.b_hh"])
    hs = np.zeros((T + 1, B, H), W_hh.dtype)
    for t in range(T):
        np.matmul(hs[t], W_hh, out=hs[t + 1])
        hs[t + 1] += pre[t]
        np.tanh(hs[t + 1], out=hs[t + 1])
    loss, dlogits, dW, db = _readout(hs[1:], W, b, y, B)
    dG = (dlogits @ W.T).reshape(T, B, H)
    for t in reversed(range(T)):
        dG[t] *= 1 - hs[t + 1] * hs[t + 1]
        if t:
            dG[t - 1] += dG[t] @ W_hh.T
    return loss, _cell_grads(p, xs, hs, dG, dW, db)


def gru(p, x, y):
    W_ih, W_hh, W, b = p["l0.W_ih"], p["l0.W_hh"], p["out.W"], p["out.b"]
    B, T, _ = x.shape
    H = W_hh.shape[0]
    xp, xs = _project(x, W_ih, p["l0.b_ih"])
    hh = np.empty_like(xp)  # h W_hh + b_hh per step (its n part is needed by backward)
    act = np.empty_like(xp)  # r, z, n after their nonlinearity
    hs = np.zeros((T + 1, B, H), W_hh.dtype)
    for t in range(T):
        np.matmul(hs[t], W_hh, out=hh[t])
        hh[t] += p["l0.b_hh"]
        a = act[t]
        np.add(xp[t, :, : 2 * H], hh[t, :, : 2 * H], out=a[:, : 2 * H])
        sigmoid(a[:, : 2 * H], out=a[:, : 2 * H])
        np.multiply(a[:, :H], hh[t, :, 2 * H :], out=a[:, 2 * H :])
        a[:, 2 * H :] += xp[t, :, 2 * H :]
        np.tanh(a[:, 2 * H :], out=a[:, 2 * H :])
        n, z = a[:, 2 * H :], a[:, H : 2 * H]
        np.subtract(hs[t], n, out=hs[t + 1])  # h = n + z * (h - n)
        hs[t + 1] *= z
        hs[t + 1] += n
    loss, dlogits, dW, db = _readout(hs[1:], W, b, y, B)
    dhs = (dlogits @ W.T).reshape(T, B, H)
    dX = np.empty_like(xp)  # gradient of x W_ih + b_ih
    dHH = np.empty_like(xp)  # gradient of h W_hh + b_hh
    for t in reversed(range(T)):
        a, dh = act[t], dhs[t]
        r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
        dn = dh * (1 - z) * (1 - n * n)
        dX[t, :, H : 2 * H] = dh * (hs[t] - n) * z * (1 - z)
        dX[t, :, 2 * H :] = dn
        dX[t, :, :H] = dn * hh[t, :, 2 * H :] * r * (1 - r)
        dHH[t, :, : 2 * H] = dX[t, :, : 2 * H]
        np.multiply(dn, r, out=dHH[t, :, 2 * H :])
        if t:
            dhs[t - 1] += dh * z + dHH[t] @ W_hh.T
    grads = _cell_grads(p, xs, hs, dHH, dW, db)
    flat = dX.reshape(T * B, -1)
    grads["l0.W_ih"], grads["l0.b_ih"] = xs.T @ flat, flat.sum(axis=0)
    return loss, grads


def loss_and_grads(cell: str, params: dict, x: np.ndarray, y: np.ndarray):
    """One training step of a 1-layer `cell` model: (loss, grads keyed like params)."""
    return {"rnn": rnn, "gru": gru, "lstm": lstm}[cell](params, x, y)
