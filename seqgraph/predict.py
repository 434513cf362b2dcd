"""From a trained run to answers: `Predictor` (what `seqgraph.load` returns and `seqgraph
predict` runs) applies the run's own tokenizer and vocabulary to raw inputs, runs the model
in batches bucketed by length, and gives one record per input:

- many_to_one / one_to_one to ids: `{"input", "label", "probs": {label: p}}`;
- many_to_many to ids: `{"tokens", "tags"}` (a tag per token; for a character stream the
  likeliest next character after each one);
- encoder_decoder / one_to_many: `{"input", "output"}`, decoded freely (greedy, or sampled);
- a target of vectors: `{"input", "output": [[...]]}` (the numbers).

Raw strings become ids through the data source's `encode` hook (`spec.registry`); a vector
model reads arrays, or JSON lists of numbers as text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import seqgraph.apps  # noqa: F401  (registers the sources whose `encode` reads raw text)
from seqgraph.api_runs import load_run
from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError
from seqgraph.runtime.model import Model
from seqgraph.spec import registry
from seqgraph.train.data import source_of

BATCH_SIZE = 256  # inputs a forward pass takes at once
PAD_MULTIPLE = 8  # steps padded up to a multiple of this (few plan shapes), as in training
DEFAULT_LENGTH = 50  # decoder steps when the run says nothing


class Predictor:
    """A trained model with its data facts, ready for raw inputs (see the module docstring).
    `unknown` counts the tokens of the last `predict` call that its vocabulary lacked."""

    def __init__(self, model: Model):
        self.model = model
        self.facts = dict(getattr(model, "run_facts", None) or {"kind": "bare"})
        self.config = dict(model.spec.data)
        self.unknown, self.unknown_to = 0, "<unk>"

    def info(self) -> dict:
        """Spec name, pattern, input and target types, labels and vocabulary size."""
        m = self.model.spec.model
        vocab = self.facts.get("vocab")
        return {
            "name": self.model.spec.name,
            "pattern": m.pattern,
            "input": m.input.text,
            "target": m.target.text,
            "labels": self._names(),
            "vocab_size": len(vocab) if vocab else (m.input.size if m.input.type == "ids" else 0),
            "source": source_of(self.config) if self.facts.get("kind") != "bare" else None,
            "step": self.facts.get("step"),
        }

    # ---- inputs ------------------------------------------------------------------------------

    def encode(self, inputs: list) -> tuple[list, list]:
        """(arrays the model reads, what each record shows as its input or tokens)."""
        m = self.model.spec.model
        self.unknown, self.unknown_to = 0, "<unk>"
        if m.input.type != "ids":
            arrays = [_vectors(item, i) for i, item in enumerate(inputs)]
            return arrays, [a.tolist() for a in arrays]
        if not any(isinstance(item, str) for item in inputs):
            arrays = [np.asarray(item, dtype=np.int64).reshape(-1) for item in inputs]
            return arrays, [[str(int(i)) for i in a] for a in arrays]
        if not all(isinstance(item, str) for item in inputs):
            raise DataError("give predict raw strings or arrays of ids, not a mix of both")
        record = (
            None if self.facts.get("kind") == "bare" else registry.source(source_of(self.config))
        )
        if record is None or record.encode is None:
            what = (
                "a model saved without data facts"
                if record is None
                else (f"data.source {record.name}")
            )
            raise DataError(
                f"predict does not know how to read raw input for {what}; "
                "pass --data FILE (an .npz of x) or arrays of ids"
            )
        encoded = record.encode(list(inputs), self.config, self.facts, m.pattern)
        self.unknown, self.unknown_to = encoded.unknown, encoded.unknown_to
        return encoded.ids, encoded.tokens

    def read_file(self, path: str | os.PathLike) -> list:
        """The inputs of a data file: x of an .npz (cut to `lengths`), else the raw strings
        the run's data source reads from it (labels optional), else its non-blank lines."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file; pass --data with an existing file")
        if path.suffix.lower() == ".npz":
            return _npz_inputs(path)
        kind = self.facts.get("kind")
        record = None if kind == "bare" else registry.source(source_of(self.config))
        if record is not None and record.read_inputs is not None:
            return record.read_inputs(path, self.config)
        from seqgraph.train.data import read_text

        return [line for line in read_text(path).splitlines() if line.strip()]

    # ---- running -----------------------------------------------------------------------------

    def predict(
        self,
        inputs: list,
        batch_size: int = BATCH_SIZE,
        sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        length: int | None = None,
    ) -> list[dict]:
        """One record per input (raw strings, or arrays for vector models and ids), in order.
        Decoders run free for `length` steps (greedy, or `sample`d at `temperature`)."""
        if isinstance(inputs, (str, np.ndarray)):
            inputs = [inputs]
        inputs = list(inputs)
        if not inputs:
            return []
        arrays, shown = self.encode(inputs)
        outputs: list = [None] * len(arrays)
        m = self.model.spec.model
        rng = np.random.default_rng(seed)
        steps = length or int(self.model.spec.train.get("sample_length", DEFAULT_LENGTH))
        single = m.pattern in ("one_to_one", "one_to_many")
        order = sorted(range(len(arrays)), key=lambda i: 0 if single else len(arrays[i]))
        order = [i for i in order if single or len(arrays[i])]  # a text of dropped characters
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = self._batch([arrays[i] for i in chosen])
            if m.feeds_back:
                result = self._decode(batch, steps, sample, temperature, rng)
            else:
                result = to_numpy(self.model.forward(batch)["predictions"])
            for row, i in enumerate(chosen):
                outputs[i] = result[row]
        return [self._record(raw, shown[i], arrays[i], outputs[i]) for i, raw in enumerate(inputs)]

    def _batch(self, arrays: list) -> dict:
        m = self.model.spec.model
        if m.pattern in ("one_to_one", "one_to_many"):  # no time axis: one id or vector each
            if m.input.type == "ids":
                return {"x": np.array([int(a.reshape(-1)[0]) for a in arrays], dtype=np.int64)}
            return {"x": np.stack(arrays)}
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        multiple = int(self.config.get("pad_multiple", PAD_MULTIPLE))
        steps = -(-int(lengths.max()) // multiple) * multiple
        x = np.zeros((len(arrays), steps) + arrays[0].shape[1:], dtype=arrays[0].dtype)
        for row, a in enumerate(arrays):
            x[row, : len(a)] = a
        return {"x": x, "lengths": lengths}

    def _decode(self, batch: dict, steps: int, sample: bool, temperature: float, rng):
        """Free-running decoder outputs (B, steps, C): greedy in one pass (`feedback="free"`
        feeds each step its argmax), or sampled a step at a time (the drawn prefix fed as the
        teacher's targets)."""
        m = self.model.spec.model
        if not sample or m.target.type != "ids":
            return to_numpy(
                self.model.forward({**batch, "out_steps": steps}, "free")["predictions"]
            )
        if temperature <= 0:
            raise DataError("--temperature must be positive for --sample")
        size = len(batch["x"])
        drawn = np.zeros((size, 0), dtype=np.int64)
        for t in range(steps):
            y = np.concatenate([drawn, np.zeros((size, 1), np.int64)], axis=1)
            logits = to_numpy(self.model.forward({**batch, "y": y})["predictions"])[:, t]
            drawn = np.concatenate([drawn, _draw(logits, temperature, rng)[:, None]], axis=1)
        onehot = np.zeros((size, steps, m.target.size))
        onehot[np.arange(size)[:, None], np.arange(steps)[None], drawn] = 1.0
        return onehot

    def attention(self, inputs: list, records: list[dict]) -> list[dict]:
        """Per input and its record (from `predict`), for a model with `model.attention`:
        `{"source": tokens, "output": tokens, "weights": (output x source)}`, the weights each
        output token was produced with. They are the graph's `("att", "weights", t)` nodes,
        read on a teacher-forced pass over the record's own output, which feeds each step the
        token the decoding fed it: the same weights, whichever search chose the tokens."""
        if self.model.spec.model.attention is None:
            raise DataError(
                "--attention: this run's model has no model.attention, so there are no "
                "weights to draw; train a spec with model.attention: {type: general, size: 64}"
            )
        arrays, shown = self.encode(list(inputs))
        names = self._names()
        index = {name: i for i, name in enumerate(names or [])}
        maps = []
        for array, source, record in zip(arrays, shown, records):
            output = [str(token) for token in record.get("output", [])]
            ids = [index[token] if names else int(token) for token in output]
            weights = np.zeros((len(ids), len(array)))
            if ids and len(array):
                batch = {**self._batch([array]), "y": np.asarray([ids], dtype=np.int64)}
                weights = to_numpy(self.model.forward(batch)["attention"])[0, :, : len(array)]
            maps.append({"source": [str(t) for t in source], "output": output, "weights": weights})
        return maps

    # ---- records -----------------------------------------------------------------------------

    def _names(self) -> list[str] | None:
        """The names of the target ids: the run's labels, or (a character stream) its
        vocabulary, or None (ids are shown as numbers)."""
        if self.facts.get("labels"):
            return [str(a) for a in self.facts["labels"]]
        if self.facts.get("kind") == "stream" and self.facts.get("vocab"):
            return list(self.facts["vocab"])
        return None

    def _name(self, i: int) -> str:
        names = self._names()
        return names[i] if names and i < len(names) else str(i)

    def _record(self, raw, shown, array, out) -> dict:
        m = self.model.spec.model
        source = raw if isinstance(raw, str) else shown
        if out is None:  # nothing left to run (every character dropped)
            return {"tokens": [], "tags": []} if m.input.type == "ids" else {"input": source}
        if m.target.type != "ids":
            steps = len(array) if m.pattern == "many_to_many" else len(out)
            value = out[:steps].tolist() if out.ndim > 1 else [out.tolist()]
            return {"input": source, "output": value}
        if m.pattern in ("many_to_one", "one_to_one"):
            probs = _softmax(out)
            best = int(np.argmax(probs))
            return {
                "input": source,
                "label": self._name(best),
                "probs": {self._name(i): float(p) for i, p in enumerate(probs)},
            }
        ids = np.argmax(out, axis=-1).tolist()
        if m.pattern == "many_to_many":
            key = "tokens" if m.input.type == "ids" else "input"
            return {key: shown, "tags": [self._name(i) for i in ids[: len(array)]]}
        return {"input": source, "output": [self._name(i) for i in _cut(ids, self._names())]}


def _cut(ids: list[int], names: list[str] | None) -> list[int]:
    """Decoded ids before the first end-of-sequence id (named <eos>, </s> or <end>)."""
    for stop in ("<eos>", "</s>", "<end>"):
        if names and stop in names and names.index(stop) in ids:
            return ids[: ids.index(names.index(stop))]
    return ids


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def _draw(logits: np.ndarray, temperature: float, rng) -> np.ndarray:
    """One id per row from softmax(logits / temperature)."""
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    picks = (np.cumsum(probs, axis=-1) < rng.random((len(logits), 1))).sum(axis=-1)
    return np.minimum(picks, logits.shape[-1] - 1)


def _vectors(item, index: int) -> np.ndarray:
    """A vector model's input: an array, or a JSON list of numbers as text."""
    if isinstance(item, str):
        try:
            item = json.loads(item)
        except json.JSONDecodeError:
            raise DataError(
                f"input {index + 1}: this model reads vectors; give a JSON list of numbers "
                f"(e.g. [[0.1, 0.2], [0.3, 0.4]]), not {item[:40]!r}"
            ) from None
    array = np.asarray(item, dtype=np.float64)
    if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
        raise DataError(f"input {index + 1}: the vectors must be finite numbers")
    return array


def _npz_inputs(path: Path) -> list:
    """The examples of array x of an .npz, each cut to its `lengths` when the file has them."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays:
                raise DataError(f"{path}: missing array 'x'; it holds {list(arrays)}")
            x = arrays["x"]
            lengths = arrays["lengths"] if "lengths" in arrays else None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from None
    if lengths is None:
        return list(x)
    return [x[i, : int(lengths[i])] for i in range(len(x))]


def load(
    run_dir: str | os.PathLike,
    backend: str | None = None,
    dtype: str | None = None,
    engine: str = "plan",
    checkpoint: str | None = None,
) -> Predictor:
    """The `Predictor` of a run folder (or of a folder `Model.save` wrote) at its checkpoint;
    `dtype` (e.g. "float64") runs it in another precision than its spec's. `engine`: the
    compiled plan (one per batch shape, kept for the next call; 10,000 sentences in about
    1 s cold, 0.3 s warm), or "interp", the interpreter it is tested against. `checkpoint`:
    "best" (best.npz), "last" (checkpoint.npz), or None: best when the run has one."""
    model = load_run(run_dir, backend, checkpoint)
    if (dtype or model.backend.dtype_name) != model.backend.dtype_name or engine != model.engine:
        copy = Model(model.spec, backend=backend, dtype=dtype, engine=engine)
        copy.set_params({k: model.backend.to_numpy(v) for k, v in model.params.items()})
        copy.run_facts = model.run_facts
        model = copy
    return Predictor(model)
