"""Regression tests for engine bugs that random user cells found (issue 13): a parameter that
does not reach the loss, a learned initial state read by `concat`, shapes written as lists.
Each runs on both engines, which must agree, and checks gradients against central
differences in float64."""

from __future__ import annotations

import numpy as np
import pytest
from support import check_param_grads, host, make_batch, model_spec

from seqgraph import Model

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


def both_engines(spec: dict, batch_size: int = 3, ragged: bool = True) -> tuple[dict, dict]:
    """(model, (loss, grads)) by engine name, on one batch."""
    models, results = {}, {}
    for engine in ENGINES:
        models[engine] = Model(spec, dtype="float64", engine=engine)
        batch = make_batch(models[engine].spec, size=batch_size, steps=4, ragged=ragged)
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
