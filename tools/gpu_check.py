"""On a GPU machine: the plan on CuPy gives the NumPy interpreter's numbers (float64).

python tools/gpu_check.py

Exit 0 when every loss and gradient agrees within 1e-10, 1 when one does not, 2 (one line)
where there is no CuPy or no GPU to check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgraph import Model  # noqa: E402
from seqgraph.errors import BackendError  # noqa: E402
from seqgraph.runtime import batch as batching  # noqa: E402


def main() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    try:
        return check()
    except BackendError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2


def check() -> int:
    worst = 0.0
    for cell in ["rnn", "gru", "lstm"]:
        raw = {
            "model": {
                "pattern": "many_to_many",
                "input": {"type": "vectors", "size": 3},
                "target": {"type": "ids", "vocab": 4},
                "layers": [{"cell": cell, "hidden": 5}] * 2,
            }
        }
        ref = Model(raw, backend="numpy", dtype="float64", engine="interp")
        gpu = Model(raw, backend="cupy", dtype="float64", engine="plan")
        padded = batching.dummy(ref.spec, 3, 5)
        padded["lengths"] = np.array([5, 2, 4])
        for batch in (padded, batching.dummy(ref.spec, 3, 5)):
            loss, grads = ref.loss_and_grads(batch)
            got_loss, got = gpu.loss_and_grads(batch)
            err = max(float(np.max(np.abs(got[k].get() - grads[k]))) for k in grads)
            worst = max(worst, err, abs(loss - got_loss))
            print(f"{cell}: loss diff {abs(loss - got_loss):.2e}, max grad diff {err:.2e}")
    return 0 if worst < 1e-10 else 1


if __name__ == "__main__":
    sys.exit(main())
