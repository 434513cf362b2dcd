"""`seqgraph sweep`: a hyperparameter search on Optuna over a spec and a space file.

Each trial draws the space's values (TPE), trains a normal run folder OUT/trial_NNN from
the spec with them, and is scored by the validation metric its metrics.jsonl records; after
each evaluation (`kind: valid` records) the trial reports that metric, and Optuna's median
pruner stops trials worse than the median of earlier ones at the same step. The study lives
in a database (SQLite file OUT/study.db by default, no server), so `--workers K` processes,
or other machines given the same `--storage` URL, share it, and a sweep killed and started
again continues it. The hand-set spec's own values are the first trial of a new study (when
the space can draw them), so the sweep's best is compared with it on equal terms.

OUT/best.yaml       the spec with the best trial's values
OUT/trials.csv      one row per trial: number, state, value, values drawn, run folder
OUT/history.png     Optuna's optimisation history
OUT/importance.png  Optuna's parameter importances (fANOVA), once two trials completed
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from seqgraph.errors import SeqgraphError, SpecError
from seqgraph.experiments import space as spaces
from seqgraph.experiments.runs import LOWER_IS_BETTER
from seqgraph.spec.yaml_lines import read_yaml
from seqgraph.train import run_folder
from seqgraph.train.loop import RunOptions
from seqgraph.train.loop import run as train_run
from seqgraph.train.tracking import MissingExtraError

SWEEP_EXTRA = "seqgraph sweep needs optuna: pip install 'seqgraph[sweep]'"
HEARTBEAT_S = 10  # a trial whose process died is failed after 2 missed heartbeats


@dataclass
class SweepOptions:
    """What `seqgraph sweep` was asked."""

    spec: str
    space: str
    trials: int = 20
    workers: int = 1
    storage: str | None = None  # default sqlite:///OUT/study.db
    out: str | None = None  # default sweeps/NAME
    metric: str = "valid_loss"
    study: str | None = None  # default: the spec's name
    data: str | None = None
    seed: int = 0


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise MissingExtraError(SWEEP_EXTRA) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def direction(metric: str) -> str:
    """minimize for losses and error rates, maximize for accuracies and scores."""
    return "minimize" if metric.endswith(LOWER_IS_BETTER) else "maximize"


def metric_value(records: list[dict], metric: str, run_dir) -> float:
    """The last value of `metric` in a run's metrics.jsonl ("valid" records first, then the
    application's "app" record); SeqgraphError naming what the records hold if none has it."""
    for kind in ("valid", "app"):
        found = [r[metric] for r in records if r.get("kind") == kind and metric in r]
        if found:
            return float(found[-1])
    held = sorted({k for r in records if r.get("kind") in ("valid", "app") for k in r})
    held = [k for k in held if k not in ("kind", "step", "time")]
    raise SeqgraphError(
        f"{run_dir}/metrics.jsonl: no validation record holds {metric!r}; "
        f"pass --metric with one of: {', '.join(held) or 'none (the run has no validation data)'}"
    )


def _storage(optuna, url: str):
    """An Optuna storage with heartbeats, so a killed worker's trial is failed, not left
    running; SQLite waits for a busy database instead of failing at once."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S
            )
    except Exception as exc:  # SQLAlchemy's many errors (bad URL, missing driver, refused)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeqgraphError(
            f"--storage {url}: cannot open the study database ({reason}); give a SQLAlchemy "
            "URL such as sqlite:///study.db or postgresql://user:password@host/db"
        ) from None


def _study(optuna, options: SweepOptions, name: str, url: str, worker: int):
    count = max(2, min(10, options.trials // 3))  # random trials before TPE models the rest
    sampler = optuna.samplers.TPESampler(
        seed=options.seed + worker, n_startup_trials=count, constant_liar=True
    )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=count)
    return optuna.create_study(
        study_name=name,
        storage=_storage(optuna, url),
        sampler=sampler,
        pruner=pruner,
        direction=direction(options.metric),
        load_if_exists=True,
    )


class TrialObjective:
    """One trial: draw the values, write the spec, train a run folder, read its metric."""

    def __init__(self, optuna, options: SweepOptions, base: dict, params, out: Path):
        self.optuna, self.options, self.base = optuna, options, base
        self.params, self.out = params, out

    def __call__(self, trial) -> float:
        values = {p.path: p.suggest(trial) for p in self.params}
        run_dir = self.out / f"trial_{trial.number:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        sampled = run_dir / "sampled.yaml"
        text = yaml.safe_dump(spaces.apply(self.base, values), sort_keys=False).encode()
        run_folder.atomic_write(sampled, lambda handle: handle.write(text))
        trial.set_user_attr("run_dir", str(run_dir))
        metric, optuna = self.options.metric, self.optuna
        total = int(spaces.get(self.base, "train.steps", 0) or 0)

        def prune(record: dict) -> None:  # after each evaluation metrics.jsonl records
            if record.get("kind") != "valid" or metric not in record:
                return
            if record["step"] < total or not total:
                trial.report(float(record[metric]), record["step"])
                if trial.should_prune():
                    raise optuna.TrialPruned()

        with (run_dir / "log.txt").open("a") as log_file:
            options = RunOptions(str(sampled), data=self.options.data, out=str(run_dir))
            options.progress, options.sample, options.listeners = False, False, (prune,)
            summary = train_run(options, log=lambda line: print(line, file=log_file, flush=True))
        if summary["stopped"]:  # Ctrl-C stopped the run: stop the sweep too, not just a trial
            raise KeyboardInterrupt
        records = run_folder.read_metrics(run_dir)
        return metric_value(records, metric, run_dir)


def _worker(options: SweepOptions, name: str, url: str, out: str, worker: int, count: int):
    """Run `count` trials of the shared study (a process of its own under --workers)."""
    optuna = require_optuna()
    base = _base_spec(options.spec)
    params = spaces.read_space(options.space, base)
    study = _study(optuna, options, name, url, worker)
    objective = TrialObjective(optuna, options, base, params, Path(out))
    study.optimize(objective, n_trials=count, catch=(SeqgraphError,), gc_after_trial=True)


def _base_spec(path: str) -> dict:
    try:
        raw, _ = read_yaml(Path(path).read_bytes(), str(path))
    except FileNotFoundError:
        raise SpecError("", "no such spec file; check the path", source=str(path)) from None
    if not isinstance(raw, dict):
        raise SpecError("", "a spec is a mapping with a `model:` section", source=str(path))
    return raw


def sweep(options: SweepOptions, log=print) -> dict:
    """Run (or continue) the study until it holds `trials` finished trials; write the best
    spec, the trials table and the plots; return a summary."""
    optuna = require_optuna()
    base = _base_spec(options.spec)
    params = spaces.read_space(options.space, base)  # checked before anything is written
    name = options.study or str(base.get("name") or Path(options.spec).stem)
    out = Path(options.out) if options.out else Path("sweeps") / name
    run_folder.make_folder(out)
    url = options.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = _study(optuna, options, name, url, 0)
    finished = _finished(optuna, study)
    if not study.trials:  # a new study: the hand-set values first, if the space holds them
        hand = {p.path: spaces.get(base, p.path) for p in params}
        if all(p.holds(v) for p, v in zip(params, hand.values())):
            study.enqueue_trial(hand, user_attrs={"hand_set": True})
    remaining = max(0, options.trials - len(finished))
    workers = max(1, min(options.workers, remaining))
    log(f"study {name!r} in {url}: {len(finished)} trial(s) done, {remaining} to run")
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    if workers == 1:
        if remaining:
            _worker(options, name, url, str(out), 0, remaining)
    else:
        _in_processes(options, name, url, out, shares)
    study = _study(optuna, options, name, url, 0)
    return _write_results(optuna, study, base, options, out, log)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _in_processes(options, name: str, url: str, out: Path, shares: list[int]) -> None:
    context = multiprocessing.get_context("spawn")  # no forked copy of an open database
    processes = [
        context.Process(target=_worker, args=(options, name, url, str(out), i, n))
        for i, n in enumerate(shares)
    ]
    # Each worker's BLAS gets its share of the cores: K workers each spinning as many
    # threads as there are cores made a run 10x slower here (unless the user set them).
    threads = str(max(1, (os.cpu_count() or 1) // len(processes)))
    unset = [v for v in THREAD_VARIABLES if v not in os.environ]
    os.environ.update({v: threads for v in unset})
    try:
        for number, process in enumerate(processes):
            process.start()  # a spawned process reads the environment as it starts
            if number == 0:
                _wait_for_waiting_trials(name, url, process)
    finally:
        for variable in unset:
            os.environ.pop(variable, None)
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise SeqgraphError(
            f"{len(failed)} sweep worker(s) stopped with exit codes {failed}; run the same "
            "command again to continue the study"
        )


def _wait_for_waiting_trials(name: str, url: str, first, timeout_s: float = 600) -> None:
    """Wait until the first worker has taken the enqueued (hand-set) trial: SQLite has no
    row locks, so two workers starting together could both take it and clash."""
    optuna = require_optuna()
    study = optuna.load_study(study_name=name, storage=_storage(optuna, url))
    waiting = (optuna.trial.TrialState.WAITING,)
    deadline = time.monotonic() + timeout_s
    while study.get_trials(deepcopy=False, states=waiting) and first.is_alive():
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


def _finished(optuna, study) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def _write_results(optuna, study, base: dict, options, out: Path, log) -> dict:
    trials = study.get_trials(deepcopy=False)
    rows = [_row(t) for t in trials]
    names = sorted({k for t in trials for k in t.params})
    with (out / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", options.metric, *names, "run_dir"])
        for t, row in zip(trials, rows):
            drawn = [t.params.get(n) for n in names]
            writer.writerow([row["trial"], row["state"], row["value"], *drawn, row["run_dir"]])
    summary = {"out": str(out), "trials": rows, "metric": options.metric, "plots": {}}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        best_spec = spaces.apply(base, best.params)
        text = yaml.safe_dump(best_spec, sort_keys=False).encode()
        run_folder.atomic_write(out / "best.yaml", lambda handle: handle.write(text))
        summary.update(best=_row(best), best_spec=str(out / "best.yaml"))
        hand = [t for t in complete if t.user_attrs.get("hand_set")]
        if hand:
            summary["hand_set"] = _row(hand[0])
    summary["plots"] = _plots(optuna, study, out, log)
    return summary


def _row(trial) -> dict:
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": dict(trial.params),
        "run_dir": trial.user_attrs.get("run_dir", ""),
        "hand_set": bool(trial.user_attrs.get("hand_set")),
    }


def _plots(optuna, study, out: Path, log) -> dict:
    """Optuna's history and importance plots as PNG; a plot Optuna cannot draw yet (too few
    completed trials) is skipped with a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    drawn = {}
    plots = {"history": optuna_plots.plot_optimization_history}
    plots["importance"] = optuna_plots.plot_param_importances
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw(study)
        except (ValueError, RuntimeError) as exc:
            log(f"no {name}.png: {exc}")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(7, 4)
        figure.tight_layout()
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        drawn[name] = str(path)
    return drawn


def table(summary: dict) -> list[str]:
    """The trials as text lines, best first among completed ones."""
    rows = summary["trials"]
    order = {"complete": 0, "pruned": 1}
    sign = -1 if direction(summary["metric"]) == "maximize" else 1
    rows = sorted(
        rows,
        key=lambda r: (order.get(r["state"], 2), sign * (r["value"] or 0), r["trial"]),
    )
    lines = [f"{'trial':>5}  {'state':<8} {summary['metric']:>12}  values"]
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "-"
        shown = ", ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        mark = " (hand-set)" if r["hand_set"] else ""
        lines.append(f"{r['trial']:>5}  {r['state']:<8} {value:>12}  {shown}{mark}")
    return lines


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
