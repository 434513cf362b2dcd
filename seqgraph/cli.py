"""argv -> api -> print. Errors are one line on stderr with exit code 2 (`--traceback` for
the stack)."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path

from seqgraph import api
from seqgraph.engine.graph import key_str
from seqgraph.errors import SeqgraphError, one_line
from seqgraph.spec.schema import spec_schema

EXAMPLES = {
    "check": "seqgraph check specs/char_lstm.yaml --steps 4",
    "run": "seqgraph run specs/char_lstm.yaml --steps 300 --out runs/demo",
    "sample": "seqgraph sample runs/demo --length 300 --temperature 0.7 --prime 'def '",
    "eval": "seqgraph eval runs/demo --json",
    "render": "seqgraph render specs/sentiment_bilstm.yaml --steps 5 --lengths 5,3 -o bi.svg",
    "schema": "seqgraph schema > seqgraph.schema.json",
    "export": "seqgraph export runs/demo --to onnx -o demo.onnx",
    "gradflow": "seqgraph gradflow specs/adding_rnn.yaml --steps 100 --out gradflow/rnn",
    "predict": "seqgraph predict runs/uci_sentiment --input 'the food was great'",
    "serve": "seqgraph serve runs/uci_sentiment --port 8000",
    "sweep": "seqgraph sweep specs/uci_sentiment.yaml --space specs/spaces/uci_sentiment.yaml "
    "--trials 12 --workers 2 --metric accuracy",
    "compare": "seqgraph compare runs/uci_sentiment sweeps/uci_sentiment/trial_003",
    "report": "seqgraph report runs/uci_sentiment -o report.html",
}


def _cmd_check(args) -> int:
    report = api.check(args.spec, steps=args.steps, data=args.data)
    print(
        f"{report['name']}: {report['pattern']}, {report['num_params']:,} parameters, "
        f"{report['nodes']:,} nodes and {report['edges']:,} edges unrolled over "
        f"{args.steps} steps"
    )
    if report["note"]:
        print(f"note: {report['note']}")
    print("parameters:")
    for name, shape in report["params"].items():
        print(f"  {name:<24} {shape}")
    print("first step (shape for a batch of 2):")
    for key, kind, op, shape in report["step_shapes"]:
        what = op if kind == "op" else kind
        print(f"  {key_str(key):<32} {what:<12} {shape}")
    return 0


def _cmd_run(args) -> int:
    summary = api.train(
        args.spec,
        data=args.data,
        backend=args.backend,
        dtype=args.dtype,
        steps=args.steps,
        out=args.out,
        resume=args.resume,
    )
    if summary["stopped"]:
        return 130
    if not summary.get("writes", True):  # a rank other than 0 under mpiexec: rank 0 reports
        return 0
    valid = summary.get("valid", {})
    early = " (stopped early)" if summary.get("early_stopped") else ""
    line = f"done{early}: {summary['steps_done']} steps in {summary['run_dir']}"
    if valid:
        line += f"; validation loss {valid['loss']:.4f} per target step"
        if "accuracy" in valid and "accuracy_teacher" not in valid:  # a decoder's is labelled
            line += f", accuracy {valid['accuracy']:.3f}"
        line += _scores(summary["source"], valid)
    print(line)
    best = summary.get("best")
    if best:  # what eval, sample, predict, serve and export read by default
        print(f"best {best['metric']} {best['value']:.4f} at step {best['step']}: {best['path']}")
    for name, path in summary.get("artifacts", {}).items():
        print(f"wrote {name}: {path}")
    if "sample" in summary:
        print("--- sample ---")
        print(summary["sample"])
    return 0


def _cmd_sample(args) -> int:
    out = api.sample(
        args.run_dir,
        length=args.length,
        temperature=args.temperature,
        prime=args.prime,
        greedy=args.greedy,
        seed=args.seed,
        backend=args.backend,
        wav=args.wav,
        checkpoint=args.checkpoint,
        beam=args.beam,
        length_penalty=args.length_penalty,
    )
    if isinstance(out, Path):  # an audio run wrote a WAV
        print(f"wrote {out}")
        return 0
    print(
        out if isinstance(out, str) else "\n".join(" ".join(f"{v:.4f}" for v in row) for row in out)
    )
    return 0


def _cmd_eval(args) -> int:
    result = api.evaluate_run(
        args.run_dir,
        data=args.data,
        backend=args.backend,
        split=args.split,
        confusion=args.confusion,
        checkpoint=args.checkpoint,
        beam=args.beam,
        length_penalty=args.length_penalty,
    )
    if args.json:
        print(_json_line(result))
        return 0
    # a decoder's accuracy is labelled teacher-forced beside its free-running one (_scores)
    label = {"tagger": "token accuracy", "decoder": None}.get(result.get("kind"), "accuracy")
    extra = f", {label} {result['accuracy']:.4f}" if "accuracy" in result and label else ""
    extra += _scores(result["source"], result)
    print(
        f"{result['run_dir']} at step {result['step']} ({result['checkpoint']} checkpoint), "
        f"{result['split']} split: loss "
        f"{result['loss']:.4f} per target step over {result['tokens']:,} steps{extra}"
    )
    if result.get("confusion_png"):
        print(f"wrote confusion matrix: {result['confusion_png']}")
    return 0


def _cmd_predict(args) -> int:
    import time

    predictor = api.load(args.run_dir, backend=args.backend, checkpoint=args.checkpoint)
    if args.data is not None:
        inputs = predictor.read_file(args.data)
    elif args.input:
        inputs = list(args.input)
    else:
        inputs = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    if not inputs:
        what = args.data or "standard input"
        raise api.DataError(f"{what}: no inputs; give --input TEXT, --data FILE or lines on stdin")
    start = time.perf_counter()
    records = predictor.predict(
        inputs,
        batch_size=args.batch_size,
        sample=args.sample,
        temperature=args.temperature,
        seed=args.seed,
        length=args.length,
        beam=args.beam,
        length_penalty=args.length_penalty,
    )
    seconds = time.perf_counter() - start
    if args.attention is not None:
        _write_attention_maps(predictor, inputs, records, args.attention)
    lines = _predict_lines(records, args.format)
    if args.output:
        Path(args.output).write_text("".join(line + "\n" for line in lines))
    else:
        for line in lines:
            print(line)
    unknown = ""
    if predictor.unknown:
        unknown = f"; {predictor.unknown} unknown token(s) " + (
            "dropped" if predictor.unknown_to == "dropped" else f"mapped to {predictor.unknown_to}"
        )
    where = f" to {args.output}" if args.output else ""
    print(f"predicted {len(records)} input(s) in {seconds:.2f} s{where}{unknown}", file=sys.stderr)
    return 0


def _write_attention_maps(predictor, inputs: list, records: list[dict], folder: str) -> None:
    """`predict --attention DIR`: DIR/0001.png and DIR/0001.csv for input 1, and so on."""
    from seqgraph.inspect.attention_map import check_folder, write_attention_map

    folder_path = check_folder(folder)
    maps = predictor.attention(inputs, records)
    empty = 0
    for number, item in enumerate(maps, start=1):
        if not item["output"] or not item["source"]:
            empty += 1  # nothing to draw: an empty output (or source)
            continue
        write_attention_map(
            folder_path, f"{number:04d}", item["source"], item["output"], item["weights"]
        )
    skipped = f"; {empty} with an empty output skipped" if empty else ""
    written = len(maps) - empty
    print(
        f"wrote {written} attention map(s) (PNG + CSV) to {folder_path}{skipped}", file=sys.stderr
    )


SERVE_EXTRA = "seqgraph serve needs the serve extra: pip install 'seqgraph[serve]'"


def _cmd_serve(args) -> int:
    try:  # the optional extra seqgraph[serve]
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(SERVE_EXTRA, file=sys.stderr)
        return 2
    from seqgraph import serve

    limits = serve.Limits(args.max_inputs, args.max_body, args.max_input_chars)
    serve.serve(
        args.run_dir, args.host, args.port, limits, backend=args.backend, checkpoint=args.checkpoint
    )
    return 0


def _predict_lines(records: list[dict], form: str) -> list[str]:
    """JSON Lines, or TSV with a header: lists joined by spaces (nested ones as JSON), and
    `probs` as one column per label (`p(label)`)."""
    if form == "jsonl":
        return [json.dumps(record, ensure_ascii=False) for record in records]

    def columns(record: dict) -> dict:
        out = {}
        for key, value in record.items():
            if key == "probs":
                out.update({f"p({label})": f"{p:.6g}" for label, p in value.items()})
            elif isinstance(value, list) and not any(isinstance(v, list) for v in value):
                out[key] = " ".join(map(str, value))
            elif isinstance(value, list):
                out[key] = json.dumps(value)
            else:
                out[key] = str(value).replace("\t", " ").replace("\n", " ")
        return out

    rows = [columns(record) for record in records]
    header = list(dict.fromkeys(key for row in rows for key in row))
    return ["\t".join(header)] + ["\t".join(row.get(key, "") for key in header) for row in rows]


def _json_line(result: dict) -> str:
    """Strict JSON (RFC 8259 has no NaN or Infinity): a non-finite number becomes null, and a
    warning on stderr names the fields."""
    bad = []

    def finite(value, path: str):
        if isinstance(value, dict):
            return {k: finite(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{path} ({value})")
            return None
        return value

    line = json.dumps(finite(result, ""), allow_nan=False)
    if bad:
        print(f"warning: not finite, written as null: {', '.join(bad)}", file=sys.stderr)
    return line


def _scores(source: str, result: dict) -> str:
    """The data source's own scores (an application's error rates, BLEU, baselines)."""
    line = api.score_line(source, result)
    return f"; {line}" if line else ""


def _cmd_export(args) -> int:
    print(api.export_run(args.run_dir, to=args.to, out=args.output, checkpoint=args.checkpoint))
    return 0


def _cmd_gradflow(args) -> int:
    result = api.gradflow(
        args.source,
        out=args.out,
        batch_size=args.batch,
        steps=args.steps,
        threshold=args.threshold,
        data=args.data,
    )
    print(
        f"loss {result['loss']:.4f}, gradient norm {result['global_norm']:.4g} over "
        f"{result['steps']} steps"
    )
    for row, alive in result["alive_steps"].items():
        print(
            f"  {row:<20} gradient above {args.threshold:g} x its peak on {alive} of "
            f"{result['steps']} steps"
        )
    print(f"wrote {result['heatmap']} and {', '.join(result['csv'])}")
    return 0


def _cmd_render(args) -> int:
    print(
        api.render(
            args.spec,
            args.output,
            steps=args.steps,
            out_steps=args.out_steps,
            fold=args.fold,
            grad=args.grad,
            lengths=args.lengths,
            detail=args.detail,
        )
    )
    return 0


def _cmd_sweep(args) -> int:
    from seqgraph.experiments.sweep import table

    options = {k: getattr(args, k) for k in ("trials", "workers", "storage", "out", "metric")}
    summary = api.sweep(args.spec, args.space, study=args.study, data=args.data, **options)
    print("\n".join(table(summary)))
    if "best" in summary:
        best = summary["best"]
        print(f"best: trial {best['trial']}, {summary['metric']} {best['value']:.4f}", end="")
        hand = summary.get("hand_set")
        print(f" (hand-set spec: {hand['value']:.4f})" if hand else "")
        print(f"wrote {summary['best_spec']}")
    print(
        f"wrote {summary['out']}/trials.csv" + "".join(f", {p}" for p in summary["plots"].values())
    )
    return 0


def _cmd_compare(args) -> int:
    from seqgraph.experiments.compare import table_lines

    result = api.compare(args.run_dirs, args.output)
    print("\n".join(table_lines(result)))
    print(f"wrote {result['figure']}")
    return 0


def _cmd_report(args) -> int:
    print(f"wrote {api.report(args.run_dir, args.output)}")
    return 0


def _cmd_schema(args) -> int:
    print(json.dumps(spec_schema(), indent=2))
    return 0


BACKENDS = ["numpy", "cupy"]
MAX_UNROLL = 100_000  # time steps a command-line flag may unroll (the spec's sizes stop at 1e6)


def whole(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high], refused in one line otherwise."""
    allowed = f"from {low:,} to {high:,}" if high is not None else f"of at least {low:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {text!r}")
        return value

    parse.__name__ = "whole number"
    return parse


def real(low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite number in [low, high] (or (low, high] if `low_open`)."""
    allowed = "above" if low_open else "from" if high is not None else "at least"
    allowed += f" {low:g}" + (f" to {high:g}" if high is not None else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def lengths_list(text: str) -> list[int]:
    """--lengths: whole numbers of at least 1 separated by commas."""
    try:
        values = [int(n) for n in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_UNROLL:
        raise argparse.ArgumentTypeError(
            f"takes whole numbers from 1 to {MAX_UNROLL:,} separated by commas, got {text!r}"
        )
    return values


STEPS = whole(1, MAX_UNROLL)


def _args_check(p) -> None:
    p.add_argument("spec", help="path to a YAML spec")
    p.add_argument("--steps", type=STEPS, default=5, help="time steps to unroll (default 5)")
    p.add_argument("--data", help="data file that sizes a `vocab: auto` spec")


def _args_run(p) -> None:
    p.add_argument("spec", help="path to a YAML spec")
    p.add_argument("--data", help="data file or folder; overrides data.path (data.root)")
    p.add_argument("--backend", choices=BACKENDS, help="array backend")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--steps", type=whole(1), help="training steps (overrides train.steps)")
    p.add_argument("--out", help="run folder (default runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def _checkpoint_arg(p) -> None:
    p.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        help="best.npz (the best validation) or checkpoint.npz (the last step); "
        "default: best when the run has one, else last",
    )


def _args_sample(p) -> None:
    p.add_argument("run_dir")
    p.add_argument(
        "--length",
        type=whole(1, 100_000_000),
        help="steps (default 300); audio: samples (train.sample_length)",
    )
    p.add_argument(
        "--temperature", type=real(0, low_open=True), help="default: train.temperature or 1"
    )
    p.add_argument(
        "--prime", help="text to start from (default: train.prime); decoders: the source"
    )
    p.add_argument("--greedy", action="store_true", help="always take the likeliest next id")
    p.add_argument("--seed", type=whole(0, 2**63 - 1), default=0)
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument(
        "--wav", help="audio runs: the WAV file to write (default RUN_DIR/generated.wav)"
    )
    _checkpoint_arg(p)
    _beam_options(p)


def _args_eval(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluate on this data's split instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--split", choices=["valid", "test"], default="valid")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument(
        "--confusion",
        metavar="FILE",
        help="classifiers: write the confusion matrix PNG here (default RUN_DIR/confusion.png)",
    )
    _checkpoint_arg(p)
    _beam_options(p)


def _beam_options(p) -> None:
    """--beam and --length-penalty, shared by predict, eval and sample."""
    p.add_argument(
        "--beam",
        type=whole(1, 1000),
        default=1,
        metavar="K",
        help="decoders: beam search with K hypotheses per input (default 1: greedy)",
    )
    p.add_argument(
        "--length-penalty",
        type=real(0),
        default=0.0,
        metavar="ALPHA",
        help="beam score log P / ((5+|Y|)/6)^ALPHA (GNMT, Wu et al. 2016); default 0: none",
    )


def _args_predict(p) -> None:
    p.add_argument("run_dir", help="a run folder (--out of `seqgraph run`, or Model.save)")
    p.add_argument(
        "--input", action="append", metavar="TEXT", help="an input (repeatable; default: stdin)"
    )
    p.add_argument("--data", metavar="FILE", help="inputs from a file the run's source reads")
    p.add_argument("--format", choices=["jsonl", "tsv"], default="jsonl")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--sample", action="store_true", help="decoders: sample instead of greedy")
    p.add_argument("--temperature", type=real(0, low_open=True), default=1.0)
    p.add_argument("--seed", type=whole(0, 2**63 - 1), default=0)
    p.add_argument("--length", type=whole(1, MAX_UNROLL), help="decoder steps (default 50)")
    _beam_options(p)
    p.add_argument("--batch-size", type=whole(1, 1_000_000), default=256)
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument(
        "--attention",
        metavar="DIR",
        help="models with model.attention: per input, DIR/NNNN.png (a heatmap, source x "
        "output tokens) and DIR/NNNN.csv (the weights)",
    )
    _checkpoint_arg(p)


def _args_serve(p) -> None:
    p.add_argument("run_dir", help="a run folder (--out of `seqgraph run`, or Model.save)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=whole(0, 65535), default=8000, help="default 8000")
    p.add_argument(
        "--max-inputs", type=whole(1, 1_000_000), default=256, help="inputs a request (256)"
    )
    p.add_argument(
        "--max-body", type=whole(1, 2**40), default=1_000_000, help="bytes a request (1000000)"
    )
    p.add_argument(
        "--max-input-chars",
        type=whole(1, 10_000_000),
        default=10_000,
        help="characters (or list items) an input (10000)",
    )
    p.add_argument("--backend", choices=BACKENDS)
    _checkpoint_arg(p)


def _args_render(p) -> None:
    p.add_argument("spec", help="a YAML spec, or a run folder (its spec, at its checkpoint)")
    p.add_argument("--steps", type=STEPS, default=4, help="time steps to draw (default 4)")
    p.add_argument("--out-steps", type=STEPS, help="decoder steps (default --steps)")
    p.add_argument(
        "-o",
        "--output",
        default="graph.svg",
        help="file: .svg, .png, .pdf (need Graphviz's dot) or .dot (default graph.svg)",
    )
    p.add_argument("--fold", action="store_true", help="draw each cell once, with its recurrence")
    p.add_argument(
        "--grad",
        action="store_true",
        help="colour by gradient norm of one backward pass (random batch)",
    )
    p.add_argument(
        "--lengths", type=lengths_list, help="sequence lengths, e.g. 5,3: padded steps are greyed"
    )
    p.add_argument("--detail", action="store_true", help="every op, not one node per cell step")


def _args_gradflow(p) -> None:
    p.add_argument("source", help="a spec (at initialisation) or a run folder (at its checkpoint)")
    p.add_argument(
        "--batch", type=whole(1, MAX_UNROLL), default=8, help="sequences in the batch (default 8)"
    )
    p.add_argument("--steps", type=STEPS, help="time steps for streams (default train.seq_len)")
    p.add_argument(
        "--threshold",
        type=real(0, 1),
        default=1e-3,
        help="mark steps whose gradient is below this fraction of the peak",
    )
    p.add_argument("--data", help="data file, as for `run`")
    p.add_argument("--out", help="folder for the CSVs and heatmap.png")


def _args_sweep(p) -> None:
    p.add_argument("spec", help="path to a YAML spec, the starting point")
    p.add_argument("--space", required=True, help="YAML file: spec path -> range")
    p.add_argument("--trials", type=whole(1, 100_000), default=20, help="trials in the study")
    p.add_argument("--workers", type=whole(1, 256), default=1, help="processes (default 1)")
    p.add_argument("--storage", help="Optuna database URL shared by machines "
                   "(default sqlite:///OUT/study.db)")  # fmt: skip
    p.add_argument("--out", help="sweep folder (default sweeps/NAME)")
    p.add_argument(
        "--metric",
        default="valid_loss",
        help="validation metric to optimise (valid_loss, accuracy, macro_f1...; losses and "
        "error rates are minimised)",
    )
    p.add_argument("--study", help="study name (default the spec's name)")
    p.add_argument("--data", help="data file or folder, as for `run`")


def _args_compare(p) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to compare")
    p.add_argument("-o", "--output", help="figure to write (default compare.png)")


def _args_report(p) -> None:
    p.add_argument("run_dir", help="a run folder")
    p.add_argument("-o", "--output", help="HTML file to write (default RUN_DIR/report.html)")


def _args_export(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--to", choices=["onnx", "pytorch", "keras", "onnx_weights"], default="onnx")
    p.add_argument("-o", "--output", help="file to write (default RUN_DIR/model.onnx ...)")
    _checkpoint_arg(p)


COMMANDS = {  # name: (help, handler, arguments)
    "check": ("validate a spec and describe its unrolled graph", _cmd_check, _args_check),
    "schema": ("print the JSON Schema of the spec format", _cmd_schema, None),
    "run": ("train the model a spec describes", _cmd_run, _args_run),
    "sample": ("generate from a trained run", _cmd_sample, _args_sample),
    "eval": ("loss and accuracy of a run on held-out data", _cmd_eval, _args_eval),
    "predict": ("answers of a trained run for raw inputs", _cmd_predict, _args_predict),
    "serve": ("answer a trained run's inputs over HTTP (JSON)", _cmd_serve, _args_serve),
    "render": ("draw the unrolled graph (Graphviz) so BPTT can be seen", _cmd_render, _args_render),
    "gradflow": (
        "per-step gradient ledger of one batch: CSV and heatmap",
        _cmd_gradflow,
        _args_gradflow,
    ),
    "sweep": ("search hyperparameters with Optuna (TPE, pruning)", _cmd_sweep, _args_sweep),
    "compare": ("curves, metrics and spec differences of runs", _cmd_compare, _args_compare),
    "report": ("one self-contained HTML page about a run", _cmd_report, _args_report),
    "export": (
        "write a run's model as ONNX, or its weights in another convention",
        _cmd_export,
        _args_export,
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line (which flag, what it allows), exit 2."""

    def error(self, message: str):
        message = re.sub(r"^argument (-[^:]*?): ", r"\1 ", message)  # "--steps must be ..."
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="seqgraph",
        description="Declarative recurrent networks: a YAML spec unrolled into an explicit graph.",
        epilog="example: " + EXAMPLES["check"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full stack on error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, handler, arguments) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, epilog="example: " + EXAMPLES[name]
        )
        p.set_defaults(handler=handler)
        if arguments is not None:
            arguments(p)
    return parser


ERRNO_HINTS = {  # what to do about an OS error, by errno
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a file stands where a folder is expected; remove it or choose another path",
    errno.EISDIR: "that is a folder; give a file path",
    errno.EEXIST: "a file stands where a folder is expected; remove it or choose another path",
    errno.EACCES: "check its permissions, or write somewhere else (e.g. another --out)",
    errno.EPERM: "check its permissions, or write somewhere else (e.g. another --out)",
    errno.EROFS: "the file system is read-only; write somewhere else (e.g. another --out)",
    errno.ENOSPC: "the disk is full; free some space or write somewhere else (e.g. another --out)",
    errno.EDQUOT: "the disk quota is used up; free some space or write somewhere else",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
}
MEMORY_HINT = "use a smaller hidden/batch_size/seq_len, float32, or train.segment_steps"
RECURSION_HINT = (
    "the input is nested too deeply (YAML levels, a long equation); split it into smaller parts"
)


def system_message(exc: BaseException) -> str:
    """One line for an error the operating system or the interpreter raised: the path, the
    errno's meaning and what to do about it."""
    if isinstance(exc, MemoryError):
        detail = f" ({exc})" if str(exc) else ""
        return f"out of memory{detail}; {MEMORY_HINT}"
    if isinstance(exc, RecursionError):
        return f"{RECURSION_HINT} ({exc})"
    number = exc.errno if isinstance(exc.errno, int) else None
    meaning = os.strerror(number) if number is not None else (exc.strerror or str(exc))
    paths = [str(p) for p in (exc.filename, getattr(exc, "filename2", None)) if p is not None]
    where = f"{' -> '.join(paths)}: " if paths else ""
    hint = ERRNO_HINTS.get(number)
    return one_line(f"{where}{meaning}" + (f"; {hint}" if hint else ""))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seqgraph` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a wrong command line (one line on stderr), or --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.handler(args)
    except SeqgraphError as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seqgraph check ... | head` closed our stdout: not an error
        sys.stderr.close()
        return 0
    except (OSError, MemoryError, RecursionError) as exc:  # what the machine said: one line
        if args.traceback:
            traceback.print_exc()
        print(f"error: {system_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
