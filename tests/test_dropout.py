"""Dropout: layer, encoder, variational recurrent and in-cell `dropout(x, p)`.

The masks are leaves drawn from (seed, step, node key), so: the plan gives the interpreter's
numbers with them, a resumed run reaches the same parameters bit for bit, evaluation (no
`dropout` request in the batch) runs a graph without any, and an LSTM with the same masks
applied by hand in PyTorch gives the same loss and gradients. (The op's finite-difference rows
are in test_ops.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from support import require_gpu

from seqgraph import Model, SpecError, api, load_spec
from seqgraph.cli import main
from seqgraph.runtime import batch as batching
from seqgraph.runtime.masks import dropout_mask
from seqgraph.spec.unroll import compile_graph
from seqgraph.train import run_folder

REQUEST = {"seed": 5, "step": 11}


def lstm_spec(pattern="many_to_many", layers=1, encoders=(), ids=False, **layer) -> dict:
    model = {
        "pattern": pattern,
        "input": {"type": "ids", "vocab": 6} if ids else {"type": "vectors", "size": 3},
        "target": {"type": "ids", "vocab": 3},
        "encoders": list(encoders),
        "layers": [{"cell": "lstm", "hidden": 4, **layer}] * layers,
    }
    return {"model": model, "dtype": "float64", "seed": 2}


def gru_spec(**layer) -> dict:
    raw = lstm_spec(**layer)
    raw["model"]["layers"] = [{"cell": "gru", "hidden": 4, **layer}]
    return raw


def conv_spec() -> dict:
    """Image frames through two convs: the first one's mask is (channels, height, width)."""
    raw = lstm_spec(dropout=0.2)
    raw["model"]["input"] = {"type": "images", "shape": [1, 4, 4]}
    raw["model"]["encoders"] = [
        {"type": "conv", "channels": 2, "dropout": 0.3},
        {"type": "conv", "channels": 2, "pool": 1, "dropout": 0.4},
    ]
    return raw


def with_dropout(batch: dict, **request) -> dict:
    return {**batch, "dropout": {**REQUEST, **request}}


def masks_of(model: Model, batch: dict) -> dict:
    """The value of every dropout mask leaf of the training graph for this batch."""
    _, steps, _ = batching.shape_of(model.spec, batch)
    graph = compile_graph(model.spec, steps, train=True)
    feeds = batching.feeds(model.spec, graph, batch)
    return {key: feeds[key] for key, role in graph.inputs.items() if role["role"] == "dropout"}


# ---- the plan and the interpreter draw and apply the same masks -----------------------------


@pytest.mark.parametrize(
    "raw",
    [
        lstm_spec(layers=2, dropout=0.3, recurrent_dropout=0.4),
        lstm_spec("many_to_one", bidirectional=True, dropout=0.5, recurrent_dropout=0.2),
        lstm_spec(ids=True, encoders=[{"type": "embedding", "size": 5, "dropout": 0.25}]),
        lstm_spec(
            ids=True,
            encoders=[{"type": "embedding", "size": 5, "word_dropout": 0.3, "dropout": 0.25}],
        ),
        gru_spec(recurrent_dropout=0.3),
        conv_spec(),
        lstm_spec(layers=2, layer_norm=True, dropout=0.2, recurrent_dropout=0.3),
        gru_spec(layer_norm=True, recurrent_dropout=0.3),
    ],
    ids=[
        "stacked",
        "many_to_one_bidirectional",
        "encoder",
        "word_dropout",
        "gru",
        "conv_encoders",
        "layer_norm_lstm",  # the layer-normalised cells read recurrent_dropout too
        "layer_norm_gru",
    ],
)
def test_plan_matches_interpreter_with_the_same_masks(raw):
    plan = Model(raw, engine="plan")
    interp = Model(raw, engine="interp")
    batch = with_dropout(batching.dummy(plan.spec, 3, 5))
    batch["lengths"] = np.array([5, 2, 4])
    loss, grads = interp.loss_and_grads(batch)
    for _ in range(2):  # the plan's buffers are reused: the second call reloads the masks
        got_loss, got = plan.loss_and_grads(batch)
        assert got_loss == pytest.approx(loss, rel=1e-12)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-13)
    no_dropout, _ = interp.loss_and_grads({k: v for k, v in batch.items() if k != "dropout"})
    assert abs(no_dropout - loss) > 1e-6  # the masks did act


def test_masks_keep_time_batching_intact():
    """Per-step masks batch with the steps; the variational mask is one node every step
    reads, so the input projections and the readout still run once over all steps."""
    model = Model(lstm_spec(layers=2, dropout=0.3, recurrent_dropout=0.4))
    batch = with_dropout(batching.dummy(model.spec, 2, 6))
    plan = model.plan(batch)
    assert {("l0", "t#1"), ("l1", "t#1"), ("l0", "drop"), ("out", "xW")} <= set(plan.batched)
    recurrent = [k for k in masks_of(model, batch) if k[1] == "dropout1.mask"]
    assert recurrent == [("l0", "dropout1.mask", None), ("l1", "dropout1.mask", None)]


@pytest.mark.gpu
def test_cupy_drops_the_units_numpy_drops():
    """Masks are drawn on the host and copied, so CuPy's loss and gradients are NumPy's."""
    cupy = require_gpu()
    raw = lstm_spec(layers=2, dropout=0.3, recurrent_dropout=0.4)
    reference, other = Model(raw), Model(raw, backend="cupy")
    batch = with_dropout(batching.dummy(reference.spec, 3, 5))
    want_loss, want = reference.loss_and_grads(batch)
    got_loss, got = other.loss_and_grads(batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-10)
    for name in want:
        np.testing.assert_allclose(cupy.asnumpy(got[name]), want[name], rtol=1e-9, atol=1e-12)


# ---- evaluation has no dropout ---------------------------------------------------------------


def test_evaluation_equals_the_model_without_dropout():
    raw = lstm_spec(layers=2, dropout=0.5, recurrent_dropout=0.5)
    model, plain = Model(raw), Model(lstm_spec(layers=2))
    plain.set_params(model.params)
    batch = batching.dummy(model.spec, 3, 4)
    evaluated = model.forward(batch)
    np.testing.assert_array_equal(evaluated["predictions"], plain.forward(batch)["predictions"])
    assert evaluated["loss"] == plain.forward(batch)["loss"]
    assert model.forward(with_dropout(batch))["loss"] != evaluated["loss"]
    train_graph = model.unrolled(4, train=True)
    eval_graph = model.unrolled(4)
    assert train_graph.params == eval_graph.params
    assert not [r for r in eval_graph.inputs.values() if r["role"] == "dropout"]
    assert all(op != "dropout" for _, op in eval_graph.nx.nodes(data="op"))


# ---- the masks themselves --------------------------------------------------------------------

PROBE = {  # a cell whose output is its input through dropout: its outputs show the mask
    "inputs": ["x"],
    "state": ["h"],
    "output": "h",
    "params": {},
    "equations": ["h = dropout(x, 0.5) + 0 * h"],
}


def probe(equation: str, width: int = 50) -> Model:
    raw = {
        "cells": {"probe": {**PROBE, "equations": [equation]}},
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": width},
            "target": {"type": "vectors", "size": width},
            "layers": [{"cell": "probe", "hidden": width}],
            "readout": "identity",
        },
        "dtype": "float64",
    }
    return Model(raw)


def probe_masks(model: Model, sequences=40, steps=3, **request) -> np.ndarray:
    width = model.spec.model.input.size
    batch = {"x": np.ones((sequences, steps, width)), "y": np.zeros((sequences, steps, width))}
    return model.forward(with_dropout(batch, **request))["predictions"]  # (B, T, width)


def test_variational_mask_is_one_per_sequence():
    masks = probe_masks(probe("h = dropout(x, 0.5) + 0 * h"))
    assert set(np.unique(masks)) == {0.0, 2.0}  # inverted dropout: kept units scaled 1/(1-p)
    for t in range(1, masks.shape[1]):
        np.testing.assert_array_equal(masks[:, t], masks[:, 0])  # the same at every step
    rows = {row.tobytes() for row in masks[:, 0]}
    assert len(rows) == len(masks)  # and different for every sequence


def test_per_step_mask_changes_every_step():
    masks = probe_masks(probe("h = dropout(x, 0.5, per_step=1) + 0 * h"))
    assert not np.array_equal(masks[:, 0], masks[:, 1])
    assert not np.array_equal(masks[:, 1], masks[:, 2])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_fraction_is_p(p):
    """2000 units per draw: the dropped fraction is p within 0.04 (about 3.5 standard errors
    at p = 0.5), and the mean of the mask is 1 (inverted dropout keeps the expectation)."""
    masks = probe_masks(probe(f"h = dropout(x, {p}, per_step=1) + 0 * h"), steps=2)
    for t in range(2):
        dropped = np.mean(masks[:, t] == 0)
        assert dropped == pytest.approx(p, abs=0.04)
        assert masks[:, t].mean() == pytest.approx(1.0, abs=0.12)


def test_masks_are_a_function_of_seed_step_and_node():
    key, shape = ("l0", "dropout1.mask", None), (4, 30)
    first = dropout_mask(1, 7, key, shape, 0.5)
    np.testing.assert_array_equal(first, dropout_mask(1, 7, key, shape, 0.5))
    assert not np.array_equal(first, dropout_mask(1, 8, key, shape, 0.5))
    assert not np.array_equal(first, dropout_mask(2, 7, key, shape, 0.5))
    assert not np.array_equal(first, dropout_mask(1, 7, ("l1", "dropout1.mask", None), shape, 0.5))


def test_segments_draw_the_masks_of_the_whole_sequence():
    """Recomputing in segments gives the gradient of one pass: per-step masks count time
    from the start of the sequence, not of the segment."""
    raw = lstm_spec(dropout=0.3, recurrent_dropout=0.3)
    whole = Model(raw)
    parts = Model({**raw, "train": {"segment_steps": 2}})
    batch = with_dropout(batching.dummy(whole.spec, 2, 6))
    loss, grads, _ = whole.train_step(batch)
    got_loss, got, _ = parts.train_step(batch)
    assert got_loss == pytest.approx(loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(got[name], grads[name], rtol=1e-10, atol=1e-13)


# ---- training: deterministic and bit-identical across a resume ------------------------------


def char_spec(tmp_path, dropout: float) -> str:
    text = tmp_path / "code.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 40)
    spec = {
        "name": "drop",
        "seed": 3,
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 6, "dropout": dropout}],
            "layers": [
                {"cell": "lstm", "hidden": 8, "dropout": dropout, "recurrent_dropout": dropout},
                {"cell": "gru", "hidden": 8, "recurrent_dropout": dropout},
            ],
        },
        "data": {"source": "text", "path": str(text)},
        "train": {"steps": 6, "batch_size": 4, "seq_len": 7, "eval_every": 3, "valid_batches": 1},
    }
    path = tmp_path / f"drop{dropout}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_resume_draws_the_same_masks(tmp_path):
    quiet = {"progress": False, "sample": False, "log": lambda line: None}
    spec = char_spec(tmp_path, 0.3)
    api.train(spec, out=str(tmp_path / "whole"), **quiet)
    api.train(spec, out=str(tmp_path / "part"), stop_after=3, **quiet)
    api.train(spec, out=str(tmp_path / "part"), resume=True, **quiet)
    api.train(char_spec(tmp_path, 0.0), out=str(tmp_path / "plain"), **quiet)
    whole, part, plain = (
        run_folder.load_checkpoint(tmp_path / name)[0] for name in ("whole", "part", "plain")
    )
    for name in whole:
        np.testing.assert_array_equal(whole[name], part[name], err_msg=name)
    assert any(not np.array_equal(whole[name], plain[name]) for name in whole)


# ---- PyTorch with the same masks applied by hand ---------------------------------------------


def test_lstm_with_masks_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is the test-only oracle")
    model = Model(lstm_spec(dropout=0.4, recurrent_dropout=0.3))
    batch = with_dropout(batching.dummy(model.spec, 3, 4))
    masks = {k: torch.tensor(v) for k, v in masks_of(model, batch).items()}
    params = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in model.params.items()}
    x, y = torch.tensor(batch["x"]), torch.tensor(batch["y"])
    h = c = torch.zeros(3, 4, dtype=torch.float64)
    recurrent, loss = masks[("l0", "dropout1.mask", None)], 0.0
    for t in range(4):
        gates = x[:, t] @ params["l0.W_ih"] + params["l0.b_ih"]
        gates = gates + (h * recurrent) @ params["l0.W_hh"] + params["l0.b_hh"]
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        logits = (h * masks[("l0", "drop.mask", t)]) @ params["out.W"] + params["out.b"]
        loss = loss + torch.nn.functional.cross_entropy(logits, y[:, t], reduction="sum") / 3
    loss.backward()
    got_loss, grads = model.loss_and_grads(batch)
    assert got_loss == pytest.approx(loss.item(), rel=1e-12)
    for name, tensor in params.items():
        np.testing.assert_allclose(grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["embedding", "onehot"])
def test_word_dropout_drops_whole_tokens(kind):
    """Each token's vector is kept whole (every entry 1/(1-p)) or dropped whole (every entry
    0), independently per sequence and step, about p of them dropped; the unit dropout after
    it draws its own mask."""
    p = 0.3
    encoder = {"type": kind, "word_dropout": p, "dropout": 0.5}
    if kind == "embedding":
        encoder["size"] = 7
    model = Model(lstm_spec(ids=True, encoders=[encoder]))
    batch = with_dropout(batching.dummy(model.spec, 400, 3))
    drawn = masks_of(model, batch)
    words = np.stack([drawn[("enc0", "word_drop.mask", t)] for t in range(3)])  # (T, B, width)
    width = 7 if kind == "embedding" else 6
    assert words.shape == (3, 400, width)
    np.testing.assert_array_equal(words, np.repeat(words[..., :1], width, axis=-1))
    assert set(np.unique(words)) == {0.0, 1 / (1 - p)}
    assert np.mean(words[..., 0] == 0) == pytest.approx(p, abs=0.03)  # 1,200 tokens
    assert not np.array_equal(words[0], words[1])  # a fresh draw every step
    units = drawn[("enc0", "drop.mask", 0)]
    assert not np.array_equal(units, np.repeat(units[:, :1], width, axis=-1))
    plain = Model(lstm_spec(ids=True, encoders=[{**encoder, "word_dropout": 0, "dropout": 0}]))
    plain.set_params(model.params)
    evaluated = batching.dummy(model.spec, 4, 3)
    np.testing.assert_array_equal(  # and evaluation runs without it
        model.forward(evaluated)["predictions"], plain.forward(evaluated)["predictions"]
    )


# ---- spec errors: one line naming the path and the fix ---------------------------------------

BASE = """\
model:
  pattern: many_to_many
  input: {type: ids, vocab: 5}
  target: {type: ids, vocab: 5}
  encoders:
    - {type: embedding, size: 4}
  layers:
    - {cell: lstm, hidden: 3}
"""

MINE = """\
cells:
  mine:
    inputs: [x]
    state: [h]
    output: h
    params:
      W: {shape: [input, hidden]}
    equations:
      - h = tanh(x @ W + h)
"""


@pytest.mark.parametrize(
    "text, path, says",
    [
        (BASE.replace("hidden: 3", "hidden: 3, dropout: 1"), "model.layers[0].dropout", "[0, 1)"),
        (
            BASE.replace("hidden: 3", "hidden: 3, recurrent_dropout: -0.2"),
            "model.layers[0].recurrent_dropout",
            "[0, 1)",
        ),
        (BASE.replace("size: 4", "size: 4, dropout: 1.5"), "model.encoders[0].dropout", "[0, 1)"),
        (
            BASE.replace("size: 4", "size: 4, word_dropout: 1"),
            "model.encoders[0].word_dropout",
            "[0, 1)",
        ),
        (
            BASE.replace("size: 4}", "size: 4}\n    - {type: dense, size: 4, word_dropout: 0.1}"),
            "model.encoders[1].word_dropout",
            "drops whole tokens",
        ),
        (
            MINE
            + BASE.replace(
                "cell: lstm, hidden: 3", "cell: mine, hidden: 3, recurrent_dropout: 0.2"
            ),
            "model.layers[0].recurrent_dropout",
            "dropout(h, recurrent_dropout)",
        ),
        (
            BASE.replace("many_to_many", "encoder_decoder").replace(
                "hidden: 3", "hidden: 3, dropout: 0.2"
            ),
            "model.layers[0].dropout",
            "only its final state",
        ),
    ],
    ids=[
        "layer_p_one",
        "recurrent_negative",
        "encoder_p",
        "word_p",
        "word_on_dense",
        "cell_without_it",
        "seq2seq_top",
    ],
)
def test_bad_dropout_is_one_clear_line(tmp_path, capsys, text, path, says):
    file = tmp_path / "spec.yaml"
    file.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(file)
    assert info.value.path == path and says in info.value.message
    assert str(file) in str(info.value) and "\n" not in str(info.value)
    assert main(["check", str(file)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize(
    "equation, says",
    [
        ("h = dropout(x, 1.5) + 0 * h", "p must be in [0, 1)"),
        ("h = dropout(sum(x), 0.5) + 0 * h", "cannot tell the width"),
        ("h = dropout(x, 0.5, per_step=2) + 0 * h", "per_step is 0"),
        ("h = dropout(x) + 0 * h", "dropout(x, p)"),
    ],
)
def test_bad_dropout_in_a_cell_is_one_clear_line(equation, says):
    with pytest.raises(SpecError) as info:
        probe(equation)
    assert says in info.value.message and "cells.probe.equations[0]" in str(info.value)


def test_a_shard_draws_the_rows_of_the_whole_batchs_masks():
    """Under MPI a rank holds rows lo:hi of the global batch; naming them in the request
    (`train.distributed` does) gives it exactly those rows of the one-process masks."""
    model = Model(lstm_spec(layers=2, dropout=0.3, recurrent_dropout=0.4))
    whole = with_dropout(batching.dummy(model.spec, 5, 4))
    rows = slice(3, 5)
    shard = {k: v[rows] if isinstance(v, np.ndarray) else v for k, v in whole.items()}
    shard["dropout"] = {**whole["dropout"], "row_offset": 3, "global_rows": 5}
    full, part = masks_of(model, whole), masks_of(model, shard)
    assert full.keys() == part.keys() and len(full) > 2
    for key in full:
        np.testing.assert_array_equal(part[key], full[key][rows])
    unnamed = masks_of(model, {**shard, "dropout": whole["dropout"]})
    assert any((unnamed[k] != part[k]).any() for k in part)  # without them: other masks
