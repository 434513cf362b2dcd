"""The generated activity clips (`data.source: activity_video`): deterministic per seed, each
action makes the motion it names, the app's scores, bad options, and a tiny run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from seqgraph.apps import activity
from seqgraph.cli import main
from seqgraph.errors import DataError

SMALL = {"examples": 40, "frames": 6, "frame_size": 16}


def moments(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: lit area, and centroid row and column (noise-free clips only)."""
    lit = frames[:, 0] > 0.3
    rows, cols = np.mgrid[0 : lit.shape[1], 0 : lit.shape[2]] + 0.5
    area = lit.sum(axis=(1, 2)).astype(float)
    safe = np.maximum(area, 1)
    return area, (lit * rows).sum(axis=(1, 2)) / safe, (lit * cols).sum(axis=(1, 2)) / safe


def clean(action: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return activity.clip(action, rng, frames=16, size=32, noise=0.0, distractors=0.0)


def test_same_seed_same_clips_other_seed_other_clips():
    a = activity.load(SMALL, "many_to_one", 5)
    b = activity.load(SMALL, "many_to_one", 5)
    c = activity.load(SMALL, "many_to_one", 6)
    assert all(np.array_equal(x, y) for x, y in zip(a.x + a.test_x, b.x + b.test_x))
    assert a.y == b.y and a.labels == list(activity.ACTIONS)
    assert not np.array_equal(np.stack(a.x), np.stack(c.x))
    assert (len(a.x), len(a.valid_x), len(a.test_x)) == (32, 4, 4)
    assert a.x[0].shape == (6, 1, 16, 16) and a.x[0].dtype == np.float32
    assert sorted(set(a.y)) == list(range(9))  # every action in the training split


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_action_makes_the_motion_it_names(seed):
    for action, axis, sign in [
        ("move_right", 2, 1),
        ("move_left", 2, -1),
        ("move_down", 1, 1),
        ("move_up", 1, -1),
    ]:
        stats = moments(clean(action, seed))
        assert sign * (stats[axis][-1] - stats[axis][0]) > 8, action  # 12+ px of travel
        assert abs(stats[3 - axis][-1] - stats[3 - axis][0]) < 0.5, action  # not sideways
    grow, shrink = moments(clean("grow", seed))[0], moments(clean("shrink", seed))[0]
    assert grow[-1] > 2.5 * grow[0] and np.all(np.diff(grow) >= -2)
    assert shrink[0] > 2.5 * shrink[-1] and np.all(np.diff(shrink) <= 2)
    blink = moments(clean("blink", seed))[0]
    assert (blink == 0).sum() >= 4 and (blink > 5).sum() >= 4
    _, rows, cols = moments(clean("bounce", seed))
    assert np.ptp(rows) > 5 and np.ptp(cols) < 0.5
    steps = np.sign(np.diff(rows)[np.abs(np.diff(rows)) > 0.2])
    assert np.any(steps > 0) and np.any(steps < 0)  # it falls and rises again


def test_rotate_turns_the_shape_in_place():
    rng = np.random.default_rng(3)
    path = activity.track("rotate", rng, 16, 32)
    assert abs(path["angle"][-1] - path["angle"][0]) > 2.0
    frames = clean("rotate", 3)
    area, rows, cols = moments(frames)
    assert np.ptp(rows) < 1.5 and np.ptp(cols) < 1.5 and np.ptp(area) < 0.25 * area.mean()
    changed = [(frames[0, 0] > 0.3) != (frames[t, 0] > 0.3) for t in (2, 3)]
    assert all(c.sum() > 3 for c in changed)


def test_single_frame_keeps_one_frame_per_clip():
    full = activity.load(SMALL, "many_to_one", 5)
    one = activity.load({**SMALL, "single_frame": True}, "many_to_one", 5)
    assert all(x.shape == (1, 1, 16, 16) for x in one.x + one.valid_x + one.test_x)
    assert one.y == full.y
    assert any(np.array_equal(one.x[0][0], frame) for frame in full.x[0])


def test_scores_on_a_hand_made_example():
    truth, guess = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    out = activity.scores(truth, guess, ["a", "b", "c"], np.array([0, 0, 1]))
    assert out["majority"] == 0.5 and "accuracy" not in out  # evaluate() reports it
    assert (out["recall_a"], out["recall_b"], out["recall_c"]) == (0.5, 1.0, 1.0)
    assert out["confused"] == "a->b 1"


@pytest.mark.parametrize(
    "config, pattern, words",
    [
        ({"actions": ["move_left", "jump"]}, "many_to_one", ["data.actions", "'jump'"]),
        ({"actions": ["grow"]}, "many_to_one", ["data.actions", "two or more"]),
        ({"frames": 1}, "many_to_one", ["data.frames", "2 or more"]),
        ({"frame_size": 8}, "many_to_one", ["data.frame_size", "12 pixels"]),
        ({"single_frame": "yes"}, "many_to_one", ["data.single_frame", "true or false"]),
        ({"examples": 3}, "many_to_one", ["data.examples", "more examples"]),
        ({}, "many_to_many", ["many_to_one"]),
    ],
)
def test_bad_options_say_which_and_how_to_fix(config, pattern, words):
    with pytest.raises(DataError) as err:
        activity.load(config, pattern, 0)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def tiny_spec(tmp_path, data: dict) -> str:
    spec = {
        "name": "tiny_activity",
        "seed": 1,
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "images", "shape": [1, 16, 16]},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "conv", "channels": 2, "kernel": 3, "pool": 4}],
            "layers": [{"cell": "lstm", "hidden": 6}],
        },
        "data": {"source": "activity_video", **SMALL, **data},
        "train": {"steps": 3, "batch_size": 8, "log_every": 1, "eval_every": 100},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_tiny_run_and_eval_print_the_app_scores(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", tiny_spec(tmp_path, {}), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "done: 3 steps" in printed and "majority" in printed and "recall_bounce" in printed
    assert main(["eval", str(out), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and ", accuracy " in printed and "recall_move_up" in printed


def test_schema_refuses_a_bad_option_in_one_line(tmp_path, capsys):
    assert main(["run", tiny_spec(tmp_path, {"noise": -1}), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.noise" in err
