"""The engine end to end: step-by-step consistency, graph traps, padding, deep unrolls, the
array_api_strict backend, and CuPy against NumPy (under the `gpu` marker)."""

from __future__ import annotations

import array_api_compat.numpy as xnp
import networkx as nx
import numpy as np
import pytest
import yaml
from support import (
    BIDIRECTIONAL_OK,
    PATTERNS,
    check_param_grads,
    host,
    make_batch,
    model_spec,
    record,
    require_gpu,
)

from seqgraph import MissingVJPError, Model, load_spec
from seqgraph.engine import ops
from seqgraph.engine.autodiff import Program
from seqgraph.engine.graph import Graph, ParamInfo

# ---- (a) T steps at once == T single steps with the state carried over ----------------------


@pytest.mark.parametrize("cells", [("lstm", "gru"), ("rnn_relu", "rnn")], ids="+".join)
def test_whole_sequence_equals_single_steps_with_carried_state(cells):
    spec = model_spec("many_to_many", cells[0])
    spec["model"]["layers"] = [{"cell": cell, "hidden": 3} for cell in cells]
    model = Model(spec, dtype="float64")
    batch = make_batch(model.spec, size=2, steps=6, ragged=False)
    whole = model.forward(batch)
    assert set(whole["state"]) == {
        f"l{i}.{v}0"
        for i, cell in enumerate(cells)
        for v in ("h", "c")[: 2 if cell == "lstm" else 1]
    }

    state, losses = None, []
    for t in range(6):
        step = {"x": batch["x"][:, t : t + 1], "y": batch["y"][:, t : t + 1], "state": state}
        out = model.forward(step)
        np.testing.assert_allclose(
            host(out["predictions"])[:, 0], host(whole["predictions"])[:, t], rtol=1e-12, atol=1e-12
        )
        state, losses = out["state"], losses + [out["loss"]]
    for name, value in whole["state"].items():
        np.testing.assert_allclose(host(state[name]), host(value), rtol=1e-12, atol=1e-12)
    assert sum(losses) == pytest.approx(whole["loss"], rel=1e-12)


def test_carried_state_changes_the_output():
    """Guards the test above: a nonzero starting state must actually be used."""
    model = Model(model_spec("many_to_many", "gru", layers=1), dtype="float64")
    batch = make_batch(model.spec, size=2, steps=2, ragged=False)
    state = {"l0.h0": np.full((2, 3), 0.5)}
    assert model.forward({**batch, "state": state})["loss"] != model.forward(batch)["loss"]


# ---- (b) graph traps -------------------------------------------------------------------------

SQUARE_CELL = yaml.safe_load("""
square:
  inputs: [x]
  state: [h]
  output: h
  params:
    W: {shape: [input, hidden], init: {dist: uniform, scale: 0.5}}
    U: {shape: [hidden, hidden], init: {dist: uniform, scale: 0.5}}
    b: {shape: [hidden], init: {dist: uniform, scale: 0.5}}
  equations:
    - a = h @ U
    - h = tanh(x @ W + a * a + b)
""")


def test_node_used_twice_by_one_op():
    """`a * a` is one mul node with the same input twice: two parallel edges, and the VJP's
    two halves both reach `a` (dL/da = 2 a g)."""
    spec = model_spec("many_to_many", "square", layers=1, cells=SQUARE_CELL)
    model = Model(spec, dtype="float64")
    graph = model.unrolled(4)
    squares = [
        (key, data["inputs"])
        for key, data in graph.nx.nodes(data=True)
        if data.get("op") == "mul" and len(set(data["inputs"])) == 1
    ]
    assert len(squares) == 4  # one per step
    for key, (source, _) in squares:
        assert graph.nx.number_of_edges(source, key) == 2
    graph.check()
    model.set_params({"l0.b": np.full(3, 0.3)})  # so that h (and a) is nonzero at every step
    check_param_grads(
        model, make_batch(model.spec, steps=4), "engine: graph traps (rel)", label="a*a"
    )


def test_mul_of_a_node_with_itself_hand_built():
    graph = Graph()
    x = graph.add_param("x", ("p", "x", None), ParamInfo((3,), {"dist": "zeros"}))
    square = graph.add(("f", "sq", 0), "op", "mul", (x, x))
    graph.loss = graph.add(("f", "L", 0), "op", "sum", (square,))
    program = Program(graph)
    value = np.array([1.5, -2.0, 0.25])
    grads = program.backward(xnp, program.forward(xnp, {x: value}), graph.loss)
    np.testing.assert_array_equal(grads[x], 2 * value)


def test_parameter_shared_by_every_step():
    """W_hh is one node with an edge to every step; its gradient (the sum over steps) passes
    central differences."""
    steps = 5
    model = Model(model_spec("many_to_many", "rnn", layers=1), dtype="float64")
    graph = model.unrolled(steps)
    g = graph.nx
    assert graph.params["l0.W_hh"] == ("l0", "W_hh", None)
    assert [k for k in g if k[1] == "W_hh"] == [("l0", "W_hh", None)]
    users = sorted(t for _, (_, _, t) in g.out_edges(("l0", "W_hh", None)))
    assert users == list(range(steps))
    assert isinstance(g, nx.MultiDiGraph)
    check_param_grads(
        model, make_batch(model.spec, steps=steps), "engine: graph traps (rel)", label="shared W_hh"
    )


def test_unused_parameter_gets_a_zero_gradient():
    graph = Graph()
    W = graph.add_param("W", ("p", "W", None), ParamInfo((2, 3), {"dist": "zeros"}))
    V = graph.add_param("V", ("p", "V", None), ParamInfo((4,), {"dist": "zeros"}))
    x = graph.add_input(("x", "x", 0), role="x")
    y = graph.add(("f", "y", 0), "op", "matmul", (x, W))
    graph.loss = graph.add(("f", "L", 0), "op", "sum", (y,))
    program = Program(graph)
    x_value = np.array([[1.0, 2.0], [3.0, -4.0]])
    values = program.forward(xnp, {W: np.ones((2, 3)), V: np.ones(4), x: x_value})
    grads = program.backward(xnp, values, graph.loss)
    np.testing.assert_array_equal(grads[V], np.zeros(4))
    np.testing.assert_array_equal(grads[W], np.repeat(x_value.sum(0)[:, None], 3, axis=1))


def test_embedding_rows_never_looked_up_get_zero_gradient():
    model = Model(model_spec("many_to_many", "gru", layers=1), dtype="float64")
    batch = make_batch(model.spec)
    batch["x"] = batch["x"] % 2  # only ids 0 and 1 of the 5
    _, grads = model.loss_and_grads(batch)
    table = host(grads["enc0.E"])
    assert table.shape == (5, 3)
    np.testing.assert_array_equal(table[2:], 0.0)
    assert np.all(np.abs(table[:2]) > 0)


def test_missing_vjp_names_op_and_position(monkeypatch):
    """An op without a gradient for a float input that depends on a parameter is an error."""
    stop = ops.Op("nograd", lambda xp, a: a, lambda xp, g, out, a: (None,), 1, "no gradient")
    monkeypatch.setitem(ops.OPS, "nograd", stop)
    graph = Graph()
    W = graph.add_param("W", ("p", "W", None), ParamInfo((2,), {"dist": "zeros"}))
    stopped = graph.add(("f", "stop", 0), "op", "nograd", (W,))
    graph.loss = graph.add(("f", "L", 0), "op", "sum", (stopped,))
    program = Program(graph)
    values = program.forward(xnp, {W: np.ones(2)})
    with pytest.raises(MissingVJPError, match=r"op 'nograd' has no VJP for input 0 .*f/stop@0"):
        program.backward(xnp, values, graph.loss)


def test_an_op_registered_without_a_vjp_raises_missing_vjp_not_type_error():
    """Regression: registering an op and never giving it `.vjp` left `vjp=None` in its record,
    and backward through it died with a TypeError instead of naming the op."""

    @ops.op("novjp", 1)
    def _identity(xp, a):
        """out = a (no gradient given)."""
        return a

    try:
        graph = Graph()
        W = graph.add_param("W", ("p", "W", None), ParamInfo((2,), {"dist": "zeros"}))
        out = graph.add(("f", "out", 0), "op", "novjp", (W,))
        graph.loss = graph.add(("f", "L", 0), "op", "sum", (out,))
        program = Program(graph)
        values = program.forward(xnp, {W: np.ones(2)})
        with pytest.raises(MissingVJPError, match=r"op 'novjp' has no VJP for input 0"):
            program.backward(xnp, values, graph.loss)
    finally:
        del ops.OPS["novjp"]


@pytest.mark.parametrize("feedback", ["free", "scheduled"])
@pytest.mark.parametrize("pattern", ["one_to_many", "encoder_decoder"])
def test_feeding_back_predictions_trains(pattern, feedback):
    """Regression: feeding back argmax ids raised MissingVJPError at the embedding. Ids carry
    no gradient (argmax stops it); vector feedback is differentiated through."""
    spec = load_spec(model_spec(pattern, "gru", layers=1))
    model = Model(spec, dtype="float64")
    batch = make_batch(spec)
    if feedback == "scheduled":
        batch["use_model"] = np.random.default_rng(2).random((3, 3)) < 0.5
    teacher = model.loss_and_grads(batch)[0]
    loss, _ = model.loss_and_grads(batch, feedback=feedback)
    assert loss != teacher
    _check_grads_with_feedback(model, batch, feedback)


@pytest.mark.parametrize("pattern", ["one_to_many", "encoder_decoder"])  # ids / vector targets
def test_scheduled_sampling_extremes_equal_teacher_and_free(pattern):
    """Regression: with ids targets the (B, 1) coin broadcast against (B,) ids into (B, B),
    silently mixing sequences. All coins False is teacher forcing, all True is free running."""
    spec = load_spec(model_spec(pattern, "lstm", layers=1))
    model = Model(spec, dtype="float64")
    batch = make_batch(spec)
    teacher, free = model.forward(batch), model.forward(batch, feedback="free")
    for coins, want in ((False, teacher), (True, free)):
        got = model.forward({**batch, "use_model": np.full((3, 3), coins)}, "scheduled")
        classes = 4 if pattern == "one_to_many" else 2  # ids vocab / vector size
        assert got["predictions"].shape == want["predictions"].shape == (3, 3, classes)
        # equal up to rounding: a plan adds the bias with the projection when the input is
        # data (teacher), after the recurrent product when it is fed back (rewrites.reassociate)
        np.testing.assert_allclose(
            host(got["predictions"]), host(want["predictions"]), rtol=1e-12, atol=1e-14
        )
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)


def _check_grads_with_feedback(model, batch, feedback, eps=1e-6):
    _, grads = model.loss_and_grads(batch, feedback=feedback)
    rng = np.random.default_rng(0)
    worst = 0.0
    for name, value in sorted(model.params.items()):
        base, direction = host(value), rng.normal(size=value.shape)
        losses = []
        for sign in (1, -1):
            model.set_params({name: base + sign * eps * direction})
            losses.append(model.forward(batch, feedback=feedback)["loss"])
        model.set_params({name: base})
        fd, an = (losses[0] - losses[1]) / (2 * eps), float(np.sum(host(grads[name]) * direction))
        assert abs(fd - an) <= 1e-6 * (abs(fd) + abs(an)) + 1e-9, name
        worst = max(worst, abs(fd - an) / (abs(fd) + abs(an) + 1e-300))
    record("engine: feedback modes, directional FD (rel)", worst, feedback)


# ---- (c) a padded batch == each sequence alone -----------------------------------------------

PADDING_CASES = [
    (cell, pattern, bidirectional)
    for pattern in PATTERNS
    for bidirectional in ((False, True) if pattern in BIDIRECTIONAL_OK else (False,))
    for cell in ("gru", "lstm")
]


def _alone(batch: dict, spec, index: int) -> dict:
    """Sequence `index` of a padded batch as a batch of one, cut to its real length."""
    m = spec.model
    n = int(batch["lengths"][index]) if "lengths" in batch else None
    n_out = int(batch["y_lengths"][index]) if "y_lengths" in batch else None
    x = batch["x"][index : index + 1]
    y = batch["y"][index : index + 1]
    if n is not None:
        x = x[:, :n]
    if m.pattern == "many_to_many":
        y = y[:, :n]
    if m.feeds_back:
        y = y[:, :n_out]
    return {"x": x, "y": y}


@pytest.mark.parametrize(
    "case", PADDING_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'bi' if c[2] else 'uni'}"
)
def test_padded_batch_equals_each_sequence_alone(case):
    cell, pattern, bidirectional = case
    spec = load_spec(model_spec(pattern, cell, bidirectional))
    model = Model(spec, dtype="float64")
    batch = make_batch(spec, size=3, steps=5, out_steps=4, seed=4)
    loss, grads = model.loss_and_grads(batch)
    padded = model.forward(batch)
    alone = [_alone(batch, spec, i) for i in range(3)]
    results = [model.loss_and_grads(one) for one in alone]

    assert loss == pytest.approx(np.mean([r[0] for r in results]), rel=1e-10, abs=1e-12)
    worst = 0.0
    for name in grads:
        mean = np.mean([host(r[1][name]) for r in results], axis=0)
        np.testing.assert_allclose(host(grads[name]), mean, rtol=1e-10, atol=1e-12, err_msg=name)
        worst = max(worst, float(np.max(np.abs(host(grads[name]) - mean))))
    record("engine: padded grads vs mean of alone (abs)", worst, f"{cell} {pattern}")

    for i, one in enumerate(alone):
        out = model.forward(one)
        mine, theirs = host(padded["predictions"])[i], host(out["predictions"])[0]
        if mine.ndim > 1:  # per-step outputs: compare the real steps
            mine = mine[: theirs.shape[0]]
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)
        for name, value in out["state"].items():
            np.testing.assert_allclose(
                host(padded["state"][name])[i], host(value)[0], rtol=1e-12, atol=1e-12, err_msg=name
            )


@pytest.mark.parametrize("pattern", PATTERNS)
def test_one_step_sequences(pattern):
    """The shortest sequences (one input step, one output step) differentiate correctly. One
    step from a zero state never reaches an encoder's W_hh, and a decoder's first input is
    the all-zero start vector (vector targets), so those gradients are exactly 0."""
    spec = load_spec(model_spec(pattern, "gru", layers=1))
    model = Model(spec, dtype="float64")
    batch = make_batch(spec, size=2, steps=1, out_steps=1, ragged=False)
    zero_ok = {"one_to_many": (), "encoder_decoder": ("l0.W_hh", "dec.l0.W_ih")}.get(
        pattern, ("l0.W_hh",)
    )
    check_param_grads(
        model, batch, "engine: one-step sequences (rel)", label=pattern, zero_ok=zero_ok
    )


# ---- (d) deep unrolls ------------------------------------------------------------------------


def test_ten_thousand_steps_forward_and_backward():
    """No recursion anywhere: a 10,000-step unroll compiles, runs and differentiates, and its
    loss equals a plain NumPy loop."""
    steps = 10_000
    spec = {
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "vectors", "size": 1},
            "target": {"type": "vectors", "size": 1},
            "layers": [{"cell": "rnn", "hidden": 2}],
        }
    }
    model = Model(spec, dtype="float64")
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(1, steps, 1)), "y": np.array([[0.5]])}
    loss, grads = model.loss_and_grads(batch)

    p = {name: host(value) for name, value in model.params.items()}
    h = np.zeros((1, 2))
    for t in range(steps):
        h = np.tanh(
            batch["x"][:, t] @ p["l0.W_ih"] + p["l0.b_ih"] + h @ p["l0.W_hh"] + p["l0.b_hh"]
        )
    expected = float(np.mean((h @ p["out.W"] + p["out.b"] - batch["y"]) ** 2))
    assert loss == pytest.approx(expected, rel=1e-12)
    assert model.unrolled(steps).nx.number_of_nodes() > 9 * steps
    assert all(np.all(np.isfinite(host(g))) for g in grads.values())

    eps, direction = 1e-6, rng.normal(size=(2, 2))
    losses = []
    for sign in (1, -1):
        model.set_params({"l0.W_hh": p["l0.W_hh"] + sign * eps * direction})
        losses.append(model.forward(batch)["loss"])
    fd, an = (losses[0] - losses[1]) / (2 * eps), float(np.sum(host(grads["l0.W_hh"]) * direction))
    assert abs(fd - an) <= 1e-6 * (abs(fd) + abs(an)) + 1e-9
    record("engine: 10k-step W_hh directional FD (rel)", abs(fd - an) / (abs(fd) + abs(an)))


# ---- (e) array_api_strict runs the whole engine ----------------------------------------------


def _compare_backends(spec, batch, backend, rtol, atol, feedback="teacher", dtype="float64"):
    reference = Model(spec, dtype="float64")
    other = Model(spec, backend=backend, dtype=dtype)
    for name in reference.params:  # same seed, same initial values on every backend
        np.testing.assert_array_equal(
            host(other.params[name]), host(reference.params[name]).astype(dtype)
        )
    want_out = reference.forward(batch, feedback)
    got_out = other.forward(batch, feedback)
    np.testing.assert_allclose(
        host(got_out["predictions"]), host(want_out["predictions"]), rtol=rtol, atol=atol
    )
    for name, value in want_out["state"].items():
        np.testing.assert_allclose(host(got_out["state"][name]), host(value), rtol=rtol, atol=atol)
    want_loss, want = reference.loss_and_grads(batch, feedback)
    got_loss, got = other.loss_and_grads(batch, feedback)
    assert got_loss == pytest.approx(want_loss, rel=rtol, abs=atol)
    assert set(got) == set(want)
    worst = 0.0
    for name in want:
        np.testing.assert_allclose(
            host(got[name]), host(want[name]), rtol=rtol, atol=atol, err_msg=name
        )
        worst = max(worst, float(np.max(np.abs(host(got[name]) - host(want[name])))))
    return worst


STRICT_CASES = [
    ("many_to_many", "lstm", True, "teacher"),
    ("encoder_decoder", "gru", False, "teacher"),
    ("one_to_many", "rnn", False, "free"),
    ("many_to_one", "rnn_relu", True, "teacher"),
]


@pytest.mark.parametrize("case", STRICT_CASES, ids=lambda c: f"{c[1]}-{c[0]}-{c[3]}")
def test_strict_backend_matches_numpy(case):
    pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    pattern, cell, bidirectional, feedback = case
    spec = load_spec(model_spec(pattern, cell, bidirectional))
    batch = make_batch(spec)
    strict = Model(spec, backend="strict", dtype="float64")
    assert type(strict.params["out.W"]).__module__.startswith("array_api_strict")
    worst = _compare_backends(spec, batch, "strict", 1e-12, 1e-12, feedback)
    record("engine: strict vs numpy grads (abs)", worst, f"{cell} {pattern}")


# ---- (f) CuPy against NumPy ------------------------------------------------------------------


GPU_CASES = [
    (cell, pattern)
    for cell in ("rnn", "rnn_relu", "gru", "lstm")
    for pattern in ("many_to_many", "encoder_decoder")
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_cupy_matches_numpy(case):
    cupy = require_gpu()
    cell, pattern = case
    spec = load_spec(model_spec(pattern, cell, pattern == "many_to_many"))
    batch = make_batch(spec)
    model = Model(spec, backend="cupy", dtype="float64")
    assert isinstance(model.params["out.W"], cupy.ndarray)
    worst = _compare_backends(spec, batch, "cupy", 1e-10, 1e-12)
    record("engine: cupy float64 vs numpy grads (abs)", worst, f"{cell} {pattern}")


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cupy_float32_close_to_numpy(cell):
    require_gpu()
    spec = load_spec(model_spec("many_to_many", cell))
    worst = _compare_backends(spec, make_batch(spec), "cupy", 1e-4, 1e-5, dtype="float32")
    record("engine: cupy float32 vs numpy float64 grads (abs)", worst, cell)
