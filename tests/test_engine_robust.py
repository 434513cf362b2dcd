"""Regression tests for engine bugs that random user cells found (issue 13): a parameter that
does not reach the loss, a learned initial state read by `concat`, shapes written as lists.
Each runs on both engines, which must agree, and checks gradients against central
differences in float64."""

from __future__ import annotations

import numpy as np
import pytest
from support import check_param_grads, host, make_batch, model_spec

from seqgraph import Model, SpecError, load_spec

ENGINES = ("interp", "plan")
UNIFORM = {"dist": "uniform", "scale": 0.5}


def one_cell(equations: list[str], params: dict) -> dict:
    return {
        "c": {
            "inputs": ["x"],
            "state": ["h"],
            "output": "h",
            "params": {name: {"shape": shape, "init": UNIFORM} for name, shape in params.items()},
            "equations": equations,
        }
    }


def both_engines(
    spec: dict, batch_size: int = 3, ragged: bool = True, steps: int = 4
) -> tuple[dict, dict]:
    """(model, (loss, grads)) by engine name, on one batch."""
    models, results = {}, {}
    for engine in ENGINES:
        models[engine] = Model(spec, dtype="float64", engine=engine)
        batch = make_batch(models[engine].spec, size=batch_size, steps=steps, ragged=ragged)
        results[engine] = models[engine].loss_and_grads(batch)
    return models, results


def assert_engines_agree(results: dict) -> None:
    (loss_i, grads_i), (loss_p, grads_p) = results["interp"], results["plan"]
    assert loss_p == pytest.approx(loss_i, rel=1e-12)
    assert set(grads_p) == set(grads_i)
    for name in grads_i:
        np.testing.assert_allclose(
            host(grads_p[name]), host(grads_i[name]), rtol=1e-10, atol=1e-12, err_msg=name
        )


# ---- a parameter that does not reach the loss has a zero gradient, on every engine ----------

UNREACHED = {
    # the cell never reads x, so the embedding before it never reaches the loss
    "cell ignores x": (
        one_cell(["h = tanh(h @ U + b)"], {"U": ["hidden", "hidden"], "b": ["hidden"]}),
        {},
        "enc0.E",
    ),
    # h0 is learned but the cell overwrites h before reading it
    "learned state never read": (
        one_cell(["h = tanh(x @ W)"], {"W": ["input", "hidden"]}),
        {"init_state": "learned"},
        "l0.h0",
    ),
    # d is computed from V at every step and then dropped
    "value computed and dropped": (
        one_cell(
            ["h = tanh(x @ W + h @ U)", "d = tanh(h @ V)"],
            {"W": ["input", "hidden"], "U": ["hidden", "hidden"], "V": ["hidden", "hidden"]},
        ),
        {},
        "l0.V",
    ),
}


@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "full"])
@pytest.mark.parametrize("case", list(UNREACHED))
def test_parameter_that_does_not_reach_the_loss_has_zero_gradient(case, ragged):
    """Was: the plan raised KeyError(('enc0', 'E', None)) in `Plan.gradients`, the
    interpreter returned zeros."""
    cells, layer_keys, unreached = UNREACHED[case]
    spec = model_spec("many_to_many", "c", layers=1, cells=cells)
    spec["model"]["layers"][0].update(layer_keys)
    models, results = both_engines(spec, ragged=ragged)
    assert_engines_agree(results)
    for engine, (_, grads) in results.items():
        grad, param = grads[unreached], models[engine].params[unreached]
        assert grad.shape == param.shape and grad.dtype == param.dtype, engine
        np.testing.assert_array_equal(host(grad), 0.0)
        batch = make_batch(models[engine].spec, size=3, steps=4, ragged=ragged)
        check_param_grads(
            models[engine],
            batch,
            "engine: unreached parameters (rel)",
            label=f"{case} {engine}",
            zero_ok=(unreached,),
        )


def test_unreached_parameter_in_float32_keeps_its_dtype():
    cells, layer_keys, unreached = UNREACHED["value computed and dropped"]
    model = Model(model_spec("many_to_many", "c", layers=1, cells=cells), dtype="float32")
    _, grads = model.loss_and_grads(make_batch(model.spec, size=2, steps=3))
    assert grads[unreached].dtype == np.float32 and not np.any(grads[unreached])


# ---- a learned initial state broadcasts to the batch before a concat ------------------------

CONCAT_CELL = one_cell(["h = tanh(concat(h, x) @ W + b)"], {"W": ["hidden+input", "hidden"]})
CONCAT_CELL["c"]["params"]["b"] = {"shape": ["hidden"], "init": UNIFORM}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "pattern, bidirectional",
    [("many_to_many", False), ("many_to_one", True), ("encoder_decoder", False)],
)
def test_learned_state_read_by_concat_with_batch_above_one(engine, pattern, bidirectional):
    """Was: ValueError 'all the input array dimensions except for the concatenation axis must
    match exactly ... size 1 and ... size 3' (plan) or a GraphError (interpreter) for any
    batch of more than one sequence; the dry run used one sequence and let it through."""
    spec = model_spec(pattern, "c", bidirectional, layers=2, cells=CONCAT_CELL)
    for layer in spec["model"]["layers"]:
        layer["init_state"] = "learned"
    model = Model(spec, dtype="float64", engine=engine)
    rng = np.random.default_rng(1)
    model.set_params({name: rng.normal(size=info.shape) for name, info in model.param_info.items()})
    batch = make_batch(model.spec, size=3, steps=4, out_steps=3)
    out = model.forward(batch)
    assert all(value.shape[0] == 3 for value in out["state"].values())
    check_param_grads(model, batch, "engine: learned state + concat (rel)", label=engine)


def test_learned_state_engines_agree():
    spec = model_spec("many_to_many", "c", layers=2, cells=CONCAT_CELL)
    for layer in spec["model"]["layers"]:
        layer["init_state"] = "learned"
    for ragged in (True, False):
        _, results = both_engines(spec, batch_size=4, ragged=ragged)
        assert_engines_agree(results)


def test_dry_run_catches_a_value_that_does_not_broadcast_to_the_batch():
    """A (1, input) batch mean concatenated with the state fits a batch of one only; the
    dry run (now two sequences) refuses it as a SpecError naming the equation."""
    cell = one_cell(
        ["h = tanh(concat(mean(x, axis=0, keepdims=True), h) @ W)"],
        {"W": ["input+hidden", "hidden"]},
    )
    with pytest.raises(SpecError) as info:
        Model(model_spec("many_to_many", "c", layers=1, cells=cell), dtype="float64")
    assert info.value.path == "cells.c.equations[0]"
    assert "shapes do not fit" in info.value.message


# ---- shapes written as lists keep their rank ------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_shape_written_as_a_list_keeps_its_rank_at_size_one(engine, tmp_path):
    """`shape: [input]` with an input of size 1 is a (1,) vector, never a scalar: in the
    parameter table, the initial values, the gradients and a saved checkpoint."""
    cell = one_cell(["h = tanh((x * s) @ W + h @ U)"], {"W": ["input", "hidden"]})
    cell["c"]["params"]["U"] = {"shape": ["hidden", "hidden"], "init": UNIFORM}
    cell["c"]["params"]["s"] = {"shape": ["input"], "init": UNIFORM}
    spec = model_spec("many_to_one", "c", layers=1, cells=cell, encoders=[])
    spec["model"]["input"] = {"type": "vectors", "size": 1}
    model = Model(load_spec(spec), dtype="float64", engine=engine)
    assert model.param_info["l0.s"].shape == (1,)
    assert model.params["l0.s"].shape == (1,)
    assert model.unrolled(3).param_info["l0.s"].shape == (1,)
    batch = make_batch(model.spec, size=3, steps=4)
    _, grads = model.loss_and_grads(batch)
    assert grads["l0.s"].shape == (1,)
    check_param_grads(model, batch, "engine: rank kept (rel)", label=engine)
    np.savez(tmp_path / "p.npz", **{k: host(v) for k, v in model.params.items()})
    with np.load(tmp_path / "p.npz") as saved:
        assert saved["l0.s"].shape == (1,)
        model.set_params({"l0.s": saved["l0.s"]})
    with pytest.raises(Exception, match=r"must have shape \(1,\)"):
        model.set_params({"l0.s": np.float64(0.5)})


# ---- found by tests/test_fuzz_cells.py ------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steps", [1, 2])
def test_concat_of_a_learned_state_with_itself_in_one_step(engine, steps):
    """Was (plan, one step): IndexError 'tuple index out of range' in concat's VJP. With one
    step the concat is not on a recurrence, so the plan ran it as one kernel over time, but
    both inputs are the initial state shared by every step: the stacked gradient (T, B, 2H)
    had one more axis than the inputs. concat now batches only when every input is stacked."""
    cell = one_cell(["h = tanh(concat(h, h) @ W + x @ V)"], {"W": ["2*hidden", "hidden"]})
    cell["c"]["params"]["V"] = {"shape": ["input", "hidden"], "init": UNIFORM}
    spec = model_spec("many_to_one", "c", layers=1, cells=cell)
    spec["model"]["layers"][0]["init_state"] = "learned"
    model = Model(spec, dtype="float64", engine=engine)
    model.set_params({"l0.h0": np.array([[0.3, -0.2, 0.5]])})
    batch = make_batch(model.spec, size=2, steps=steps, ragged=False)
    check_param_grads(model, batch, "engine: fuzz regressions (rel)", label=engine)
    _, results = both_engines(spec, batch_size=2, ragged=False, steps=steps)
    assert_engines_agree(results)


def one_to_many(cell: dict, hidden: int) -> dict:
    spec = model_spec("one_to_many", "c", layers=1, hidden=hidden, cells=cell)
    spec["model"]["input"] = {"type": "vectors", "size": 1}
    return spec


def assert_plan_equals_interpreter_twice(
    spec: dict, feedback: str, steps: int, out_steps: int, zero_ok: tuple = ()
) -> tuple:
    """Both engines, each called twice on one batch, agree; gradients pass central
    differences. Returns the interpreter's (loss, grads)."""
    results = {}
    for engine in ENGINES:
        model = Model(spec, dtype="float64", engine=engine)
        batch = make_batch(model.spec, size=2, steps=steps, out_steps=out_steps, ragged=False)
        # twice: a plan reuses its buffers from call to call
        results[engine] = [model.loss_and_grads(batch, feedback) for _ in range(2)]
        check_param_grads(
            model, batch, "engine: fuzz regressions (rel)", label=engine, zero_ok=zero_ok
        )
    for call in range(2):
        assert_engines_agree({e: results[e][call] for e in ENGINES})
    return results["interp"][0]


def test_gradient_through_a_slice_of_some_columns_and_the_whole_value():
    """Was (plan): the gradient of the fed-back embedding was wrong in its second column
    (-0.094 where the interpreter and central differences give -0.042). `slice(x, 0, 1)`
    is a view of x's first column; the backward tracker counted x's gradient as written
    once that view's was, so sum's VJP added into a second column still holding the other
    step's gradient (the buffer was reused per step). A view now makes its parent written
    only when the views cover all of it, and such a class is not given a one-step buffer."""
    cell = one_cell(
        ["a = sum(x, axis=-1, keepdims=True)", "b = slice(x, 0, 1)", "h = tanh((b * a) @ W)"],
        {"W": [1, "hidden"]},
    )
    cell["c"]["state"], cell["c"]["equations"] = ["h", "c"], cell["c"]["equations"] + ["c = h"]
    unread = ("l0.h.W", "l0.h.b", "l0.c.W", "l0.c.b")  # the bridge to states never read
    for feedback in ("teacher", "free"):
        assert_plan_equals_interpreter_twice(one_to_many(cell, 2), feedback, 1, 2, unread)


def test_gradient_of_a_value_read_whole_and_through_a_view_of_it():
    """Was (plan): GraphError 'gradient buffers of [('l0', 'v0')] are reused but
    zero-filled'. `v1 = slice(v0, 0, hidden)` views all of v0 and `concat(v0, v1)` reads
    both: v0's gradient is added to after its view's is written, so it needs a buffer
    zero-filled per call, not one step's buffer reused across steps."""
    cell = one_cell(
        [
            "v0 = slice(h, 0, hidden)",
            "v1 = slice(v0, 0, hidden)",
            "a, b = split(concat(v0, v1) @ W, 2)",
            "h = tanh(a + x @ V) * b",
        ],
        {"W": ["2*hidden", "2*hidden"], "V": ["input", "hidden"]},
    )
    for hidden in (1, 2):
        assert_plan_equals_interpreter_twice(one_to_many(cell, hidden), "teacher", 1, 3)


def test_add_reading_a_view_of_a_value_that_is_also_read_whole():
    """Was (plan): the bridge's gradients 70% too large. `c = tanh(slice(v, 0, hidden) + c)`
    with v = tanh(c) also read by the readout: the add kept its gradient in the slice's
    region of v's gradient ("adopt"), which v's other reader also writes, so each summand
    read the other's gradient too. A view's region is adopted now only when nothing else
    reaches it (the gate blocks of one projection)."""
    cell = one_cell(
        ["v = tanh(c)", "h = tanh(tanh(x) @ W)", "c = tanh(slice(v, 0, hidden) + c)"],
        {"W": ["input", "hidden"]},
    )
    cell["c"]["state"], cell["c"]["output"] = ["h", "c"], "v"
    unread = ("l0.h.W", "l0.h.b", "l0.W", "fb0.E")  # the output v reads c alone
    for hidden in (1, 3):
        assert_plan_equals_interpreter_twice(one_to_many(cell, hidden), "teacher", 1, 3, unread)


def test_two_views_of_the_same_columns_add_their_gradients():
    """Was (plan): l0.fwd.P0's gradient 0.042 where the interpreter and central differences
    give 0.076. Both directions of a bidirectional second layer read `slice(x, 0, 1)`, two
    views of the same column of the first layer's merged output; each view's gradient was
    written as if it were alone, so the second overwrote the first at the steps they
    share. A view that overlaps another now adds once the other is written."""
    cell = one_cell(["v = tanh(h)", "h = tanh(slice(x, 0, 1) @ W)"], {"W": [1, "hidden"]})
    cell["c"]["output"] = "v"
    spec = model_spec("many_to_one", "c", bidirectional=True, hidden=1, layers=2, cells=cell)
    spec["model"]["input"], spec["model"]["encoders"] = {"type": "vectors", "size": 1}, []
    for layer in spec["model"]["layers"]:
        layer["init_state"] = "learned"
    for steps in (2, 3):  # which directions reach the loss depends on where they end
        _, grads = assert_plan_equals_interpreter_twice(spec, "teacher", steps, 1, ("W", "h0"))
        assert np.any(host(grads["l0.fwd.W"])), "the gradient that was overwritten"
