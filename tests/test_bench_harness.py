"""tools/harness.py, the timing machinery of tools/bench.py and tools/bench_versions.py, and
tools/bench_table.py, which renders README's table: the worker protocol over a real process,
the interleaving, the summaries, the check alone and the machine named above the table.
Nothing here asserts a duration: only what was run, how often, and what it computed."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402
import bench_peers  # noqa: E402
import bench_table  # noqa: E402
import harness  # noqa: E402
import numpy_hand  # noqa: E402


def test_summary_is_median_min_and_interquartile_spread():
    summary = harness.summarize([4.0, 1.0, 100.0, 3.0, 2.0])
    assert summary["median_s"] == 3.0
    assert summary["min_s"] == 1.0
    assert (summary["q1_s"], summary["q3_s"]) == (2.0, 4.0)
    assert summary["spread"] == pytest.approx(2.0 / 3.0)
    assert harness.summarize([0.5])["spread"] == 0.0


class _Recorder:
    """A worker that records when it was asked for a sample (no process, no timing)."""

    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def sample(self) -> float:
        self.log.append(self.name)
        return float(len(self.log))


def test_each_round_asks_every_worker_once_in_a_fresh_random_order():
    log: list[str] = []
    workers = [_Recorder(name, log) for name in "abcd"]
    times = harness.interleave(workers, rounds=6, rng=random.Random(0), pause=0.0)
    assert {name: len(samples) for name, samples in times.items()} == dict.fromkeys("abcd", 6)
    rounds = [tuple(log[i : i + 4]) for i in range(0, 24, 4)]
    assert all(sorted(order) == list("abcd") for order in rounds)
    assert len(set(rounds)) > 1  # the order changes between rounds
    assert times["a"] == [float(i + 1) for i, name in enumerate(log) if name == "a"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "tiny-rnn.npz"
    assert bench_peers.main(["params", "rnn", "tiny", str(path)]) == 0
    return str(path)


def _hand_loss(weights: str) -> float:
    B, T, n_in, _, C = bench_peers.CONFIGS["tiny"]
    x, y = bench_peers.make_data(B, T, n_in, C)
    with np.load(weights) as saved:
        return numpy_hand.loss_and_grads("rnn", dict(saved), x, y)[0]


def test_a_worker_warms_up_then_serves_samples_of_its_own_library(tiny_weights):
    argv = bench_peers.job_argv(
        "serve", "numpy_hand", "rnn", "tiny", params=tiny_weights, min_sample=0.01
    )
    worker = harness.Worker("numpy_hand", argv)
    try:
        samples = [worker.sample() for _ in range(3)]
    finally:
        worker.close()
    assert worker.process.returncode == 0
    ready = worker.ready
    assert ready["loss"] == pytest.approx(_hand_loss(tiny_weights), rel=1e-6)
    assert ready["steps_per_sample"] >= 1
    assert all(s > 0 for s in samples)
    assert ready["facts"]["others_loaded"] == []  # no seqgraph, torch or jax in this process
    assert ready["facts"]["numpy"]["numpy"] == np.__version__


def test_the_check_alone_runs_a_plain_loop_in_a_fresh_process(tiny_weights):
    argv = bench_peers.job_argv(
        "alone", "numpy_hand", "rnn", "tiny", params=tiny_weights, min_sample=0.01
    )
    alone = harness.one_shot(argv)
    assert len(alone["samples_s"]) == harness.ALONE_SAMPLES
    assert alone["median_s"] == pytest.approx(np.median(alone["samples_s"]))
    assert alone["loss"] == pytest.approx(_hand_loss(tiny_weights), rel=1e-6)


def test_a_peer_that_cannot_run_says_why_and_is_skipped():
    worker = harness.Worker("jax", bench_peers.job_argv("serve", "jax", "rnn", "tiny", "cupy"))
    worker.close()
    assert not worker.available
    assert "CPU only" in worker.ready["unavailable"]


def test_peak_memory_is_measured_above_the_imports(tiny_weights):
    argv = bench_peers.job_argv("memory", "numpy_hand", "rnn", "tiny", params=tiny_weights)
    assert 0 <= harness.one_shot(argv)["mib"] < 100  # a tiny RNN: not the ~30 MiB of NumPy


def test_the_drivers_load_no_library_they_time():
    code = (
        "import sys; sys.path.insert(0, 'tools'); import bench, bench_versions; "
        "print([m for m in ('numpy', 'seqgraph', 'torch', 'jax') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"  # the driver holds no thread pool of its own


def test_a_worker_that_dies_is_named():
    with pytest.raises(RuntimeError, match="no-such-file"):
        harness.one_shot(["-c", "open('no-such-file')"])


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--min-sample", "-1"]])
def test_bench_rejects_a_count_that_cannot_time_anything(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.parse(argv)
    assert exited.value.code == 2
    assert "must be above 0" in capsys.readouterr().err


def _report(records: list[dict]) -> dict:
    pools = [{"internal_api": "openblas", "num_threads": 2}]
    return {
        "machine": {
            "cpu": {
                "model": "AMD EPYC",
                "family": "26",
                "model_number": "2",
                "usable_cpus": 2,
                "virtualised": True,
            },
            "date": "2026-11-30 07:19 UTC",
            "python": "3.11.7",
            "numpy": "2.4.6",
            "blas": {"name": "scipy-openblas", "version": "0.3.31"},
            "pools": pools,
            "gemm_peak_gflops": 190.0,
            "load_average": [0.1, 0.2, 0.3],
            "load_average_end": [0.2, 0.2, 0.3],
        },
        "libraries": {
            "torch": {
                "torch": "2.13.0+cpu",
                "num_threads": 2,
                "onednn": "Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)",
            },
            "jax": {"jax": "0.10.2", "jaxlib": "0.10.2", "xla_flags": None},
        },
        "harness": {"rounds": 15, "min_sample_s": 0.2, "pause_s": 0.2},
        "records": records,
    }


def test_the_table_names_its_machine_and_divides_by_the_fastest_peer(tmp_path, capsys):
    ms = {"seqgraph": 12.0, "torch": 10.0, "jax": 8.0, "numpy_hand": 16.0}
    records = [
        {
            "config": "small",
            "cell": "lstm",
            "impl": impl,
            "ms_median": value,
            "harness_over_alone": 1.0 + value / 100,
        }
        for impl, value in ms.items()
    ]
    path = tmp_path / "a.json"
    path.write_text(__import__("json").dumps(_report(records)))
    assert bench_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    head, table = out.split("\n\n")[:2]
    assert head.startswith("small: AMD EPYC (family 26 model 2, 2 cores, virtualised)")
    assert (
        "openblas 2 threads" in head and "PyTorch 2.13.0+cpu (MKL-DNN v3.12.0, 2 threads)" in head
    )
    assert "| small | – / – / – / – |  | – / – / – / – |  | 12 / 10 / 8 / 16 | 1.50 |" in table
    assert "torch 1.10 (1.10–1.10)" in out


def test_an_old_harness_file_is_rendered_and_says_it_has_no_machine(tmp_path, capsys):
    path = tmp_path / "old.json"
    old = [
        {"config": "tiny", "cell": "rnn", "impl": i, "ms_median": 1.0} for i in bench_table.IMPLS
    ]
    path.write_text(__import__("json").dumps(old))
    assert bench_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: an old-harness file: no machine recorded")
    assert "| tiny | 1 / 1 / 1 / 1 | **1.00** |" in out


def test_before_and_after_share_the_fastest_peer_of_one_run(tmp_path, capsys):
    ms = {"seqgraph": 9.0, "seqgraph_before": 12.0, "torch": 10.0, "jax": 8.0}
    records = [
        {"config": "medium", "cell": "gru", "impl": impl, "ms_median": value}
        for impl, value in ms.items()
    ]
    path = tmp_path / "a.json"
    path.write_text(__import__("json").dumps(_report(records)))
    assert bench_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    # the main table leaves the earlier revision out of the peers
    assert "| medium | – / – / – / – |  | 9 / 10 / 8 / – | 1.12 |" in out
    assert "| medium | – | – | 12 / 9 | 1.50 → 1.12 | – | – |" in out


def test_before_must_be_a_source_tree(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.parse(["--before", str(tmp_path)])
    assert exited.value.code == 2
    assert "no seqgraph package there" in capsys.readouterr().err


def test_the_machine_line_names_openblas_kernels_and_warns_when_the_environment_pins_them(
    tmp_path, capsys
):
    report = _report([{"config": "tiny", "cell": "rnn", "impl": "torch", "ms_median": 1.0}])
    report["machine"]["pools"] = [
        {"internal_api": "openblas", "num_threads": 2, "architecture": "SkylakeX"}
    ]
    path = tmp_path / "a.json"
    path.write_text(__import__("json").dumps(report))
    assert bench_table.main([str(path)]) == 0
    assert "openblas SkylakeX kernels, 2 threads" in capsys.readouterr().out
    pinned = bench.forced_kernels_line(
        {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "2"}
    )
    assert "OPENBLAS_CORETYPE=Haswell pins" in pinned and "NUM_THREADS" not in pinned
    assert "env -u OPENBLAS_CORETYPE" in pinned
    assert bench.forced_kernels_line({"OPENBLAS_CORETYPE": None, "OMP_NUM_THREADS": "1"}) == ""


def test_bench_table_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    """A missing file, one that is not JSON and JSON that holds no timing records: each one
    line naming the file, exit 2 (it was a traceback); no file at all is a usage error."""
    not_json, no_records = tmp_path / "notes.txt", tmp_path / "other.json"
    not_json.write_text("ms per step\n")
    no_records.write_text('{"mib": 3}')
    for path, why in [
        (tmp_path / "missing.json", "cannot read it"),
        (not_json, "not JSON"),
        (no_records, "no timing records"),
    ]:
        assert bench_table.main([str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and why in err
    with pytest.raises(SystemExit) as usage:
        bench_table.main([])
    assert usage.value.code == 2
