"""Packed products and the step programs' own threads (`seqgraph/plan/programs.py`).

A product by a weight that a run makes twice or more is packed once and computed by the
executor's own loop; products are split over threads the programs own while a plan runs
(`threads_shared`). Both must give np.dot's values (to rounding where OpenBLAS sums blocks
of k apart), the same bits on any number of threads, and survive what users do with
threads and processes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
from functools import partial

import numpy as np
import pytest
import yaml
from support import make_batch, model_spec

from seqgraph import Model
from seqgraph.plan import blas, ckernels, programs

needs_threads = pytest.mark.skipif(
    ckernels.compiler() is None or blas.find() is None or not blas.find().set_threads,
    reason="no C compiler, or NumPy's BLAS has no 64-bit-integer CBLAS or thread count here",
)
TOLERANCE = {np.float32: 2e-6, np.float64: 1e-14}  # relative to the largest |value|


def blas_threads() -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int)(blas.find().threads)()


def set_blas_threads(n: int) -> None:
    ctypes.CFUNCTYPE(None, ctypes.c_int)(blas.find().set_threads)(n)


def steps(dtype, M: int, K: int, N: int, count: int = 3, transposed: bool = False, seed=0):
    """`count` products of fresh rows by one weight (a transposed view where asked):
    (kernels, rows, weight, outputs)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, K)).astype(dtype).T if transposed else None
    W = rng.standard_normal((K, N)).astype(dtype) if W is None else W
    rows = [rng.standard_normal((M, K)).astype(dtype) for _ in range(count)]
    outs = [np.full((M, N), np.nan, dtype) for _ in range(count)]
    kernels = [partial(np.dot, a, W, out=o) for a, o in zip(rows, outs, strict=True)]
    return kernels, rows, W, outs


def close_to_numpy(outs, rows, W, dtype) -> None:
    for a, o in zip(rows, outs, strict=True):
        want = a @ W
        scale = np.abs(want).max()
        np.testing.assert_allclose(o, want, rtol=0, atol=TOLERANCE[dtype] * scale * a.shape[1])


@needs_threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "M, K, N, transposed",
    [(32, 128, 512, False), (5, 7, 33, False), (9, 300, 17, True), (17, 64, 100, True)],
)
def test_a_weights_products_are_packed_and_equal_numpys(dtype, M, K, N, transposed):
    """Rows not a multiple of the loop's 8, columns not a multiple of a panel, a weight
    seen transposed: np.dot's values, alone and on the threads `threads_shared` lends."""
    kernels, rows, W, outs = steps(dtype, M, K, N, transposed=transposed)
    (program,) = programs.link(kernels, [W])
    assert len(program.packed) == 1
    program()
    close_to_numpy(outs, rows, W, dtype)
    alone = [o.copy() for o in outs]
    for o in outs:
        o.fill(np.nan)
    with programs.threads_shared():
        program()
    for got, want in zip(outs, alone, strict=True):
        np.testing.assert_array_equal(got, want)  # threads never change a bit


@needs_threads
def test_only_a_weight_used_twice_is_packed():
    """Not named a weight (it may be written in the run), or used once: np.dot's call."""
    kernels, rows, W, outs = steps(np.float32, 8, 16, 64)
    (program,) = programs.link(kernels)
    assert program.packed == []
    (program,) = programs.link([kernels[0], partial(np.add, outs[0], outs[0], out=outs[1])], [W])
    assert program.packed == []


@needs_threads
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_bits_do_not_depend_on_the_threads(threads):
    """Packed products (the same bits) and BLAS products split by rows (tall) and by columns
    (wide; to rounding: OpenBLAS picks its kernel by size, so a share may round apart from
    the whole), over one to three threads (more than this machine's cores: the waits
    yield)."""
    rng = np.random.default_rng(3)
    kernels, rows, W, outs = steps(np.float64, 40, 128, 160)  # 1.6e6 flops: shared
    tall_a, tall_b = rng.standard_normal((800, 64)), rng.standard_normal((64, 64))
    wide_a, wide_b = rng.standard_normal((64, 64)), rng.standard_normal((64, 800))
    tall, wide = np.zeros((800, 64)), np.zeros((64, 800))  # 6.6e6 flops each: shared
    products = [
        partial(np.dot, tall_a, tall_b, out=tall),
        partial(np.dot, wide_a, wide_b, out=wide),
    ]
    (program,) = programs.link([*kernels, *products], [W])
    assert program.shares
    before = blas_threads()
    set_blas_threads(threads)
    try:
        with programs.threads_shared():
            assert programs.POOL_THREADS[0] == (threads if threads > 1 else 0)
            for _ in range(3):
                program()
        shared = [o.copy() for o in [*outs, tall, wide]]
        set_blas_threads(1)
        program()  # on the calling thread only
    finally:
        set_blas_threads(before)
    for got, want in zip(outs, shared[: len(outs)], strict=True):  # packed: the same bits
        np.testing.assert_array_equal(got, want)
    close_to_numpy(outs, rows, W, np.float64)
    np.testing.assert_allclose(tall, tall_a @ tall_b, rtol=1e-13)
    np.testing.assert_allclose(wide, wide_a @ wide_b, rtol=1e-13)


@needs_threads
def test_threads_shared_lends_the_blas_threads_and_gives_them_back():
    before = blas_threads()
    with programs.threads_shared():
        inside = blas_threads(), int(programs.POOL_THREADS[0])
        with programs.threads_shared():  # nested: the outer one keeps them
            assert (blas_threads(), int(programs.POOL_THREADS[0])) == inside
        assert blas_threads() == 1
    assert blas_threads() == before and programs.POOL_THREADS[0] == 0
    assert inside == ((1, before) if before > 1 else (before, 0))


@needs_threads
def test_only_programs_with_work_to_share_borrow_threads():
    """Small products run on the calling thread: their programs borrow nothing."""
    small, _, W, _ = steps(np.float32, 4, 8, 16)  # 1,024 flops a product
    (program,) = programs.link(small, [W])
    assert program.packed and not programs.borrow([program])
    big, _, W, _ = steps(np.float32, 32, 128, 512)  # 4.2e6
    (program,) = programs.link(big, [W])
    assert programs.borrow([small[0], program])


@needs_threads
def test_switched_off_nothing_is_packed_or_lent(monkeypatch):
    monkeypatch.setenv(programs.POOL_SWITCH, "0")
    kernels, _, W, _ = steps(np.float32, 8, 16, 64)
    (program,) = programs.link(kernels, [W])
    assert program.packed == []
    with programs.threads_shared():
        assert programs.POOL_THREADS[0] == 0


def _child_runs(program, outs, pipe) -> None:
    with programs.threads_shared():
        for o in outs:
            o.fill(0)
        program()
    pipe.send([o.copy() for o in outs])


@needs_threads
def test_a_forked_child_starts_threads_of_its_own():
    """The parent's threads do not exist in a forked child: it starts its own (and does
    not wait for the parent's)."""
    kernels, rows, W, outs = steps(np.float32, 32, 64, 256)
    (program,) = programs.link(kernels, [W])
    with programs.threads_shared():
        program()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_runs, args=(program, outs, send))
    child.start()
    got = receive.recv() if receive.poll(60) else None
    child.join(60)
    assert child.exitcode == 0 and got is not None
    for g, o in zip(got, outs, strict=True):
        np.testing.assert_array_equal(g, o)


@needs_threads
def test_two_python_threads_run_programs_at_once():
    """Long programs let the GIL go; two at once share no threads (the second works alone)
    and both give np.dot's values."""
    jobs = [steps(np.float32, 64, 256, 1024, count=4, seed=s) for s in (1, 2)]
    linked = [programs.link(kernels, [W])[0] for kernels, _, W, _ in jobs]
    assert all(not p.func._flags_ & ctypes._FUNCFLAG_PYTHONAPI for p in linked)
    errors = []

    def work(program):
        try:
            for _ in range(20):
                program()
        except Exception as error:  # reported below
            errors.append(error)

    with programs.threads_shared():
        workers = [threading.Thread(target=work, args=(p,)) for p in linked]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
    assert not errors and not any(w.is_alive() for w in workers)
    for _, rows, W, outs in jobs:
        close_to_numpy(outs, rows, W, np.float32)


@needs_threads
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_plan_gives_the_same_bits_with_and_without_the_pool(cell, monkeypatch):
    """Loss and gradients of a float64 model with packed products on lent threads, against
    the same plan with `SEQGRAPH_CPU_POOL=0` (each np.dot on NumPy's threads): equal to
    rounding, and against the interpreter to 1e-11."""
    raw = {**model_spec("many_to_many", cell, hidden=40, layers=1), "dtype": "float64"}
    model = Model(raw, engine="plan")
    batch = make_batch(model.spec, size=9, steps=7)
    plan = model.plan(batch)
    assert any(getattr(k, "packed", None) for k in plan._forward_run + plan._backward_run)
    loss, grads = model.loss_and_grads(batch)
    monkeypatch.setenv(programs.POOL_SWITCH, "0")
    plain = Model(raw, engine="plan")
    plain_loss, plain_grads = plain.loss_and_grads(batch)
    assert not any(getattr(k, "packed", None) for k in plain.plan(batch)._forward_run)
    ref_loss, ref = Model(raw, engine="interp").loss_and_grads(batch)
    assert loss == pytest.approx(plain_loss, rel=1e-14)
    assert loss == pytest.approx(ref_loss, rel=1e-11)
    for key in ref:
        np.testing.assert_allclose(grads[key], plain_grads[key], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grads[key], ref[key], rtol=1e-11, atol=1e-12, err_msg=key)


@needs_threads
def test_a_training_run_holds_the_threads_and_gives_them_back(tmp_path, monkeypatch):
    """`seqgraph run`'s loop lends NumPy's BLAS threads for all its steps (they would wake
    between steps otherwise) and gives them back when it ends."""
    from seqgraph import api
    from seqgraph.train import loop

    rows = [f"w{i % 7} w{i % 3}\t{'a' if i % 2 else 'b'}\n" for i in range(40)]
    (tmp_path / "s.tsv").write_text("".join(rows))
    spec = {
        "name": "threads",
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "lstm", "hidden": 4}],
        },
        "data": {"source": "tsv", "path": str(tmp_path / "s.tsv"), "valid_fraction": 0.25},
        "train": {"steps": 3, "batch_size": 4, "eval_every": 100, "checkpoint_every": 100},
    }
    path = tmp_path / "threads.yaml"
    path.write_text(yaml.safe_dump(spec))
    seen, steps = [], loop._Loop._steps

    def recording(self, *args):
        seen.append((int(programs.POOL_THREADS[0]), blas_threads()))
        return steps(self, *args)

    monkeypatch.setattr(loop._Loop, "_steps", recording)
    before = blas_threads()
    api.train(str(path), out=str(tmp_path / "run"), progress=False, sample=False, log=str)
    assert seen == [(before, 1)] if before > 1 else seen == [(0, before)]
    assert blas_threads() == before and programs.POOL_THREADS[0] == 0


@needs_threads
@pytest.mark.parametrize("ragged", [False, True])
def test_a_plans_bits_do_not_depend_on_the_threads(ragged):
    """A float32 LSTM whose gate loops and backward chains (48 x 64) run in two halves of
    rows and whose step products are packed: loss and gradients, on two threads and on the
    calling thread alone, bit for bit. NumPy's BLAS runs on one thread in both (it may round
    apart from itself on two), and no BLAS product is large enough to split (OpenBLAS picks
    its kernel by size: a share may round apart from the whole)."""
    raw = {**model_spec("many_to_many", "lstm", hidden=64, layers=1), "dtype": "float32"}
    model = Model(raw, engine="plan")
    batch = make_batch(model.spec, size=48, steps=2, ragged=ragged)
    plan = model.plan(batch)
    runs = plan._forward_run + plan._backward_run
    assert any(getattr(k, "halves", None) for k in plan._forward_run)
    assert any(getattr(k, "halves", None) for k in plan._backward_run)
    assert any(getattr(k, "packed", None) for k in runs)
    before = blas_threads()
    set_blas_threads(1)  # NumPy's own products the same in both (one thread)
    try:
        programs.POOL_THREADS[0] = 2  # as `threads_shared` lends them
        loss, grads = model.loss_and_grads(batch)
        programs.POOL_THREADS[0] = 0
        alone_loss, alone = model.loss_and_grads(batch)
    finally:
        programs.POOL_THREADS[0] = 0
        set_blas_threads(before)
    assert loss == alone_loss
    for key in grads:
        np.testing.assert_array_equal(grads[key], alone[key], err_msg=key)
