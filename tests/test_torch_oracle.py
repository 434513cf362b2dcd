"""PyTorch as an independent oracle: torch.nn.RNN/LSTM/GRU with the same weights and data.

Outputs, final states, loss and EVERY parameter gradient must agree in float64 to a relative
error of 1e-9, through variable lengths (pack_padded_sequence), stacking and bidirectional
layers, and for a seq2seq encoder-decoder built from two torch modules.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model
from seqgraph.engine.xp_extra import to_numpy

torch = pytest.importorskip("torch", reason="torch is the test-only oracle: pip install '.[test]'")
nn = torch.nn
RTOL = 1e-9

MODULES = {
    "rnn": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, {}),
    "gru": (nn.GRU, {}),
}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def seqgraph_spec(cell, layers, bidirectional, pattern, n_in, hidden, classes) -> dict:
    stack = [
        {"cell": cell, "hidden": hidden, "bidirectional": bidirectional} for _ in range(layers)
    ]
    return {
        "model": {
            "pattern": pattern,
            "input": {"type": "vectors", "size": n_in},
            "target": {"type": "ids", "vocab": classes},
            "layers": stack,
        }
    }


def torch_run(rnn, readout, x, lengths, y, pattern):
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, hidden = rnn(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    if pattern == "many_to_one":
        top = h_n[-2:] if rnn.bidirectional else h_n[-1:]
        logits = readout(torch.cat(list(top), dim=-1))
        loss = nn.functional.cross_entropy(logits, y, reduction="sum") / len(x)
    else:
        logits = readout(out)
        mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        loss = (ce * mask).sum() / len(x)
    return logits, h_n, loss


CASES = [
    (cell, layers, bi, pattern)
    for cell in MODULES
    for layers, bi in ((1, False), (2, False), (2, True))
    for pattern in ("many_to_many", "many_to_one")
]


@pytest.mark.parametrize("cell,layers,bidirectional,pattern", CASES)
def test_against_torch_modules(cell, layers, bidirectional, pattern):
    torch.manual_seed(0)
    B, T, n_in, hidden, classes = 4, 6, 3, 5, 4
    module, kwargs = MODULES[cell]
    rnn = module(
        n_in, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True, **kwargs
    ).double()
    readout = nn.Linear(hidden * (2 if bidirectional else 1), classes).double()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, n_in))
    lengths = np.array([6, 2, 5, 3])
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    y = rng.integers(0, classes, size=(B,) if pattern == "many_to_one" else (B, T))

    model = Model(
        seqgraph_spec(cell, layers, bidirectional, pattern, n_in, hidden, classes), dtype="float64"
    )
    weights = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    weights["out.W"] = readout.weight.detach().numpy().T
    weights["out.b"] = readout.bias.detach().numpy()
    model.import_params(weights, convention="pytorch")
    batch = {"x": x, "y": y, "lengths": lengths}
    out = model.forward(batch)
    loss, grads = model.loss_and_grads(batch)

    logits, h_n, t_loss = torch_run(
        rnn, readout, torch.tensor(x), torch.tensor(lengths), torch.tensor(y), pattern
    )
    t_loss.backward()
    assert rel_err(loss, t_loss.item()) < RTOL
    real = np.arange(T)[None, :] < lengths[:, None]
    ours = np.asarray(out["predictions"])
    theirs = logits.detach().numpy()
    assert (
        rel_err(
            ours[real] if pattern == "many_to_many" else ours,
            theirs[real] if pattern == "many_to_many" else theirs,
        )
        < RTOL
    )
    if not bidirectional:
        top = f"l{layers - 1}.h0"
        assert rel_err(out["state"][top], h_n[-1].detach().numpy()) < RTOL
    as_torch = model.export_params("pytorch", arrays=grads)
    errors = {
        name: rel_err(as_torch[name], param.grad.numpy()) for name, param in rnn.named_parameters()
    }
    errors["out.W"] = rel_err(as_torch["out.W"], readout.weight.grad.numpy().T)
    errors["out.b"] = rel_err(as_torch["out.b"], readout.bias.grad.numpy())
    print(
        f"float64 {cell} x{layers} bi={bidirectional} {pattern}: max gradient relative "
        f"error {max(errors.values()):.2e}"
    )
    assert max(errors.values()) < RTOL, errors


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled_bilstm_against_torch(pool):
    """`model.pool` on a BiLSTM, pooling written by hand in torch over the padded outputs of
    pack_padded_sequence: mean = the masked sum over the true length, max = amax after -inf
    at padded steps (pad_packed_sequence's zeros would otherwise win over negative values)."""
    torch.manual_seed(0)
    B, T, n_in, hidden, classes = 4, 6, 3, 5, 4
    rnn = nn.LSTM(n_in, hidden, bidirectional=True, batch_first=True).double()
    readout = nn.Linear(2 * hidden, classes).double()
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(B, T, n_in)), rng.integers(0, classes, size=B)
    lengths = np.array([6, 2, 5, 3])
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0

    raw = seqgraph_spec("lstm", 1, True, "many_to_one", n_in, hidden, classes)
    raw["model"]["pool"] = pool
    model = Model(raw, dtype="float64")
    weights = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    weights["out.W"] = readout.weight.detach().numpy().T
    weights["out.b"] = readout.bias.detach().numpy()
    model.import_params(weights, convention="pytorch")
    batch = {"x": x, "y": y, "lengths": lengths}
    ours = np.asarray(model.forward(batch)["predictions"])
    loss, grads = model.loss_and_grads(batch)

    t_len = torch.tensor(lengths)
    packed = nn.utils.rnn.pack_padded_sequence(
        torch.tensor(x), t_len, batch_first=True, enforce_sorted=False
    )
    out, _ = nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=T)
    real = (torch.arange(T)[None, :] < t_len[:, None])[:, :, None]
    if pool == "mean":
        pooled = (out * real).sum(dim=1) / t_len[:, None].double()
    else:
        pooled = out.masked_fill(~real, -torch.inf).amax(dim=1)
    logits = readout(pooled)
    t_loss = nn.functional.cross_entropy(logits, torch.tensor(y), reduction="sum") / B
    t_loss.backward()

    assert rel_err(loss, t_loss.item()) < RTOL
    assert rel_err(ours, logits.detach().numpy()) < RTOL
    as_torch = model.export_params("pytorch", arrays=grads)
    errors = {
        name: rel_err(as_torch[name], param.grad.numpy()) for name, param in rnn.named_parameters()
    }
    errors["out.W"] = rel_err(as_torch["out.W"], readout.weight.grad.numpy().T)
    errors["out.b"] = rel_err(as_torch["out.b"], readout.bias.grad.numpy())
    assert len(errors) == 10 and max(errors.values()) < RTOL, errors


def test_seq2seq_against_two_torch_modules():
    torch.manual_seed(0)
    B, T_in, T_out, vocab, emb, hidden, bos = 3, 5, 4, 7, 4, 6, 1
    spec = {
        "model": {
            "pattern": "encoder_decoder",
            "input": {"type": "ids", "vocab": vocab},
            "target": {"type": "ids", "vocab": vocab},
            "bos": bos,
            "encoders": [{"type": "embedding", "size": emb}],
            "feedback_encoders": [{"type": "embedding", "size": emb}],
            "layers": [{"cell": "gru", "hidden": hidden}],
        }
    }
    model = Model(spec, dtype="float64")
    enc_emb, dec_emb = nn.Embedding(vocab, emb).double(), nn.Embedding(vocab, emb).double()
    encoder = nn.GRU(emb, hidden, batch_first=True).double()
    decoder = nn.GRU(emb, hidden, batch_first=True).double()
    readout = nn.Linear(hidden, vocab).double()
    weights = {
        "enc0.E": enc_emb.weight.detach().numpy(),
        "fb0.E": dec_emb.weight.detach().numpy(),
        "out.W": readout.weight.detach().numpy().T,
        "out.b": readout.bias.detach().numpy(),
    }
    weights.update({k: v.detach().numpy() for k, v in encoder.state_dict().items()})
    weights.update(
        {k.replace("_l0", "_dec_l0"): v.detach().numpy() for k, v in decoder.state_dict().items()}
    )
    model.import_params(weights, convention="pytorch")

    rng = np.random.default_rng(2)
    x, y = rng.integers(0, vocab, (B, T_in)), rng.integers(0, vocab, (B, T_out))
    lengths, y_lengths = np.array([5, 2, 4]), np.array([4, 1, 3])
    batch = {"x": x, "y": y, "lengths": lengths, "y_lengths": y_lengths}
    loss, grads = model.loss_and_grads(batch)

    packed = nn.utils.rnn.pack_padded_sequence(
        enc_emb(torch.tensor(x)), torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    _, h = encoder(packed)
    feed = torch.tensor(np.concatenate([np.full((B, 1), bos), y[:, :-1]], axis=1))
    out, _ = decoder(dec_emb(feed), h)
    ce = nn.functional.cross_entropy(
        readout(out).transpose(1, 2), torch.tensor(y), reduction="none"
    )
    mask = torch.arange(T_out)[None, :] < torch.tensor(y_lengths)[:, None]
    t_loss = (ce * mask).sum() / B
    t_loss.backward()
    assert rel_err(loss, t_loss.item()) < RTOL
    assert rel_err(grads["enc0.E"], enc_emb.weight.grad.numpy()) < RTOL
    assert rel_err(grads["fb0.E"], dec_emb.weight.grad.numpy()) < RTOL
    assert rel_err(grads["l0.W_hh"], encoder.weight_hh_l0.grad.numpy().T) < RTOL
    assert rel_err(grads["dec.l0.W_ih"], decoder.weight_ih_l0.grad.numpy().T) < RTOL
    assert rel_err(grads["dec.l0.b_hh"], decoder.bias_hh_l0.grad.numpy()) < RTOL
    assert rel_err(grads["out.W"], readout.weight.grad.numpy().T) < RTOL


@pytest.mark.parametrize("cell", list(MODULES))
def test_float32_against_torch(cell):
    """The same comparison in float32 (seqgraph float32 vs torch float32): ~1e-6 relative."""
    torch.manual_seed(1)
    B, T, n_in, hidden, classes = 4, 8, 3, 6, 5
    module, kwargs = MODULES[cell]
    rnn = module(n_in, hidden, num_layers=2, bidirectional=True, batch_first=True, **kwargs)
    readout = nn.Linear(2 * hidden, classes)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(B, T, n_in)).astype(np.float32)
    lengths = np.array([8, 3, 5, 1])
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    y = rng.integers(0, classes, size=(B, T))
    model = Model(
        seqgraph_spec(cell, 2, True, "many_to_many", n_in, hidden, classes), dtype="float32"
    )
    weights = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    weights.update(
        {"out.W": readout.weight.detach().numpy().T, "out.b": readout.bias.detach().numpy()}
    )
    model.import_params(weights, convention="pytorch")
    loss, grads = model.loss_and_grads({"x": x, "y": y, "lengths": lengths})
    _, _, t_loss = torch_run(
        rnn, readout, torch.tensor(x), torch.tensor(lengths), torch.tensor(y), "many_to_many"
    )
    t_loss.backward()
    as_torch = model.export_params("pytorch", arrays=grads)
    errors = [rel_err(loss, t_loss.item())] + [
        rel_err(as_torch[n], p.grad.numpy()) for n, p in rnn.named_parameters()
    ]
    print(f"float32 {cell}: max relative error {max(errors):.2e}")
    assert max(errors) < 1e-4


def test_seq2seq_general_attention_against_torch():
    """Luong et al. (2015) global attention with the general score, written out in torch:
    a_ts = softmax_s(h_t^T W_a h_s) over the real source steps (-inf elsewhere),
    c_t = sum_s a_ts h_s, h~_t = tanh(W_c [c_t; h_t]), logits = readout(h~_t). torch's padded
    encoder outputs are zeros where seqgraph's carry the last state: the mask must hide both."""
    torch.manual_seed(0)
    B, T_in, T_out, vocab, emb, hidden, size, bos = 3, 5, 4, 7, 4, 6, 5, 1
    spec = {
        "model": {
            "pattern": "encoder_decoder",
            "input": {"type": "ids", "vocab": vocab},
            "target": {"type": "ids", "vocab": vocab},
            "bos": bos,
            "encoders": [{"type": "embedding", "size": emb}],
            "feedback_encoders": [{"type": "embedding", "size": emb}],
            "layers": [{"cell": "gru", "hidden": hidden}],
            "attention": {"type": "general", "size": size},
        }
    }
    model = Model(spec, dtype="float64")
    enc_emb, dec_emb = nn.Embedding(vocab, emb).double(), nn.Embedding(vocab, emb).double()
    encoder = nn.GRU(emb, hidden, batch_first=True).double()
    decoder = nn.GRU(emb, hidden, batch_first=True).double()
    readout = nn.Linear(size, vocab).double()
    W_a = nn.Parameter(torch.randn(hidden, hidden, dtype=torch.float64))
    W_c = nn.Parameter(torch.randn(2 * hidden, size, dtype=torch.float64) * 0.3)
    weights = {
        "enc0.E": enc_emb.weight.detach().numpy(),
        "fb0.E": dec_emb.weight.detach().numpy(),
        "out.W": readout.weight.detach().numpy().T,
        "out.b": readout.bias.detach().numpy(),
        "att.W_a": W_a.detach().numpy(),
        "att.W_c": W_c.detach().numpy(),
    }
    weights.update({k: v.detach().numpy() for k, v in encoder.state_dict().items()})
    weights.update(
        {k.replace("_l0", "_dec_l0"): v.detach().numpy() for k, v in decoder.state_dict().items()}
    )
    model.import_params(weights, convention="pytorch")

    rng = np.random.default_rng(2)
    x, y = rng.integers(0, vocab, (B, T_in)), rng.integers(0, vocab, (B, T_out))
    lengths, y_lengths = np.array([5, 2, 4]), np.array([4, 1, 3])
    batch = {"x": x, "y": y, "lengths": lengths, "y_lengths": y_lengths}
    loss, grads = model.loss_and_grads(batch)

    packed = nn.utils.rnn.pack_padded_sequence(
        enc_emb(torch.tensor(x)), torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    memory, h = encoder(packed)
    memory, _ = nn.utils.rnn.pad_packed_sequence(memory, batch_first=True, total_length=T_in)
    feed = torch.tensor(np.concatenate([np.full((B, 1), bos), y[:, :-1]], axis=1))
    out, _ = decoder(dec_emb(feed), h)
    scores = torch.einsum("bth,hk,bsk->bts", out, W_a, memory)
    real = torch.arange(T_in)[None, None, :] < torch.tensor(lengths)[:, None, None]
    a = torch.softmax(scores.masked_fill(~real, float("-inf")), dim=-1)
    h_tilde = torch.tanh(torch.cat([a @ memory, out], dim=-1) @ W_c)
    ce = nn.functional.cross_entropy(
        readout(h_tilde).transpose(1, 2), torch.tensor(y), reduction="none"
    )
    mask = torch.arange(T_out)[None, :] < torch.tensor(y_lengths)[:, None]
    t_loss = (ce * mask).sum() / B
    t_loss.backward()
    assert rel_err(loss, t_loss.item()) < RTOL
    expected = {
        "enc0.E": enc_emb.weight.grad,
        "fb0.E": dec_emb.weight.grad,
        "att.W_a": W_a.grad,
        "att.W_c": W_c.grad,
        "out.W": readout.weight.grad.T,
        "out.b": readout.bias.grad,
        "l0.W_ih": encoder.weight_ih_l0.grad.T,
        "l0.W_hh": encoder.weight_hh_l0.grad.T,
        "dec.l0.W_ih": decoder.weight_ih_l0.grad.T,
        "dec.l0.W_hh": decoder.weight_hh_l0.grad.T,
        "l0.b_ih": encoder.bias_ih_l0.grad,
        "l0.b_hh": encoder.bias_hh_l0.grad,
        "dec.l0.b_ih": decoder.bias_ih_l0.grad,
        "dec.l0.b_hh": decoder.bias_hh_l0.grad,
    }
    assert set(expected) == set(grads)
    errors = {name: rel_err(grads[name], want.numpy()) for name, want in expected.items()}
    assert max(errors.values()) < RTOL, errors
    # the weights forward returns, at real decoder steps (a padded one keeps its last state)
    weights_out = to_numpy(model.forward(batch)["attention"])
    np.testing.assert_allclose(
        weights_out[mask.numpy()], a.detach().numpy()[mask.numpy()], rtol=1e-12, atol=1e-15
    )
    assert np.all(weights_out[~np.broadcast_to(real.numpy(), weights_out.shape)] == 0)


@pytest.mark.parametrize(
    "stride, padding, kernel", [(2, 1, 4), (1, 0, 3), (3, 0, 3), (2, 0, (3, 2))]
)
def test_conv_transpose2d_matches_torch(stride, padding, kernel):
    """The output decoders' transposed convolution: forward and both gradients against
    torch.nn.functional.conv_transpose2d in float64 (PyTorch's (C_in, C_out, kh, kw) layout)."""
    import array_api_compat.numpy as xp

    from seqgraph.engine.ops import OPS

    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    rng = np.random.default_rng(stride * 10 + padding)
    x, W = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(3, 2, kh, kw))
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(W, requires_grad=True)
    want = nn.functional.conv_transpose2d(tx, tw, stride=stride, padding=padding)
    g = rng.normal(size=tuple(want.shape))
    want.backward(torch.tensor(g))
    op = OPS["conv_transpose2d"]
    got = op.forward(xp, x, W, stride=stride, padding=padding)
    gx, gW = op.vjp(xp, g, got, x, W, stride=stride, padding=padding)
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want.detach().numpy()) < 1e-12
    assert rel_err(gx, tx.grad.numpy()) < 1e-12
    assert rel_err(gW, tw.grad.numpy()) < 1e-12


def test_upsample_decoder_matches_torch_interpolate_and_conv():
    """upsample2d then conv2d (the `upsample` decoder) equals torch's nearest interpolate
    followed by conv2d, forward and gradients, in float64."""
    import array_api_compat.numpy as xp

    from seqgraph.engine.ops import OPS

    rng = np.random.default_rng(5)
    x, W = rng.normal(size=(2, 3, 3, 2)), rng.normal(size=(4, 3, 3, 3))
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(W, requires_grad=True)
    big = nn.functional.interpolate(tx, scale_factor=2, mode="nearest")
    want = nn.functional.conv2d(big, tw, padding=1)
    g = rng.normal(size=tuple(want.shape))
    want.backward(torch.tensor(g))
    up = OPS["upsample2d"].forward(xp, x, size=2)
    got = OPS["conv2d"].forward(xp, up, W, padding=1)
    g_up, gW = OPS["conv2d"].vjp(xp, g, got, up, W, padding=1)
    (gx,) = OPS["upsample2d"].vjp(xp, g_up, up, x, size=2)
    assert rel_err(got, want.detach().numpy()) < 1e-12
    assert rel_err(gx, tx.grad.numpy()) < 1e-12
    assert rel_err(gW, tw.grad.numpy()) < 1e-12
