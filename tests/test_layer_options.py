"""The cells and the layer option that weight conventions need: `gru_reset_before`,
`lstm_peephole` (YAML cells) and `direction: reverse` (a one-direction layer that reads the
sequence from its end). Gradients against central differences, the reverse layer against the
backward half of a bidirectional one, initial states from data (`batch["state"]`) carried
from one piece of a sequence to the piece before it, and what the spec refuses."""

from __future__ import annotations

import numpy as np
import pytest
from support import check_param_grads, host, make_batch, model_spec

from seqgraph import Model, SpecError, load_spec

NEW_CELLS = ["gru_reset_before", "lstm_peephole"]


@pytest.mark.parametrize("cell", NEW_CELLS)
@pytest.mark.parametrize(
    "pattern,layer",
    [
        ("many_to_many", {}),
        ("many_to_many", {"bidirectional": True}),
        ("many_to_one", {"direction": "reverse"}),
        ("encoder_decoder", {}),
        ("one_to_many", {}),
    ],
)
def test_new_cells_gradients_match_central_differences(cell, pattern, layer):
    raw = model_spec(pattern, cell, layers=2)
    raw["model"]["layers"] = [{**lay, **layer} for lay in raw["model"]["layers"]]
    spec = load_spec(raw)
    for engine in ("plan", "interp"):
        model = Model(spec, dtype="float64", engine=engine)
        batch = make_batch(spec, size=3, steps=4, out_steps=3)
        check_param_grads(model, batch, "new cells: every param, directional FD", label=cell)


def identity_spec(cell: str, size: int, **layer) -> dict:
    """A many_to_many spec whose predictions are the layer's outputs."""
    return {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 2},
            "target": {"type": "vectors", "size": size},
            "readout": "identity",
            "layers": [{"cell": cell, "hidden": 3, **layer}],
        }
    }


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", *NEW_CELLS])
def test_reverse_layer_is_the_backward_half_of_a_bidirectional_one(cell):
    both = Model(identity_spec(cell, 6, bidirectional=True), dtype="float64", seed=1)
    reverse = Model(identity_spec(cell, 3, direction="reverse"), dtype="float64", seed=2)
    reverse.set_params({n: both.params[n.replace("l0.", "l0.bwd.")] for n in reverse.params})
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(3, 5, 2)), "lengths": np.array([5, 2, 4])}
    got, want = reverse.forward(batch), both.forward(batch)
    real = np.arange(5)[None, :] < batch["lengths"][:, None]
    np.testing.assert_allclose(
        host(got["predictions"])[real], host(want["predictions"])[..., 3:][real], atol=1e-14
    )
    for name, value in got["state"].items():
        bwd = name.replace("l0.", "l0.bwd.")
        np.testing.assert_allclose(host(value), host(want["state"][bwd]), atol=1e-14)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_initial_state_from_data_carries_a_sequence_in_pieces(direction):
    """The README's example: `batch["state"]` starts a layer from given states, so a sequence
    run in two pieces (the later piece first, for a reverse layer) equals one run."""
    model = Model(identity_spec("lstm", 3, direction=direction), dtype="float64", seed=3)
    x = np.random.default_rng(1).normal(size=(2, 6, 2))
    whole = model.forward({"x": x})
    first, second = (x[:, 3:], x[:, :3]) if direction == "reverse" else (x[:, :3], x[:, 3:])
    out = model.forward({"x": first})
    assert set(out["state"]) == {"l0.h0", "l0.c0"}
    again = model.forward({"x": second, "state": out["state"]})
    for name, value in again["state"].items():
        np.testing.assert_allclose(host(value), host(whole["state"][name]), atol=1e-14)
    want = host(whole["predictions"])[:, :3] if direction == "reverse" else None
    want = host(whole["predictions"])[:, 3:] if want is None else want
    np.testing.assert_allclose(host(again["predictions"]), want, atol=1e-14)


def test_spec_refuses_a_reverse_layer_where_it_cannot_run():
    def layers(pattern, **layer):
        raw = model_spec(pattern, "gru", layers=1)
        raw["model"]["layers"][0].update(layer)
        return raw

    with pytest.raises(SpecError, match=r"layers\[0\].direction: a bidirectional layer"):
        load_spec(layers("many_to_many", bidirectional=True, direction="reverse"))
    with pytest.raises(SpecError, match=r"layers\[0\].direction: a layer that feeds"):
        load_spec(layers("one_to_many", direction="reverse"))
    seq2seq = layers("encoder_decoder", direction="reverse")
    assert load_spec(seq2seq).model.decoder_layers[0].direction == "forward"  # the default
    seq2seq["model"]["decoder_layers"] = [{"cell": "gru", "hidden": 3, "direction": "reverse"}]
    with pytest.raises(SpecError, match=r"decoder_layers\[0\].direction"):
        load_spec(seq2seq)
    with pytest.raises(SpecError, match="direction"):
        load_spec(layers("many_to_many", direction="backward"))
    segments = layers("many_to_many", direction="reverse")
    segments["train"] = {"segment_steps": 2}
    with pytest.raises(SpecError, match="segment_steps: a reverse layer"):
        Model(segments)
    assert load_spec(layers("many_to_one", direction="reverse")).model.stack.count("reverse") == 1
