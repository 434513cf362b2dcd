"""Memory against time for recomputation in segments (`train.segment_steps`).

python tools/segments_tradeoff.py [--steps T] [--batch B] [--hidden H] [SEGMENT ...]

One 2-layer LSTM training step (float32, per-step softmax cross-entropy) over a T-step
sequence, as one plan and in segments of each given length. Each setting runs in a fresh
process: peak resident memory above the imports while building and running three steps
(Linux high-water mark, as tools/bench.py measures it), then the median step time of five.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import status_kib  # noqa: E402

from seqgraph import Model  # noqa: E402


def worker(steps: int, batch: int, hidden: int, segment: int) -> dict:
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 32},
            "target": {"type": "ids", "vocab": 32},
            "layers": [{"cell": "lstm", "hidden": hidden}] * 2,
        },
        "dtype": "float32",
    }
    if segment:
        raw["train"] = {"segment_steps": segment}
    model = Model(raw)
    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(batch, steps, 32)).astype(np.float32),
        "y": rng.integers(0, 32, size=(batch, steps)),
    }
    start = time.perf_counter()
    loss, _, _ = model.train_step(data)
    first = time.perf_counter() - start
    for _ in range(2):
        model.train_step(data)
    peak = (status_kib("VmHWM") - before) / 1024
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.train_step(data)
        times.append(time.perf_counter() - start)
    return {
        "segment": segment or steps,
        "peak_mib": peak,
        "ms_median": 1e3 * float(np.median(times)),
        "first_s": first,
        "loss": loss,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("segments", type=int, nargs="*", default=[0, 500, 200, 100, 50])
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.steps, args.batch, args.hidden, args.worker)))
        return 0
    print(f"2-layer LSTM {args.hidden}, B={args.batch}, T={args.steps}, float32")
    print(f"{'segment':>8} {'peak MiB':>9} {'ms/step':>9} {'first s':>8} {'loss':>10}")
    for segment in args.segments:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch)]
        cmd += ["--hidden", str(args.hidden), "--worker", str(segment)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['segment']:8d} {r['peak_mib']:9.0f} {r['ms_median']:9.0f} "
            f"{r['first_s']:8.1f} {r['loss']:10.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
