"""Per-step output decoders (`model.decoders`): one set of parameters that every step reads,
gradients that match central differences, the plan equal to the interpreter on every pattern
(with attention, after the attentional state), and one-line spec errors that name the fix."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model, SpecError, cli
from seqgraph.runtime import batch as batching

IMAGE_DECODERS = [
    {"type": "dense", "shape": [3, 2, 2], "activation": "relu"},
    {"type": "deconv", "channels": 2, "activation": "tanh"},  # 2 x 4 x 4, kernel 4
    {"type": "upsample", "channels": 1, "kernel": 3},  # 1 x 8 x 8
]


def image_spec(pattern: str = "encoder_decoder", attention: bool = False, **model) -> dict:
    """A tiny model whose decoders draw each step's 8 x 8 output frame."""
    raw = {
        "model": {
            "pattern": pattern,
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "vectors", "size": 64},
            "layers": [{"cell": "gru", "hidden": 5}],
            "feedback_encoders": [{"type": "dense", "size": 4, "activation": "tanh"}],
            "decoders": IMAGE_DECODERS,
            **model,
        },
        "dtype": "float64",
    }
    if pattern == "many_to_many":
        del raw["model"]["feedback_encoders"]
    if attention:
        raw["model"]["attention"] = {"type": "general", "size": 4}
    return raw


def dense_spec(pattern: str) -> dict:
    return {
        "model": {
            "pattern": pattern,
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "ids", "vocab": 4},
            "layers": [{"cell": "lstm", "hidden": 5}],
            "decoders": [
                {"type": "dense", "size": 6, "activation": "relu"},
                {"type": "dense", "size": 3, "activation": "tanh"},
            ],
        },
        "dtype": "float64",
    }


def some_batch(raw: dict, steps: int = 3, out_steps: int = 4) -> dict:
    model = Model(raw, dtype="float64")
    batch = batching.dummy(model.spec, 3, steps, out_steps=out_steps)
    if model.spec.model.pattern != "one_to_many":
        batch["lengths"] = np.array([steps, 1, 2])
    return batch


def test_decoder_parameters_exist_once_and_every_step_reads_them():
    model = Model(image_spec(), dtype="float64", engine="interp")
    graph = model.graph(steps=3, out_steps=4)
    for key in (("decode0", "W", None), ("decode1", "K", None), ("decode2", "K", None)):
        users = {dst[2] for _, dst in graph.out_edges(key)}
        assert users == {0, 1, 2, 3}, key
    shapes = {name: np.shape(value) for name, value in model.params.items()}
    assert shapes["decode0.W"] == (5, 12)
    assert shapes["decode1.K"] == (3, 2, 4, 4)  # (C_in, C_out, k, k), PyTorch's layout
    assert shapes["decode2.K"] == (1, 2, 3, 3)
    assert "out.W" not in shapes  # the last decoder writes the frame: identity readout
    predictions = model.forward(some_batch(image_spec()))["predictions"]
    assert predictions.shape == (3, 4, 64)


def test_decoder_gradients_match_central_differences():
    raw = image_spec(attention=True)
    model = Model(raw, dtype="float64", engine="interp")
    batch = some_batch(raw)
    _, grads = model.loss_and_grads(batch)
    rng = np.random.default_rng(1)
    for name in ("decode0.W", "decode1.K", "decode1.b", "decode2.K", "decode2.b", "att.W_c"):
        p0 = np.asarray(model.params[name]).copy()
        direction = rng.normal(size=p0.shape)
        model.set_params({name: p0 + 1e-6 * direction})
        up = model.forward(batch)["loss"]
        model.set_params({name: p0 - 1e-6 * direction})
        down = model.forward(batch)["loss"]
        model.set_params({name: p0})
        fd, exact = (up - down) / 2e-6, float(np.sum(np.asarray(grads[name]) * direction))
        assert abs(fd - exact) <= 1e-6 * (abs(fd) + abs(exact)) + 1e-10, name
        assert abs(exact) > 1e-6, name  # the decoder really reaches the loss


def check_plan_equals_interpreter(raw: dict, batch: dict, feedback: str = "teacher") -> None:
    plan = Model(raw, dtype="float64", engine="plan")
    interp = Model(raw, dtype="float64", engine="interp")
    loss, grads = interp.loss_and_grads(batch, feedback)
    got_loss, got = plan.loss_and_grads(batch, feedback)
    assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12)
    assert set(got) == set(grads)
    for name in grads:
        np.testing.assert_allclose(got[name], grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
    want = interp.forward(batch, feedback)["predictions"]
    np.testing.assert_allclose(plan.forward(batch, feedback)["predictions"], want, rtol=1e-11)


@pytest.mark.parametrize(
    "raw, feedback",
    [
        (image_spec(), "teacher"),
        (image_spec(attention=True), "free"),
        (image_spec("one_to_many"), "free"),
        (image_spec("many_to_many"), "teacher"),
        (dense_spec("many_to_many"), "teacher"),
        (dense_spec("many_to_one"), "teacher"),
    ],
    ids=["enc_dec", "enc_dec_attention_free", "one_to_many", "m2m_image", "m2m_dense", "m2o"],
)
def test_plan_matches_interpreter_with_decoders(raw, feedback):
    steps = 1 if raw["model"]["pattern"] == "one_to_many" else 3
    check_plan_equals_interpreter(raw, some_batch(raw, steps), feedback)


def test_dense_decoders_end_in_the_linear_readout():
    model = Model(dense_spec("many_to_one"), dtype="float64")
    assert np.shape(model.params["decode1.W"]) == (6, 3)
    assert np.shape(model.params["out.W"]) == (3, 4)
    assert "dense 6 relu -> dense 3 tanh -> ids 4" in model.spec.model.stack


def edit(raw: dict, **model) -> dict:
    return {**raw, "model": {**raw["model"], **model}}


@pytest.mark.parametrize(
    "decoders, where, message",
    [
        (
            [{"type": "deconv", "channels": 1}],
            r"model\.decoders\[0\]\.type",
            r"reads an image: give the dense decoder before it `shape",
        ),
        (
            [{"type": "dense", "size": 4, "shape": [1, 2, 2]}],
            r"model\.decoders\[0\]",
            "`size` .* or `shape",
        ),
        (
            [{"type": "dense", "shape": [1, 2, 2]}, {"type": "upsample", "channels": 1}],
            r"model\.decoders\[1\]",
            "writes the target, 64 values, but its output 1x4x4 has 16",
        ),
        (
            [{"type": "dense", "shape": [2, 2, 2]}, {"type": "deconv", "channels": 1, "kernel": 3}],
            r"model\.decoders\[1\]\.kernel",
            "differ from it by an even number",
        ),
        (
            [
                {"type": "dense", "shape": [2, 2, 2]},
                {"type": "upsample", "channels": 4, "kernel": 2},
            ],
            r"model\.decoders\[1\]\.kernel",
            "must be odd",
        ),
    ],
)
def test_bad_decoders_are_one_line_spec_errors(decoders, where, message):
    raw = edit(image_spec(), decoders=decoders)
    with pytest.raises(SpecError, match=f"{where}.*{message}"):
        Model(raw)


def test_image_decoders_need_a_vector_target():
    raw = edit(image_spec("many_to_many"), target={"type": "ids", "vocab": 4})
    with pytest.raises(SpecError, match=r"model\.target.*`\{type: vectors, size: 64\}`"):
        Model(raw)


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    import yaml

    raw = edit(image_spec(), decoders=[{"type": "upsample", "channels": 1}])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.decoders[0].type" in err, err


def test_onnx_writes_dense_decoders_and_refuses_image_ones(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    ort = pytest.importorskip("onnxruntime", reason="the export test runs onnxruntime")
    from seqgraph import DataError
    from seqgraph.inspect.onnx_export import export_onnx

    model = Model(dense_spec("many_to_many"), dtype="float32", seed=3)
    path = export_onnx(model, tmp_path / "dense.onnx")
    x = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
    ours = np.asarray(model.forward({"x": x})["predictions"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x, "lengths": np.array([4, 4], np.int32)})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match=r"model\.decoders\[1\] is a deconv decoder"):
        export_onnx(Model(image_spec("many_to_many")), tmp_path / "no.onnx")
