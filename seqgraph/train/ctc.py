"""Scores of every CTC model (`model.loss: ctc`): greedy decoding, edit distance, error rates.

`evaluate` applies `Scorer` whatever the data source, since decoding and the label error rate
belong to the loss, not to an application. Greedy (best-path) decoding takes the likeliest
class at every real frame, merges repeats and drops blanks (id 0). The label (phoneme) error
rate `per` is the summed edit distance over the summed reference length. A decoded sequence is
right when it equals its reference; `nearest_accuracy` is more lenient: the decoded sequence
is mapped to the closest reference in the lexicon (by default the distinct references of the
evaluated split) before it is compared. The exact-match score keeps the name it was written
under for spoken digits, `digit_accuracy` (a decoded digit's phonemes spell the right digit),
so that metrics.jsonl and `eval --json` read the same for every CTC run.
"""

from __future__ import annotations

import numpy as np

from seqgraph.engine.xp_extra import to_numpy

BLANK = 0


def greedy_decode(logits, lengths=None) -> list[list[int]]:
    """Best path of each sequence of (B, T, C) logits over its first `lengths[b]` frames."""
    logits = np.asarray(logits)
    size, steps = logits.shape[:2]
    lengths = np.full(size, steps) if lengths is None else np.asarray(lengths)
    best = np.argmax(logits, axis=-1)
    out = []
    for b in range(size):
        path = best[b, : int(lengths[b])]
        keep = np.ones(len(path), dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(k) for k in path[keep] if k != BLANK])
    return out


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    previous = np.arange(len(hypothesis) + 1)
    for i, ref in enumerate(reference, start=1):
        current = np.empty_like(previous)
        current[0] = i
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return int(previous[-1])


def nearest(hypothesis, lexicon: list) -> tuple:
    """The lexicon entry closest to `hypothesis` (ties: the first in the lexicon)."""
    return min(lexicon, key=lambda word: edit_distance(word, hypothesis))


def score(references: list, hypotheses: list, lexicon: list | None = None) -> dict:
    """per (edits / reference labels), digit_accuracy (exact matches) and nearest_accuracy."""
    refs = [tuple(r) for r in references]
    hyps = [tuple(h) for h in hypotheses]
    edits = sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True))
    labels = sum(len(r) for r in refs)
    lexicon = [tuple(w) for w in lexicon] if lexicon else sorted(set(refs))
    exact = sum(r == h for r, h in zip(refs, hyps))
    near = sum(r == nearest(h, lexicon) for r, h in zip(refs, hyps)) if lexicon else 0
    count = max(len(refs), 1)
    return {
        "per": edits / max(labels, 1),
        "digit_accuracy": exact / count,
        "nearest_accuracy": near / count,
        "sequences": len(refs),
    }


def references(batch: dict) -> list[list[int]]:
    """The label sequences of a CTC batch (padding cut at `y_lengths`)."""
    y = np.asarray(batch["y"])
    lengths = np.asarray(batch.get("y_lengths", np.full(len(y), y.shape[1])))
    return [[int(k) for k in row[:n]] for row, n in zip(y, lengths)]


def baseline(train_targets: list, test_targets: list) -> tuple[tuple, dict]:
    """A constant guess, the floor to beat: of the distinct training label sequences, the one
    with the fewest edits to all training targets (on a balanced set such as FSDD every digit
    is equally common, so "the most common one" would be a tie). (guess, its test scores)."""
    train = [tuple(int(k) for k in t) for t in train_targets]
    guess = min(sorted(set(train)), key=lambda c: sum(edit_distance(t, c) for t in train))
    return guess, score(test_targets, [guess] * len(test_targets))


class Scorer:
    """Greedy-decoded scores over the batches of one evaluation (a `registry.Scorer`); the
    core applies it to every CTC model."""

    def __init__(self):
        self.refs: list = []
        self.hyps: list = []

    def add(self, batch: dict, out: dict) -> None:
        self.refs += references(batch)
        self.hyps += greedy_decode(to_numpy(out["predictions"]), batch.get("lengths"))

    def result(self) -> dict:
        return score(self.refs, self.hyps)


def score_line(result: dict) -> str:
    """The CTC scores `run` and `eval` print after the loss ("" if `result` has none)."""
    if "per" not in result:
        return ""
    return (
        f"PER {result['per']:.4f}, digit accuracy {result['digit_accuracy']:.4f} "
        f"(nearest digit {result['nearest_accuracy']:.4f}) over {result['sequences']} "
        "sequences"
    )


def progress_scores(result: dict) -> str:
    """The short form for the validation line during training ("" if `result` has none)."""
    if "per" not in result:
        return ""
    return f", PER {result['per']:.3f}, digit accuracy {result['digit_accuracy']:.3f}"
