"""Layer normalisation: the `layer_norm` op against torch, the layer-normalised built-in cells
(`layer_norm: true`) against a hand-written PyTorch float64 version of the same equations, the
plan against the interpreter, a run that trains, what the spec and ONNX export refuse, and the
README's user-cell example (both of its forms) compiled and run.

The op's and sqrt/rsqrt's central-difference rows live in tests/test_ops.py with every op's."""

from __future__ import annotations

import re
from pathlib import Path

import array_api_compat.numpy as xnp
import numpy as np
import pytest
import yaml
from support import assert_plan_gives

from seqgraph import Model, SpecError, api, load_spec
from seqgraph.cli import main
from seqgraph.engine import ops
from seqgraph.errors import DataError
from seqgraph.runtime import batch as batching
from seqgraph.spec import equations
from seqgraph.train import run_folder

TORCH_MISSING = "torch is the test-only oracle: pip install '.[test]'"
README = Path(__file__).resolve().parents[1] / "README.md"
B, T, N_IN, HIDDEN, CLASSES = 3, 4, 3, 4, 5
LN_CELLS = ["rnn", "gru", "lstm"]


def layer_spec(cell: str, layers: int = 1, **layer) -> dict:
    return {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": N_IN},
            "target": {"type": "ids", "vocab": CLASSES},
            "layers": [{"cell": cell, "hidden": HIDDEN, "layer_norm": True, **layer}] * layers,
        },
        "dtype": "float64",
    }


def random_params(model: Model, seed: int = 0) -> dict:
    """Every parameter drawn afresh, gains and biases included (their init is 1 and 0)."""
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(scale=0.6, size=np.shape(v)) for k, v in model.params.items()}
    model.set_params(params)
    return params


# ---- the op against torch --------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_layer_norm_op_matches_torch_forward_and_backward(eps):
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 6)) * 3 + 1
    g = rng.normal(size=a.shape)
    op = ops.OPS["layer_norm"]
    out = op.forward(xnp, a, eps=eps)
    (grad,) = op.vjp(xnp, g, out, a, eps=eps)
    ta = torch.tensor(a, requires_grad=True)
    t_out = torch.nn.functional.layer_norm(ta, (6,), eps=eps)
    t_out.backward(torch.tensor(g))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad, ta.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_equations_call_the_new_ops_with_their_attribute():
    steps, _ = equations.lower(
        ["s = sqrt(a) + rsqrt(a)", "n = layer_norm(s, 0.1) + layer_norm(s, eps=1e-3)"],
        {"a"},
        [],
        "cells.c.equations",
    )
    assert [(s.op, s.attrs) for s in steps if s.op != "add"] == [
        ("sqrt", {}),
        ("rsqrt", {}),
        ("layer_norm", {"eps": 0.1}),
        ("layer_norm", {"eps": 1e-3}),
    ]
    with pytest.raises(SpecError, match="unknown attribute 'axis'; allowed: eps"):
        equations.lower(["n = layer_norm(a, axis=0)"], {"a"}, [], "cells.c.equations")


# ---- the layer-normalised cells against hand-written torch -----------------------------------


def ln(z):
    import torch

    return torch.nn.functional.layer_norm(z, z.shape[-1:], eps=1e-5)


def torch_step(cell: str, p: dict, x, state):
    """One step of the cell, written from Ba, Kiros & Hinton 2016 as the YAML states it."""
    import torch

    h = state[0]
    if cell == "rnn":
        return (torch.tanh(ln(x @ p["W_ih"]) * p["g_ih"] + ln(h @ p["W_hh"]) * p["g_hh"] + p["b"]),)
    if cell == "gru":
        x_r, x_z, x_n = (ln(x @ p["W_ih"]) * p["g_ih"] + p["b_ih"]).chunk(3, -1)
        h_r, h_z, h_n = (ln(h @ p["W_hh"]) * p["g_hh"] + p["b_hh"]).chunk(3, -1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        return ((1 - z) * torch.tanh(x_n + r * h_n) + z * h,)
    gates = ln(x @ p["W_ih"]) * p["g_ih"] + ln(h @ p["W_hh"]) * p["g_hh"] + p["b"]
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(ln(c) * p["g_c"] + p["b_c"]), c


def torch_loss(cell: str, params: dict, x, y):
    """Summed cross-entropy over steps, averaged over the batch (seqgraph's loss)."""
    import torch

    cross_entropy = torch.nn.functional.cross_entropy
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    cells = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("l0.")}
    state = tuple(torch.zeros(B, HIDDEN, dtype=torch.float64) for _ in range(2))
    loss = 0
    for t in range(T):
        state = torch_step(cell, cells, torch.tensor(x[:, t]), state)
        logits = state[0] @ p["out.W"] + p["out.b"]
        loss = loss + cross_entropy(logits, torch.tensor(y[:, t]), reduction="sum") / B
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in p.items()}


@pytest.mark.parametrize("engine", ["plan", "interp"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_layer_norm_cells_match_hand_written_torch(cell, engine):
    pytest.importorskip("torch", reason=TORCH_MISSING)
    model = Model(layer_spec(cell), dtype="float64", engine=engine)
    assert model.spec.model.layers[0].cell == f"{cell}_layer_norm"
    params = random_params(model)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(B, T, N_IN)), rng.integers(0, CLASSES, size=(B, T))
    loss, grads = model.loss_and_grads({"x": x, "y": y})
    t_loss, t_grads = torch_loss(cell, params, x, y)
    assert loss == pytest.approx(t_loss, rel=1e-10)
    assert set(grads) == set(t_grads)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, t_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_layer_norm_params_start_as_gain_one_bias_zero():
    raw = layer_spec("lstm", options={"forget_bias": 1.0})
    params = Model(raw, dtype="float64").params
    for gain in ("l0.g_ih", "l0.g_hh", "l0.g_c"):
        np.testing.assert_array_equal(params[gain], 1.0)
    np.testing.assert_array_equal(params["l0.b_c"], 0.0)
    expected = np.zeros(4 * HIDDEN)
    expected[HIDDEN : 2 * HIDDEN] = 1.0  # forget_bias fills the forget gate's slice
    np.testing.assert_array_equal(params["l0.b"], expected)


# ---- the plan against the interpreter --------------------------------------------------------


def check_plan_is_interpreter(raw, batch):
    plan = Model(raw, backend="numpy", dtype="float64", engine="plan")
    interp = Model(raw, backend="numpy", dtype="float64", engine="interp")
    random_params(plan)
    interp.set_params(plan.params)
    loss, grads = interp.loss_and_grads(batch)
    assert_plan_gives(plan, batch, loss, grads)
    return plan


@pytest.mark.parametrize("cell", LN_CELLS)
@pytest.mark.parametrize("layer", [{}, {"bidirectional": True}], ids=["uni", "bi"])
def test_plan_matches_interpreter_padded_and_stacked(cell, layer):
    raw = layer_spec(cell, layers=2, **layer)
    batch = batching.dummy(load_spec(raw), 3, 5)
    batch["lengths"] = np.array([5, 2, 4])
    plan = check_plan_is_interpreter(raw, batch)
    # the input projection's normalisation runs once over every step (rowwise op, batched)
    listing = str(plan.plan(batch))
    assert re.search(r"t=0\.\.4 batched .*= layer_norm", listing), listing


def test_layer_norm_lstm_trains(tmp_path, capsys):
    """`seqgraph run` on a tiny character model with layer_norm: true: the loss falls; the
    run evaluates, and `export --to onnx` refuses it in one line with exit code 2."""
    text = tmp_path / "text.txt"
    text.write_text("abcabcabd abcabcabd\n" * 30)
    spec = {
        "name": "ln",
        "seed": 1,
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 6}],
            "layers": [{"cell": "lstm", "hidden": 8, "layer_norm": True}],
        },
        "data": {"source": "text", "path": str(text)},
        "train": {"steps": 30, "batch_size": 4, "seq_len": 8, "lr": 0.03, "log_every": 1},
    }
    path = tmp_path / "ln.yaml"
    path.write_text(yaml.safe_dump(spec))
    quiet = {"progress": False, "sample": False, "log": lambda line: None}
    api.train(str(path), out=str(tmp_path / "run"), **quiet)
    records = run_folder.Metrics(tmp_path / "run", 10**9).read()
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    assert main(["export", str(tmp_path / "run"), "--to", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has layer_norm: true" in err, err


# ---- what is refused -------------------------------------------------------------------------

USER_RNN = {
    "inputs": ["x"],
    "state": ["h"],
    "output": "h",
    "params": {
        "W": {"shape": ["input", "hidden"], "init": {"dist": "uniform", "scale": 0.5}},
        "U": {"shape": ["hidden", "hidden"], "init": {"dist": "uniform", "scale": 0.5}},
    },
    "equations": ["h = tanh(x @ W + h @ U)"],
}


def test_layer_norm_on_a_user_cell_says_to_write_it_in_the_equations(tmp_path, capsys):
    raw = layer_spec("mine")
    raw["cells"] = {"mine": USER_RNN}
    with pytest.raises(SpecError, match=r"model\.layers\[0\]\.layer_norm.*layer_norm\(x @ W\)"):
        load_spec(raw)
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "write the normalisation into the cell's equations" in err


def test_a_user_cell_may_name_its_own_layer_norm_form():
    raw = layer_spec("mine")
    raw["cells"] = {"mine": {**USER_RNN, "layer_norm_form": "mine_ln"}}
    with pytest.raises(SpecError, match="names layer_norm_form 'mine_ln', which is not a cell"):
        load_spec(raw)
    normalised = {**USER_RNN, "equations": ["h = tanh(layer_norm(x @ W + h @ U))"]}
    raw["cells"]["mine_ln"] = normalised
    layer = load_spec(raw).model.layers[0]
    assert (layer.cell, layer.layer_norm) == ("mine_ln", True)


def test_onnx_export_refuses_layer_norm_in_one_line(tmp_path):
    from seqgraph.inspect.onnx_export import export_onnx

    with pytest.raises(DataError, match=r"model\.layers\[0\] has layer_norm: true") as info:
        export_onnx(Model(layer_spec("gru"), dtype="float32"), tmp_path / "no.onnx")
    assert "\n" not in str(info.value)
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    raw = layer_spec("ln_rnn", layer_norm=False)  # the op inside a user cell: no ONNX cell
    raw["cells"] = readme_cells()
    with pytest.raises(DataError, match="cell 'ln_rnn', which has no onnx counterpart"):
        export_onnx(Model(raw, dtype="float32"), tmp_path / "no.onnx")
    assert not (tmp_path / "no.onnx").exists()


# ---- the README's user cell ------------------------------------------------------------------


def readme_cells() -> dict:
    """The YAML block of README.md that defines the `ln_rnn` cell, parsed."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if "ln_rnn:" in b]
    return yaml.safe_load(block)["cells"]


def test_readme_ln_rnn_example_compiles_and_equals_the_layer_norm_op():
    """The example's rsqrt form, its one-op form `tanh(gain * layer_norm(a) + b)` and an
    independent NumPy forward all agree; plan and interpreter agree on the example."""
    cells = readme_cells()
    written = cells["ln_rnn"]["equations"]
    assert any("rsqrt(" in e for e in written)
    one_op = {**cells["ln_rnn"], "equations": [written[0], "h = tanh(gain * layer_norm(a) + b)"]}
    models = []
    for cell in (cells["ln_rnn"], one_op):
        raw = layer_spec("ln_rnn", layers=1, layer_norm=False)
        raw["cells"] = {"ln_rnn": cell}
        batch = batching.dummy(load_spec(raw), 3, 5)
        batch["lengths"] = np.array([5, 2, 4])
        models.append(check_plan_is_interpreter(raw, batch))
    params = models[0].params
    models[1].set_params(params)
    loss, grads = models[0].loss_and_grads(batch)
    loss_op, grads_op = models[1].loss_and_grads(batch)
    assert loss_op == pytest.approx(loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads_op[name], grads[name], rtol=1e-10, atol=1e-12)
    h = np.zeros((3, HIDDEN))  # the cell by hand, first sequence's five steps
    for t in range(5):
        a = batch["x"][:, t] @ params["l0.W"] + h @ params["l0.U"]
        d = a - a.mean(-1, keepdims=True)
        std = np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5)
        h = np.tanh(params["l0.gain"] * d / std + params["l0.b"])
    state = np.asarray(models[0].forward({"x": batch["x"][:1]})["state"]["l0.h0"])
    np.testing.assert_allclose(state, h[:1], rtol=1e-12, atol=1e-13)


def test_readme_ln_rnn_fused_groups_give_the_plan_values(monkeypatch):
    """Planned as on CuPy (no sibling merge), each fused group of the example's step (the
    rsqrt chain) has a CUDA body that, evaluated with NumPy, gives what the plan wrote."""
    import functools

    from test_plan import run_c_body

    from seqgraph.plan import forward, fusion, listing
    from seqgraph.plan.lower import Plan
    from seqgraph.runtime import runner

    monkeypatch.setattr(runner, "Plan", functools.partial(Plan, merge_siblings=False))
    raw = layer_spec("ln_rnn", layer_norm=False)
    raw["cells"] = readme_cells()
    model = Model(raw, backend="numpy", dtype="float64")
    batch = batching.dummy(model.spec, 3, 4)
    plan = model.plan(batch, grads=False)
    plan.run(batching.feeds(model.spec, plan.graph, batch), model.params)
    bodies = []
    for run in plan.groups:
        if len(run) == 1:
            continue
        _, _, body, inputs, outputs = fusion.source(plan, run, False)
        env = {f"x{i}": plan.layout.value[k].copy() for i, k in enumerate(inputs)}
        group = listing.Kernels()
        forward.group(plan.schedule, plan.ctx, run, False, group)
        for kernel in group.kernels:
            kernel()
        run_c_body(body, env)
        for j, k in enumerate(outputs):
            np.testing.assert_allclose(env[f"y{j}"], plan.layout.value[k], rtol=1e-13, atol=1e-14)
        bodies.append(body)
    assert any("/ sqrt(" in body for body in bodies), bodies
