"""Attention (Luong, Pham & Manning 2015, global) in the unrolled graph: every decoder step
reads every real encoder step and none of the padded ones, with one set of parameters.

The float64 op rows are in test_ops.py (`masked_softmax`), the PyTorch oracle in
test_torch_oracle.py and the plan-vs-interpreter rows in test_plan.py."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model, SpecError, cli, load_spec
from seqgraph.inspect.render import ATTENTION_FOLD, render_model
from seqgraph.inspect.render_scene import ATTENTION
from seqgraph.runtime import batch as batching

LENGTHS = np.array([5, 2, 4])  # source lengths; the batch is padded to 5 steps
OUT_STEPS = 3


def attention_spec(kind: str = "general", pattern: str = "encoder_decoder", **extra) -> dict:
    return {
        "model": {
            "pattern": pattern,
            "input": {"type": "ids", "vocab": 7},
            "target": {"type": "ids", "vocab": 6},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "gru", "hidden": 5}],
            "attention": {"type": kind, "size": 3},
            **extra,
        },
        "dtype": "float64",
    }


def memory_grads(model: Model, batch: dict) -> list[np.ndarray]:
    """dL_t / d(encoder outputs stacked to (B, T, H)) for each decoder step's loss L_t alone:
    what reaches the encoder states through attention (their other path, the final state,
    starts the decoder and is not part of this node)."""
    program, values = model.interpret(batch)
    memory, found = ("att", "memory", None), []
    for t in range(OUT_STEPS):
        seen = {}

        def keep(key, grad, consumer, seen=seen):
            if key == memory and consumer is None:
                seen["grad"] = np.asarray(grad)

        program.backward(model.backend.xp, values, ("loss", "L", t), observe=keep)
        found.append(seen["grad"])
    return found


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_each_decoder_step_reaches_every_real_encoder_state_and_no_padded_one(kind):
    model = Model(attention_spec(kind), dtype="float64")
    batch = batching.dummy(model.spec, 3, 5, out_steps=OUT_STEPS)
    batch["lengths"] = LENGTHS
    real = np.arange(5)[None, :] < LENGTHS[:, None]  # (B, T)
    for t, grad in enumerate(memory_grads(model, batch)):
        per_state = np.abs(grad).sum(axis=-1)  # (B, T): one number per encoder state
        assert np.all(per_state[real] > 1e-8), f"decoder step {t} misses a real source step"
        assert np.all(per_state[~real] == 0.0), f"decoder step {t} reads a padded step"


def test_weights_are_a_distribution_over_the_real_source_steps():
    model = Model(attention_spec("additive"), dtype="float64")
    batch = batching.dummy(model.spec, 3, 5, out_steps=OUT_STEPS)
    batch["lengths"] = LENGTHS
    weights = np.asarray(model.forward(batch)["attention"])
    assert weights.shape == (3, OUT_STEPS, 5)
    real = np.broadcast_to((np.arange(5)[None, :] < LENGTHS[:, None])[:, None, :], weights.shape)
    assert np.all(weights[~real] == 0.0)
    assert np.all(weights[real] > 0.0)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-13)


def test_padded_source_steps_change_nothing():
    """The same sources padded to 5 or to 8 steps (garbage ids in the padding) give the same
    loss: the padded encoder steps get zero weight."""
    model = Model(attention_spec("dot"), dtype="float64")
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, (3, OUT_STEPS))
    x5 = rng.integers(0, 7, (3, 5))
    x8 = np.concatenate([x5, rng.integers(0, 7, (3, 3))], axis=1)
    short = model.forward({"x": x5, "lengths": LENGTHS, "y": y})["loss"]
    assert model.forward({"x": x8, "lengths": LENGTHS, "y": y})["loss"] == pytest.approx(
        short, rel=1e-13
    )
    x5[1, 2:] = (x5[1, 2:] + 1) % 7  # other ids in sequence 1's padding
    assert model.forward({"x": x5, "lengths": LENGTHS, "y": y})["loss"] == pytest.approx(
        short, rel=1e-13
    )


def test_parameters_are_shared_over_decoder_steps():
    """One node per attention parameter, read by every decoder step."""
    model = Model(attention_spec("additive"), dtype="float64")
    graph = model.unrolled(4, out_steps=OUT_STEPS)
    names = sorted(name for name in graph.params if name.startswith("att."))
    assert names == ["att.W_c", "att.W_k", "att.W_q", "att.v"]
    per_step = {"att.W_c": OUT_STEPS, "att.W_q": OUT_STEPS, "att.v": OUT_STEPS, "att.W_k": 1}
    for name, readers in per_step.items():
        assert graph.nx.out_degree(graph.params[name]) == readers, name


def test_attention_outside_encoder_decoder_is_a_spec_error():
    raw = attention_spec(pattern="many_to_one")
    with pytest.raises(SpecError, match=r"model\.attention.*encoder_decoder"):
        load_spec(raw)


def test_attention_size_is_required():
    raw = attention_spec()
    del raw["model"]["attention"]["size"]
    with pytest.raises(SpecError, match=r"model\.attention"):
        load_spec(raw)


def test_predict_writes_an_attention_map_per_example(tmp_path, capsys):
    """`predict --attention DIR`: DIR/0001.png and .csv per input, the CSV's rows the weights
    the greedy decoder produced each output token with (the graph's nodes), cut to the
    source's real length."""
    model = Model(attention_spec("general"), dtype="float64")
    model.save(tmp_path / "run")
    x = np.array([[3, 4, 5, 6], [2, 6, 0, 0]])
    np.savez(tmp_path / "inputs.npz", x=x, lengths=np.array([4, 2]))
    maps = tmp_path / "maps"
    argv = ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "inputs.npz")]
    assert cli.main([*argv, "--length", "3", "--attention", str(maps)]) == 0
    assert "wrote 2 attention map(s)" in capsys.readouterr().err
    free = model.forward({"x": x, "lengths": np.array([4, 2]), "out_steps": 3}, "free")
    for row, length in enumerate([4, 2]):
        assert (maps / f"{row + 1:04d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        lines = (maps / f"{row + 1:04d}.csv").read_text().splitlines()
        header = lines[0].split(",")
        assert header[1:] == [str(i) for i in x[row, :length]]
        outputs = [line.split(",")[0] for line in lines[1:]]
        assert outputs == [str(i) for i in np.argmax(free["predictions"][row], -1)]
        weights = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
        np.testing.assert_allclose(weights, free["attention"][row, :, :length], atol=1e-6)


def test_predict_attention_needs_a_model_with_attention(tmp_path, capsys):
    raw = attention_spec()
    del raw["model"]["attention"]
    Model(raw).save(tmp_path / "run")
    np.savez(tmp_path / "inputs.npz", x=np.array([[3, 4]]))
    argv = ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "inputs.npz")]
    assert cli.main([*argv, "--attention", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model.attention" in err[0]
    (tmp_path / "file").write_text("")
    Model(attention_spec()).save(tmp_path / "att")
    argv[1] = str(tmp_path / "att")
    assert cli.main([*argv, "--attention", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def attention_edges(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if "->" in line and ATTENTION in line]


def test_render_routes_attention_through_one_memory_block():
    """Each decoder step depends on every encoder step: T encoder edges into the memory H and
    one edge from H to each decoder step's attention (T + T', not T x T'), drawn orange."""
    model = Model(attention_spec("general"))
    edges = attention_edges(render_model(model, 4, out_steps=3).source)
    assert sorted(edges) == sorted(
        [f'"l0@{s}" -> att [color="{ATTENTION}" penwidth=1.2]' for s in range(4)]
        + [f'att -> "att@{t}" [color="{ATTENTION}" penwidth=1.6]' for t in range(3)]
    )
    folded = render_model(model, 4, out_steps=3, fold=True).source
    assert attention_edges(folded) == [
        f'"l0@t" -> att [label="every hₛ" color="{ATTENTION}" penwidth=1.2]',
        f'att -> "att@t" [label="all s" color="{ATTENTION}" penwidth=1.6]',
    ]


def test_render_folds_the_attention_fans_when_the_source_is_long():
    model = Model(attention_spec("dot"))
    source = render_model(model, ATTENTION_FOLD + 4, out_steps=5).source
    assert attention_edges(source) == [
        f'"l0@11" -> att [label="h₀ … h₁₁ (12 edges)" color="{ATTENTION}" penwidth=2.4]',
        f'att -> "att@0" [label="read by every attentionₜ (5 edges)" color="{ATTENTION}" '
        "penwidth=2.4]",
    ]
    assert "memory H = [h₀ … h₁₁]" in source
