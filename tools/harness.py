"""How seqgraph's benchmarks time things: shared by tools/bench.py (seqgraph against its peers)
and tools/bench_versions.py (two seqgraph trees against each other).

Every implementation under test runs in its own long-lived worker process, as a user runs it,
so none shares a thread pool, an allocator or an import with another (torch's OpenMP and
OpenBLAS's pthreads in one process fight for the cores; torch's small LSTM timed 29.4 ms in
such a process and 7.8 ms alone on another machine). A worker

  * warms up to a steady state: steps until two consecutive chunks of back-to-back steps agree
    within `STEADY` (the first calls compile plans or XLA programs and fault pages in);
  * fixes how many back-to-back steps make one sample of at least `min_sample` seconds, so a
    sample is never one step timed right after a pause (that times the thread wake-up);
  * then serves samples over a pipe: a line `sample` in, seconds per step out.

The driver interleaves rounds: each round asks every worker for one sample, in a fresh random
order, so machine noise hits them alike; a worker waits blocked on its pipe, idle, while
another runs. Before each sample the driver pauses (`PAUSE_S`): OpenBLAS's and OpenMP's threads
spin for a while after their last call before they sleep, and in the worker that just finished
they would take the cores from the next one's first steps (without the pause, medium LSTM
samples ran 20 % slower than the same worker timed alone). Results are the median and the
spread (quartiles) over rounds.

The check on all this: after the rounds, each implementation is timed again alone, in a fresh
process, with a plain loop of back-to-back steps and no protocol (`time_alone`); the harness
median should agree with it within the spread.

Worker-side functions (`serve`, `time_alone`, `peak_memory_mib`, `pool_facts`) run inside the
measured process; driver-side ones (`Worker`, `interleave`, `one_shot`, `host_facts`) import
nothing but the standard library, so the driver holds no thread pool of its own.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

PAUSE_S = 0.2  # before each sample: the previous worker's spinning threads go to sleep
MIN_SAMPLE_S = 0.2  # shortest sample: it spans many scheduler ticks (4 ms at most each)
STEADY = 0.05  # warm-up ends when two consecutive chunks agree within 5 %
WARM_UP_LIMIT_S = 5.0  # ... or after this long (recorded as not steady)
ALONE_SAMPLES = 5
# Recorded in the JSON: thread counts, and OpenBLAS's forced kernel set, which a machine's
# environment may pin (OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves NumPy's GEMM).
ENVIRONMENT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)

Step = Callable[[], float]  # one training step; returns the loss (and has synchronised a GPU)


# ----- inside a worker -----


def _chunk(step: Step, seconds: float) -> float:
    """Back-to-back steps for at least `seconds`: seconds per step."""
    start, n = time.perf_counter(), 0
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / n


def warm_up(step: Step, min_sample: float, limit_s: float = WARM_UP_LIMIT_S) -> dict:
    """Steps until the time per step is steady; what `serve` reports about it. A sample's
    number of steps comes from the fastest chunk, the one least disturbed by other processes:
    sized from a disturbed one, a sample could shrink to a single step."""
    start = time.perf_counter()
    loss = float(step())  # compiles the plan / the XLA program, allocates buffers
    step()
    chunks: list[float] = []
    while True:
        per_step = _chunk(step, min_sample / 2)
        steady = bool(chunks) and abs(per_step / chunks[-1] - 1) <= STEADY
        chunks.append(per_step)
        if steady or time.perf_counter() - start > limit_s:
            break
    return {
        "loss": loss,
        "step_s": per_step,
        "steady": steady,
        "warm_up_s": time.perf_counter() - start,
        "steps_per_sample": max(1, math.ceil(min_sample / min(chunks))),
    }


def protocol_channel():
    """The worker's own stdout for protocol lines; fd 1 then goes to stderr, so a library
    that prints (a deprecation notice, a compiler log) cannot corrupt the protocol."""
    channel = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    return channel


def serve(build: Callable[[], Step], min_sample: float, facts: Callable[[], dict]) -> None:
    """A worker's life: build the step, warm up, report (one JSON line), then answer each
    `sample` line on stdin with the seconds per step of one sample; any other line ends it."""
    channel = protocol_channel()
    try:
        step = build()
    except Unavailable as reason:
        print(json.dumps({"unavailable": str(reason)}), file=channel, flush=True)
        return
    ready = warm_up(step, min_sample)
    ready["facts"] = facts()  # after warm-up: the thread pools have started
    print(json.dumps(ready), file=channel, flush=True)
    n = ready["steps_per_sample"]
    for line in sys.stdin:
        if line.strip() != "sample":
            break
        start = time.perf_counter()
        for _ in range(n):
            step()
        print((time.perf_counter() - start) / n, file=channel, flush=True)


def time_alone(step: Step, min_sample: float, samples: int = ALONE_SAMPLES) -> dict:
    """The check on the harness: a plain loop, as one would time a step by hand: warm up for a
    second, then `samples` chunks of back-to-back steps with no pause between them."""
    loss, start, chunks = float(step()), time.perf_counter(), []
    while time.perf_counter() - start < 1.0 or len(chunks) < 2:
        chunks.append(_chunk(step, min_sample / 2))
    n = max(1, math.ceil(min_sample / min(chunks)))
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        for _ in range(n):
            step()
        times.append((time.perf_counter() - began) / n)
    return {"loss": loss, "median_s": statistics.median(times), "samples_s": times}


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM); 0 where there is none."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_memory_mib(build: Callable[[], Step], steps: int = 2) -> float:
    """Peak resident memory above what the process holds now (call it after the imports) while
    building the step and running `steps` of it (Linux: resets the high-water mark first)."""
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    step = build()
    for _ in range(steps):
        step()
    return (status_kib("VmHWM") - before) / 1024


def pool_facts() -> list[dict]:
    """The native thread pools loaded in this process (BLAS, OpenMP), as threadpoolctl sees
    them; empty where threadpoolctl is not installed (it is no dependency of seqgraph)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


def numpy_facts() -> dict:
    """NumPy's version and the BLAS it was built against (numpy.show_config)."""
    import numpy as np

    blas = {}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):  # NumPy < 1.26 prints its config instead
        pass
    keys = ("name", "version", "openblas configuration")
    return {"numpy": np.__version__, "blas": {k: blas[k] for k in keys if k in blas}}


class Unavailable(Exception):
    """The implementation cannot run here (library not installed, no GPU): skipped, said why."""


# ----- in the driver -----


class Worker:
    """A long-lived worker process speaking `serve`'s protocol."""

    def __init__(self, name: str, argv: Sequence[str], cwd: str | None = None):
        self.name = name
        began = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"{name}: worker exited with {self.process.returncode}")
        self.ready = json.loads(line)
        self.ready["start_s"] = time.perf_counter() - began  # imports, build, warm-up

    @property
    def available(self) -> bool:
        return "unavailable" not in self.ready

    def sample(self) -> float:
        self.process.stdin.write("sample\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:  # it died mid-run (out of memory on a large config, say): name it
            raise RuntimeError(f"{self.name}: worker exited with {self.process.wait()}")
        return float(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def interleave(
    workers: Sequence[Worker], rounds: int, rng: random.Random, pause: float = PAUSE_S
) -> dict[str, list[float]]:
    """{worker name: seconds per step of each sample}: every round, each worker once, in a
    fresh random order, each sample after `pause` seconds of every process idle."""
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    order = list(workers)
    for _ in range(rounds):
        rng.shuffle(order)
        for worker in order:
            time.sleep(pause)
            times[worker.name].append(worker.sample())
    return times


def summarize(samples: Sequence[float]) -> dict:
    """Median, min and quartiles of a worker's samples; spread = (q3 - q1) / median."""
    median = statistics.median(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = median
    return {
        "median_s": median,
        "min_s": min(samples),
        "q1_s": q1,
        "q3_s": q3,
        "spread": (q3 - q1) / median,
    }


def one_shot(argv: Sequence[str], cwd: str | None = None) -> dict:
    """Run a fresh Python process that prints one JSON object as its last stdout line."""
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise RuntimeError(f"{' '.join(argv)}: {tail[0]}")
    return json.loads(lines[-1])


def cpu_model() -> dict:
    """The CPU as /proc/cpuinfo names it (model name, family, model) and the cores usable."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    return {
        "model": fields.get("model name", platform.processor()),
        "family": fields.get("cpu family"),
        "model_number": fields.get("model"),
        "virtualised": "hypervisor" in flags,
        "avx512": "avx512f" in flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def host_facts() -> dict:
    """What a reader needs to place the numbers, and nothing that names the host."""
    return {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES},
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: a quiet machine shows well under one per core."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class Progress:
    """Prints after each group how long the run took so far and how long it has left, scaling
    the estimate made before the start by how far the finished groups ran from theirs."""

    def __init__(self, estimates: Sequence[float]):
        self.estimates, self.done, self.start = list(estimates), 0, time.perf_counter()

    def finished_one(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        scale = elapsed / max(sum(self.estimates[: self.done]), 1e-9)
        left = scale * sum(self.estimates[self.done :])
        return f"[{self.done}/{len(self.estimates)}, {duration(elapsed)}, ~{duration(left)} left]"
