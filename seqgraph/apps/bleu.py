"""Corpus BLEU (Papineni et al. 2002) and exact match over token lists.

BLEU-N is a corpus score, not a mean of sentence scores: clipped n-gram matches and candidate
n-gram counts are summed over the whole corpus before dividing, the N precisions are combined
by a geometric mean, and a brevity penalty exp(1 - r/c) applies when the candidates' total
length c is below the references' r (for each candidate, the reference length closest to it,
the shorter on a tie). No smoothing: a corpus with no matching 4-gram scores 0.
"""

from __future__ import annotations

import math
from collections import Counter


def ngrams(tokens: list, n: int) -> Counter:
    """Counts of the n-grams (as tuples) of one token list."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _closest_length(references: list[list], length: int) -> int:
    return min((len(ref) for ref in references), key=lambda r: (abs(r - length), r))


def bleu_parts(
    references: list[list[list]], hypotheses: list[list], max_n: int = 4
) -> tuple[list[float], float]:
    """(clipped n-gram precisions for n = 1..max_n, brevity penalty) over a corpus.

    `references[i]` holds one or more reference token lists for `hypotheses[i]`; a candidate
    n-gram counts at most as often as it occurs in the reference that has it most often.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_length = ref_length = 0
    for refs, hyp in zip(references, hypotheses):
        hyp_length += len(hyp)
        ref_length += _closest_length(refs, len(hyp))
        for n in range(1, max_n + 1):
            counts = ngrams(hyp, n)
            most = Counter()
            for ref in refs:
                most |= ngrams(ref, n)  # elementwise max over the references
            matches[n - 1] += sum(min(c, most[gram]) for gram, c in counts.items())
            totals[n - 1] += sum(counts.values())
    precisions = [m / t if t else 0.0 for m, t in zip(matches, totals)]
    if hyp_length == 0:
        return precisions, 0.0
    penalty = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return precisions, penalty


def corpus_bleu(references: list[list[list]], hypotheses: list[list], max_n: int = 4) -> float:
    """BLEU-max_n of a corpus: brevity penalty x geometric mean of the clipped precisions."""
    precisions, penalty = bleu_parts(references, hypotheses, max_n)
    if min(precisions) == 0.0:
        return 0.0
    return penalty * math.exp(sum(math.log(p) for p in precisions) / max_n)


def exact_match(references: list[list[list]], hypotheses: list[list]) -> float:
    """The fraction of hypotheses equal to one of their references, token for token."""
    if not hypotheses:
        return 0.0
    hits = sum(
        any(list(hyp) == list(ref) for ref in refs) for refs, hyp in zip(references, hypotheses)
    )
    return hits / len(hypotheses)
