"""Free-running decoding of a decoder over ids (encoder_decoder, one_to_many): greedy, and
beam search, both stopping per sequence at an end-of-sequence id (`eos`) or `steps`.

Greedy runs the unrolled decoder once with `feedback="free"` (each step reads the previous
step's argmax) and cuts every row at its first `eos`.

Beam search needs a step function: the log-probabilities of the next id given a source and
an output prefix. Any decoder gets one from its teacher-forced forward pass, since step t of
a teacher-forced decoder reads only the targets before t: the prefix is fed as `y` (padded by
one step) and step t's logits are read. That reruns the prefix at each step (quadratic in the
output length), but it needs nothing of the decoder but `Model.forward`, so it works the same
on both engines and for any decoder a spec can build (an attention decoder included). Every
beam of every example is one row of one batch, so a step is one forward pass.

The search is Sutskever, Vinyals & Le (2014, sec. 3.2): at step t each live hypothesis is
extended by every id and the `beam` best extensions of an example are kept; "as soon as the
<EOS> symbol is appended to a hypothesis, it is removed from the beam and is added to the set
of complete hypotheses" (the beam narrows, so with `beam=1` this is exactly greedy decoding).
Hypotheses still live after `steps` ids finish unended. The answer is the
finished hypothesis with the best score, log P(Y | X) / lp(Y), where lp is GNMT's length
penalty lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, eq. 14; alpha = `length_penalty`, 0:
raw log-probability), |Y| counting the `eos`. An example stops early once no live hypothesis
can beat its best finished one: log P only falls as a hypothesis grows and lp only rises, so
log P(prefix) / lp(steps) bounds every continuation.

Beam search is not monotone in the beam width: the K prefixes it keeps can all lead to
continuations worse than the greedy one it dropped. So that a wider beam never returns a
worse sequence than greedy decoding, for `beam > 1` one more row per example follows the
greedy path and its sequence competes with the beam's finished ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError

STOP_NAMES = ("<eos>", "</s>", "<end>")  # the target names taken to end a sequence


@dataclass(frozen=True)
class Hypothesis:
    """A decoded sequence: `ids` before the end (`eos` not included), whether it `ended`
    with `eos` (else it ran to the step limit), its log-probability and its (length
    normalised) score, which beam search maximises."""

    ids: list[int]
    ended: bool
    log_prob: float
    score: float


def eos_id(names: list[str] | None) -> int | None:
    """The id of the end-of-sequence target among `names` (the run's labels), or None."""
    for stop in STOP_NAMES:
        if names and stop in names:
            return names.index(stop)
    return None


def cut_at_eos(ids, eos: int | None) -> tuple[list[int], bool]:
    """(the ids before the first `eos`, whether there was one)."""
    ids = [int(i) for i in ids]
    if eos is not None and eos in ids:
        return ids[: ids.index(eos)], True
    return ids, False


def length_penalty(length, alpha: float):
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, eq. 14); 1 when alpha is 0."""
    return ((5.0 + np.asarray(length, dtype=np.float64)) / 6.0) ** alpha


def greedy(model, batch: dict, steps: int, eos: int | None) -> list[list[int]]:
    """Argmax decoding in one free-running pass, each row cut at its first `eos`."""
    out = model.forward({**batch, "out_steps": steps}, feedback="free")
    return [cut_at_eos(row, eos)[0] for row in to_numpy(out["predictions"]).argmax(-1)]


def sampled(model, batch: dict, steps: int, eos: int | None, temperature: float, rng):
    """Ancestral sampling: each id drawn from softmax(logits / temperature) given the source
    and the ids drawn before it (the teacher-forced step function), cut at `eos`; stops once
    every row has drawn one."""
    if temperature <= 0:
        raise DataError("--temperature must be positive for sampling")
    rows = {k: batch[k] for k in ("x", "lengths") if batch.get(k) is not None}
    drawn = np.zeros((len(np.asarray(batch["x"])), 0), dtype=np.int64)
    for _ in range(steps):
        logp = next_log_probs(model, rows, drawn) / temperature
        probs = np.exp(logp - logp.max(axis=-1, keepdims=True))
        cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
        picks = (cumulative < rng.random((len(drawn), 1))).sum(axis=-1)
        drawn = np.concatenate([drawn, np.minimum(picks, probs.shape[-1] - 1)[:, None]], axis=1)
        if eos is not None and np.all(np.any(drawn == eos, axis=1)):
            break
    return [cut_at_eos(row, eos)[0] for row in drawn]


def as_rows(hypotheses: list[list[int]], ended: list[bool], eos: int | None, width: int):
    """(N, width) ids of decoded sequences, `eos` written where one ended and -1 after it (no
    output): what is compared with the targets, step by step."""
    rows = np.full((len(hypotheses), width), -1, dtype=np.int64)
    for row, (ids, stop) in enumerate(zip(hypotheses, ended)):
        ids = list(ids) + ([eos] if stop and eos is not None else [])
        rows[row, : min(len(ids), width)] = ids[:width]
    return rows


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def repeat_rows(batch: dict, times: int) -> dict:
    """The batch with each example's source repeated `times` times in a row (one per beam)."""
    out = {"x": np.repeat(np.asarray(batch["x"]), times, axis=0)}
    if batch.get("lengths") is not None:
        out["lengths"] = np.repeat(np.asarray(batch["lengths"]), times, axis=0)
    return out


def next_log_probs(model, rows: dict, prefix: np.ndarray) -> np.ndarray:
    """(N, V) log P(next id | source, prefix) for prefixes (N, t): the teacher-forced decoder
    over the prefix and one more step, read at that step."""
    size, t = prefix.shape
    y = np.concatenate([prefix, np.zeros((size, 1), dtype=np.int64)], axis=1)
    logits = to_numpy(model.forward({**rows, "y": y})["predictions"])[:, t]
    return log_softmax(logits)


def sequence_log_probs(model, batch: dict, hypotheses: list[list[int]], ended, eos) -> np.ndarray:
    """log P(Y | X) of given decoded sequences (`eos` appended where one `ended`), scored by
    the teacher-forced decoder: the sum of each step's log-probability of its id."""
    width = max(len(ids) + bool(stop) for ids, stop in zip(hypotheses, ended))
    rows = as_rows(hypotheses, ended, eos, max(width, 1))
    real = rows >= 0
    y = np.where(real, rows, 0)
    logp = log_softmax(to_numpy(model.forward({**batch, "y": y})["predictions"]))
    picked = np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return np.where(real, picked, 0.0).sum(axis=1)


def check_beam(model, beam: int, sample: bool = False) -> None:
    """One line when `beam` cannot apply: a model that does not decode ids, or sampling."""
    m = model.spec.model
    if beam < 1:
        raise DataError(f"--beam must be at least 1, got {beam}")
    if not m.feeds_back or m.target.type != "ids":
        raise DataError(
            f"--beam searches the outputs of a decoder over ids (encoder_decoder, one_to_many); "
            f"this run's model is {m.pattern} to {m.target.type}: drop --beam"
        )
    if sample and beam > 1:
        raise DataError("--beam and --sample are two ways to decode; choose one")


class _Search:
    """The arrays of one batched search: `lanes` rows per example (the beam, then for
    beam > 1 the greedy row), each a prefix with its log-probability and whether it lives."""

    def __init__(self, size: int, beam: int, steps: int, alpha: float):
        self.beam, self.steps, self.alpha = beam, steps, alpha
        self.lanes = beam + (beam > 1)
        self.prefix = np.zeros((size, self.lanes, 0), dtype=np.int64)
        self.log_prob = np.zeros((size, self.lanes))
        self.alive = np.zeros((size, self.lanes), dtype=bool)
        self.alive[:, 0] = True  # one empty prefix; the other beam rows fill at step 0
        if beam > 1:
            self.alive[:, beam] = True
        self.best: list[Hypothesis | None] = [None] * size

    def finish(self, example: int, prefix, log_prob: float, ended: bool) -> None:
        length = len(prefix) + ended
        score = float(log_prob / length_penalty(length, self.alpha))
        best = self.best[example]
        if best is None or score > best.score:
            ids = [int(i) for i in prefix]
            self.best[example] = Hypothesis(ids, ended, float(log_prob), score)

    def extend_beam(self, logp: np.ndarray, t: int, eos: int | None) -> None:
        """Keep each example's `beam` best extensions of its live beam rows."""
        size, beam, vocab = logp.shape[0], self.beam, logp.shape[-1]
        live = np.where(self.alive[:, :beam], self.log_prob[:, :beam], -np.inf)
        total = (live[:, :, None] + logp[:, :beam]).reshape(size, beam * vocab)
        chosen = np.argsort(-total, axis=1, kind="stable")[:, :beam]
        parent, token = chosen // vocab, chosen % vocab
        value = np.take_along_axis(total, chosen, axis=1)
        prefix = np.take_along_axis(self.prefix[:, :beam, :t], parent[:, :, None], axis=1)
        grown = np.concatenate([prefix, token[:, :, None]], axis=2)
        last = t + 1 == self.steps
        for b, k in zip(*np.nonzero(np.isfinite(value) & ((token == eos) | last))):
            ended = bool(token[b, k] == eos)  # an unended one keeps its last id
            self.finish(b, grown[b, k, : t + (not ended)], value[b, k], ended)
        keep = np.isfinite(value) & (token != eos) & (not last)
        self._set_rows(slice(0, beam), grown, value, keep)

    def extend_greedy(self, logp: np.ndarray, t: int, eos: int | None) -> None:
        """The greedy row: its argmax id, finished at `eos` or at the step limit."""
        lane = self.beam
        token = logp[:, lane].argmax(axis=-1)
        value = self.log_prob[:, lane] + logp[np.arange(len(token)), lane, token]
        grown = np.concatenate([self.prefix[:, lane, :t], token[:, None]], axis=1)
        last = t + 1 == self.steps
        for b in np.flatnonzero(self.alive[:, lane] & ((token == eos) | last)):
            ended = bool(token[b] == eos)
            self.finish(b, grown[b, : t + (not ended)], value[b], ended)
        keep = self.alive[:, lane] & (token != eos) & (not last)
        grown = grown[:, None]
        self._set_rows(slice(lane, lane + 1), grown, value[:, None], keep[:, None])

    def grow(self) -> None:
        """Room for one more id in every row (the step's extensions write it)."""
        pad = np.zeros(self.prefix.shape[:2] + (1,), dtype=np.int64)
        self.prefix = np.concatenate([self.prefix, pad], axis=2)

    def _set_rows(self, lanes: slice, prefix, log_prob, keep) -> None:
        self.prefix[:, lanes] = prefix
        self.log_prob[:, lanes] = np.where(keep, log_prob, 0.0)
        self.alive[:, lanes] = keep

    def settle(self) -> None:
        """End the examples whose live rows cannot beat their best finished hypothesis."""
        bound = self.log_prob / length_penalty(self.steps, self.alpha)
        bound = np.where(self.alive, bound, -np.inf).max(axis=1)
        for b, best in enumerate(self.best):
            if best is not None and best.score >= bound[b]:
                self.alive[b] = False


def beam_search(
    model,
    batch: dict,
    beam: int,
    steps: int,
    eos: int | None,
    alpha: float = 0.0,
) -> list[Hypothesis]:
    """The best hypothesis of each example of `batch` (its `x`, and `lengths`), searched with
    `beam` rows per example for at most `steps` ids, scored with GNMT length penalty `alpha`
    (see the module docstring); all rows of all examples run as one batch a step."""
    check_beam(model, beam)
    if steps < 1:
        raise DataError(f"the decoder needs at least 1 step, got {steps}")
    size = len(np.asarray(batch["x"]))
    search = _Search(size, beam, steps, alpha)
    rows = repeat_rows(batch, search.lanes)
    for t in range(steps):
        prefix = search.prefix.reshape(size * search.lanes, t)
        logp = next_log_probs(model, rows, prefix).reshape(size, search.lanes, -1)
        search.grow()
        search.extend_beam(logp, t, eos)
        if beam > 1:
            search.extend_greedy(logp, t, eos)
        search.settle()
        if not search.alive.any():
            break
    return search.best
