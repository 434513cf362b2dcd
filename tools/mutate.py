"""Plant plausible one-line bugs, one at a time, and see whether the test suite notices.

    python tools/mutate.py [--list] [--only NAME]... [--jobs N] [--timeout S] [-- PYTEST ARGS]

Each mutant is one text substitution in one file of `seqgraph/` (the table `MUTANTS` below:
file, old snippet, new snippet, what the bug is). For each, the working tree's files (git's
tracked and untracked-but-not-ignored ones) are copied to a temporary folder, the snippet is
replaced there — never in the working tree — and pytest runs in that copy with `-x`
(stop at the first failure) on the whole suite (the focused files in `FIRST` first, so a
caught mutant stops early), or on the test files given after `--`.
A mutant is caught when pytest fails or runs past the timeout; the report ends with
`caught N / planted M` and the surviving mutants by name. Exit status: 0 when every mutant
was caught, 1 when some survived, 2 when the table no longer matches the code (a snippet
found zero or several times) or the unmutated copy fails its own tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str
    new: str
    what: str


CORE, LOSS, VJP = (
    "seqgraph/engine/ops/core.py",
    "seqgraph/engine/ops/loss.py",
    "seqgraph/plan/kernels_vjp.py",
)
OPTIM, LOOP = "seqgraph/train/optim.py", "seqgraph/train/loop.py"
BATCH, BLEU, INTEROP = (
    "seqgraph/runtime/batch.py",
    "seqgraph/apps/bleu.py",
    "seqgraph/runtime/interop.py",
)

MUTANTS = [
    # ---- engine ops: reference VJPs --------------------------------------------------------
    Mutant(
        "mul_vjp_swapped",
        CORE,
        "unbroadcast(xp, g * b, a.shape), unbroadcast(xp, g * a,",
        "unbroadcast(xp, g * a, a.shape), unbroadcast(xp, g * a,",
        "mul: da = g * a",
    ),
    Mutant(
        "div_vjp_sign",
        CORE,
        "unbroadcast(xp, -g * out / b, b.shape)",
        "unbroadcast(xp, g * out / b, b.shape)",
        "div: db without its minus sign",
    ),
    Mutant("log_vjp", CORE, "    return (g / a,)", "    return (g * a,)", "log: da = g * a"),
    Mutant("tanh_local", CORE, "    return 1 - y * y", "    return 1 - y", "tanh: 1 - y"),
    Mutant(
        "matmul_vjp_b",
        CORE,
        "gb = xp.matmul(xp.matrix_transpose(a2), g2)",
        "gb = xp.matmul(xp.matrix_transpose(a2), g2) * 0.5",
        "matmul: db halved",
    ),
    Mutant(
        "mse_vjp_factor",
        LOSS,
        "(2 / diff.shape[-1])",
        "(1 / diff.shape[-1])",
        "mse: the 2 of the square dropped",
    ),
    # ---- the plan's out= VJP kernels (a second copy of the rules) --------------------------
    Mutant(
        "plan_log_vjp",
        CORE,
        'out_vjp=(UfuncVJP("divide", 0),),',
        'out_vjp=(UfuncVJP("multiply", 0),),',
        "plan log VJP kernel: g * a",
    ),
    Mutant(
        "plan_exp_vjp",
        CORE,
        'out_vjp=(UfuncVJP("multiply", "out"),),',
        'out_vjp=(UfuncVJP("multiply", 0),),',
        "plan exp VJP kernel: g * a, not g * out",
    ),
    Mutant(
        "plan_div_b_sign",
        CORE,
        "    m.divide(o, b, out=o)\n    m.negative(o, out=o)\n",
        "    m.divide(o, b, out=o)\n",
        "plan div VJP kernel for b: sign dropped",
    ),
    Mutant(
        "plan_relu_vjp",
        CORE,
        "m.multiply(g, a > 0, out=o)",
        "m.multiply(g, a < 0, out=o)",
        "plan relu VJP kernel: the wrong side",
    ),
    Mutant(
        "plan_where_b",
        CORE,
        "m.multiply(g, ~c, out=o)",
        "m.multiply(g, c, out=o)",
        "plan where VJP kernel: b gets a's mask",
    ),
    Mutant(
        "plan_sigmoid_local",
        CORE,
        "    m.subtract(1, y, out=o)\n    m.multiply(o, y, out=o)\n",
        "    m.subtract(1, y, out=o)\n",
        "plan sigmoid local factor: 1 - y, not (1 - y) y",
    ),
    Mutant(
        "plan_sub_pass",
        VJP,
        "partial(m.subtract if negate else m.add, dest, g, out=dest)",
        "partial(m.add, dest, g, out=dest)",
        "plan: sub's gradient added, not subtracted",
    ),
    Mutant(
        "plan_generic_overwrites",
        VJP,
        "            m.add(dest, grad, out=dest)",
        "            m.copyto(dest, grad)",
        "plan fallback VJP overwrites instead of adding",
    ),
    Mutant(
        "plan_softmax_ce_saved",
        LOSS,
        "m.divide(e, sums, out=o2)",
        "m.multiply(e, sums, out=o2)",
        "plan softmax_ce VJP with the forward's saved exp: multiplies by the sum",
    ),
    # ---- data masking ----------------------------------------------------------------------
    Mutant(
        "mask_off_by_one",
        BATCH,
        "        return (t < lengths)[:, None]",
        "        return (t <= lengths)[:, None]",
        "state mask includes the first padded step",
    ),
    Mutant(
        "mask_stacked_off_by_one",
        BATCH,
        "return (ts[:, None] < lengths[None, :])[:, :, None]",
        "return (ts[:, None] <= lengths[None, :])[:, :, None]",
        "stacked mask off by one",
    ),
    Mutant(
        "loss_weight_ignores_lengths",
        BATCH,
        "else (t < p.y_len)",
        "else np.ones(size)",
        "padded steps add to the loss (per-step weights)",
    ),
    Mutant(
        "stacked_weight_ignores_lengths",
        BATCH,
        "real = (ts[:, None] < p.y_len[None, :]).astype(np.float64)",
        "real = np.ones((len(ts), p.size))",
        "padded steps add to the loss (stacked weights)",
    ),
    Mutant(
        "loss_not_averaged",
        BATCH,
        "    return real.astype(np.float64) / size",
        "    return real.astype(np.float64)",
        "loss summed over the batch, not averaged",
    ),
    # ---- optimizers, clipping, schedules -------------------------------------------------
    Mutant(
        "adam_no_bias_correction",
        OPTIM,
        "m_hat = m / (1 - self.beta1**self.steps)",
        "m_hat = m",
        "Adam without the first moment's bias correction",
    ),
    Mutant(
        "adam_no_v_correction",
        OPTIM,
        "v_hat = v / (1 - self.beta2**self.steps)",
        "v_hat = v",
        "Adam without the second moment's bias correction",
    ),
    Mutant(
        "nesterov_dropped",
        OPTIM,
        "(g + self.momentum * v if self.nesterov else v)",
        "(g if self.nesterov else v)",
        "Nesterov's momentum term dropped",
    ),
    Mutant(
        "weight_decay_sign",
        OPTIM,
        "g = g + self.weight_decay * p",
        "g = g - self.weight_decay * p",
        "weight decay pushes weights up",
    ),
    Mutant(
        "clip_no_sqrt",
        OPTIM,
        "norm = math.sqrt(sum(float(xp.sum(g * g)) for g in grads.values()))",
        "norm = sum(float(xp.sum(g * g)) for g in grads.values())",
        "global norm without the square root",
    ),
    Mutant(
        "clip_fires_below",
        OPTIM,
        "        if norm <= limit:",
        "        if norm > limit:",
        "global-norm clipping fires below the limit",
    ),
    Mutant(
        "clip_per_param_uses_global",
        OPTIM,
        "g * (limit / own) if own > limit else g",
        "g * (limit / norm) if own > limit else g",
        "per-parameter clip scales by the global norm",
    ),
    Mutant(
        "warmup_off_by_one",
        OPTIM,
        "return base * (step + 1) / warmup",
        "return base * step / warmup",
        "warmup starts at a zero learning rate",
    ),
    Mutant(
        "inverse_sigmoid_exp_step",
        OPTIM,
        "math.exp(min(step / k, 700.0))",
        "math.exp(min(step, 700.0))",
        "inverse_sigmoid decay with exp(step)",
    ),
    Mutant(
        "linear_decay_slope",
        OPTIM,
        "truth = max(floor, 1.0 - step / k)",
        "truth = max(floor, 1.0 - step / (2 * k))",
        "linear sampling decay at half the slope",
    ),
    Mutant(
        "coin_per_batch",
        LOOP,
        'batch["use_model"] = self.rng.random(y.shape[:2]) < p',
        'batch["use_model"] = np.full(y.shape[:2], self.rng.random() < p)',
        "one scheduled-sampling coin per batch",
    ),
    Mutant(
        "coin_per_sequence",
        LOOP,
        'batch["use_model"] = self.rng.random(y.shape[:2]) < p',
        'batch["use_model"] = np.repeat(self.rng.random((len(y), 1)) < p, y.shape[1], 1)',
        "one scheduled-sampling coin per sequence, not per step",
    ),
    # ---- BLEU, weight conventions ----------------------------------------------------------
    Mutant(
        "bleu_shortest_reference",
        BLEU,
        "key=lambda r: (abs(r - length), r)",
        "key=lambda r: r",
        "brevity penalty against the shortest reference",
    ),
    Mutant(
        "bleu_penalty_inverted",
        BLEU,
        "math.exp(1 - ref_length / hyp_length)",
        "math.exp(1 - hyp_length / ref_length)",
        "brevity penalty ratio inverted",
    ),
    Mutant(
        "bleu_unclipped",
        BLEU,
        "sum(min(c, most[gram]) for gram, c in counts.items())",
        "sum(c for gram, c in counts.items() if gram in most)",
        "n-gram counts not clipped",
    ),
    Mutant(
        "keras_gru_zr_swapped",
        INTEROP,
        '"gru": [1, 0, 2]}  # z r h',
        '"gru": [0, 1, 2]}  # z r h',
        "Keras GRU gates in PyTorch's r, z order",
    ),
    Mutant(
        "keras_lstm_bias_drops_hh",
        INTEROP,
        'out[f"{key}.bias"] = _blocks(b_ih + b_hh, order)',
        'out[f"{key}.bias"] = _blocks(b_ih, order)',
        "Keras LSTM bias without b_hh",
    ),
]


# Run first: the files that check op by op, cell by cell and against outside references, so
# that a caught mutant stops (-x) within seconds; the rest of the suite follows.
FIRST = [
    "tests/test_ops.py",
    "tests/test_keras_reference.py",
    "tests/test_bleu_reference.py",
    "tests/test_optim_reference.py",
    "tests/test_cells.py",
    "tests/test_plan.py",
    "tests/test_torch_oracle.py",
    "tests/test_interop.py",
    "tests/test_train.py",
]


def suite_order(files: list[str]) -> list[str]:
    """Every test file of the suite, FIRST first."""
    tests = sorted(f for f in files if f.startswith("tests/test_") and f.endswith(".py"))
    return [f for f in FIRST if f in tests] + [f for f in tests if f not in FIRST]


def working_files() -> list[str]:
    """The files of the working tree as git sees them: tracked, plus untracked not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def copy_tree(files: list[str], into: Path) -> None:
    for name in files:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def apply(mutant: Mutant, into: Path) -> None:
    path = into / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise LookupError(f"{mutant.name}: {mutant.file} holds its snippet {count} times, not once")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_suite(folder: Path, pytest_args: list[str], timeout: float) -> tuple[str, str, float]:
    """('failed' | 'passed' | 'timeout', the first failing test or the last line, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args]
    began = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout", f"ran past {timeout:.0f} s", time.perf_counter() - began
    seconds = time.perf_counter() - began
    lines = done.stdout.strip().splitlines() or [done.stderr.strip()[-200:]]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    detail = failed[0] if failed else lines[-1]
    return ("passed" if done.returncode == 0 else "failed"), detail[:160], seconds


def check_copy(folder: Path) -> None:
    """The copy, not the working tree, must be what the tests import."""
    found = subprocess.run(
        [sys.executable, "-c", "import seqgraph; print(seqgraph.__file__)"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not found.startswith(str(folder)):
        raise RuntimeError(f"the copy imports seqgraph from {found}, not from {folder}")


def try_mutant(mutant: Mutant | None, files: list[str], pytest_args, timeout) -> tuple:
    with tempfile.TemporaryDirectory(prefix="seqgraph-mutant-") as tmp:
        folder = Path(tmp)
        copy_tree(files, folder)
        check_copy(folder)
        if mutant is not None:
            apply(mutant, folder)
        return run_suite(folder, pytest_args, timeout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the table and stop")
    parser.add_argument("--only", action="append", help="run only these mutants (by name)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tried at once (default 2)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:<32} {m.file:<30} {m.what}")
        return 0
    files = working_files()
    pytest_args = pytest_args or suite_order(files)
    with tempfile.TemporaryDirectory() as tmp:  # every snippet must still match, once
        copy_tree(sorted({m.file for m in mutants}), Path(tmp))
        for m in mutants:
            try:
                apply(m, Path(tmp))
            except LookupError as exc:
                print(f"error: {exc}; update the table", file=sys.stderr)
                return 2
            copy_tree([m.file], Path(tmp))
    status, detail, seconds = try_mutant(None, files, pytest_args, args.timeout)
    print(f"unmutated: {status} in {seconds:.0f} s ({detail})", flush=True)
    if status != "passed":
        print("error: the unmutated copy must pass first", file=sys.stderr)
        return 2

    def one(mutant: Mutant) -> tuple[Mutant, str, str, float]:
        result = try_mutant(mutant, files, pytest_args, args.timeout)
        status, detail, seconds = result
        verdict = "SURVIVED" if status == "passed" else "caught"
        print(f"{verdict:<8} {mutant.name:<32} {seconds:5.0f} s  {detail}", flush=True)
        return (mutant, *result)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, mutants))
    survivors = [m for m, status, _, _ in results if status == "passed"]
    print(f"caught {len(mutants) - len(survivors)} / planted {len(mutants)}")
    for m in survivors:
        print(f"  survived: {m.name} ({m.file}): {m.what}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
