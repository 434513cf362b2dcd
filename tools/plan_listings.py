"""Write the plan listing (`print(plan)`) of every example spec and of every built-in cell in
every pattern, dtype, batch (full, ragged) and with and without gradients, one file each, so
that two trees' lowerings can be compared with `diff -r`:

    python tools/plan_listings.py OUT_DIR [TREE]

TREE (default: this checkout) is the seqgraph tree to import; a lowering change that must not
change any plan is checked by running this on the tree before and after and diffing the two
folders. A spec that cannot be planned gets its error, in one line, as its listing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT_DIR", help="folder for the listings (made if absent)")
    here = Path(__file__).resolve().parents[1]
    parser.add_argument("tree", metavar="TREE", nargs="?", default=here, help="seqgraph tree")
    args = parser.parse_args(argv)
    if not (Path(args.tree) / "seqgraph" / "__init__.py").is_file():
        parser.error(f"{args.tree}: no seqgraph package there; give a seqgraph source tree")
    return args


# TREE is the tree to import: read before the imports below, from the command line only
ARGS = arguments(sys.argv[1:]) if __name__ == "__main__" else None
TREE = Path(ARGS.tree if ARGS else Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(TREE))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from seqgraph import Model  # noqa: E402
from seqgraph.runtime import batch as batching  # noqa: E402
from seqgraph.spec.load import builtin_cells  # noqa: E402

PATTERNS = ("many_to_many", "many_to_one", "one_to_one", "one_to_many", "encoder_decoder")
# What each pattern reads and predicts (as tests/support.py), so that ids and vectors, the
# embedding, one-hot and dense encoders and both losses all appear.
IO = {
    "many_to_many": ({"type": "ids", "vocab": 5}, {"type": "ids", "vocab": 4}, "embedding"),
    "many_to_one": ({"type": "vectors", "size": 3}, {"type": "ids", "vocab": 4}, "dense"),
    "one_to_one": ({"type": "vectors", "size": 3}, {"type": "vectors", "size": 2}, None),
    "one_to_many": ({"type": "vectors", "size": 3}, {"type": "ids", "vocab": 4}, None),
    "encoder_decoder": ({"type": "ids", "vocab": 5}, {"type": "vectors", "size": 2}, "onehot"),
}
ENCODERS = {
    "embedding": {"type": "embedding", "size": 3},
    "dense": {"type": "dense", "size": 3, "activation": "tanh"},
    "onehot": {"type": "onehot"},
}
BATCH, STEPS, OUT_STEPS, HIDDEN = 3, 5, 4, 4


def cell_spec(cell: str, pattern: str, dtype: str, bidirectional: bool) -> dict:
    source, target, encoder = IO[pattern]
    layer = {"cell": cell, "hidden": HIDDEN, "bidirectional": bidirectional}
    model = {
        "pattern": pattern,
        "input": source,
        "target": target,
        "encoders": [ENCODERS[encoder]] if encoder else [],
        "layers": [dict(layer), dict(layer)],
    }
    if pattern == "encoder_decoder":
        size = 2 * HIDDEN if bidirectional else HIDDEN
        model["decoder_layers"] = [{"cell": cell, "hidden": size}] * 2
    return {"model": model, "dtype": dtype, "seed": 1}


def listing(raw: dict, ragged: bool, grads: bool) -> str:
    """The plan listing of one spec on a dummy batch, or its error in one line."""
    try:
        model = Model(raw, dtype=raw.get("dtype", "float32"))
        out_steps = OUT_STEPS if model.spec.model.feeds_back else None
        batch = batching.dummy(model.spec, BATCH, STEPS, out_steps, 0)
        if ragged and model.spec.model.pattern in (
            "many_to_many",
            "many_to_one",
            "encoder_decoder",
        ):
            batch["lengths"] = np.array([STEPS, 2, 1], dtype=np.int64)
        if ragged and out_steps:
            batch["y_lengths"] = np.array([OUT_STEPS, 1, 3], dtype=np.int64)
        return str(model.plan(batch, grads=grads)) + "\n"
    except Exception as error:  # noqa: BLE001 -- the listing records what went wrong
        return f"ERROR {type(error).__name__}: {str(error).splitlines()[0]}\n"


def cases():
    """(file name, raw spec, ragged, grads) of every listing written."""
    for path in sorted((TREE / "specs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text().replace("vocab: auto", "vocab: 11"))
        for grads in (True, False):
            yield f"spec-{path.stem}-{'grads' if grads else 'forward'}", raw, False, grads
    for cell in sorted(builtin_cells()):
        for pattern in PATTERNS:
            for dtype in ("float32", "float64"):
                for bidirectional in (False, True) if pattern != "one_to_many" else (False,):
                    raw = cell_spec(cell, pattern, dtype, bidirectional)
                    for ragged in (False, True):
                        for grads in (True, False):
                            name = "-".join(
                                [cell, pattern, dtype, "bi" if bidirectional else "uni"]
                                + ["ragged" if ragged else "full", "grads" if grads else "fwd"]
                            )
                            yield name, raw, ragged, grads


def main(out_dir: str) -> int:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"plan_listings: {out}: cannot make the folder ({error.strerror})", file=sys.stderr)
        return 2
    written = errors = 0
    for name, raw, ragged, grads in cases():
        text = listing(raw, ragged, grads)
        (out / f"{name}.txt").write_text(text)
        written += 1
        errors += text.startswith("ERROR")
    print(f"{written} listings in {out} ({errors} of them errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS.out))
