"""What a compiled plan prints: its buffers, then its kernels in run order, like a jaxpr.

Each kernel is listed as an *entry* `(op, writes, reads, when)`: `writes`
and `reads` are `(name, array)` pairs (the very buffers or views the closure binds, so their
shapes and dtypes are the ones it runs on), and `when` says how often it runs: at step `t`
(an int), once over steps lo..hi stacked on a leading time axis (`(lo, hi)`), or once per
call (None). A name is a node key `(scope, name, t)`, a class over steps
`(scope, name, (lo, hi))`, or ("d", name) for that name's gradient. Emitting a kernel only
records how it was made (a unit, or a small tuple of references); entries are derived from
the records when someone prints (`Kernels.describe`), so building a plan stays as fast.
"""

from __future__ import annotations

import numpy as np

from seqgraph.engine.ops.buffers import owner
from seqgraph.plan.layout import Ring

SHORT_DTYPES = {"float64": "f64", "float32": "f32", "float16": "f16", "int64": "i64"}


class Kernels:
    """Kernel closures in run order, each with a record of how it was made; `describe`
    turns a record into its listing entry (see the module docstring) when someone prints,
    so emitting a kernel costs one small tuple of references (None: records are entries)."""

    __slots__ = ("kernels", "records", "describe")

    def __init__(self, describe=None):
        self.kernels: list = []
        self.records: list = []
        self.describe = describe

    def add(self, kernel, record: tuple) -> None:
        self.kernels.append(kernel)
        self.records.append(record)

    def insert(self, index: int, kernels: list, records: list) -> None:
        self.kernels[index:index] = kernels
        self.records[index:index] = records

    def entries(self) -> list[tuple]:
        """(op, writes, reads, when) of every kernel, in run order."""
        if self.describe is None:
            return list(self.records)
        return [self.describe(record) for record in self.records]


def joined(entries: list) -> tuple:
    """The entry of one kernel that runs these entries' kernels in order (a fused group):
    op `fused(a,b,...)`, every write, and the reads that no member writes."""
    writes = tuple(ref for entry in entries for ref in entry[1])
    inside, reads = {name for name, _ in writes}, {}
    for entry in entries:
        for name, array in entry[2]:
            if name not in inside:
                reads.setdefault(name, array)
    ops = ",".join(entry[0] for entry in entries)
    return f"fused({ops})", writes, tuple(reads.items()), entries[0][3]


def grad(name) -> tuple:
    """The listing name of `name`'s gradient."""
    return ("d", name)


def input_name(an, cls, position: int):
    """The listing name of input `position` of every step of `cls` at once."""
    pattern = an.input_pattern(cls, position)
    if pattern is None:
        return (cls[0], f"{cls[1]}.in{position}", None)
    if pattern[0] == "shared":
        return pattern[1]
    _, target, d, seed = pattern
    lo, hi = min(an.members[cls]), max(an.members[cls])
    name = (target[0], target[1], (lo + d, hi + d))
    return name if seed is None else (seed[0], f"{seed[1]}+{target[1]}", (lo + d, hi + d))


def name_text(name) -> str:
    if len(name) == 2:
        return f"d{name_text(name[1])}"
    scope, label, t = name
    where = "" if t is None else f"[{t}]" if isinstance(t, int) else f"[{t[0]}:{t[1] + 1}]"
    return f"{scope}.{label}{where}"


def array_text(array) -> str:
    if array is None:
        return "?"
    dtype = np.dtype(array.dtype).name
    return f"{SHORT_DTYPES.get(dtype, dtype)}[{','.join(str(n) for n in array.shape)}]"


def when_text(when) -> str:
    if when is None:
        return "once"
    if isinstance(when, int):
        return f"t={when}"
    return f"t={when[0]}..{when[1]} batched"


def entry_text(entry: tuple) -> str:
    """`t=2  l0.hW[2]:f64[3,4] = matmul l0.h[1]:f64[3,4] l0.W_hh:f64[4,4]` (one kernel)."""
    op, writes, reads, when = entry
    left = " ".join(f"{name_text(n)}:{array_text(a)}" for n, a in writes)
    right = " ".join(f"{name_text(n)}:{array_text(a)}" for n, a in reads)
    return f"{when_text(when):<18} {left} = {op} {right}".rstrip()


def buffer_lines(lay) -> list[str]:
    """One line per value buffer of a class (and per gradient buffer), its shape and dtype
    and whether it is the class's own (stacked over steps), shared with another class or one
    step that every step reuses."""
    lines = []
    for c in lay.classes:
        stack, (lo, hi) = lay.value_stack[c], lay.range[c]
        name = name_text((c[0], c[1], (lo, hi)))
        lines.append(f"{name:<28} {array_text(stack.arr):<16} {_sharing(lay, c, stack)}")
    names: dict = {}
    for c, stack in lay.grad_stack.items():
        if c in lay.classes and c not in lay.source:
            names.setdefault(stack.base, name_text(grad((c[0], c[1], lay.range[c]))))
    for k, base in lay.base.items():
        names.setdefault(base, name_text(grad(k)))
    for i, arr in enumerate(lay.grad_buffers):
        host = lay.hosted.get(i)
        where = "" if host is None else f", in the buffer of {host[0]}.{host[1]}"
        if any(isinstance(s, Ring) and s.base == i for s in lay.grad_stack.values()):
            where += ", two steps in turn"
        lines.append(f"{names.get(i, f'grad#{i}'):<28} {array_text(arr):<16} gradient{where}")
    return lines


def _sharing(lay, c, stack) -> str:
    kind, target, _ = lay.source.get(c, (None, None, None))
    if kind is not None:
        return f"{kind} of {target[0]}.{target[1]}"
    if c in lay.in_place:
        return f"in place of {lay.in_place[c][0]}.{lay.in_place[c][1]}"
    if stack.arr.shape[0] == 1 and lay.range[c][0] != lay.range[c][1]:
        return "one step, reused"
    return "stacked"


def text(plan) -> str:
    """The whole listing of a plan (what `str(plan)` prints)."""
    lay = plan.layout
    lines = [repr(plan), "buffers:"]
    lines += ["  " + line for line in buffer_lines(lay)]
    lines.append("forward:")
    lines += ["  " + entry_text(e) for e in plan.forward.entries()]
    if plan.backward is not None:
        lines.append("backward:")
        lines += ["  " + entry_text(e) for e in plan.backward.kernels.entries()]
    return "\n".join(lines)


def inventory(plan) -> list[tuple[str, int, str]]:
    """Every array a plan holds, once per allocation, largest first: (what it is, bytes,
    dtype and shape). Found by walking what the plan and its kernels reference (closures,
    partials, containers), so scratch buffers, saved softmax outputs and local factors count
    too; named after the first listing name that reaches each allocation (`buffer_lines`,
    then the kernel entries), or `unnamed`."""
    names: dict = {}
    lay = plan.layout
    for c in lay.classes:
        _name(names, lay.value_stack[c].arr, name_text((c[0], c[1], lay.range[c])))
    for k, array in lay.value.items():
        _name(names, array, name_text(k))
    for c, stack in lay.grad_stack.items():
        if c in lay.range:
            _name(names, stack.arr, name_text(grad((c[0], c[1], lay.range[c]))))
    for k, array in lay.grad.items():
        _name(names, array, name_text(grad(k)))
    entries = plan.forward.entries()
    entries += plan.backward.kernels.entries() if plan.backward is not None else []
    for _, writes, reads, _ in entries:
        for name, array in writes + tuple(reads):
            if array is not None:
                _name(names, array, name_text(name))
    rows = []
    for root in _reachable_arrays(plan):
        label = names.get(id(root), ("unnamed", root))[0]
        rows.append((label, int(root.nbytes), array_text(root)))
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def _name(names: dict, array, label: str) -> None:
    root = owner(array)
    names.setdefault(id(root), (label, root))  # the root kept alive: ids stay unique


def _reachable_arrays(plan) -> list:
    """The allocations (root arrays) reachable from the plan without leaving it: function
    globals, modules and classes are not followed."""
    import gc
    import types
    from functools import partial

    seen, roots, stack = set(), {}, [plan]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, str, bytes, int, float)):
            continue
        seen.add(id(obj))
        if hasattr(obj, "__array_interface__") or hasattr(obj, "__cuda_array_interface__"):
            root = owner(obj)
            roots[id(root)] = root
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend(_contents(cell) for cell in obj.__closure__ or ())
            stack.extend(obj.__defaults__ or ())
        elif isinstance(obj, partial):
            stack.extend((obj.func, *obj.args, *obj.keywords.values()))
        elif isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
        elif not isinstance(obj, types.BuiltinFunctionType):
            stack.extend(gc.get_referents(obj))
    return list(roots.values())


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None
