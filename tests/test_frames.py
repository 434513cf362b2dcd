"""The generated bouncing frames (`data.source: bouncing_frames`): deterministic per seed,
shapes bounce inside the box, per-frame MSE vs copy-last on a hand-made example, the PNG
strip's size, bad options, and a tiny run end to end."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import yaml

from seqgraph.apps import frames
from seqgraph.cli import main
from seqgraph.errors import DataError

SMALL = {"examples": 30, "frame_size": 8, "context_frames": 3, "future_frames": 2}


def test_same_seed_same_clips_other_seed_other_clips():
    a = frames.load(SMALL, "encoder_decoder", 4)
    b = frames.load(SMALL, "encoder_decoder", 4)
    c = frames.load(SMALL, "encoder_decoder", 5)
    for left, right in [(a.x, b.x), (a.y, b.y), (a.test_x, b.test_x)]:
        assert all(np.array_equal(p, q) for p, q in zip(left, right))
    assert not np.array_equal(np.stack(a.x), np.stack(c.x))
    assert (len(a.x), len(a.valid_x), len(a.test_x)) == (24, 3, 3)
    assert a.x[0].shape == (3, 1, 8, 8) and a.y[0].shape == (2, 64)
    assert a.padding["y_own_lengths"] and a.x[0].dtype == a.y[0].dtype == np.float32


def test_reflect_folds_a_free_path_back_into_the_box():
    got = frames.reflect(np.array([0.5, 3.5, 5.5, 7.5, 10.0]), 1.0, 4.0)
    np.testing.assert_allclose(got, [1.5, 3.5, 2.5, 1.5, 4.0])


def test_shapes_move_at_their_speed_and_stay_inside():
    rng = np.random.default_rng(0)
    clip, centres = frames.clip(rng, 40, 16, 2, 1.2)
    assert clip.shape == (40, 16, 16)
    assert centres.min() >= 16 * 0.15 - 1e-9 and centres.max() <= 16 * 0.85 + 1e-9
    step = np.linalg.norm(np.diff(centres, axis=0), axis=-1)
    assert step.max() <= 1.2 + 1e-9 and step.min() > 0
    assert all(not np.array_equal(clip[t], clip[t + 1]) for t in range(39))
    # over 40 frames at >= 0.6 px per frame at least one wall is hit: a velocity flips sign
    flips = np.sign(np.diff(centres, axis=0))
    assert np.any(flips[1:] * flips[:-1] < 0)


def test_per_frame_mse_and_copy_last_on_a_hand_made_example():
    inputs = np.array([[[[[0.0, 0.0]]], [[[1.0, 0.0]]]]])  # (B=1, k=2, C=1, H=1, W=2)
    truth = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # (B, m=2, 2)
    predicted = np.array([[[1.0, 0.5], [0.0, 0.0]]])
    out = frames.frame_errors(inputs, truth, predicted)
    assert out["copy_t1"] == 0.0 and out["copy_t2"] == 1.0  # last frame [1, 0] copied
    assert out["mse_t1"] == 0.125 and out["mse_t2"] == 0.5
    assert out["mse_mean"] == pytest.approx(0.3125) and out["copy_mean"] == 0.5
    assert out["frames_better"] == "1/2"


def test_strip_png_has_the_expected_pixel_size(tmp_path):
    rng = np.random.default_rng(1)
    inputs, truth = rng.random((2, 3, 1, 8, 8)), rng.random((2, 4, 64))
    image = frames.strip(inputs, truth, truth * 0.5)
    tile = 8 * frames.STRIP_SCALE + frames.STRIP_GAP
    height = 2 * 3 * tile + 3 * frames.STRIP_GAP
    assert image.shape == (height, 4 * tile)
    path = frames.write_strip(tmp_path / "strip.png", image)
    assert matplotlib.image.imread(path).shape[:2] == (height, 4 * tile)


@pytest.mark.parametrize(
    "config, pattern, words",
    [
        ({"speed": 5.0}, "encoder_decoder", ["data.speed", "(0, 2]"]),
        ({"future_frames": 0}, "encoder_decoder", ["data.future_frames", "1 or more"]),
        ({"frame_size": 4}, "encoder_decoder", ["data.frame_size", "8 pixels"]),
        ({"examples": 4}, "encoder_decoder", ["data.examples", "more examples"]),
        ({}, "many_to_many", ["encoder_decoder"]),
    ],
)
def test_bad_options_say_which_and_how_to_fix(config, pattern, words):
    with pytest.raises(DataError) as err:
        frames.load({**SMALL, **config}, pattern, 0)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def tiny_spec(tmp_path) -> str:
    spec = {
        "name": "tiny_frames",
        "seed": 1,
        "model": {
            "pattern": "encoder_decoder",
            "input": {"type": "images", "shape": [1, 8, 8]},
            "target": {"type": "vectors", "size": 64},
            "encoders": [{"type": "conv", "channels": 2, "kernel": 3, "pool": 2}],
            "layers": [{"cell": "lstm", "hidden": 6}],
            "feedback_encoders": [{"type": "dense", "size": 5, "activation": "relu"}],
        },
        "data": {"source": "bouncing_frames", **SMALL},
        "train": {
            "steps": 3,
            "batch_size": 8,
            "log_every": 1,
            "eval_every": 100,
            "scheduled_sampling": {"schedule": "linear", "k": 4},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_tiny_run_writes_the_strip_and_eval_prints_per_frame_mse(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", tiny_spec(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "done: 3 steps" in printed and "; mse_t2 " in printed and "; copy_t2 " in printed
    assert f"wrote frames_png: {out / 'frames.png'}" in printed
    tile = 8 * frames.STRIP_SCALE + frames.STRIP_GAP
    shape = matplotlib.image.imread(out / "frames.png").shape[:2]
    assert shape == (3 * 3 * tile + 2 * 3 * frames.STRIP_GAP, 3 * tile)  # all 3 test clips
    assert main(["eval", str(out), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and "; mse_mean " in printed and "frames_better" in printed
