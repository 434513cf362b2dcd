"""`model.pool`: many_to_one reads the mean or max of the top layer's outputs over each
sequence's real steps instead of its last state. The plan gives the interpreter's numbers,
padded steps neither count nor get a gradient, and bad values are one SpecError line."""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_plan_gives

from seqgraph import Model, SpecError, cli
from seqgraph.runtime import batch as batching

LENGTHS = np.array([5, 2, 4])


def spec(pool="max", layers=1, bidirectional=False, pattern="many_to_one", **layer) -> dict:
    stack = [{"cell": "lstm", "hidden": 4, "bidirectional": bidirectional, **layer}] * layers
    model = {
        "pattern": pattern,
        "input": {"type": "ids", "vocab": 7},
        "target": {"type": "ids", "vocab": 3},
        "encoders": [{"type": "embedding", "size": 3}],
        "layers": stack,
        "pool": pool,
    }
    return {"name": f"pool_{pool}", "model": model, "dtype": "float64"}


def padded_batch(raw: dict, dropout: bool = False) -> dict:
    batch = batching.dummy(Model(raw).spec, 3, 5)
    batch["lengths"] = LENGTHS
    if dropout:
        batch["dropout"] = {"seed": 0, "step": 3}
    return batch


CASES = [
    pytest.param({}, id="one_layer"),
    pytest.param({"bidirectional": True}, id="bidirectional"),
    pytest.param({"bidirectional": True, "merge": "sum"}, id="bidirectional_sum"),
    pytest.param({"layers": 2, "bidirectional": True}, id="stacked_bidirectional"),
    pytest.param({"layers": 2, "direction": "reverse"}, id="stacked_reverse"),
]


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_plan_matches_interpreter(pool, shape):
    """Loss, every parameter gradient and the predictions, padded, float64 (as test_plan)."""
    raw = spec(pool, **shape)
    batch = padded_batch(raw)
    plan = Model(raw, backend="numpy", dtype="float64", engine="plan", seed=1)
    interp = Model(raw, backend="numpy", dtype="float64", engine="interp", seed=1)
    loss, grads = interp.loss_and_grads(batch)
    assert_plan_gives(plan, batch, loss, grads)
    np.testing.assert_allclose(
        plan.forward(batch)["predictions"], interp.forward(batch)["predictions"], rtol=1e-11
    )


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_plan_matches_interpreter_with_dropout(pool):
    """The training graph: dropout on the embedding, between the layers and on the pooled
    vector (the top layer's `dropout`), and variational recurrent dropout."""
    raw = spec(pool, layers=2, bidirectional=True, dropout=0.3, recurrent_dropout=0.2)
    raw["model"]["encoders"][0]["dropout"] = 0.2
    batch = padded_batch(raw, dropout=True)
    loss, grads = Model(raw, dtype="float64", engine="interp", seed=1).loss_and_grads(batch)
    got_loss, got = Model(raw, dtype="float64", engine="plan", seed=1).loss_and_grads(batch)
    assert got_loss == pytest.approx(loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-12, err_msg=name)


def _top_steps(values: dict, layers: int, bidirectional: bool) -> np.ndarray:
    """The top layer's per-step outputs from an interpreter pass, (B, T, size)."""
    scope, name = (f"l{layers - 1}", "merge") if bidirectional else (f"l{layers - 1}", "h")
    return np.stack([np.asarray(values[(scope, name, t)]) for t in range(5)], axis=1)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled_vector_is_over_the_real_steps_only(pool):
    """The pooled vector equals NumPy's mean (divided by the true length) or max over the
    real steps of the top outputs; padded steps, whatever they hold, are left out."""
    raw = spec(pool, layers=2, bidirectional=True)
    program, values = Model(raw, seed=2).interpret(padded_batch(raw))
    steps = _top_steps(values, 2, True)
    pooled = np.asarray(values[("pool", pool, None)])
    for b, n in enumerate(LENGTHS):
        want = steps[b, :n].mean(axis=0) if pool == "mean" else steps[b, :n].max(axis=0)
        np.testing.assert_allclose(pooled[b], want, rtol=1e-14, atol=1e-15)
    # the state a padded step carries is a real value: a max over all steps would differ
    padded = steps[1, 2:].max(axis=0) if pool == "max" else steps[1].mean(axis=0)
    assert not np.allclose(pooled[1], padded)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_padded_steps_get_exactly_zero_gradient(pool):
    """dL/d(top output) and dL/d(embedding) are exactly 0 at every padded step and not at
    real ones; the max's gradient reaches each unit at one real step (its argmax)."""
    raw = spec(pool, bidirectional=True)
    model = Model(raw, seed=3)
    program, values = model.interpret(padded_batch(raw))
    grads: dict = {}  # every node's complete gradient, as backward finishes it

    def observe(key, grad, consumer):
        if consumer is None:
            grads[key] = np.asarray(grad)

    program.backward(model.backend.xp, values, program.graph.loss, observe=observe)
    top = np.stack([np.asarray(grads[("l0", "merge", t)]) for t in range(5)], axis=1)
    embedded = np.stack([np.asarray(grads[("enc0", "emb", t)]) for t in range(5)], axis=1)
    real = np.arange(5)[None, :] < LENGTHS[:, None]
    assert np.all(top[~real] == 0.0) and np.all(embedded[~real] == 0.0)
    assert np.all(np.abs(embedded[real]).sum(axis=-1) > 0)
    if pool == "max":
        assert np.all(np.count_nonzero(top, axis=1) == 1)  # one step per (sequence, unit)
    else:
        np.testing.assert_allclose(top[1, 0], top[1, 1])  # each real step gets g / length


def test_padded_inputs_change_nothing():
    """Garbage ids at padded steps leave the loss and every gradient bit for bit the same."""
    raw = spec("max", layers=2, bidirectional=True)
    model = Model(raw, seed=4)
    batch = padded_batch(raw)
    loss, grads = model.loss_and_grads(batch)
    batch["x"] = np.where(np.arange(5)[None, :] < LENGTHS[:, None], batch["x"], 6)
    other_loss, other = model.loss_and_grads(batch)
    assert other_loss == loss
    for name in grads:
        np.testing.assert_array_equal(other[name], grads[name], err_msg=name)


def test_last_is_the_default_and_unchanged():
    """`pool: last` builds the very graph a spec without the key builds."""
    raw = spec("last")
    del raw["model"]["pool"]
    plain, last = Model(raw), Model(spec("last"))
    assert plain.spec.model.pool == "last"
    assert set(plain.unrolled(5).nx.nodes) == set(last.unrolled(5).nx.nodes)
    assert "lstm 4 -> ids 3" in repr(plain.spec.model)
    assert "lstm 4 -> max over time -> ids 3" in repr(Model(spec("max")).spec.model)


BROKEN = """\
model:
  pattern: {pattern}
  input: {{type: ids, vocab: 5}}
  target: {{type: ids, vocab: 5}}
  encoders: [{{type: embedding, size: 2}}]
  layers:
    - {{cell: lstm, hidden: 3}}
  pool: {pool}
"""


@pytest.mark.parametrize(
    "pattern,pool,says",
    [
        ("many_to_one", "average", "expected one of: last, mean, max"),
        ("many_to_one", "2", "expected one of: last, mean, max"),
        ("many_to_many", "max", "pooling over time gives one vector per sequence"),
        ("encoder_decoder", "mean", "pooling over time gives one vector per sequence"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(tmp_path, capsys, pattern, pool, says):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.format(pattern=pattern, pool=pool))
    with pytest.raises(SpecError, match="model.pool"):
        Model(str(path))
    assert cli.main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}:8: model.pool" in err and says in err


def test_render_draws_the_pool_fed_by_every_step():
    from seqgraph.inspect import render

    dot = render.render_model(Model(spec("max", bidirectional=True)), 4, lengths=[4, 2])
    lines = dot.source.splitlines()
    assert any(line.strip().startswith("pool [") and "masked_max" in line for line in lines)
    for t in range(4):
        assert f'\t"l0@{t}" -> pool' in lines
    assert "\tpool -> out" in lines


def test_the_plan_takes_each_stacked_steps_gradient_as_one_slice(monkeypatch):
    """`stack`'s VJP kernel gives each input its slice of g, one view made at plan build
    (the reference VJP sliced every input for each input's call: T^2 views a step)."""
    import dataclasses

    from seqgraph.engine import ops

    kernels = []
    original = ops.OPS["stack"].vjp_kernel

    def spy(*args, **attrs):
        kernels.append(original(*args, **attrs))
        return kernels[-1]

    monkeypatch.setitem(ops.OPS, "stack", dataclasses.replace(ops.OPS["stack"], vjp_kernel=spy))
    spec = {
        "dtype": "float64",
        "model": {
            "pattern": "many_to_one",
            "pool": "max",
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "ids", "vocab": 2},
            "layers": [{"cell": "gru", "hidden": 4}],
        },
    }
    plan_model, interp_model = Model(spec), Model(spec, engine="interp")
    batch = batching.dummy(plan_model.spec, 3, 7)
    loss, grads = plan_model.loss_and_grads(batch)
    assert len(kernels) == 7 and all(k is not None for k in kernels)
    want_loss, want = interp_model.loss_and_grads(batch)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in want:
        np.testing.assert_allclose(grads[name], want[name], rtol=1e-10, atol=1e-12)
