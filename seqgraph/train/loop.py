"""Training: the loop behind `seqgraph run`, with true resume.

A resumed run continues bit for bit: the batch at a step is a pure function of (seed, step),
and the checkpoint holds the parameters, optimizer state, step, RNG state, the best-validation
and early-stopping counters and the hidden state carried between windows of a text stream.
Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and returns; a NaN/Inf loss
stops with the last good checkpoint kept. Each validation that improves on the best so far
writes best.npz (`train.best`); `train.early_stopping` ends the run when they stop improving.
With `train.ema` validation, best.npz and the checkpoint's parameters are the weights' moving
average (`train.ema`), and the checkpoint also holds the raw weights training goes on from.
"""

from __future__ import annotations

import contextlib
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
from seqgraph.plan import programs
from seqgraph.runtime.generate import default_prime
from seqgraph.runtime.model import Model
from seqgraph.spec import registry
from seqgraph.spec.load import Spec, load_spec
from seqgraph.train import ctc, distributed, run_folder, tracking
from seqgraph.train import data as datasets
from seqgraph.train.best import DEFAULT_METRIC, Best, validation_metrics
from seqgraph.train.ema import WeightAverage
from seqgraph.train.evaluate import decoding_for, evaluate, real_steps, score_kind, scorer_for
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
    The run folder is locked for the whole run: a second `run` on it refuses at once.
    Under mpiexec the ranks share each batch (`distributed`); rank 0 alone writes and logs."""
    comm = distributed.communicator()
    with comm.fail_together():
        return _run(options, log if comm.writes else _silent, comm)


def _silent(*args, **kwargs) -> None:
    """The log of a rank other than 0: one voice per run."""


def _run(options: RunOptions, log, comm) -> dict:
    spec, dataset, resolved = prepare(options.spec, options.data)
    config = train_config(spec, options.steps)
    if int(config["steps"]) < 1:  # a run of no steps would leave a folder with no checkpoint
        raise TrainingError(
            f"steps must be at least 1, got {config['steps']}; pass --steps N with N >= 1"
        )
    tracking.check_available(config.get("log_to"))  # before a folder is made
    run_dir = Path(options.out) if options.out else default_run_dir(spec, options.spec)
    _check_batch_splits(config, comm, options.spec)
    comm.use_local_gpu(options.backend or spec.backend)
    model = Model(spec, backend=options.backend, dtype=options.dtype)
    optimizer = Optimizer(config.get("optimizer") or {}, model.backend.xp)
    average = WeightAverage.from_config(config.get("ema"))
    rng = np.random.default_rng([model.seed, 1])
    if options.sample and dataset.kind == "stream":  # a text run ends with a sample
        config["prime"] = _prime(spec, options.spec, dataset.vocab)
    if options.resume and comm.writes:  # before the folder is made: a mistyped --out
        run_folder.require_checkpoint(run_dir)  # leaves nothing behind
    with run_folder.locked(run_dir) if comm.writes else contextlib.nullcontext():
        start, carry, best, metrics = 0, {}, None, distributed.Discarded()
        if comm.writes:
            start, carry, best = _start(
                options, run_dir, model, optimizer, average, rng, log, resolved, dataset
            )
            facts = datasets.describe(dataset)
            run_folder.write_run_files(run_dir, resolved, facts)
            if facts.get("read"):  # which arrays of an .npz were used and which were not
                log(facts["read"])
            metrics = run_folder.Metrics(run_dir, start if options.resume else None)
        start, carry, best = _share_start(comm, model, optimizer, average, rng, start, carry, best)
        source = datasets.source_of(resolved["data"])
        loop = _Loop(
            model, optimizer, dataset, config, rng, run_dir, metrics, log, source, comm, average
        )
        if not loop.has_validation:
            warning = _no_validation_warning(dataset, resolved["data"], config)
            if config.get("early_stopping"):
                raise _needs_validation(spec, warning)
            log(warning)
        loop.check_metric(spec)
        loop.best.restore(best)
        log_to = config.get("log_to") if comm.writes else None  # rank 0 alone writes
        spec_text = (run_dir / "spec.yaml").read_text() if comm.writes else ""
        with tracking.opened(log_to, run_dir, spec_text, spec.name or "seqgraph") as trackers:
            metrics.listeners = [trackers.record, *options.listeners]
            done, stopped = loop.train(start, comm.own_rows(carry), options)
            summary = _summary(loop, options, config, run_dir, source, done, stopped)
            if "sample" in summary:
                trackers.text("sample", summary["sample"])
            return summary


def _needs_validation(spec: Spec, warning: str) -> SpecError:
    from seqgraph.spec.yaml_lines import with_line

    reason = warning.removeprefix("warning: ").split(";")[0]
    error = SpecError(
        "train.early_stopping",
        f"stops on a validation metric, and this run has none ({reason}); "
        "raise data.valid_fraction or drop train.early_stopping",
    )
    return with_line(error, spec.lines, spec.source)


def _check_batch_splits(config: dict, comm, spec_path) -> None:
    if int(config["batch_size"]) < comm.size:
        raise SpecError(
            "train.batch_size",
            f"{config['batch_size']} sequences cannot be split over {comm.size} ranks (each "
            f"needs one); raise it to at least {comm.size} or start fewer ranks",
            source=str(spec_path) if isinstance(spec_path, (str, Path)) else "",
        )


def _share_start(
    comm, model: Model, optimizer: Optimizer, average, rng, start: int, carry: dict, best
):
    """Every rank starts from rank 0's state (the checkpoint it alone read on --resume):
    parameters, optimizer state, the weights' average (`train.ema`), RNG, step, the best
    validation so far (every rank tracks it, so all of them stop early at the same step) and
    the carried state of the whole batch."""
    if comm.size == 1:
        return start, carry, best
    host = {k: to_numpy(v) for k, v in model.params.items()}
    slots = {n: {k: to_numpy(v) for k, v in s.items()} for n, s in optimizer.state.items()}
    averaged = {k: to_numpy(v) for k, v in average.averaged.items()} if average else {}
    state = (start, carry, best, host, slots, averaged, optimizer.steps, rng.bit_generator.state)
    shared = comm.share(state)
    start, carry, best, host, slots, averaged, optimizer.steps, rng.bit_generator.state = shared
    model.set_params(host)
    optimizer.state = {
        n: {k: model.backend.asarray(v) for k, v in s.items()} for n, s in slots.items()
    }
    if average is not None:
        average.averaged = {k: model.backend.asarray(v) for k, v in averaged.items()}
    return start, carry, best


def _summary(loop, options, config, run_dir, source, done: int, stopped: bool) -> dict:
    summary = {
        "run_dir": str(run_dir),
        "source": source,
        "steps_done": done,
        "stopped": stopped,
        "total_steps": config["steps"],
        "writes": loop.comm.writes,  # False on ranks other than 0: they print nothing
        **loop.last,
    }
    if loop.stopped_early:
        summary["early_stopped"] = True
    if not stopped:
        # every rank validates (a new best writes a checkpoint, which every rank takes part in);
        # rank 0 alone adds the application's scores and files
        valid = loop.validation_at(done, kind=score_kind(loop.model, loop.dataset))
        if loop.comm.writes:
            summary.update(_finish(loop, done, options.sample, valid))
    if loop.best.value is not None:
        summary["best"] = {
            "metric": loop.best.metric,
            "value": loop.best.value,
            "step": loop.best.step,
            "path": str(run_dir / run_folder.BEST),
        }
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
    options: RunOptions,
    run_dir: Path,
    model,
    optimizer,
    average,
    rng,
    log,
    resolved: dict,
    dataset,
) -> tuple[int, dict, dict | None]:
    """(first step, carried state, best-validation counters): from the checkpoint on
    --resume, once the spec and the data are checked to be the run's; else from scratch in a
    folder that holds no run yet."""
    if options.resume:
        _check_same_run(run_dir, resolved, dataset)
        start, carry, best = _restore(run_dir, model, optimizer, average, rng)
        log(f"resuming {run_dir} at step {start}")
        return start, carry, best
    if (run_dir / run_folder.CHECKPOINT).exists():
        raise TrainingError(
            f"{run_dir} already holds a run; pass --resume to continue it or "
            "--out DIR for a new one"
        )
    return 0, {}, None


def _finish(loop: _Loop, done: int, sample: bool, valid: dict) -> dict:
    """What a completed run adds to its summary: the final validation (with the
    application's own scores), the application's files, the loss plot and a text sample."""
    model, dataset, config = loop.model, loop.dataset, loop.config
    out = {"valid": valid}
    app = registry.source(loop.source)  # the application's own scores and files
    with loop.evaluated_weights():  # the averaged ones with train.ema, as `eval` reads them
        if app.metrics is not None and out["valid"]:
            out["valid"]["app"] = app.metrics(model, dataset, "valid", config["batch_size"])
            loop.metrics.write({"kind": "app", "step": done, **out["valid"]["app"]})
        if app.artifacts is not None:
            out["artifacts"] = app.artifacts(model, dataset, loop.run_dir, model.seed)
        if sample and dataset.kind == "stream":  # text; audio writes a WAV (app)
            out["sample"] = loop.sample_text()
    run_folder.plot_losses(loop.run_dir, loop.metrics.read())
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


def _restore(
    run_dir: Path, model: Model, optimizer: Optimizer, average, rng
) -> tuple[int, dict, dict]:
    """The checkpoint's training state into the model, optimizer, average and RNG. A
    checkpoint of a run with `train.ema` trains on from its raw weights; one without it (the
    spec gained train.ema) starts its average at the next step."""
    params, raw, opt_state, carry, meta = run_folder.load_training_state(run_dir)
    run_folder.check_finite(run_dir, raw or params)
    try:
        model.set_params(raw or params)
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
    if average is not None and raw:
        average.averaged = {name: model.backend.asarray(v) for name, v in params.items()}
    return meta["step"], carry, meta.get("best")


class _Loop:
    def __init__(
        self,
        model,
        optimizer,
        dataset,
        config,
        rng,
        run_dir,
        metrics,
        log,
        source,
        comm=None,
        average: WeightAverage | None = None,
    ):
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        self.comm = comm or distributed.Single()
        self.source = source
        self.config, self.rng, self.run_dir = config, rng, run_dir
        self.metrics, self.log = metrics, log
        self.xp = model.backend.xp
        self.last: dict = {}
        self.average = average  # train.ema's; None without it
        self.best = Best.from_config(config.get("early_stopping"))
        self.best_note = ""  # what the last validation did to the best, for its progress line
        self.validated: tuple[int, dict] | None = None  # (step, result) of the last validation
        self.validated_in_full = False  # `validated` already holds the run's final scores
        self.stopped_early = False
        self.carry: dict = {}  # this rank's rows of the state carried at the last checkpoint
        self.norms_per_layer = bool(config.get("log_to"))  # for the trackers' grad_norm/<layer>
        self.seed = model.seed
        stream = isinstance(dataset, datasets.Stream)
        self.carry_at = config.get("stride") if stream else None
        first = dataset.valid_batches(config["batch_size"], config["seq_len"])
        self.has_validation = next(iter(first), None) is not None

    def check_metric(self, spec: Spec) -> None:
        """SpecError unless the run computes train.early_stopping.metric: valid_loss always,
        valid_accuracy for id targets; another score is looked for in one validation batch."""
        if not self.has_validation or self.best.metric == DEFAULT_METRIC:
            return
        m = self.model.spec.model
        if self.best.metric == "valid_accuracy" and m.loss != "ctc" and m.target.type == "ids":
            return
        c = self.config
        batches = self.dataset.valid_batches(c["batch_size"], c["seq_len"])
        result = evaluate(self.model, batches, 1, scorer_for(self.source))
        self.best.check_metric(validation_metrics(result), spec.lines, spec.source)

    def batch(self, step: int, carry: dict) -> tuple[dict, str]:
        c = self.config
        batch = self.dataset.batch_at(
            step, c["batch_size"], c["seq_len"], self.seed, c.get("stride")
        )
        reset = batch.pop("reset", False)
        # the spec's dropout, its masks a function of (seed, step): a resumed run draws the
        # same ones with no state saved (`runtime.masks`); validation batches have none
        batch["dropout"] = {"seed": self.seed, "step": step}
        feedback = "teacher"
        if self.model.spec.model.feeds_back and c.get("scheduled_sampling"):
            p = sampling_probability(c["scheduled_sampling"], step)
            y = np.asarray(batch["y"])
            # one coin per sequence and per time step, not one per batch; drawn for the
            # global batch on every rank, so that the RNG stays the same on all of them
            batch["use_model"] = self.rng.random(y.shape[:2]) < p
            feedback = "scheduled"
        batch = self.comm.shard(batch)  # this rank's rows (all of them in one process)
        if isinstance(self.dataset, datasets.Stream):
            batch["state"] = {} if reset else carry
        return batch, feedback

    def _shard_step(self, batch: dict, feedback: str) -> tuple[float, dict, dict, int]:
        """(loss, grads, states, target steps) of this rank's rows; a rank left without rows
        by a short last batch of an epoch adds zeros."""
        if len(batch["y"]) == 0:
            zeros = {name: self.xp.zeros_like(p) for name, p in self.model.params.items()}
            return 0.0, zeros, {}, 0
        loss, grads, state = self.model.train_step(batch, feedback, self.carry_at)
        n_tokens = int(real_steps(self.model, batch)[..., batch.get("loss_from", 0) :].sum())
        return loss, grads, state, n_tokens

    def train(self, start: int, carry: dict, options: RunOptions) -> tuple[int, bool]:
        progress = Progress(int(self.config["steps"]), start, options.progress, self.log)
        # the whole run, not step by step: NumPy's BLAS threads stay asleep between steps
        # (`programs.threads_shared`); the interpreter's products keep them
        on_plans = self.model.backend.name == "numpy" and self.model.engine == "plan"
        threads = programs.threads_shared() if on_plans else None
        try:
            with threads or contextlib.nullcontext():
                return self._steps(start, carry, options, progress)
        finally:  # an error (a full disk) must not leave a progress bar on the terminal
            progress.close()

    def _steps(self, start: int, carry: dict, options: RunOptions, progress) -> tuple[int, bool]:
        c, total = self.config, int(self.config["steps"])
        step, fired, tokens, began = start, 0, 0, time.perf_counter()
        fired_at_log, step_at_log = 0, start  # the clip rate is over the steps since the last log
        self.carry = carry
        if self.best.exhausted:  # resumed after it stopped early: nothing left to train
            self._restore_final_validation(start)
            self._stop_early(start, progress, record=False)
            return start, False
        with _StopFlag() as stop:
            while step < total:
                batch, feedback = self.batch(step, carry)
                loss, grads, state, n_tokens = self._shard_step(batch, feedback)
                grads, sums = self.comm.sum_step(
                    loss, grads, len(batch["y"]), n_tokens, stop.requested
                )
                loss, n_tokens = sums.loss, sums.tokens  # over the global batch
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
                if self.average is not None:
                    self.average.update(self.model.params, step)
                per_token = loss * sums.rows / max(n_tokens, 1)
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
                    if self.best.exhausted:
                        self.checkpoint(step, carry)
                        self._stop_early(step, progress)
                        return step, False
                halt = sums.stop or (
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

    def _stop_early(self, step: int, progress, record: bool = True) -> None:
        """The run's last line when its validation metric stopped improving; `record` False
        when a resumed run finds it already stopped (metrics.jsonl has the record)."""
        b = self.best
        self.stopped_early = True
        if record:
            self.metrics.write(
                {
                    "kind": "early_stop",
                    "step": step,
                    "metric": b.metric,
                    "best": b.value,
                    "best_step": b.step,
                    "patience": b.patience,
                }
            )
        progress.close()
        by = f" by more than {b.min_delta:g}" if b.min_delta else ""
        self.log(
            f"early stopping at step {step}: {b.metric} has not improved{by} in {b.patience} "
            f"validations; {b.describe()} (kept in {self.run_dir / run_folder.BEST})"
        )

    def _restore_final_validation(self, step: int) -> None:
        """The last validation record of `step` (the stopped run's final one, with its
        scores) as this run's, so resuming a finished run repeats no record."""
        records = [r for r in self.metrics.read() if r.get("kind") == "valid"]
        final = [r for r in records if r.get("step") == step and "valid_loss" in r]
        if not final:  # a metrics.jsonl without it (edited by hand): validate again
            return
        dropped = ("kind", "step", "valid_loss", "time")
        result = {k: v for k, v in final[-1].items() if k not in dropped}
        self.validated = (step, {"loss": final[-1]["valid_loss"], **result})
        self.validated_in_full = True

    def _meta(self, step: int) -> dict:
        return {
            "step": step,
            "optimizer_steps": self.optimizer.steps,
            "rng": self.rng.bit_generator.state,
            "best": self.best.state(),
        }

    def checkpoint(self, step: int, carry: dict) -> None:
        """Rank 0 writes the whole batch's state; every rank first checks that the ranks
        still hold the same parameters (here: every checkpoint_every steps and at the end)."""
        self.comm.check_agreement(self.model.params, step)
        # this rank's own rows, for a checkpoint written again at this step (the final
        # validation's new best): every rank keeps its rows, as the gather needs them
        self.carry = carry
        carry = self.comm.gather_rows(carry)
        if not self.comm.writes:
            return
        opt_state = {
            name: {slot: to_numpy(v) for slot, v in slots.items()}
            for name, slots in self.optimizer.state.items()
        }
        params, raw = self._evaluated_params(), None
        if self.average is not None and self.average.averaged:
            raw = {k: to_numpy(v) for k, v in self.model.params.items()}
        meta = self._meta(step)
        run_folder.save_checkpoint(self.run_dir, params, opt_state, carry, meta, raw=raw)

    def _evaluated_params(self) -> dict:
        """Host copies of the weights validation uses: the average with train.ema."""
        with self.evaluated_weights():
            return {k: to_numpy(v) for k, v in self.model.params.items()}

    @contextlib.contextmanager
    def evaluated_weights(self):
        """The model holds the averaged weights inside the block (with train.ema, once it has
        them), as Keras swaps its EMA weights in to evaluate; the raw ones again after."""
        if self.average is None or not self.average.averaged:
            yield
            return
        raw = self.model.params
        self.model.params = self.average.averaged
        try:
            yield
        finally:
            self.model.params = raw

    def save_best(self, step: int) -> None:
        """best.npz: the parameters of this step's validation, the best so far. No optimizer
        or carried state: it is for `eval`, `predict` and the rest, not for --resume. Rank 0
        alone writes it (every rank holds the same parameters)."""
        if not self.comm.writes:
            return
        params = self._evaluated_params()
        meta = self._meta(step)
        run_folder.save_checkpoint(self.run_dir, params, {}, {}, meta, name=run_folder.BEST)
        self.metrics.write(
            {"kind": "best", "step": step, "metric": self.best.metric, "value": self.best.value}
        )

    def validation_at(self, step: int, kind: str | None = None) -> dict:
        """The validation of `step`: the one already done (an early stop's), else a new one,
        with `kind`'s scores (see `evaluate`). An early stop's validation is scored again for
        them, recorded but not counted again towards the best. A new best at the run's final
        validation comes after its last checkpoint, which is written again so a resumed run
        knows that best."""
        if self.validated is not None and self.validated[0] == step:
            if kind is None or not self.has_validation or self.validated_in_full:
                return self.validated[1]
            return self._record(step, self._evaluate(kind))
        before = self.best.step
        result = self.validate(step, kind)
        if self.best.step != before:
            self.checkpoint(step, self.carry)
        return result

    def validate(self, step: int, kind: str | None = None) -> dict:
        """Validation loss and scores (with `kind`'s, see `evaluate`), recorded in
        metrics.jsonl; {} without validation data (the run warned at its start)."""
        if not self.has_validation:
            return {}
        result = self._record(step, self._evaluate(kind))
        self._track_best(step, result)
        return result

    def _evaluate(self, kind: str | None) -> dict:
        c = self.config
        batches = self.dataset.valid_batches(c["batch_size"], c["seq_len"])
        # a decoder stops at its <eos>, as `eval` decodes it
        decoding = decoding_for(kind, getattr(self.dataset, "labels", None))
        scorer = scorer_for(self.source)
        with self.evaluated_weights():
            return evaluate(
                self.model, batches, c["valid_batches"], scorer, kind=kind, decoding=decoding
            )

    def _record(self, step: int, result: dict) -> dict:
        """`result` as the validation of `step`, in metrics.jsonl and for `validation_at`."""
        rest = {k: v for k, v in result.items() if k != "loss"}
        self.metrics.write({"kind": "valid", "step": step, "valid_loss": result["loss"], **rest})
        self.validated = (step, result)
        return result

    def _track_best(self, step: int, result: dict) -> None:
        b = self.best
        if b.observe(step, validation_metrics(result)):
            self.save_best(step)
            self.best_note = f"new {b.describe()}"
        elif b.patience is not None:
            self.best_note = f"{b.describe()} ({b.stale} of {b.patience} without improvement)"
        else:
            self.best_note = b.describe()

    def _validation_line(self, step: int) -> str | None:
        result = self.validate(step)
        if not result:
            return None
        extra = f", accuracy {result['accuracy']:.3f}" if "accuracy" in result else ""
        extra += ctc.progress_scores(result)  # the full score line waits for the end of the run
        line = f"step {step}: validation loss {result['loss']:.4f} per token{extra}"
        return f"{line}; {self.best_note}"

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
