"""Held-out metrics: loss per target token (nats for classes, MSE for vectors) and accuracy on
real (unpadded) target steps; a CTC model's greedy-decoded error rates (`ctc`), whatever its
data; and a data source's `scorer` (`spec.registry`) adds its own per-batch scores.

`evaluate(..., kind=...)` adds the scores of one kind of model with id targets (`score_kind`):
a decoder's teacher-forced and free-running (greedy) token accuracy and exact sequence match,
and with `beam` > 1 those of beam search beside them; a classifier's macro-F1 and confusion
matrix; a tagger's per-tag precision, recall and F1.

A decoder running free stops at its first `eos` (`runtime.decode`): the steps after it are no
output, so a real target step there counts as wrong, and an exact match is the target through
its `eos` and nothing else (the padding after the target is not compared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.runtime import decode
from seqgraph.spec import registry
from seqgraph.train import ctc


def real_steps(model, batch: dict) -> np.ndarray:
    """(B, T) booleans: which target steps are real (or (B,) ones for one target each)."""
    m = model.spec.model
    y = np.asarray(batch["y"])
    if m.loss == "ctc":  # label positions, not frames
        lengths = batch.get("y_lengths", np.full(len(y), y.shape[1]))
        return np.arange(y.shape[1])[None, :] < np.asarray(lengths)[:, None]
    if m.pattern in ("many_to_one", "one_to_one"):
        return np.ones(len(y), dtype=bool)
    lengths = batch.get("y_lengths") if m.feeds_back else batch.get("lengths")
    steps = y.shape[1]
    if lengths is None:
        return np.ones((len(y), steps), dtype=bool)
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def evaluate(
    model,
    batches,
    max_batches: int | None = None,
    scorer=None,
    kind: str | None = None,
    decoding: dict | None = None,
) -> dict:
    """Mean loss per real target step over `batches`, and accuracy for class targets.

    Stream batches marked `carry` continue from the previous batch's final state. A CTC
    model's loss is per label, and its frames are not aligned with its labels, so it has no
    accuracy; it reports per, digit_accuracy, nearest_accuracy and sequences (`ctc`).
    `scorer` (a `registry.Scorer`) sees every batch and its forward pass; its `result()`
    joins the returned dict. `kind` ("decoder", "classifier" or "tagger", from `score_kind`)
    adds that kind's scores (`KindScores`); a decoder's take a second, free-running pass,
    and a beam search when `decoding` (`KindScores`' `eos`, `beam`, `length_penalty`) asks.
    """
    total, count, correct, carry, used = 0.0, 0, 0, {}, 0
    m = model.spec.model
    accuracy = m.loss != "ctc" and m.target.type == "ids"
    scorers = [ctc.Scorer()] if m.loss == "ctc" else []
    scorers += [scorer] if scorer is not None else []
    scorers += [KindScores(model, kind, **(decoding or {}))] if kind is not None else []
    for batch in batches:
        if max_batches is not None and used >= max_batches:
            break
        batch = dict(batch)
        if batch.pop("carry", False) and carry:
            batch["state"] = carry
        out = model.forward(batch)
        real = real_steps(model, batch)
        total += out["loss"] * len(batch["y"])  # the batch loss averages over sequences
        count += int(real.sum())
        for each in scorers:
            each.add(batch, out)
        if accuracy:
            guess = np.argmax(to_numpy(out["predictions"]), axis=-1)
            correct += int(((guess == np.asarray(batch["y"])) & real).sum())
        carry = {k: to_numpy(v) for k, v in out["state"].items()}
        used += 1
    result = {"loss": total / max(count, 1), "tokens": count, "batches": used}
    if accuracy:
        result["accuracy"] = correct / max(count, 1)
    for each in scorers:
        result.update(each.result())
    return result


def scorer_for(source: str):
    """A fresh per-batch scorer of data source `source`, or None if it has none."""
    make = registry.source(source).scorer
    return make() if make is not None else None


def score_line(source: str, result: dict) -> str:
    """What `run` and `eval` print after the loss: a CTC model's error rates, data source
    `source`'s own `score_line(result)`, then its application's scores (`result["app"]`) as
    `name value`; `result` is a validation or `evaluate_run` result."""
    record = registry.source(source)
    parts = [ctc.score_line(result), kind_line(result)]
    parts += [record.score_line(result)] if record.score_line is not None else []
    for name, value in (result.get("app") or {}).items():
        parts.append(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
    return "; ".join(part for part in parts if part)


KINDS = ("decoder", "classifier", "tagger")


def decoding_for(kind: str | None, labels, beam: int = 1, length_penalty: float = 0.0):
    """`evaluate`'s `decoding` for a model of `kind`: a decoder stops at the `<eos>` among
    its target `labels` (if they name one) and, with `beam` > 1, is also beam-searched;
    None for any other kind."""
    if kind != "decoder":
        return None
    eos = decode.eos_id([str(name) for name in labels] if labels else None)
    return {"eos": eos, "beam": beam, "length_penalty": length_penalty}


def score_kind(model, dataset) -> str | None:
    """Which scores `evaluate(kind=...)` adds for a model with id targets (not CTC): "decoder"
    (one_to_many, encoder_decoder), "classifier" (many_to_one, one_to_one) or "tagger"
    (many_to_many over separate sequences, not one char stream); None for any other."""
    from seqgraph.train.data import SequenceSet

    m = model.spec.model
    if m.loss == "ctc" or m.target.type != "ids":
        return None
    if m.feeds_back:
        return "decoder"
    if m.pattern in ("many_to_one", "one_to_one"):
        return "classifier"
    return "tagger" if isinstance(dataset, SequenceSet) else None


class KindScores:
    """The scores of one kind of model (`score_kind`) over the batches of one evaluation, on
    real target steps only (a `registry.Scorer`: `add(batch, out)`, then `result()`).
    A decoder stops at `eos` (None: it runs the target's length) and, with `beam` > 1, is
    also decoded by beam search (`runtime.decode.beam_search`, GNMT `length_penalty`)."""

    def __init__(
        self,
        model,
        kind: str,
        eos: int | None = None,
        beam: int = 1,
        length_penalty: float = 0.0,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.model, self.kind = model, kind
        self.eos, self.beam, self.length_penalty = eos, beam, length_penalty
        self.truth: list[np.ndarray] = []  # real target ids, flat
        self.guess: list[np.ndarray] = []  # teacher-forced argmax on them
        self.free_right = self.exact = self.sequences = 0
        self.beam_right = self.beam_exact = 0

    def add(self, batch: dict, out: dict) -> None:
        y, real = np.asarray(batch["y"]), real_steps(self.model, batch)
        guess = np.argmax(to_numpy(out["predictions"]), axis=-1)
        self.truth.append(y[real])
        self.guess.append(guess[real])
        if self.kind != "decoder":
            return
        free = to_numpy(self.model.forward(batch, feedback="free")["predictions"]).argmax(-1)
        ids, ended = zip(*(decode.cut_at_eos(row, self.eos) for row in free))
        right, exact = score_decoded(ids, ended, self.eos, y, real)
        self.free_right, self.exact = self.free_right + right, self.exact + exact
        self.sequences += len(y)
        if self.beam > 1:
            source = {k: batch[k] for k in ("x", "lengths") if batch.get(k) is not None}
            found = decode.beam_search(
                self.model, source, self.beam, y.shape[1], self.eos, self.length_penalty
            )
            right, exact = score_decoded(
                [h.ids for h in found], [h.ended for h in found], self.eos, y, real
            )
            self.beam_right, self.beam_exact = self.beam_right + right, self.beam_exact + exact

    def result(self) -> dict:
        truth = np.concatenate(self.truth) if self.truth else np.zeros(0, dtype=np.int64)
        guess = np.concatenate(self.guess) if self.guess else np.zeros(0, dtype=np.int64)
        tokens = max(len(truth), 1)
        if self.kind == "decoder":
            out = {
                "accuracy_teacher": int((truth == guess).sum()) / tokens,
                "accuracy_free": self.free_right / tokens,
                "exact_match": self.exact / max(self.sequences, 1),
                "sequences": self.sequences,
            }
            if self.beam > 1:
                out["beam"], out["length_penalty"] = self.beam, self.length_penalty
                out["accuracy_beam"] = self.beam_right / tokens
                out["exact_match_beam"] = self.beam_exact / max(self.sequences, 1)
            return out
        size = self.model.spec.model.target.size
        counts = confusion_counts(truth, guess, size)
        out = {"macro_f1": macro_f1(counts)}
        if self.kind == "classifier":
            out["confusion"] = {"labels": None, "counts": counts.tolist()}
        else:
            out["tags"] = per_class(counts)
        return out


def score_decoded(hypotheses, ended, eos, y: np.ndarray, real: np.ndarray) -> tuple[int, int]:
    """(real target steps decoded right, sequences decoded exactly) of decoded sequences that
    stop at `eos`: step by step against the targets, no output counting as wrong."""
    rows = decode.as_rows(hypotheses, ended, eos, y.shape[1])
    right = (rows == y) & real
    exact = np.all(right | ~real, axis=1)
    if eos is not None:  # and nothing decoded past the target's end
        exact &= np.array([len(h) + e == n for h, e, n in zip(hypotheses, ended, real.sum(1))])
    return int(right.sum()), int(exact.sum())


def confusion_counts(truth: np.ndarray, guess: np.ndarray, size: int) -> np.ndarray:
    """(size, size) integer counts: row = the true class, column = the predicted one."""
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (np.asarray(truth, dtype=np.int64), np.asarray(guess, dtype=np.int64)), 1)
    return counts


def per_class(counts: np.ndarray) -> dict:
    """{class id (str): precision, recall, f1, support} for every class that occurs among the
    true or the predicted ones; a ratio with nothing to divide by is 0 (as scikit-learn's
    `zero_division=0`)."""
    tp = np.diag(counts)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    out = {}
    for c in np.flatnonzero((predicted > 0) | (support > 0)):
        p = tp[c] / predicted[c] if predicted[c] else 0.0
        r = tp[c] / support[c] if support[c] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[str(int(c))] = {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f1),
            "support": int(support[c]),
        }
    return out


def macro_f1(counts: np.ndarray) -> float:
    """The unweighted mean of the per-class F1 over the classes `per_class` lists (0 if none)."""
    scores = [each["f1"] for each in per_class(counts).values()]
    return float(np.mean(scores)) if scores else 0.0


def name_classes(result: dict, labels: list[str] | None, size: int) -> dict:
    """`result` with class ids named by `labels` (the data's names of the target ids, when it
    names all `size`), else by their ids as text: the confusion matrix's `labels` and the
    keys of `tags`."""
    names = list(labels) if labels and len(labels) == size else [str(i) for i in range(size)]
    out = dict(result)
    if "confusion" in out:
        out["confusion"] = {**out["confusion"], "labels": names}
    if "tags" in out:
        out["tags"] = {names[int(c)]: scores for c, scores in out["tags"].items()}
    return out


def plot_confusion(path, confusion: dict) -> Path:
    """A PNG of a confusion matrix (`{"labels", "counts"}`, rows true, columns predicted),
    each cell showing its count; matplotlib's Agg backend, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqgraph.train.run_folder import atomic_write

    labels, counts = confusion["labels"], np.asarray(confusion["counts"])
    side = min(2 + 0.5 * len(labels), 20)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        middle = counts.max() / 2
        for (row, col), count in np.ndenumerate(counts):
            colour = "white" if count > middle else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(f"confusion over {int(counts.sum())} examples")
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        plt.close(fig)
    return path


def kind_line(result: dict) -> str:
    """The printed form of `KindScores`' numbers ("" if `result` has none)."""
    if "accuracy_free" in result:
        return (
            f"teacher-forced accuracy {result['accuracy_teacher']:.4f}; free-running accuracy "
            f"{result['accuracy_free']:.4f}, exact match {result['exact_match']:.4f} over "
            f"{result['sequences']:,} sequences"
        ) + _beam_line(result)
    if "macro_f1" in result:
        return f"macro-F1 {result['macro_f1']:.4f}"
    return ""


def _beam_line(result: dict) -> str:
    """Beam search's numbers beside greedy's ("" without a beam)."""
    if "accuracy_beam" not in result:
        return ""
    penalty = f", length penalty {result['length_penalty']:g}" if result["length_penalty"] else ""
    return (
        f"; beam {result['beam']}{penalty}: accuracy {result['accuracy_beam']:.4f}, "
        f"exact match {result['exact_match_beam']:.4f}"
    )
