"""The captioning application's decoding, scores and example files (an `apps.base.App`).

Greedy decoding runs the decoder free (`feedback="free"`: each step is fed the argmax of the
previous one). Sampled decoding draws each word at `train.temperature` (default 1.0); since a
one_to_many decoder cannot be started from a carried state, step t re-runs the teacher-forced
decoder on the t words drawn so far and reads its last logits: quadratic in the caption
length, which is at most 14 words here. Scores use one reference per image (its grammar gives
exactly one caption); the test split is scored whole and as its seen and unseen halves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.apps.base import App
from seqgraph.apps.bleu import corpus_bleu, exact_match
from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError

EXAMPLES = 8  # images per subset in the example files
SLACK = 2  # decode this many steps past the longest reference, so a missing <eos> costs BLEU


def cut(ids, eos: int) -> list[int]:
    """The ids before the first `eos` (all of them if there is none)."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos)] if eos in ids else ids


def greedy(model, images: list, steps: int, batch_size: int, eos: int) -> list[list[int]]:
    """Argmax decoding, each step fed the previous step's argmax."""
    out = []
    for start in range(0, len(images), batch_size):
        x = np.stack(images[start : start + batch_size])
        result = model.forward({"x": x, "out_steps": steps}, feedback="free")
        out += [cut(row, eos) for row in to_numpy(result["predictions"]).argmax(-1)]
    return out


def _draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One id per row from softmax(logits / temperature), by inverse CDF."""
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
    picks = (cumulative < rng.random((len(logits), 1))).sum(axis=-1)
    return np.minimum(picks, logits.shape[-1] - 1)


def sampled(model, images, steps, batch_size, eos, temperature, rng) -> list[list[int]]:
    """Ancestral sampling: each word drawn given the image and the words drawn before it."""
    if temperature <= 0:
        raise DataError("train.temperature must be positive for sampled captions")
    out = []
    for start in range(0, len(images), batch_size):
        x = np.stack(images[start : start + batch_size])
        prefix = np.zeros((len(x), 0), dtype=np.int64)
        for t in range(steps):
            y = np.concatenate([prefix, np.zeros((len(x), 1), np.int64)], axis=1)
            logits = to_numpy(model.forward({"x": x, "y": y})["predictions"])[:, t]
            prefix = np.concatenate([prefix, _draw(logits, temperature, rng)[:, None]], axis=1)
            if np.all(np.any(prefix == eos, axis=1)):
                break
        out += [cut(row, eos) for row in prefix]
    return out


class CaptionApp(App):
    """Exact match and BLEU-4 of greedy and sampled captions; a text and PNG of examples."""

    def __init__(self, vocab: list[str], eos: int, n_seen: int):
        self.vocab, self.eos, self.n_seen = vocab, eos, n_seen
        self.dataset = None  # set by the loader once the SequenceSet exists

    def words(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def _split(self, split: str) -> tuple[list, list, dict]:
        """(images, reference word lists, {score prefix: slice}) of a split."""
        d = self.dataset
        if split == "valid":
            xs, ys, parts = d.valid_x, d.valid_y, {"": slice(None)}
        elif split == "test":
            xs, ys = d.test_x, d.test_y
            parts = {"": slice(None), "seen_": slice(0, self.n_seen)}
            if len(xs) > self.n_seen:  # none when data.held_out is empty
                parts["unseen_"] = slice(self.n_seen, None)
        else:
            raise DataError(f"captions are scored on the valid or test split, not {split!r}")
        return xs, [self.words(cut(y, self.eos)) for y in ys], parts

    def decode(self, model, xs: list, batch_size: int, steps: int) -> tuple[list, list]:
        """(greedy, sampled) captions as word lists; sampling is seeded by the model's seed."""
        temperature = float(model.spec.train.get("temperature", 1.0))
        rng = np.random.default_rng([model.seed, 5])
        best = greedy(model, xs, steps, batch_size, self.eos)
        drawn = sampled(model, xs, steps, batch_size, self.eos, temperature, rng)
        return [self.words(h) for h in best], [self.words(h) for h in drawn]

    def metrics(self, model, split: str, batch_size: int) -> dict:
        xs, refs, parts = self._split(split)
        steps = max(len(r) for r in refs) + 1 + SLACK
        best, drawn = self.decode(model, xs, batch_size, steps)
        scores = {}
        for prefix, part in parts.items():
            ref = [[r] for r in refs[part]]
            scores[f"{prefix}exact_match"] = exact_match(ref, best[part])
            scores[f"{prefix}bleu4"] = corpus_bleu(ref, best[part])
            scores[f"{prefix}sampled_exact_match"] = exact_match(ref, drawn[part])
            scores[f"{prefix}sampled_bleu4"] = corpus_bleu(ref, drawn[part])
        scores["temperature"] = float(model.spec.train.get("temperature", 1.0))
        return scores

    def artifacts(self, model, run_dir: Path, seed: int) -> dict:
        """captions.txt (truth, greedy, sampled for a few seen and unseen test images) and
        captions.png (those images with their true and greedy captions)."""
        xs, refs, parts = self._split("test")
        subsets = [part for name, part in parts.items() if name]  # seen, unseen
        picks = [i for part in subsets for i in range(len(xs))[part][:EXAMPLES]]
        images, truth = [xs[i] for i in picks], [refs[i] for i in picks]
        best, drawn = self.decode(model, images, len(images), max(map(len, refs)) + 1 + SLACK)
        lines = []
        for n, i in enumerate(picks):
            kind = "seen" if i < self.n_seen else "unseen (held-out pair)"
            lines += [f"test image {i}, {kind}", f"  truth:   {' '.join(truth[n])}"]
            lines += [f"  greedy:  {' '.join(best[n])}", f"  sampled: {' '.join(drawn[n])}", ""]
        text = Path(run_dir) / "captions.txt"
        text.write_text("\n".join(lines))
        out = {"captions": str(text)}
        png = _grid(images, truth, best, Path(run_dir) / "captions.png")
        if png is not None:
            out["caption_grid"] = str(png)
        return out


def _grid(images: list, truth: list, best: list, path: Path) -> Path | None:
    """A PNG of the images, each titled with its true (T) and greedy (G) caption."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cols = 4
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.0), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, g in zip(axes.flat, images, truth, best):
        ax.imshow(np.clip(np.transpose(image, (1, 2, 0)), 0, 1), interpolation="nearest")
        colour = "green" if t == g else "red"
        ax.set_title(f"T: {_wrap(t)}\nG: {_wrap(g)}", fontsize=7, color=colour)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _wrap(words: list[str]) -> str:
    """Long captions on two lines so that titles stay inside their image's column."""
    return (
        " ".join(words) if len(words) <= 7 else f"{' '.join(words[:6])}\n   {' '.join(words[6:])}"
    )
