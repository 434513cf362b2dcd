"""Beam search and end-of-sequence decoding (`runtime/decode.py`) on tiny random decoders, on
both engines: beam 1 is greedy, a wider beam never scores below greedy, a beam wide enough to
keep every prefix finds the best sequence a brute-force search finds, and the padding after
`<eos>` adds neither loss nor gradient."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqgraph import Model
from seqgraph.errors import DataError
from seqgraph.runtime import decode
from seqgraph.spec.load import load_spec
from seqgraph.train.evaluate import score_decoded
from tests.support import host

EOS = 2  # target ids: 0 padding, 1 <bos>, 2 <eos>, 3.. tokens


def decoder_spec(pattern: str = "encoder_decoder", vocab: int = 4, hidden: int = 5) -> dict:
    """A GRU decoder over `vocab` target ids (from 5 source ids, or from a vector); the
    pattern `attention` is an encoder_decoder whose decoder attends to every source step."""
    attention = pattern == "attention"
    pattern = "encoder_decoder" if attention else pattern
    model = {
        "pattern": pattern,
        "input": {"type": "ids", "vocab": 5}
        if pattern == "encoder_decoder"
        else {"type": "vectors", "size": 3},
        "target": {"type": "ids", "vocab": vocab},
        "encoders": [{"type": "embedding", "size": 3}] if pattern == "encoder_decoder" else [],
        "layers": [{"cell": "gru", "hidden": hidden}],
        "feedback_encoders": [{"type": "embedding", "size": 3}],
        "bos": 1,
    }
    if attention:
        model["attention"] = {"type": "general", "size": 4}
    return {"name": f"tiny_{pattern}", "seed": 0, "model": model}


def tiny_model(engine: str, seed: int, pattern="encoder_decoder", vocab=4, scale=3.0) -> Model:
    """A random decoder with weights scaled up, so its next-id distributions are peaked and
    differ from step to step (small random weights make every step nearly uniform)."""
    model = Model(decoder_spec(pattern, vocab), dtype="float64", engine=engine, seed=seed)
    model.set_params({k: scale * host(v) for k, v in model.params.items()})
    return model


def sources(pattern: str, size: int, seed: int) -> dict:
    """Random sources: vectors for one_to_many, else ids of random real lengths 1..4."""
    rng = np.random.default_rng(seed)
    if pattern == "one_to_many":
        return {"x": rng.normal(size=(size, 3))}
    lengths = rng.integers(1, 5, size=size)
    x = np.where(np.arange(4)[None] < lengths[:, None], rng.integers(1, 5, size=(size, 4)), 0)
    return {"x": x, "lengths": lengths}


def scored(model, batch, hypotheses) -> np.ndarray:
    return decode.sequence_log_probs(
        model, batch, [h.ids for h in hypotheses], [h.ended for h in hypotheses], EOS
    )


@pytest.mark.parametrize("engine", ["interp", "plan"])
@pytest.mark.parametrize("pattern", ["encoder_decoder", "one_to_many", "attention"])
def test_beam_of_one_is_greedy_decoding(engine, pattern):
    model = tiny_model(engine, 0, pattern, scale=2.0)
    batch = sources(pattern, 6, 0)
    greedy = decode.greedy(model, batch, 6, EOS)
    beam = decode.beam_search(model, batch, 1, 6, EOS)
    assert [h.ids for h in beam] == greedy
    assert any(h.ended for h in beam) and any(len(h.ids) > 1 for h in beam)
    # the beam's own log-probability is the teacher-forced one of its sequence
    np.testing.assert_allclose([h.log_prob for h in beam], scored(model, batch, beam), rtol=1e-10)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 10_000),
    beam=st.integers(2, 4),
    alpha=st.sampled_from([0.0, 0.6]),
    engine=st.sampled_from(["interp", "plan"]),
)
def test_a_wider_beam_never_scores_below_greedy(seed, beam, alpha, engine):
    model = tiny_model(engine, seed, vocab=5)
    batch = sources("encoder_decoder", 4, seed)
    steps = 5
    greedy = decode.greedy(model, batch, steps, EOS)
    ended = [decode.cut_at_eos(row, EOS)[1] for row in _greedy_rows(model, batch, steps)]
    greedy_logp = decode.sequence_log_probs(model, batch, greedy, ended, EOS)
    lengths = np.array([len(ids) + stop for ids, stop in zip(greedy, ended)])
    greedy_score = greedy_logp / decode.length_penalty(lengths, alpha)
    best = decode.beam_search(model, batch, beam, steps, EOS, alpha)
    assert np.all(np.array([h.score for h in best]) >= greedy_score - 1e-9)
    if alpha == 0.0:
        assert np.all(np.array([h.log_prob for h in best]) >= greedy_logp - 1e-9)


def _greedy_rows(model, batch, steps):
    out = model.forward({**batch, "out_steps": steps}, feedback="free")
    return host(out["predictions"]).argmax(-1)


def brute_force(model, batch, vocab: int, steps: int, alpha: float) -> list[tuple]:
    """(score, ids, ended) of the best of all vocab**steps sequences (each cut at its first
    <eos>) for each example: one teacher-forced pass over every sequence."""
    size = len(batch["x"])
    every = np.array(list(itertools.product(range(vocab), repeat=steps)), dtype=np.int64)
    rows = decode.repeat_rows(batch, len(every))
    y = np.tile(every, (size, 1))
    logp = decode.log_softmax(host(model.forward({**rows, "y": y})["predictions"]))
    picked = np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    best = []
    for b in range(size):
        options = []
        for n, sequence in enumerate(every):
            ids, ended = decode.cut_at_eos(sequence, EOS)
            length = len(ids) + ended
            total = picked[b * len(every) + n, :length].sum()
            options.append((total / decode.length_penalty(length, alpha), ids, ended))
        best.append(max(options, key=lambda o: o[0]))
    return best


@pytest.mark.parametrize("engine", ["interp", "plan"])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("pattern", ["encoder_decoder", "attention"])
def test_a_beam_that_keeps_every_prefix_finds_the_best_sequence(engine, alpha, pattern):
    vocab, steps = 3, 4  # 81 sequences; a beam of 81 never drops a prefix
    model = tiny_model(engine, 6, pattern, vocab=vocab, scale=2.0)
    batch = sources("encoder_decoder", 3, 4)
    found = decode.beam_search(model, batch, vocab**steps, steps, EOS, alpha)
    truth = brute_force(model, batch, vocab, steps, alpha)
    for hypothesis, (score, ids, ended) in zip(found, truth):
        assert hypothesis.score == pytest.approx(score, rel=1e-10)
        assert (hypothesis.ids, hypothesis.ended) == (ids, ended)
    assert any(h.ended for h in found)
    # and greedy decoding misses the best sequence of at least one example here
    assert [h.ids for h in found] != decode.greedy(model, batch, steps, EOS)


def test_finished_hypotheses_stay_when_the_beam_runs_on():
    """An <eos> hypothesis found at step 2 is kept while the beam runs two more steps, and
    wins (nothing that continued scored higher); with no eos id, nothing ends early."""
    model = tiny_model("interp", 5, vocab=4, scale=2.0)
    batch = sources("encoder_decoder", 1, 5)
    steps_run = []
    forward = model.forward
    model.forward = lambda *a, **k: steps_run.append(1) or forward(*a, **k)
    (found,) = decode.beam_search(model, batch, 3, 6, EOS)
    assert (found.ids, found.ended, len(steps_run)) == ([0], True, 4)
    assert found.log_prob == pytest.approx(scored(model, batch, [found])[0], rel=1e-10)
    unended = decode.beam_search(model, sources("encoder_decoder", 4, 1), 3, 6, None)
    assert all(len(h.ids) == 6 and not h.ended for h in unended)


def test_beam_refuses_models_that_do_not_decode_ids():
    spec = load_spec(
        {
            "name": "tagger",
            "model": {
                "pattern": "many_to_many",
                "input": {"type": "ids", "vocab": 4},
                "target": {"type": "ids", "vocab": 3},
                "encoders": [{"type": "onehot"}],
                "layers": [{"cell": "rnn", "hidden": 2}],
            },
        }
    )
    with pytest.raises(DataError, match="--beam searches the outputs of a decoder over ids"):
        decode.beam_search(Model(spec), {"x": np.ones((1, 2), np.int64)}, 2, 3, EOS)
    with pytest.raises(DataError, match="--beam must be at least 1"):
        decode.beam_search(tiny_model("interp", 0), sources("encoder_decoder", 1, 0), 0, 3, EOS)


@pytest.mark.parametrize("engine", ["interp", "plan"])
@pytest.mark.parametrize("pattern", ["encoder_decoder", "attention"])
def test_padding_after_eos_adds_no_loss_or_gradient(engine, pattern):
    """Targets end with <eos> and `y_lengths` counts it: whatever ids pad the steps after it
    (they are fed to the decoder under teacher forcing), the loss and every gradient stay."""
    model = tiny_model(engine, 5, pattern, vocab=6, scale=1.0)
    batch = sources("encoder_decoder", 3, 2)
    y_lengths = np.array([2, 5, 3])
    y = np.random.default_rng(0).integers(3, 6, size=(3, 5))
    y[np.arange(3), y_lengths - 1] = EOS
    after = np.arange(5)[None] >= y_lengths[:, None]
    results = []
    for padding in (np.zeros_like(y), np.random.default_rng(1).integers(0, 6, size=y.shape)):
        padded = np.where(after, padding, y)
        results.append(model.loss_and_grads({**batch, "y": padded, "y_lengths": y_lengths}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(host(grads_a[name]), host(grads_b[name]), err_msg=name)
    longer = model.loss_and_grads({**batch, "y": y, "y_lengths": np.full(3, 5)})[0]
    assert longer != loss_a  # counting the padded steps would change it


def test_decoded_sequences_stop_at_eos_when_scored():
    """After its first <eos> a decoder has stopped: a later step that happens to equal the
    target counts as wrong, and an exact match is the target through its <eos>."""
    y = np.array([[5, 6, EOS, 0], [5, EOS, 0, 0], [4, 4, 4, EOS]])
    real = np.arange(4)[None] < np.array([3, 2, 4])[:, None]
    decoded = [[5, 6], [5], [4]]  # the third stopped early; the free pass went on with 4, 4
    right, exact = score_decoded(decoded, [True, True, True], EOS, y, real)
    assert (right, exact) == (3 + 2 + 1, 2)
    right, exact = score_decoded([[5, 6, 7], [5, 3], [4, 4, 4, 4]], [False] * 3, EOS, y, real)
    assert (right, exact) == (2 + 1 + 3, 0)


def _parallel_run(tmp_path) -> str:
    from seqgraph import cli
    from tests.test_conll_parallel import SPECS, short_run, write

    words = ["stone", "river", "cat", "lamp", "tree", "bird", "sand", "rock"]
    data = write(tmp_path, "words.tsv", "".join(f"{w}\t{w[::-1]}\n" for w in words * 3))
    spec = short_run(SPECS / "parallel_reverse.yaml", tmp_path, steps=4)
    run = str(tmp_path / "run")
    assert cli.main(["run", spec, "--data", data, "--out", run]) == 0
    return run


def test_beam_through_predict_eval_and_sample(tmp_path, capsys):
    import json

    import seqgraph
    from seqgraph import cli

    run = _parallel_run(tmp_path)
    capsys.readouterr()
    predictor = seqgraph.load(run, dtype="float64")
    greedy = predictor.predict(["stone", "cat"], length=7)
    assert predictor.predict(["stone", "cat"], length=7, beam=1) == greedy
    wide = predictor.predict(["stone", "cat"], length=7, beam=4, length_penalty=0.0)
    labels = predictor.facts["labels"]
    batch = predictor._batch(predictor.encode(["stone", "cat"])[0])
    for record, plain in zip(wide, greedy):
        assert set(record) == {"input", "output", "log_prob"} and "<eos>" not in record["output"]
        ids = [labels.index(t) for t in plain["output"]]
        row = {k: v[[wide.index(record)]] for k, v in batch.items()}
        ended = len(ids) < 7
        greedy_logp = decode.sequence_log_probs(predictor.model, row, [ids], [ended], EOS)[0]
        assert record["log_prob"] >= greedy_logp - 1e-9

    assert cli.main(["predict", run, "--input", "stone", "--beam", "4", "--length", "7"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["output"] == wide[0]["output"]
    assert line["log_prob"] == pytest.approx(wide[0]["log_prob"], rel=1e-4)  # float32 run
    assert cli.main(["sample", run, "--prime", "stone", "--beam", "4", "--length", "7"]) == 0
    assert capsys.readouterr().out.strip() == "".join(wide[0]["output"])

    assert cli.main(["eval", run, "--beam", "3", "--length-penalty", "0.6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["beam"] == 3 and result["length_penalty"] == 0.6
    assert 0 <= result["exact_match_beam"] <= 1 and 0 <= result["accuracy_beam"] <= 1
    assert cli.main(["eval", run, "--beam", "3"]) == 0
    assert "; beam 3: accuracy" in capsys.readouterr().out

    assert cli.main(["predict", run, "--input", "stone", "--beam", "2", "--sample"]) == 2
    assert "--beam and --sample are two ways to decode" in capsys.readouterr().err
    assert cli.main(["sample", run, "--beam", "2"]) == 2
    assert "give --prime TEXT" in capsys.readouterr().err
    assert cli.main(["eval", run, "--beam", "0"]) == 2
