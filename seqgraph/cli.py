"""argv -> api -> print. Errors are one line on stderr with exit code 2 (`--traceback` for
the stack)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from . import api
from .errors import SeqgraphError
from .graph import key_str
from .schema import spec_schema

EXAMPLES = {
    "check": "seqgraph check specs/char_lstm.yaml --steps 4",
    "schema": "seqgraph schema > seqgraph.schema.json",
}


def _cmd_check(args) -> int:
    report = api.check(args.spec, steps=args.steps)
    print(f"{report['name']}: {report['pattern']}, {report['num_params']:,} parameters, "
          f"{report['nodes']:,} nodes and {report['edges']:,} edges unrolled over "
          f"{args.steps} steps")
    print("parameters:")
    for name, shape in report["params"].items():
        print(f"  {name:<24} {shape}")
    print("first step (shape for a batch of 2):")
    for key, kind, op, shape in report["step_shapes"]:
        what = op if kind == "op" else kind
        print(f"  {key_str(key):<32} {what:<12} {shape}")
    return 0


def _cmd_schema(args) -> int:
    print(json.dumps(spec_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqgraph",
        description="Declarative recurrent networks: a YAML spec unrolled into an explicit graph.",
        epilog="example: " + EXAMPLES["check"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full stack on error")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, handler):
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog="example: " + EXAMPLES[name])
        p.set_defaults(handler=handler)
        return p

    p = command("check", "validate a spec and describe its unrolled graph", _cmd_check)
    p.add_argument("spec", help="path to a YAML spec")
    p.add_argument("--steps", type=int, default=5, help="time steps to unroll (default 5)")
    command("schema", "print the JSON Schema of the spec format", _cmd_schema)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
