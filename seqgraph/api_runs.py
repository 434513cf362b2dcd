"""Public functions over a run folder (what `seqgraph sample`, `eval`, `export` and
`gradflow` call): its model at a checkpoint, samples, held-out scores, exports.

`checkpoint` picks the parameters: "best" (best.npz, the best validation of the run), "last"
(checkpoint.npz), or None: best when the run has one, else last."""

from __future__ import annotations

import os

import numpy as np

from seqgraph.errors import DataError
from seqgraph.runtime.model import Model


def load_run(
    run_dir: str | os.PathLike, backend: str | None = None, checkpoint: str | None = None
) -> Model:
    """The model of a run folder at its `checkpoint` ("best", "last"; None: best when the run
    has one); `model.run_facts` holds data.json, the step and which checkpoint was read."""
    from pathlib import Path

    from seqgraph.train import run_folder

    run_dir = Path(run_dir)
    facts = run_folder.read_data_facts(run_dir)
    if not (run_dir / "spec.yaml").is_file():
        raise DataError(
            f"{run_dir / 'spec.yaml'}: missing from the run folder; restore it from a copy, "
            f"or train again with `seqgraph run SPEC --out {run_dir}`"
        )
    name = run_folder.checkpoint_name(run_dir, checkpoint)
    model = Model(run_dir / "spec.yaml", backend=backend)
    params, _, _, meta = run_folder.load_checkpoint(run_dir, name)
    run_folder.check_finite(run_dir, params, name)
    try:
        model.set_params(params)
    except DataError as exc:
        raise DataError(
            f"{run_dir}: its checkpoint does not fit its spec.yaml ({exc}); the folder mixes "
            "two runs: restore both files from one run, or train again with --out DIR"
        ) from None
    which = "best" if name == run_folder.BEST else "last"
    model.run_facts = {**facts, "step": meta["step"], "run_dir": str(run_dir), "checkpoint": which}
    return model


def sample(
    run_dir: str | os.PathLike,
    length: int | None = None,
    temperature: float | None = None,
    prime: str | None = None,
    greedy: bool = False,
    seed: int = 0,
    backend: str | None = None,
    wav: str | os.PathLike | None = None,
    checkpoint: str | None = None,
):
    """Generate from a trained run: text for character models, an array for vector models,
    or, when the run's data source generates a file (μ-law audio: a WAV), that file's path
    (`wav`; the source picks a default such as RUN_DIR/generated.wav).
    `length`: steps (default 300), or samples of audio (default train.sample_length)."""
    from pathlib import Path

    from seqgraph.spec import registry
    from seqgraph.train.data import source_of

    model = load_run(run_dir, backend, checkpoint)
    source = source_of(model.spec.data)
    record = registry.source(source)
    if record.sample is not None:
        options = {"length": length, "temperature": temperature, "greedy": greedy, "seed": seed}
        return record.sample(model, Path(run_dir), wav, prime=prime, **options)
    if wav is not None:
        raise DataError(
            f"--wav writes audio, and data.source {source!r} of this run generates none; drop --wav"
        )
    return _sample_steps(model, 300 if length is None else length, temperature, prime, greedy, seed)


def _sample_steps(model: Model, length: int, temperature, prime, greedy: bool, seed: int):
    """What the core generates without an application: text from a character model (primed
    with `prime`, default train.prime, else a newline or the vocabulary's first character),
    else `length` vectors fed back from zeros (which take no prime)."""
    from seqgraph.runtime.generate import default_prime, encode_prime, sample_ids, sample_vectors

    m, run_dir = model.spec.model, model.run_facts["run_dir"]
    vocab = model.run_facts.get("vocab")
    if m.input.type == "ids" and model.run_facts.get("kind") == "stream":
        if prime is not None:
            ids = encode_prime(prime, vocab)
        elif "prime" in model.spec.train:
            prime = str(model.spec.train["prime"])
            ids = encode_prime(prime, vocab, "train.prime of the run")
        else:
            prime = default_prime(vocab)
            ids = encode_prime(prime, vocab)
        if temperature is None:
            temperature = float(model.spec.train.get("temperature", 1.0))
        ids = sample_ids(model, ids, length, temperature, greedy, seed)
        return prime + "".join(vocab[i] for i in ids)
    generative = m.pattern == "many_to_many" and m.input.type == m.target.type == "vectors"
    if not generative or m.input.size != m.target.size:
        raise DataError(
            f"{run_dir}: `sample` generates from a model fed its own output (characters, or "
            f"vectors of its input size); this run's model is {m.pattern} from {m.input.type} "
            f"to {m.target.type}: score it with `seqgraph eval {run_dir}`"
        )
    if prime is not None:
        raise DataError(
            "--prime is text for character models; this run's model generates vectors "
            "(starting from zeros): drop --prime"
        )
    start = np.zeros((1, m.input.size))
    return sample_vectors(model, start, length)


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str | None = None,
    backend: str | None = None,
    split: str = "valid",
    confusion: str | os.PathLike | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Loss (per target step), accuracy and token count on the run's validation (or test)
    split, or on that split of `data` read the same way, with the data source's own scores
    (and its application's, under `app`). Every number counts real target steps only.

    A model with id targets adds its kind's scores (`kind`; `evaluate.KindScores`): a decoder
    `accuracy_teacher` (= `accuracy`), `accuracy_free`, `exact_match` and `sequences`; a
    classifier `macro_f1` and `confusion` ({"labels", "counts"}: rows true, columns
    predicted), drawn as a PNG at `confusion` (default RUN_DIR/confusion.png; its path under
    `confusion_png`); a tagger `macro_f1` and per-tag `tags` (precision, recall, f1, support).
    """
    from seqgraph.spec import registry
    from seqgraph.train import data as datasets
    from seqgraph.train.evaluate import evaluate, name_classes, score_kind, scorer_for
    from seqgraph.train.loop import train_config

    model = load_run(run_dir, backend, checkpoint)
    spec = model.spec
    config = datasets.data_config(spec.data, data)
    source = datasets.source_of(config)
    dataset = datasets.load(config, spec.model.pattern, spec.seed)
    if getattr(dataset, "vocab", None) and dataset.vocab != model.run_facts.get("vocab"):
        raise DataError(
            f"{config.get('path', 'the data')}: its vocabulary differs from the "
            "run's; evaluate on text with the same characters"
        )
    settings = train_config(spec, None)
    if split == "test":
        batches = dataset.valid_batches(settings["batch_size"], settings["seq_len"], "test")
    else:
        batches = dataset.valid_batches(settings["batch_size"], settings["seq_len"])
    kind = score_kind(model, dataset)
    result = evaluate(model, batches, scorer=scorer_for(source), kind=kind)
    if result["batches"] == 0:
        raise DataError(
            f"{run_dir}: the {split} split of {config.get('path', 'the data')} has no "
            "examples (too few for one batch); evaluate on other data with --data PATH"
        )
    if kind is not None:
        labels = getattr(dataset, "labels", None) or model.run_facts.get("labels")
        result = {"kind": kind, **name_classes(result, labels, spec.model.target.size)}
    if "confusion" in result:
        _draw_confusion(result, run_dir, confusion)
    app = registry.source(source)
    if app.metrics is not None:
        result["app"] = app.metrics(model, dataset, split, settings["batch_size"])
    facts = model.run_facts
    where = {"run_dir": str(run_dir), "step": facts["step"], "checkpoint": facts["checkpoint"]}
    return {**where, "split": split, "source": source, **result}


def _draw_confusion(result: dict, run_dir, path) -> None:
    """Draw `result["confusion"]` at `path`, or RUN_DIR/confusion.png, and note where under
    `confusion_png`. A run folder one may not write to is still evaluated, with a warning."""
    import warnings
    from pathlib import Path

    from seqgraph.errors import RunFolderError
    from seqgraph.train.evaluate import plot_confusion

    if path:
        result["confusion_png"] = str(plot_confusion(Path(path), result["confusion"]))
        return
    try:
        drawn = plot_confusion(Path(run_dir) / "confusion.png", result["confusion"])
    except (OSError, RunFolderError) as exc:  # atomic_write names the file and the cause
        note = f"no confusion.png: {exc}; write it elsewhere with --confusion FILE"
        warnings.warn(note, stacklevel=3)
        return
    result["confusion_png"] = str(drawn)


def export_run(
    run_dir: str | os.PathLike,
    to: str = "onnx",
    out: str | os.PathLike | None = None,
    checkpoint: str | None = None,
) -> str:
    """Write a run's model as ONNX (`to="onnx"`) or its weights as an .npz in the PyTorch,
    Keras or ONNX-initializer convention (`to="pytorch"|"keras"|"onnx_weights"`)."""
    from pathlib import Path

    model = load_run(run_dir, checkpoint=checkpoint)
    suffix = ".onnx" if to == "onnx" else f".{to}.npz"
    path = Path(out) if out else Path(run_dir) / f"model{suffix}"
    if to == "onnx":
        from seqgraph.inspect.onnx_export import export_onnx

        return str(export_onnx(model, path))
    convention = {"onnx_weights": "onnx"}.get(to, to)
    np.savez(path, **model.export_params(convention))
    return str(path)


def gradflow(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    batch_size: int = 8,
    steps: int | None = None,
    threshold: float = 1e-3,
    data: str | None = None,
) -> dict:
    """The gradient ledger of one batch for a spec (at initialisation) or a run folder (at its
    checkpoint): CSVs of per-step parameter contributions and of ‖∂L/∂h_t‖, and a heatmap."""
    from pathlib import Path

    from seqgraph.inspect import gradflow as flow
    from seqgraph.train import data as datasets
    from seqgraph.train.loop import default_run_dir, prepare, train_config

    source = Path(source)
    if source.is_dir():
        model = load_run(source)
        spec, folder = model.spec, Path(out or source / "gradflow")
        config = {**spec.data, **({"path": data} if data else {})}
        dataset = datasets.load(config, spec.model.pattern, spec.seed)
    else:
        spec, dataset, _ = prepare(str(source), data)
        folder = Path(out) if out else default_run_dir(spec, source) / "gradflow"
        model = Model(spec)
    settings = train_config(spec, None)
    batch = dataset.batch_at(0, batch_size, steps or settings["seq_len"], spec.seed)
    batch.pop("reset", None), batch.pop("loss_from", None)
    book = flow.ledger(model, batch)
    csvs = flow.write_csv(book, folder)
    clip = (settings.get("clip") or {}).get("max")
    png = flow.heatmap(book, folder / "heatmap.png", threshold, clip, spec.name)
    rows, matrix = book.state_matrix()
    reach = {}
    for row, norms in zip(rows, matrix):
        alive = np.flatnonzero(norms >= threshold * np.nanmax(norms))
        reach[row] = int(alive.max() - alive.min() + 1) if len(alive) else 0
    return {
        "folder": str(folder),
        "csv": [str(p) for p in csvs],
        "heatmap": str(png),
        "loss": book.loss,
        "global_norm": book.global_norm,
        "steps": book.steps,
        "alive_steps": reach,
    }
