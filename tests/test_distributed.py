"""Data-parallel training under MPI: N ranks with the batch split equal one process with the
whole batch; a rank's error or death ends the job with a loadable checkpoint; a run resumes on
another number of ranks. The MPI tests start `mpiexec -n 2` (skipped only where Open MPI or
mpi4py is not installed; .ci/run installs both)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqgraph import api
from seqgraph.train import distributed, run_folder

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs Open MPI's mpiexec and mpi4py (apt-get install openmpi-bin libopenmpi-dev; "
    "pip install 'seqgraph[mpi]')",
)
TEXT = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x = 1\n" * 40
WORDS = "the a film plot fine dull good bad long short".split()


def write_spec(tmp_path: Path, name: str, model: dict, data: dict, train: dict) -> Path:
    spec = {
        "name": name,
        "seed": 5,
        "dtype": "float64",
        "model": model,
        "data": data,
        "train": {
            "steps": 20,
            "log_every": 1,
            "eval_every": 1000,
            "checkpoint_every": 1000,
            "valid_batches": 2,
            "sample_length": 10,
            "optimizer": {"name": "adam"},
            "clip": {"kind": "global_norm", "max": 0.5},  # clips: the global norm must be used
            **train,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sentiment_spec(tmp_path: Path, **train) -> Path:
    """many_to_one over padded sentences of 1..9 words; batch 5 splits 3 + 2, and the
    epoch's last batch has one sentence, so rank 1 then has none."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(23):
        words = rng.choice(WORDS, size=1 + i % 9)
        rows.append(f"{' '.join(words)}\t{int('good' in words or 'fine' in words)}\n")
    (tmp_path / "s.tsv").write_text("".join(rows))
    model = {
        "pattern": "many_to_one",
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        # dropout of every kind: each rank must drop the units one process drops in its rows
        "encoders": [{"type": "embedding", "size": 5, "dropout": 0.1}],
        "layers": [{"cell": "gru", "hidden": 6, "dropout": 0.3, "recurrent_dropout": 0.2}],
    }
    data = {"source": "tsv", "path": str(tmp_path / "s.tsv"), "valid_fraction": 0.1}
    return write_spec(tmp_path, "polarity", model, data, {"batch_size": 5, **train})


def char_spec(tmp_path: Path, **train) -> Path:
    """Truncated BPTT over a text stream: windows of 7 every 4 characters, state carried."""
    (tmp_path / "code.txt").write_text(TEXT)
    model = {
        "pattern": "many_to_many",
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        "encoders": [{"type": "embedding", "size": 6}],
        "layers": [{"cell": "lstm", "hidden": 8}],
    }
    data = {"source": "text", "path": str(tmp_path / "code.txt")}
    settings = {"batch_size": 4, "seq_len": 7, "stride": 4, "prime": "def ", **train}
    return write_spec(tmp_path, "chars", model, data, settings)


def mpirun(ranks: int, *args: str, timeout: float = 120, **popen) -> subprocess.Popen:
    command = [MPIEXEC, "-n", str(ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")  # CI runs as root; Open MPI refuses it otherwise
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command += [sys.executable, "-m", "seqgraph", "run", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def finished(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def arrays_of(run_dir: Path) -> tuple[dict, dict]:
    """(every array of a checkpoint by one flat name, its meta)."""
    params, raw, opt_state, carry, meta = run_folder.load_training_state(run_dir)
    flat = {f"param/{k}": v for k, v in params.items()}
    flat.update({f"raw/{k}": v for k, v in raw.items()})  # train.ema's raw weights
    flat.update({f"carry/{k}": v for k, v in carry.items()})
    for name, slots in opt_state.items():
        flat.update({f"opt/{name}/{slot}": v for slot, v in slots.items()})
    return flat, meta


def assert_same_run(one: Path, other: Path) -> None:
    """Parameters, optimizer state, carried state and the logged losses agree to 1e-12."""
    (a, meta_a), (b, meta_b) = arrays_of(one), arrays_of(other)
    if meta_a.get("best") and meta_b.get("best"):  # a validation loss: from weights that
        # agree to 1e-12, not bit for bit, so it does too
        best_a, best_b = meta_a["best"], meta_b["best"]
        assert best_a["value"] == pytest.approx(best_b["value"], rel=1e-12)
        meta_a = {**meta_a, "best": {**best_a, "value": None}}
        meta_b = {**meta_b, "best": {**best_b, "value": None}}
    assert meta_a == meta_b  # step, optimizer steps, RNG
    assert a.keys() == b.keys()
    for name, value in a.items():
        error = np.linalg.norm(value - b[name]) / np.linalg.norm(value)
        assert error <= 1e-12, (name, error)
    losses = [
        [r["loss"] for r in run_folder.Metrics(run, 10**9).read() if r["kind"] == "train"]
        for run in (one, other)
    ]
    assert len(losses[0]) == len(losses[1]) > 0
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12, atol=0)


# ---- without MPI -----------------------------------------------------------------------------


def test_rows_split_in_order_like_array_split():
    for rows in range(0, 12):
        for size in (1, 2, 3, 5):
            pieces = [distributed.row_range(rows, size, r) for r in range(size)]
            expected = np.array_split(np.arange(rows), size)
            assert [list(range(lo, hi)) for lo, hi in pieces] == [e.tolist() for e in expected]


def test_mpi_is_detected_from_the_launchers_variables_only():
    assert not distributed.under_mpi({})
    assert not distributed.under_mpi({"OMPI_COMM_WORLD_SIZE": "1"})
    assert distributed.under_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert distributed.under_mpi({"PMI_SIZE": "4"})
    assert isinstance(distributed.communicator({}), distributed.Single)


def test_one_process_is_the_identity():
    single = distributed.Single()
    grads = {"W": np.ones((2, 3))}
    batch = {"x": np.zeros((4, 3)), "y": np.zeros(4), "loss_from": 2}
    assert single.shard(batch) is batch
    summed, sums = single.sum_step(0.25, grads, 4, 12, False)
    assert summed is grads and sums == (0.25, 4, 12, False)
    carry = {"l0.h0": np.ones((4, 2))}
    assert single.gather_rows(carry) is carry and single.own_rows(carry) is carry


def test_fingerprint_sees_one_bit():
    params = {"W": np.linspace(0, 1, 6).reshape(2, 3), "b": np.zeros(3)}
    same = {k: v.copy() for k, v in params.items()}
    changed = {k: v.copy() for k, v in params.items()}
    changed["W"][1, 2] = np.nextafter(changed["W"][1, 2], 2.0)
    assert distributed.fingerprint(params) == distributed.fingerprint(same)
    assert distributed.fingerprint(params) != distributed.fingerprint(changed)


def test_ranks_that_drift_apart_stop_naming_them():
    from types import SimpleNamespace

    ranks = object.__new__(distributed.Mpi)  # its check, with a stand-in for COMM_WORLD
    ranks.comm = SimpleNamespace(allgather=lambda mine: [mine, b"another model", mine])
    with pytest.raises(distributed.DistributedError, match=r"ranks \[1\] differ .* step 7"):
        ranks.check_agreement({"W": np.ones(2)}, 7)
    ranks.comm = SimpleNamespace(allgather=lambda mine: [mine, mine])
    ranks.check_agreement({"W": np.ones(2)}, 7)


def test_mpiexec_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(distributed.DistributedError, match=r"seqgraph\[mpi\]"):
        distributed.communicator({"OMPI_COMM_WORLD_SIZE": "2"})


# ---- under mpiexec -n 2 -----------------------------------------------------------------------


@needs_mpi
def test_two_ranks_equal_one_process_many_to_one(tmp_path):
    spec = sentiment_spec(tmp_path)
    code, out, err = finished(mpirun(2, str(spec), "--out", str(tmp_path / "two")))
    assert code == 0, err
    assert out.count("done: 20 steps") == 1  # rank 0 alone reports
    api.train(str(spec), out=str(tmp_path / "one"), log=lambda *a: None, progress=False)
    assert_same_run(tmp_path / "one", tmp_path / "two")


@needs_mpi
def test_two_ranks_then_one_equal_one_process_truncated_bptt(tmp_path):
    """Windows carry their state per rank; the checkpoint gathers it, so the run resumes on
    one process and ends where a single process that ran all 20 steps ends."""
    spec = char_spec(tmp_path)
    both = tmp_path / "both"
    code, _, err = finished(mpirun(2, str(spec), "--steps", "12", "--out", str(both)))
    assert code == 0, err
    quiet = {"log": lambda *a: None, "progress": False}
    api.train(str(spec), out=str(both), resume=True, steps=20, **quiet)
    api.train(str(spec), out=str(tmp_path / "one"), **quiet)
    assert_same_run(tmp_path / "one", both)


@needs_mpi
def test_two_ranks_resume_rank_0s_weight_average(tmp_path):
    """train.ema: rank 0 reads the average from the checkpoint and hands it to rank 1; the
    ranks then average the same weights, and the run ends as one process's resumed run does."""
    spec = sentiment_spec(tmp_path, ema={"decay": 0.8})
    quiet = {"log": lambda *a: None, "progress": False, "sample": False}
    api.train(str(spec), out=str(tmp_path / "both"), steps=12, **quiet)
    code, _, err = finished(mpirun(2, str(spec), "--resume", "--out", str(tmp_path / "both")))
    assert code == 0, err
    api.train(str(spec), out=str(tmp_path / "one"), steps=12, **quiet)  # validates at 12 too
    api.train(str(spec), out=str(tmp_path / "one"), resume=True, **quiet)
    assert "raw/l0.W_hh" in arrays_of(tmp_path / "one")[0]
    assert_same_run(tmp_path / "one", tmp_path / "both")


@needs_mpi
def test_an_error_on_one_rank_ends_every_rank(tmp_path):
    spec = char_spec(tmp_path)
    # rank 0 alone reads the run folder; the others wait for it and must not wait forever
    code, _, err = finished(mpirun(2, str(spec), "--resume", "--out", str(tmp_path / "none")))
    assert code == 2
    assert "error: rank 0 of 2:" in err and "no checkpoint" in err


@needs_mpi
def test_a_killed_rank_ends_the_run_with_a_loadable_checkpoint(tmp_path):
    spec = char_spec(tmp_path, steps=100000, checkpoint_every=1)
    run_dir = tmp_path / "killed"
    process = mpirun(2, str(spec), "--out", str(run_dir), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (run_dir / run_folder.CHECKPOINT).exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        os.kill(rank_pid(process.pid, 1), signal.SIGKILL)
        code, _, err = finished(process, timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code != 0
    assert "rank 1" in err and "signal 9" in err  # Open MPI names the rank that died
    params, _, carry, meta = run_folder.load_checkpoint(run_dir)
    assert meta["step"] >= 1 and carry["l0.h0"].shape == (4, 8)
    assert all(np.isfinite(v).all() for v in params.values())
    summary = api.train(
        str(spec),
        out=str(run_dir),
        resume=True,
        steps=meta["step"] + 2,
        progress=False,
        log=lambda *a: None,
        sample=False,
    )
    assert summary["steps_done"] == meta["step"] + 2


def rank_pid(launcher: int, rank: int) -> int:
    """The PID of MPI rank `rank` among the launcher's descendants (from its environment)."""
    wanted = f"OMPI_COMM_WORLD_RANK={rank}".encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == launcher:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if wanted in environ and descends(parent, launcher):
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank} under PID {launcher}")


def descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def test_a_batch_smaller_than_the_ranks_is_refused_naming_the_spec():
    from types import SimpleNamespace

    from seqgraph.errors import SpecError
    from seqgraph.train.loop import _check_batch_splits

    with pytest.raises(SpecError, match=r"train\.batch_size.*at least 4") as caught:
        _check_batch_splits({"batch_size": 3}, SimpleNamespace(size=4), "big.yaml")
    assert "big.yaml" in str(caught.value)
    _check_batch_splits({"batch_size": 4}, SimpleNamespace(size=4), "big.yaml")


@needs_mpi
def test_a_best_set_after_the_last_checkpoint_keeps_one_batch_of_carried_state(tmp_path):
    """The final validation comes after the last checkpoint and, when it sets a new best,
    writes the checkpoint again from the state kept at the last one. Rank 0 kept the gathered
    batch there and rank 1 the rows it resumed with, so the rewrite gathered 4 + 2 rows
    (regression: the checkpoint's carried state had 6 rows for a batch of 4)."""
    spec = char_spec(tmp_path, eval_every=4, valid_batches=2)
    run_dir = tmp_path / "two"
    quiet = {"log": lambda *a: None, "progress": False, "sample": False}
    api.train(str(spec), out=str(run_dir), steps=8, **quiet)  # each rank resumes with 2 rows
    code, _, err = finished(
        mpirun(2, str(spec), "--resume", "--steps", "10", "--out", str(run_dir))
    )
    assert code == 0, err
    bests = [r for r in run_folder.Metrics(run_dir, 10**9).read() if r.get("kind") == "best"]
    assert bests and bests[-1]["step"] == 10  # the case: the last best is the final validation's
    _, _, carry, meta = run_folder.load_checkpoint(run_dir)
    assert meta["step"] == 10
    assert {name: value.shape[0] for name, value in carry.items()} == {name: 4 for name in carry}
