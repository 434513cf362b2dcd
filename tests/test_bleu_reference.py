"""Corpus BLEU-4 checked against NLTK's `corpus_bleu`, an independent implementation.

seqgraph.apps.bleu scores token lists with no tokenisation and no smoothing; NLTK's
`corpus_bleu` takes the same token lists, and without a smoothing function it sums clipped
matches over the corpus, takes the closest reference length (the shorter on a tie) for the
brevity penalty, and scores 0 when some n-gram order has no match. The corpora below are
chosen so that the closest and the shortest reference lengths differ, and so that a
candidate shorter than every reference triggers the penalty.
"""

from __future__ import annotations

import math
import warnings

import pytest

from seqgraph.apps.bleu import bleu_parts, corpus_bleu

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score", reason="nltk is a test dependency")


def words(text: str) -> list[str]:
    return text.split()


CORPORA = {
    # one reference each, exact and near matches
    "single": (
        [["the cat sat on the mat today"], ["a dog ran in the big park"]],
        ["the cat sat on the mat today", "a dog ran in the park"],
    ),
    # the closest reference (9 tokens) is not the shortest (4): shortest-length BP would be 1
    "closest_not_shortest": (
        [
            ["the cat is on the mat", "there is a cat on the mat right now", "a cat"],
            ["he reads the old book slowly every night", "he reads a book"],
        ],
        ["there is a cat on the mat right", "he reads the old book every night"],
    ),
    # shorter than every reference: the penalty applies against the closest one
    "brevity": (
        [
            ["it is a guide to action which ensures that the military always obeys"],
            [
                "the quick brown fox jumps over the lazy dog near the bank",
                "a quick brown fox jumped over a lazy dog",
            ],
        ],
        ["it is a guide to action which ensures", "the quick brown fox jumps over the dog"],
    ),
    # a tie between two reference lengths: the shorter one counts
    "tie": (
        [["one two three four five six", "one two three four five six seven eight"]],
        ["one two three four five six seven"],
    ),
    # multiple references, clipped counts taken as the max over references
    "multi_reference": (
        [
            [
                "the the the cat sat on the mat",
                "the cat was sitting on the mat",
                "a cat sat upon the mat",
            ],
            ["we went to the market to buy fresh bread", "we went shopping for bread"],
            ["i like green tea", "i really like green tea a lot"],
        ],
        [
            "the the the the cat sat on the mat",
            "we went to the market for bread",
            "i like tea a lot",
        ],
    ),
    # no 4-gram matches anywhere: unsmoothed BLEU is 0
    "no_four_gram": (
        [["a b c d e f"]],
        ["a b x c d y e f"],
    ),
}


def reference_bleu(references, hypotheses) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns about zero counts, then returns 0
        return nltk_bleu.corpus_bleu(references, hypotheses, weights=(0.25, 0.25, 0.25, 0.25))


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_bleu_matches_nltk(name):
    refs_text, hyps_text = CORPORA[name]
    references = [[words(r) for r in refs] for refs in refs_text]
    hypotheses = [words(h) for h in hyps_text]
    expected = reference_bleu(references, hypotheses)
    assert corpus_bleu(references, hypotheses) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_the_corpora_exercise_the_penalty_and_nonzero_scores():
    """Guards the test above: its corpora must include real penalties and real scores."""
    penalties, scores = [], []
    for refs_text, hyps_text in CORPORA.values():
        references = [[words(r) for r in refs] for refs in refs_text]
        hypotheses = [words(h) for h in hyps_text]
        penalties.append(bleu_parts(references, hypotheses)[1])
        scores.append(reference_bleu(references, hypotheses))
    assert sum(p < 1.0 for p in penalties) >= 2
    assert sum(s > 0.0 for s in scores) >= 4


def test_closest_reference_length_by_hand():
    """Candidate 8 tokens, references 9 and 2: r = 9 (closest), BP = exp(1 - 9/8)."""
    references = [[words("there is a cat on the mat right now"), words("a cat")]]
    hypotheses = [words("there is a cat on the mat right")]
    _, penalty = bleu_parts(references, hypotheses)
    assert penalty == pytest.approx(math.exp(1 - 9 / 8), rel=1e-15)
