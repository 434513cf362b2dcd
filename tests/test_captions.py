"""Shape captioning: the grammar agrees with the drawn scene, the data is deterministic and
keeps held-out pairs out of training, BLEU-4 matches hand-computed values, and a tiny run
trains, scores seen and unseen test images and writes its example files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqgraph import api, load_spec
from seqgraph.apps import captions, shapes
from seqgraph.apps.bleu import bleu_parts, corpus_bleu, exact_match
from seqgraph.apps.caption_app import _draw, cut
from seqgraph.errors import DataError, SpecError

SPECS = Path(__file__).resolve().parent.parent / "specs"
SMALL = {
    "source": "shape_captions",
    "image_size": 16,
    "examples": 120,
    "test_examples": 10,
    "held_out": ["blue triangle", "yellow circle"],
}


def words(dataset, ids) -> list[str]:
    return [dataset.vocab[i] for i in cut(ids, captions.EOS)]


def pairs_of(caption: list[str]) -> list[tuple[str, str]]:
    """The (colour, shape) objects of a caption, in order: every 'a' starts one."""
    return [tuple(caption[i + 1 : i + 3]) for i, w in enumerate(caption) if w == "a"]


def test_caption_agrees_with_the_drawn_scene():
    opts = captions.options({"image_size": 32})
    drawn = captions.scenes(np.random.default_rng(0), 60, opts, must_hold=False)
    for scene, arrangement in drawn:
        text = captions.caption(scene, arrangement)
        image = captions.render(scene, 32)
        relation = captions.RELATIONS[arrangement]
        assert " ".join(text).count(relation) == len(scene) - 1
        # the caption names the scene's objects, in reading order along the arrangement's axis
        along = "x" if arrangement == "row" else "y"
        across = "y" if along == "x" else "x"
        ordered = sorted(scene, key=lambda s: getattr(s, along))
        assert pairs_of(text) == [(s.colour, s.kind) for s in ordered]
        for a, b in zip(ordered, ordered[1:]):
            gap = getattr(b, along) - getattr(a, along)
            assert gap > abs(getattr(b, across) - getattr(a, across))  # never ambiguous
        for s in scene:  # each shape is painted in its colour at its centre
            pixel = image[:, int(s.y), int(s.x)]
            np.testing.assert_allclose(pixel, shapes.COLOURS[s.colour], atol=1e-6)
    arrangements = {arrangement for scene, arrangement in drawn if len(scene) > 1}
    assert arrangements == {"row", "column"}


def test_data_is_deterministic_per_seed_and_padded_for_one_to_many():
    a = captions.load(SMALL, "one_to_many", 5)
    b = captions.load(SMALL, "one_to_many", 5)
    c = captions.load(SMALL, "one_to_many", 6)
    assert all(np.array_equal(x, y) for x, y in zip(a.x + a.test_x, b.x + b.test_x))
    assert all(np.array_equal(x, y) for x, y in zip(a.y + a.test_y, b.y + b.test_y))
    assert not all(np.array_equal(x, y) for x, y in zip(a.x, c.x))
    assert (len(a.x), len(a.valid_x), len(a.test_x)) == (108, 12, 20)
    assert a.vocab[:3] == ["<pad>", "<bos>", "<eos>"] and a.x[0].shape == (3, 16, 16)
    assert all(y[-1] == captions.EOS and captions.EOS not in y[:-1] for y in a.y)
    batch = a.batch_at(0, 8, 0, 5)
    assert batch["x"].shape == (8, 3, 16, 16)
    assert list(batch["y_lengths"]) == [int(np.sum(row > 0)) for row in batch["y"]]


def test_held_out_pairs_appear_only_in_the_unseen_test_half():
    data = captions.load(SMALL, "one_to_many", 0)
    held = {("blue", "triangle"), ("yellow", "circle")}
    for ids in data.y + data.valid_y + data.test_y[:10]:
        assert not held & set(pairs_of(words(data, ids)))
    for ids in data.test_y[10:]:
        assert held & set(pairs_of(words(data, ids)))
    assert len(captions.load({**SMALL, "held_out": []}, "one_to_many", 0).test_x) == 10
    seen_words = {w for ids in data.y for w in words(data, ids)}
    assert {"blue", "triangle", "yellow", "circle"} <= seen_words  # each word alone is seen


A = "a red circle left of a blue square".split()
B = "a red circle left of a green square".split()


def test_bleu4_against_hand_computed_values():
    assert corpus_bleu([[A]], [A]) == pytest.approx(1.0)
    # one word differs: 7/8, 5/7, 4/6, 3/5 clipped matches; product 1/4
    assert corpus_bleu([[B]], [A]) == pytest.approx(0.25**0.25)
    # a correct prefix of 5 of 8 words: precisions 1, brevity penalty exp(1 - 8/5)
    precisions, penalty = bleu_parts([[A]], [A[:5]])
    assert precisions == [1.0] * 4 and penalty == pytest.approx(math.exp(-0.6))
    assert corpus_bleu([[A]], [A[:5]]) == pytest.approx(math.exp(-0.6))
    # a corpus sums counts before dividing: (15/16 * 12/14 * 10/12 * 8/10)^(1/4)
    assert corpus_bleu([[A], [B]], [A, A]) == pytest.approx((15 / 28) ** 0.25)
    # clipping (Papineni et al.'s example): "the" x7 against a reference with two
    the = ["the"] * 7
    ref = "the cat is on the mat".split()
    assert bleu_parts([[ref]], [the], max_n=1)[0] == [pytest.approx(2 / 7)]
    assert corpus_bleu([[ref]], [the]) == 0.0  # no matching bigram, no smoothing
    assert bleu_parts([[B, A]], [A])[0] == [1.0] * 4  # the best of several references
    assert corpus_bleu([[A]], [[]]) == 0.0


def test_exact_match_cut_and_draw():
    assert exact_match([[A], [B], [A]], [A, A, A[:5]]) == pytest.approx(1 / 3)
    assert cut([3, 4, 2, 5, 2], eos=2) == [3, 4] and cut([3, 4], eos=2) == [3, 4]
    logits = np.array([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    assert list(_draw(logits, 0.01, rng)) == [1, 0]  # a low temperature is nearly argmax
    drawn = np.array([_draw(logits[:1], 100.0, rng)[0] for _ in range(300)])
    assert set(drawn) == {0, 1, 2}  # a high one nearly uniform


def tiny_spec(tmp_path: Path, **train) -> Path:
    spec = {
        "name": "tiny_captions",
        "seed": 1,
        "model": {
            "pattern": "one_to_many",
            "input": {"type": "images", "shape": [3, 16, 16]},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [
                {"type": "conv", "channels": 4, "kernel": 3, "pool": 4},
                {"type": "dense", "size": 12, "activation": "relu"},
            ],
            "feedback_encoders": [{"type": "embedding", "size": 6}],
            "layers": [{"cell": "lstm", "hidden": 12}],
            "bos": 1,
        },
        "data": {**SMALL, "examples": 40, "test_examples": 4, "max_shapes": 2},
        "train": {"steps": 3, "batch_size": 8, "log_every": 1, "eval_every": 100, **train},
    }
    path = tmp_path / "tiny_captions.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_tiny_run_scores_and_writes_examples(tmp_path):
    out = tmp_path / "run"
    sampling = {"scheduled_sampling": {"schedule": "linear", "k": 2}}
    summary = api.train(str(tiny_spec(tmp_path, **sampling)), log=lambda line: None, out=str(out))
    scores = summary["valid"]["app"]
    for name in ("exact_match", "bleu4", "sampled_exact_match", "sampled_bleu4"):
        assert 0.0 <= scores[name] <= 1.0
    assert Path(summary["artifacts"]["captions"]).read_text().count("truth:") == 8
    assert Path(summary["artifacts"]["caption_grid"]).stat().st_size > 0
    result = api.evaluate_run(out, split="test")  # the run's spec.yaml keeps the image shape
    assert result["split"] == "test" and result["tokens"] > 0
    for prefix in ("", "seen_", "unseen_"):
        assert 0.0 <= result["app"][f"{prefix}bleu4"] <= 1.0


@pytest.mark.parametrize(
    "option, message",
    [
        ({"held_out": ["purple triangle"]}, "data.held_out: 'purple triangle' is not"),
        (
            {"held_out": [f"{c} triangle" for c in shapes.COLOURS]},
            "removes every pair with the shape 'triangle'; hold out fewer",
        ),
        ({"image_size": 8}, "data.image_size is 8; .* use image_size: 24 or 32"),
        ({"examples": 4}, r"data.examples \(4\) .* use more examples"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(option, message):
    with pytest.raises(DataError, match=message) as caught:
        captions.load({**SMALL, **option}, "one_to_many", 0)
    assert "\n" not in str(caught.value)


def test_wrong_pattern_and_schema_errors():
    with pytest.raises(DataError, match="set model.pattern: one_to_many"):
        captions.load(SMALL, "many_to_one", 0)
    raw = yaml.safe_load((SPECS / "captions.yaml").read_text())
    raw["data"]["max_shapes"] = 4
    with pytest.raises(SpecError, match="data.max_shapes"):
        load_spec(raw, auto={"input": 15, "target": 15})
