"""Training killed with SIGKILL at random points: the run folder always holds a loadable
checkpoint, and --resume continues from it. SEQGRAPH_KILLS sets the number of kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from test_train import char_spec

from seqgraph import api
from seqgraph.train import run_folder

KILLS = int(os.environ.get("SEQGRAPH_KILLS", "3"))


def start(spec, out, resume: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "seqgraph.cli", "run", str(spec), "--out", str(out)]
    return subprocess.Popen(
        argv + (["--resume"] if resume else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkill_loop_never_loses_the_checkpoint(tmp_path):
    spec = char_spec(tmp_path, steps=100000, checkpoint_every=1)
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    steps_seen, kills = [], 0
    deadline = time.time() + 120
    while kills < KILLS and time.time() < deadline:
        checkpoint = out / run_folder.CHECKPOINT
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        proc = start(spec, out, resume=before is not None)
        wait_until = time.time() + 30  # until this process has written a checkpoint itself
        while time.time() < wait_until and (
            not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before
        ):
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.05, 0.6)))  # a random point in the loop
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        params, _, _, meta = run_folder.load_checkpoint(out)  # must load after every kill
        assert all(np.all(np.isfinite(v)) for v in params.values())
        steps_seen.append(meta["step"])
    assert kills == KILLS
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    # bit for bit what an uninterrupted run holds at the same step
    quiet = {"progress": False, "sample": False, "log": lambda line: None}
    api.train(str(spec), out=str(out), resume=True, stop_after=2, **quiet)
    step = run_folder.load_checkpoint(out)[3]["step"]
    whole = tmp_path / "whole"
    api.train(str(spec), out=str(whole), stop_after=step, **quiet)
    assert run_folder.load_checkpoint(whole)[3]["step"] == step
    killed, uninterrupted = run_folder.load_checkpoint(out)[0], run_folder.load_checkpoint(whole)[0]
    assert killed.keys() == uninterrupted.keys()
    for name in killed:
        np.testing.assert_array_equal(killed[name], uninterrupted[name], err_msg=name)
