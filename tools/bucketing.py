"""What padding sentence batches to a multiple of 8 steps buys: the README's rt-polarity figures.

    python tools/bucketing.py [--data ../shared/data/rt_polarity] [--steps N]

Trains specs/sentiment_bilstm.yaml twice, each in a fresh process so that peak memory is its
own: with `data.pad_multiple: 1` (each batch padded to its longest sentence) and with 8 (the
default). Prints, for each, the plans compiled (one per batch shape; training and
validation), the peak resident memory, the wall time of the run and the final validation
loss. Needs the rt-polarity files (Pang & Lee 2005) under --data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from seqgraph import api
from seqgraph.runtime import runner

plans = []
build = runner.Runner.__init__
def counted(self, *args, **kwargs):
    plans.append(1)
    build(self, *args, **kwargs)
runner.Runner.__init__ = counted

spec, data, out = sys.argv[1:4]
began = time.perf_counter()
summary = api.train(spec, data=data, out=out, progress=False, sample=False, log=lambda *a: None)
print(json.dumps({
    "plans": len(plans),
    "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    "wall_s": time.perf_counter() - began,
    "valid_loss": summary["valid"]["loss"],
}))
"""


def run_one(multiple: int, data: str, steps: int | None, folder: Path) -> dict:
    raw = yaml.safe_load((ROOT / "specs" / "sentiment_bilstm.yaml").read_text())
    raw["data"]["pad_multiple"] = multiple
    if steps:
        raw["train"]["steps"] = steps
    spec = folder / f"pad{multiple}.yaml"
    spec.write_text(yaml.safe_dump(raw))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(spec), data, str(folder / f"run{multiple}")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode:
        sys.exit(f"pad_multiple {multiple}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rt_polarity"))
    parser.add_argument("--steps", type=int, help="training steps (default: the spec's 1600)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for multiple in (1, 8):
            r = run_one(multiple, args.data, args.steps, Path(tmp))
            print(
                f"pad_multiple {multiple}: {r['plans']} plans, peak memory {r['peak_gb']:.2f} GB, "
                f"wall {r['wall_s']:.0f} s, validation loss {r['valid_loss']:.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
