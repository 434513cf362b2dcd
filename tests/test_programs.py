"""Step programs (`seqgraph/plan/programs.py`): runs of a plan's kernels as one foreign call.

A program must give bit for bit what its kernels give one by one (each instruction is the
call NumPy itself makes, or an addition that rounds the same in any order), leave alone
every kernel it cannot express, and change nothing when switched off. Packed products and
the programs' own threads: `test_program_threads.py`.
"""

from __future__ import annotations

import ctypes
import io
from functools import partial

import numpy as np
import pytest
from support import make_batch, model_spec

from seqgraph import Model
from seqgraph.plan import blas, ckernels, programs

needs_programs = pytest.mark.skipif(
    ckernels.compiler() is None or blas.find() is None,
    reason="no C compiler, or NumPy's BLAS has no 64-bit-integer CBLAS symbols here",
)

SPECS = {
    "lstm": model_spec("many_to_many", "lstm", hidden=5, layers=1),
    "gru_stacked": model_spec("many_to_many", "gru", hidden=4, layers=2),
    "rnn_bidirectional": model_spec("many_to_one", "rnn", bidirectional=True, hidden=4),
    "lstm_encoder_decoder": model_spec("encoder_decoder", "lstm", hidden=4, layers=1),
}


def programs_in(plan) -> list:
    return [k for k in plan._forward_run + plan._backward_run if hasattr(k, "kernels")]


@needs_programs
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(SPECS))
def test_a_plan_with_programs_gives_the_kernels_bits(name, dtype, monkeypatch):
    """Loss and every gradient, twice (buffers reused), bit for bit with and without
    programs; float64 programs also match the interpreter (1e-11). Without packed products
    and lent threads (`test_program_threads.py`): their sums may round apart from np.dot's
    in the last bits, and NumPy's BLAS on one thread from NumPy's BLAS on two."""
    raw = {**SPECS[name], "dtype": dtype}
    monkeypatch.setenv(programs.POOL_SWITCH, "0")
    monkeypatch.setenv(programs.SWITCH, "0")
    model = Model(raw, engine="plan")
    batch = make_batch(model.spec, size=4, steps=6)
    want_loss, want = model.loss_and_grads(batch)
    assert programs_in(model.plan(batch)) == []
    monkeypatch.setenv(programs.SWITCH, "1")
    linked = Model(raw, engine="plan")
    plan = linked.plan(batch)
    assert programs_in(plan), "the recurrent steps should run as programs"
    assert sum(len(p.kernels) for p in programs_in(plan)) > len(programs_in(plan))
    for _ in range(2):
        loss, grads = linked.loss_and_grads(batch)
        assert loss == want_loss
        for key in want:
            np.testing.assert_array_equal(grads[key], want[key], err_msg=key)
    if dtype == "float64":
        ref_loss, ref = Model(raw, engine="interp").loss_and_grads(batch)
        assert loss == pytest.approx(ref_loss, rel=1e-11)
        for key in ref:
            np.testing.assert_allclose(grads[key], ref[key], rtol=1e-11, atol=1e-12, err_msg=key)


def run_both(kernels: list, outputs: list) -> list:
    """The outputs after the kernels one by one, then after `link(kernels)` (from the same
    start); asserts that linking made fewer calls."""
    start = [o.copy() for o in outputs]
    for kernel in kernels:
        kernel()
    want = [o.copy() for o in outputs]
    for o, s in zip(outputs, start, strict=True):
        o[...] = s
    linked = programs.link(kernels)
    assert len(linked) < len(kernels)
    for kernel in linked:
        kernel()
    return list(zip(want, [o.copy() for o in outputs], strict=True))


@needs_programs
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_instruction_gives_numpys_bits(dtype):
    """gemm (plain, a transposed view, a column block of a wider matrix), gemv (a row by a
    C- and an F-ordered matrix), additions (a bias row, a whole block, in place), chained
    so each reads what the one before wrote."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    h, W, wide, V = r(6, 7), r(7, 12), r(6, 20), r(9, 7)
    z, y, g, s = r(6, 12), r(6, 9), r(1, 7), r(1, 9)
    row, bias, block = r(1, 7), r(12), r(6, 12)
    kernels = [
        partial(np.dot, h, W, out=z),  # (6, 7) @ (7, 12)
        partial(np.add, z, bias, out=z),  # a bias row, in place
        partial(np.add, z, block, out=z),  # a whole block, in place
        partial(np.dot, wide[:, 3:10], V.T, out=y),  # a strided view by a transposed matrix
        partial(np.dot, row, W[:, :9].copy(), out=s),  # gemv, C-ordered
        partial(np.dot, g, np.asfortranarray(V.T), out=s),  # gemv, F-ordered
        partial(np.add, bias, z, out=block),  # the bias first, apart
    ]
    for want, got in run_both(kernels, [z, y, s, block]):
        np.testing.assert_array_equal(got, want)


@needs_programs
def test_a_compiled_kernel_runs_in_a_program():
    """A compiled kernel (here softmax cross-entropy's rows, `ckernels.function_kernel`)
    joins a program between two products."""
    rng = np.random.default_rng(1)
    x, W, out, doubled = (
        rng.standard_normal(shape).astype(np.float32) for shape in [(4, 5), (5, 6), (4, 6), (4, 6)]
    )
    double = ckernels.function_kernel(
        "void {name}(const i64* a) { float* y = (float*)a[1]; const float* x = (const float*)a[0];"
        " for (i64 i = 0; i < a[2]; i++) y[i] = x[i] + x[i]; }",
        [out, doubled, out.size],
    )
    kernels = [partial(np.dot, x, W, out=out), double, partial(np.dot, x, W, out=out)]
    (want, got), (want2, got2) = run_both(kernels, [out, doubled])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got2, want2)
    np.testing.assert_array_equal(got2, 2 * got)


@needs_programs
def test_kernels_a_program_cannot_express_keep_their_place():
    """A Python kernel, a product NumPy does not hand to gemm or gemv (a column), one whose
    output overlaps an input, and an addition whose output overlaps an input shifted: each
    stays itself, and runs of expressible kernels around them become programs, in order."""
    a, W, out = np.ones((3, 4)), np.ones((4, 5)), np.zeros((3, 5))
    calls = []
    expressible = [partial(np.dot, a, W, out=out), partial(np.add, out, out, out=out)]
    column = partial(np.dot, a, np.ones((4, 1)), out=np.zeros((3, 1)))
    square = np.ones((4, 4))
    overlapping = partial(np.dot, square, square[:, :4], out=square)
    shifted_buffer = np.ones(10)
    shifted = partial(np.add, shifted_buffer[:-1], np.ones(9), out=shifted_buffer[1:])
    python = partial(calls.append, "python")
    kernels = [*expressible, python, column, overlapping, shifted, *expressible]
    linked = programs.link(kernels)
    assert [getattr(k, "kernels", k) for k in linked] == [
        expressible,
        python,
        column,
        overlapping,
        shifted,
        expressible,
    ]
    assert programs.instruction(python) is None
    for kernel in (column, overlapping, shifted):
        assert programs.instruction(kernel) is None


@needs_programs
def test_switched_off_every_kernel_runs_alone(monkeypatch):
    monkeypatch.setenv(programs.SWITCH, "0")
    a, W, out = np.ones((3, 4)), np.ones((4, 5)), np.zeros((3, 5))
    kernels = [partial(np.dot, a, W, out=out), partial(np.add, out, out, out=out)]
    assert programs.link(kernels) == kernels


def test_blas_is_numpys_own():
    """`blas.find` names a library NumPy has loaded, or finds none; where found, its gemm
    is what np.dot calls (a program's product equals np.dot's bits: see above)."""
    found = blas.find()
    if found is None:  # a NumPy without a 64-bit-integer CBLAS: programs stay off
        assert not programs.enabled()
        return
    with open("/proc/self/maps") as maps:
        assert found.path in maps.read()
    assert all((found.sgemm, found.dgemm, found.sgemv, found.dgemv))


@needs_programs
@pytest.mark.parametrize("size", [8, 256])
def test_a_long_program_lets_other_threads_run(size):
    """A program with much product work is called as NumPy calls BLAS, without the GIL;
    a short one keeps it (its call is cheaper)."""
    a, W, out = np.ones((size, size)), np.ones((size, size)), np.zeros((size, size))
    (program,) = programs.link([partial(np.dot, a, W, out=out), partial(np.add, out, a, out=out)])
    holds_gil = bool(program.func._flags_ & ctypes._FUNCFLAG_PYTHONAPI)
    assert holds_gil == (2 * size**3 < programs.RELEASE_GIL_FLOPS)
    program()
    np.testing.assert_array_equal(out, a @ W + a)


def test_only_a_blas_from_numpys_own_folder_is_taken(monkeypatch, tmp_path):
    """Another BLAS mapped into the process (SciPy's, the system's) is never taken for
    NumPy's, even with the symbols programs look for."""
    other = tmp_path / "libscipy_openblas64_.so"
    other.write_bytes(b"")
    numpys = blas.find().path if blas.find() is not None else None
    lines = [f"7f00-7f01 r-xp 00000000 00:00 0 {other}\n"]
    if numpys:
        lines.append(f"7f02-7f03 r-xp 00000000 00:00 0 {numpys}\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/maps":
            return io.StringIO("".join(lines))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert blas._mapped_libraries() == ([numpys] if numpys else [])
