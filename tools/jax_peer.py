"""The JAX peer for bench.py: `jit(value_and_grad(loss))` with the recurrence as `lax.scan`.

Same model as seqgraph's built-in cells and tools/numpy_hand.py (PyTorch gate order, weights
stored input-major `x @ W_ih`, two biases), a linear readout and per-step softmax
cross-entropy summed over steps and averaged over the batch, in float32 on the CPU.

    step = make_step("lstm", params, x, y)   # params keyed like seqgraph's; step() -> loss
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _cell(cell: str, p: dict, H: int):
    """step(h or (h, c), projected input) -> (new carry, output h)."""

    def rnn(h, xw):
        h = jnp.tanh(xw + h @ p["l0.W_hh"] + p["l0.b_hh"])
        return h, h

    def gru(h, xw):
        hw = h @ p["l0.W_hh"] + p["l0.b_hh"]
        r = jax.nn.sigmoid(xw[:, :H] + hw[:, :H])
        z = jax.nn.sigmoid(xw[:, H : 2 * H] + hw[:, H : 2 * H])
        n = jnp.tanh(xw[:, 2 * H :] + r * hw[:, 2 * H :])
        h = (1 - z) * n + z * h
        return h, h

    def lstm(carry, xw):
        h, c = carry
        gates = xw + h @ p["l0.W_hh"] + p["l0.b_hh"]
        i, f = jax.nn.sigmoid(gates[:, :H]), jax.nn.sigmoid(gates[:, H : 2 * H])
        g, o = jnp.tanh(gates[:, 2 * H : 3 * H]), jax.nn.sigmoid(gates[:, 3 * H :])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    return {"rnn": rnn, "gru": gru, "lstm": lstm}[cell]


def make_step(cell: str, params: dict, x: np.ndarray, y: np.ndarray):
    """A function that runs one jitted training step (loss and every gradient)."""
    B, T, _ = x.shape
    H = params["l0.W_hh"].shape[0]
    xs = jnp.asarray(np.ascontiguousarray(x.transpose(1, 0, 2)), dtype=jnp.float32)
    ys = jnp.asarray(y.T)
    p0 = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in params.items()}

    def loss(p):
        step = _cell(cell, p, H)
        projected = xs @ p["l0.W_ih"] + p["l0.b_ih"]  # every step's input in one GEMM
        h0 = jnp.zeros((B, H), jnp.float32)
        _, hs = jax.lax.scan(step, (h0, h0) if cell == "lstm" else h0, projected)
        logits = hs @ p["out.W"] + p["out.b"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, ys[..., None], axis=-1)
        return -jnp.sum(picked) / B

    compiled = jax.jit(jax.value_and_grad(loss))

    def run():
        value, grads = compiled(p0)
        jax.block_until_ready(grads)
        return float(value)

    return run
