"""argv -> api -> print. Errors are one line on stderr with exit code 2 (`--traceback` for
the stack)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from pathlib import Path

from seqgraph import api
from seqgraph.engine.graph import key_str
from seqgraph.errors import SeqgraphError
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
    valid = summary.get("valid", {})
    line = f"done: {summary['steps_done']} steps in {summary['run_dir']}"
    if valid:
        line += f"; validation loss {valid['loss']:.4f} per target step"
        if "accuracy" in valid:
            line += f", accuracy {valid['accuracy']:.3f}"
        line += _scores(summary["source"], valid)
    print(line)
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
    )
    if isinstance(out, Path):  # an audio run wrote a WAV
        print(f"wrote {out}")
        return 0
    print(
        out if isinstance(out, str) else "\n".join(" ".join(f"{v:.4f}" for v in row) for row in out)
    )
    return 0


def _cmd_eval(args) -> int:
    result = api.evaluate_run(args.run_dir, data=args.data, backend=args.backend, split=args.split)
    if args.json:
        print(_json_line(result))
    else:
        extra = f", accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""
        extra += _scores(result["source"], result)
        print(
            f"{result['run_dir']} at step {result['step']}, {result['split']} split: loss "
            f"{result['loss']:.4f} per target step over {result['tokens']:,} steps{extra}"
        )
    return 0


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
    print(api.export_run(args.run_dir, to=args.to, out=args.output))
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
    lengths = None
    if args.lengths:
        try:
            lengths = [int(n) for n in args.lengths.split(",")]
        except ValueError:
            raise SeqgraphError(
                f"--lengths takes whole numbers separated by commas, got {args.lengths!r}"
            ) from None
    print(
        api.render(
            args.spec,
            args.output,
            steps=args.steps,
            out_steps=args.out_steps,
            fold=args.fold,
            grad=args.grad,
            lengths=lengths,
            detail=args.detail,
        )
    )
    return 0


def _cmd_schema(args) -> int:
    print(json.dumps(spec_schema(), indent=2))
    return 0


BACKENDS = ["numpy", "cupy"]


def _args_check(p) -> None:
    p.add_argument("spec", help="path to a YAML spec")
    p.add_argument("--steps", type=int, default=5, help="time steps to unroll (default 5)")
    p.add_argument("--data", help="data file that sizes a `vocab: auto` spec")


def _args_run(p) -> None:
    p.add_argument("spec", help="path to a YAML spec")
    p.add_argument("--data", help="data file or folder; overrides data.path (data.root)")
    p.add_argument("--backend", choices=BACKENDS, help="array backend")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--steps", type=int, help="training steps (overrides train.steps)")
    p.add_argument("--out", help="run folder (default runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def _args_sample(p) -> None:
    p.add_argument("run_dir")
    p.add_argument(
        "--length", type=int, help="steps (default 300); audio: samples (train.sample_length)"
    )
    p.add_argument("--temperature", type=float, help="default: train.temperature or 1")
    p.add_argument("--prime", help="text to start from (default: train.prime)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest next id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument(
        "--wav", help="audio runs: the WAV file to write (default RUN_DIR/generated.wav)"
    )


def _args_eval(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluate on this data's split instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--split", choices=["valid", "test"], default="valid")
    p.add_argument("--backend", choices=BACKENDS)


def _args_render(p) -> None:
    p.add_argument("spec")
    p.add_argument("--steps", type=int, default=4, help="time steps to draw (default 4)")
    p.add_argument("--out-steps", type=int, help="decoder steps (default --steps)")
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
    p.add_argument("--lengths", help="sequence lengths, e.g. 5,3: padded steps are greyed")
    p.add_argument("--detail", action="store_true", help="every op, not one node per cell step")


def _args_gradflow(p) -> None:
    p.add_argument("source", help="a spec (at initialisation) or a run folder (at its checkpoint)")
    p.add_argument("--batch", type=int, default=8, help="sequences in the batch (default 8)")
    p.add_argument("--steps", type=int, help="time steps for streams (default train.seq_len)")
    p.add_argument(
        "--threshold",
        type=float,
        default=1e-3,
        help="mark steps whose gradient is below this fraction of the peak",
    )
    p.add_argument("--data", help="data file, as for `run`")
    p.add_argument("--out", help="folder for the CSVs and heatmap.png")


def _args_export(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--to", choices=["onnx", "pytorch", "keras", "onnx_weights"], default="onnx")
    p.add_argument("-o", "--output", help="file to write (default RUN_DIR/model.onnx ...)")


COMMANDS = {  # name: (help, handler, arguments)
    "check": ("validate a spec and describe its unrolled graph", _cmd_check, _args_check),
    "schema": ("print the JSON Schema of the spec format", _cmd_schema, None),
    "run": ("train the model a spec describes", _cmd_run, _args_run),
    "sample": ("generate from a trained run", _cmd_sample, _args_sample),
    "eval": ("loss and accuracy of a run on held-out data", _cmd_eval, _args_eval),
    "render": ("draw the unrolled graph (Graphviz) so BPTT can be seen", _cmd_render, _args_render),
    "gradflow": (
        "per-step gradient ledger of one batch: CSV and heatmap",
        _cmd_gradflow,
        _args_gradflow,
    ),
    "export": (
        "write a run's model as ONNX, or its weights in another convention",
        _cmd_export,
        _args_export,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqgraph",
        description="Declarative recurrent networks: a YAML spec unrolled into an explicit graph.",
        epilog="example: " + EXAMPLES["check"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full stack on error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, handler, arguments) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, epilog="example: " + EXAMPLES[name]
        )
        p.set_defaults(handler=handler)
        if arguments is not None:
            arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seqgraph` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
