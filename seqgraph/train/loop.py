"""Training: the loop behind `seqgraph run`, with true resume.

A resumed run continues bit for bit: the batch at a step is a pure function of (seed, step),
and the checkpoint holds the parameters, optimizer state, step, RNG state and the hidden
state carried between windows of a text stream. Ctrl-C (SIGINT) finishes the current step,
writes a checkpoint and returns; a NaN/Inf loss stops with the last good checkpoint kept.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError, SeqgraphError, SpecError
from seqgraph.runtime.generate import default_prime
from seqgraph.runtime.model import Model
from seqgraph.spec import registry
from seqgraph.spec.load import Spec, load_spec
from seqgraph.train import ctc, run_folder, tracking
from seqgraph.train import data as datasets
from seqgraph.train.evaluate import evaluate, real_steps, score_kind, scorer_for
from seqgraph.train.optim import Optimizer, clip, learning_rate, sampling_probability
from seqgraph.train.progress import Progress

DEFAULTS = {
    "steps": 1000,
    "batch_size": 32,
    "seq_len": 64,
    "lr": 0.002,
    "optimizer": {"name": "adam"},
    "clip": {"kind": "global_norm", "max": 5.0},
    "log_every": 50,
    "eval_every": 250,
    "valid_batches": 20,
    "checkpoint_every": 200,
    "sample_length": 400,
    "prime": "\n",
    "temperature": 0.8,
}


class TrainingError(SeqgraphError):
    """Training cannot go on (a NaN loss, a run folder in the way)."""


@dataclass
class RunOptions:
    """What `seqgraph run` was asked; None means: as the spec says."""

    spec: str
    data: str | None = None
    backend: str | None = None
    dtype: str | None = None
    steps: int | None = None
    out: str | None = None
    resume: bool = False
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    stop_after: int | None = None  # stop (as Ctrl-C would) after this many steps of this call
    sample: bool = True
    # callables given each metrics.jsonl record once written (a sweep prunes from "valid" ones)
    listeners: tuple = ()


def prepare(spec_path: str, data_path: str | None = None):
    """(spec with vocab sizes resolved, dataset, resolved spec dict) for a run."""
    loaded = {}

    def sizes(raw: dict) -> dict:
        config = datasets.data_config(raw.get("data") or {}, data_path)
        dataset = datasets.load(config, raw["model"]["pattern"], int(raw.get("seed", 0)))
        loaded.update(dataset=dataset, config=config)
        vocab = getattr(dataset, "vocab", None)
        labels = getattr(dataset, "labels", None)
        out = {"input": len(vocab) if vocab else None}
        out["target"] = len(labels) if labels else out["input"]
        return out

    spec = load_spec(spec_path, auto=sizes)
    resolved = copy.deepcopy(spec.raw)
    resolved["data"] = dict(loaded["config"])
    for key in ("path", "root"):  # absolute, so `eval` and `sample` work from any folder
        if resolved["data"].get(key):
            resolved["data"][key] = str(Path(resolved["data"][key]).resolve())
    resolved["model"]["input"] = _resolved_io(spec.model.input)
    resolved["model"]["target"] = _resolved_io(spec.model.target)
    return spec, loaded["dataset"], resolved


def _resolved_io(io) -> dict:
    """An input or target as the run's spec.yaml records it: images keep their shape."""
    if io.type == "images":
        return {"type": "images", "shape": list(io.shape)}
    return {"type": io.type, ("vocab" if io.type == "ids" else "size"): io.size}


def train_config(spec: Spec, steps: int | None) -> dict:
    config = {**DEFAULTS, **spec.train}
    if steps is not None:
        config["steps"] = steps
    return config


class _StopFlag:
    """SIGINT sets a flag the loop checks between steps, so a step is never cut in half."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave SIGINT alone
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run(options: RunOptions, log=print) -> dict:
    """Train as `seqgraph run` does; returns a summary (steps done, losses, run folder).
    The run folder is locked for the whole run: a second `run` on it refuses at once."""
    spec, dataset, resolved = prepare(options.spec, options.data)
    config = train_config(spec, options.steps)
    if int(config["steps"]) < 1:  # a run of no steps would leave a folder with no checkpoint
        raise TrainingError(
            f"steps must be at least 1, got {config['steps']}; pass --steps N with N >= 1"
        )
    tracking.check_available(config.get("log_to"))  # before a folder is made
    run_dir = Path(options.out) if options.out else default_run_dir(spec, options.spec)
    model = Model(spec, backend=options.backend, dtype=options.dtype)
    optimizer = Optimizer(config.get("optimizer") or {}, model.backend.xp)
    rng = np.random.default_rng([model.seed, 1])
    if options.sample and dataset.kind == "stream":  # a text run ends with a sample
        config["prime"] = _prime(spec, options.spec, dataset.vocab)
    if options.resume:  # before the folder is made: a mistyped --out leaves nothing behind
        run_folder.require_checkpoint(run_dir)
    with run_folder.locked(run_dir):
        start, carry = _start(options, run_dir, model, optimizer, rng, log, resolved, dataset)
        facts = datasets.describe(dataset)
        run_folder.write_run_files(run_dir, resolved, facts)
        if facts.get("read"):  # which arrays of an .npz were used and which were not
            log(facts["read"])
        metrics = run_folder.Metrics(run_dir, start if options.resume else None)
        source = datasets.source_of(resolved["data"])
        loop = _Loop(model, optimizer, dataset, config, rng, run_dir, metrics, log, source)
        if not loop.has_validation:
            log(_no_validation_warning(dataset, resolved["data"], config))
        spec_text = (run_dir / "spec.yaml").read_text()
        log_to, name = config.get("log_to"), spec.name or "seqgraph"
        with tracking.opened(log_to, run_dir, spec_text, name) as trackers:
            metrics.listeners = [trackers.record, *options.listeners]
            done, stopped = loop.train(start, carry, options)
            summary = _summary(loop, options, config, run_dir, source, done, stopped)
            if "sample" in summary:
                trackers.text("sample", summary["sample"])
            return summary


def _summary(loop, options, config, run_dir, source, done: int, stopped: bool) -> dict:
    summary = {
        "run_dir": str(run_dir),
        "source": source,
        "steps_done": done,
        "stopped": stopped,
        "total_steps": config["steps"],
        **loop.last,
    }
    if not stopped:
        summary.update(_finish(loop, done, options.sample))
    return summary


def default_run_dir(spec: Spec, spec_path) -> Path:
    """runs/NAME, for a spec `name` that is a plain folder name; SpecError otherwise (an
    absolute path or `..` would write outside runs/, an empty name into runs/ itself)."""
    name = spec.name
    plain = (
        isinstance(name, str)
        and name.strip() not in ("", ".", "..")
        and not any(sep in name for sep in ("/", "\\", "\0"))
    )
    if not plain:
        raise SpecError(
            "name",
            f"{name!r} cannot name the run folder runs/NAME; use a plain folder name "
            "(not empty, no '/' or '\\', not '.' or '..'), or pass --out DIR",
            source=str(spec_path) if isinstance(spec_path, (str, Path)) else "",
        )
    return Path("runs") / name


def _prime(spec: Spec, spec_path, vocab: list[str]) -> str:
    """The text a run's sample starts from: train.prime, whose characters must all be in the
    data's vocabulary, else a default the vocabulary holds (`default_prime`)."""
    if "prime" not in spec.train:
        return default_prime(vocab)
    prime = str(spec.train["prime"])
    missing = sorted({c for c in prime if c not in vocab})
    if missing or not prime:
        what = f"has characters {missing[:5]} the data lacks" if missing else "is empty"
        raise SpecError(
            "train.prime",
            f"{prime!r} {what}; use characters of the training text or drop train.prime",
            source=str(spec_path) if isinstance(spec_path, (str, Path)) else "",
        )
    return prime


def _no_validation_warning(dataset, data: dict, config: dict) -> str:
    fraction = data.get("valid_fraction", "the default")
    held = datasets.describe(dataset).get("valid", 0)
    unit = "characters" if isinstance(dataset, datasets.Stream) else "examples"
    return (
        f"warning: no validation data: valid_fraction {fraction} gives {held} {unit}, too few "
        f"for one batch (batch_size {config['batch_size']}, seq_len {config['seq_len']}); "
        "no validation loss will be reported (raise data.valid_fraction)"
    )


def _start(
    options: RunOptions, run_dir: Path, model, optimizer, rng, log, resolved: dict, dataset
) -> tuple[int, dict]:
    """(first step, carried state): from the checkpoint on --resume, once the spec and the
    data are checked to be the run's; else from scratch in a folder that holds no run yet."""
    if options.resume:
        _check_same_run(run_dir, resolved, dataset)
        start, carry = _restore(run_dir, model, optimizer, rng)
        log(f"resuming {run_dir} at step {start}")
        return start, carry
    if (run_dir / run_folder.CHECKPOINT).exists():
        raise TrainingError(
            f"{run_dir} already holds a run; pass --resume to continue it or "
            "--out DIR for a new one"
        )
    return 0, {}


def _finish(loop: _Loop, done: int, sample: bool) -> dict:
    """What a completed run adds to its summary: the final validation (with the
    application's own scores), the application's files, the loss plot and a text sample."""
    model, dataset, config = loop.model, loop.dataset, loop.config
    # The last validation adds the scores `eval` gives (a decoder's free-running accuracy and
    # exact match, a classifier's macro-F1), so the run's last line is not teacher-forced only.
    out = {"valid": loop.validate(done, kind=score_kind(model, dataset))}
    app = registry.source(loop.source)  # the application's own scores and files
    if app.metrics is not None and out["valid"]:
        out["valid"]["app"] = app.metrics(model, dataset, "valid", config["batch_size"])
        loop.metrics.write({"kind": "app", "step": done, **out["valid"]["app"]})
    if app.artifacts is not None:
        out["artifacts"] = app.artifacts(model, dataset, loop.run_dir, model.seed)
    run_folder.plot_losses(loop.run_dir, loop.metrics.read())
    if sample and dataset.kind == "stream":  # text; audio writes a WAV (app)
        out["sample"] = loop.sample_text()
    return out


def _check_same_run(run_dir: Path, resolved: dict, dataset) -> None:
    """Refuse to resume a run with another model or other data: the checkpoint's parameters
    and the run's vocabulary would be read against the wrong ones, silently."""
    fix = "use a new --out or the original spec"
    recorded = run_folder.read_run_spec(run_dir)
    if recorded is not None:
        for section in ("model", "cells"):
            was, now = _plain(recorded.get(section)), _plain(resolved.get(section))
            if was != now:
                where = _first_difference(section, was, now)
                raise TrainingError(
                    f"{run_dir}: the spec changed since this run was started ({where}); {fix}"
                )
    facts = run_folder.read_data_facts(run_dir)
    now = datasets.describe(dataset)
    for key in ("kind", "vocab", "labels"):
        if facts.get(key) != now.get(key):
            what = _vocab_difference(key, facts, now)
            raise TrainingError(
                f"{run_dir}: the data differs from this run's ({what}); "
                "resume with the data the run was started on (data in its spec.yaml), or "
                "start a new run with --out DIR"
            )


def _plain(value):
    """A spec section as its YAML round trip gives it back (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(value)) if value is not None else None


def _first_difference(path: str, was, now) -> str:
    """`path.to.key: old -> new` for the first place two plain YAML values differ."""
    if isinstance(was, dict) and isinstance(now, dict):
        for key in list(was) + [k for k in now if k not in was]:
            if was.get(key) != now.get(key):
                return _first_difference(f"{path}.{key}", was.get(key), now.get(key))
    if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
        for i, (a, b) in enumerate(zip(was, now)):
            if a != b:
                return _first_difference(f"{path}[{i}]", a, b)
    shown = [json.dumps(v)[:40] for v in (was, now)]
    return f"{path}: {shown[0]} -> {shown[1]}"


def _vocab_difference(key: str, facts: dict, now: dict) -> str:
    was, new = facts.get(key), now.get(key)
    if key == "kind" or not isinstance(was, list) or not isinstance(new, list):
        return f"{key} {json.dumps(was)[:40]} -> {json.dumps(new)[:40]}"
    name = "characters" if key == "vocab" else "labels"
    parts = []
    if set(new) - set(was):
        parts.append(f"the data has {name} {sorted(set(new) - set(was))[:5]} the run lacks")
    if set(was) - set(new):
        parts.append(f"the run has {name} {sorted(set(was) - set(new))[:5]} the data lacks")
    return "; ".join(parts) or f"the same {name} in another order"


def _restore(run_dir: Path, model: Model, optimizer: Optimizer, rng) -> tuple[int, dict]:
    params, opt_state, carry, meta = run_folder.load_checkpoint(run_dir)
    run_folder.check_finite(run_dir, params)
    try:
        model.set_params(params)
    except DataError as exc:  # a run folder written before the spec check above
        raise TrainingError(
            f"{run_dir}: the spec changed since this run was started ({exc}); "
            "use a new --out or the original spec"
        ) from None
    optimizer.state = {
        name: {slot: model.backend.asarray(v) for slot, v in slots.items()}
        for name, slots in opt_state.items()
    }
    optimizer.steps = meta["optimizer_steps"]
    rng.bit_generator.state = meta["rng"]
    return meta["step"], carry


class _Loop:
    def __init__(self, model, optimizer, dataset, config, rng, run_dir, metrics, log, source):
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        self.source = source
        self.config, self.rng, self.run_dir = config, rng, run_dir
        self.metrics, self.log = metrics, log
        self.xp = model.backend.xp
        self.last: dict = {}
        self.norms_per_layer = bool(config.get("log_to"))  # for the trackers' grad_norm/<layer>
        self.seed = model.seed
        stream = isinstance(dataset, datasets.Stream)
        self.carry_at = config.get("stride") if stream else None
        first = dataset.valid_batches(config["batch_size"], config["seq_len"])
        self.has_validation = next(iter(first), None) is not None

    def batch(self, step: int, carry: dict) -> tuple[dict, str]:
        c = self.config
        batch = self.dataset.batch_at(
            step, c["batch_size"], c["seq_len"], self.seed, c.get("stride")
        )
        if isinstance(self.dataset, datasets.Stream):
            batch["state"] = {} if batch.pop("reset") else carry
        feedback = "teacher"
        if self.model.spec.model.feeds_back and c.get("scheduled_sampling"):
            p = sampling_probability(c["scheduled_sampling"], step)
            y = np.asarray(batch["y"])
            # one coin per sequence and per time step, not one per batch
            batch["use_model"] = self.rng.random(y.shape[:2]) < p
            feedback = "scheduled"
        return batch, feedback

    def train(self, start: int, carry: dict, options: RunOptions) -> tuple[int, bool]:
        progress = Progress(int(self.config["steps"]), start, options.progress, self.log)
        try:
            return self._steps(start, carry, options, progress)
        finally:  # an error (a full disk) must not leave a progress bar on the terminal
            progress.close()

    def _steps(self, start: int, carry: dict, options: RunOptions, progress) -> tuple[int, bool]:
        c, total = self.config, int(self.config["steps"])
        step, fired, tokens, began = start, 0, 0, time.perf_counter()
        fired_at_log, step_at_log = 0, start  # the clip rate is over the steps since the last log
        with _StopFlag() as stop:
            while step < total:
                batch, feedback = self.batch(step, carry)
                loss, grads, state = self.model.train_step(batch, feedback, self.carry_at)
                if not math.isfinite(loss):
                    progress.close()
                    raise TrainingError(
                        f"the loss became {loss} at step {step}; the last good checkpoint in "
                        f"{self.run_dir} is kept. Lower train.lr or set train.clip"
                    )
                layer_norms = tracking.layer_norms(grads, self.xp) if self.norms_per_layer else {}
                grads, did_clip, norm = clip(grads, c.get("clip"), self.xp)
                lr = learning_rate(c, step, total)
                self.model.params = self.optimizer.update(self.model.params, grads, lr)
                carry = {k: to_numpy(v) for k, v in state.items()}
                step += 1
                n_tokens = int(
                    real_steps(self.model, batch)[..., batch.get("loss_from", 0) :].sum()
                )
                per_token = loss * len(batch["y"]) / max(n_tokens, 1)
                fired, tokens = fired + did_clip, tokens + n_tokens
                rate = tokens / max(time.perf_counter() - began, 1e-9)
                self.last = {"loss": per_token, "grad_norm": norm}
                progress.update(step, per_token, rate, fired / (step - start), lr)
                if step % c["log_every"] == 0 or step == total:
                    self.metrics.write(
                        {
                            "kind": "train",
                            "step": step,
                            "loss": per_token,
                            "lr": lr,
                            "grad_norm": norm,
                            "clipped": did_clip,
                            "clip_rate": (fired - fired_at_log) / (step - step_at_log),
                            "tokens_per_s": rate,
                            **({"grad_norms": layer_norms} if layer_norms else {}),
                        }
                    )
                    fired_at_log, step_at_log = fired, step
                if step % c["eval_every"] == 0 and step < total:
                    line = self._validation_line(step)
                    if line is not None:
                        progress.note(line)
                halt = stop.requested or (
                    options.stop_after is not None and step - start >= options.stop_after
                )
                if step % c["checkpoint_every"] == 0 or step == total or halt:
                    self.checkpoint(step, carry)
                if halt:
                    progress.close()
                    self.log(
                        f"stopped at step {step}; checkpoint written to {self.run_dir} "
                        "(continue with --resume)"
                    )
                    return step, True
        progress.close()
        return step, False

    def checkpoint(self, step: int, carry: dict) -> None:
        params = {k: to_numpy(v) for k, v in self.model.params.items()}
        opt_state = {
            name: {slot: to_numpy(v) for slot, v in slots.items()}
            for name, slots in self.optimizer.state.items()
        }
        meta = {
            "step": step,
            "optimizer_steps": self.optimizer.steps,
            "rng": self.rng.bit_generator.state,
        }
        run_folder.save_checkpoint(self.run_dir, params, opt_state, carry, meta)

    def validate(self, step: int, kind: str | None = None) -> dict:
        """Validation loss and scores (with `kind`'s, see `evaluate`), recorded in
        metrics.jsonl; {} without validation data (the run warned at its start)."""
        if not self.has_validation:
            return {}
        c = self.config
        batches = self.dataset.valid_batches(c["batch_size"], c["seq_len"])
        result = evaluate(
            self.model, batches, c["valid_batches"], scorer_for(self.source), kind=kind
        )
        self.metrics.write(
            {
                "kind": "valid",
                "step": step,
                "valid_loss": result["loss"],
                **{k: v for k, v in result.items() if k != "loss"},
            }
        )
        return result

    def _validation_line(self, step: int) -> str | None:
        result = self.validate(step)
        if not result:
            return None
        extra = f", accuracy {result['accuracy']:.3f}" if "accuracy" in result else ""
        extra += ctc.progress_scores(result)  # the full score line waits for the end of the run
        return f"step {step}: validation loss {result['loss']:.4f} per token{extra}"

    def sample_text(self) -> str:
        from seqgraph.runtime.generate import sample_ids

        c = self.config
        prime = self.dataset.encode(c["prime"])
        ids = sample_ids(
            self.model,
            list(prime),
            int(c["sample_length"]),
            float(c["temperature"]),
            seed=self.seed,
        )
        return c["prime"] + self.dataset.decode(ids)
