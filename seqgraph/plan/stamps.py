"""Compiled kernels found once per step structure and stamped over the steps.

Every step of a cell emits the same elementwise VJP statements (`ckernels.Statement`) over
buffers of the same layout; only where the buffers lie differs: step t's slice of a stack is
at base + t * stride, a scratch buffer lies at one place for every step, a ring alternates.
`ckernels.chains` and `ckernels.bind_chains` look at every statement: each array's address
and extent, each pair that might overlap (np.shares_memory where two extents meet), 2.6 s of
CPU at T = 10,000 (2-layer LSTM 64: 240,000 statements, 700,000 arrays).

Here the statements are cut into segments, the runs between kernels that are no statement
(a product, a class's kernel), and each segment is described by everything its chains and
their C functions depend on, with the step's offsets taken out: each line's expression, add
and alone-flag, which arrays it reads and writes (numbered by first use, one number for one
view), and each array's strides, shape, dtype and offset from the first array of its memory
block in the segment. Views of two blocks (ndarrays that own their memory) never share an
element, and within one block every overlap test depends only on the offsets between the
views, so two segments with one description have the same chains, the same C functions and
the same argument blocks but for the addresses. The first segment of each description is
found in full (`ckernels.chains`, `ckernels.bind_chains`); every later one is stamped: the
template's runs moved to the segment's position, each run's argument block the template's
with the segment's addresses. A segment with a view of memory that no ndarray owns (two such
blocks could share it) is found in full wherever it occurs.

The forward's fused groups (`ckernels.bind_groups`) the same way, with one more step left
out: a group's structure (`fusion.source`: each member's op and dtype, which member or input
each reads) is found per tuple of member classes from the analysis's class facts
(`Analysis.input_pattern`: step t reads class D at t + d, or one shared node), not from each
step's nodes, for the steps where every input follows its pattern (not a boundary step,
which reads an initial state); the group's buffers are then described as a segment's are,
and a group of a known structure and description takes its template's `Bound` with its own
addresses (or the template's None) with no overlap test. The first group of a structure
and description is bound alone (`ckernels.bind`); a group without a class form (members at
two steps: a bidirectional layer's) goes through `ckernels.bind_groups`.
"""

from __future__ import annotations

import ctypes
import platform
from itertools import compress

import numpy as np

from seqgraph.plan import ckernels, fusion
from seqgraph.plan.layout import Slot


def _data_offset() -> int | None:
    """Where an ndarray object holds the address of its data: NumPy's array struct puts
    it first after the object header (`PyArrayObject_fields.data`, ndarraytypes.h); checked
    on views against `__array_interface__`, else None (then `address` asks that)."""
    if platform.python_implementation() != "CPython":  # id() is no address there
        return None
    offset = object.__basicsize__
    probes = np.arange(24.0).reshape(4, 6)
    for probe in (probes, probes[1:, 2:], probes[::-1], probes.T[3]):
        if ctypes.c_void_p.from_address(id(probe) + offset).value != _interface_address(probe):
            return None
    return offset


def _interface_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


_DATA_OFFSET = _data_offset()
_POINTER_AT = ctypes.c_void_p.from_address


def address(a: np.ndarray) -> int:
    """The address of a's first element, as `a.__array_interface__` gives it: read from
    the array object itself (0.08 us; the interface builds a dict, 0.9 us, and the
    lowering asks for 700,000 addresses at T = 10,000)."""
    if _DATA_OFFSET is None or type(a) is not np.ndarray:
        return _interface_address(a)
    return _POINTER_AT(id(a) + _DATA_OFFSET).value or 0


def compile_chains(statements: list, alone: frozenset = frozenset()) -> tuple[list, list]:
    """(runs, kernels): the (lo, hi) runs `ckernels.chains(statements, alone=alone)` finds and
    a compiled kernel (or None) for each, as `ckernels.compile_chains` makes them."""
    runs, bound = chains(statements, alone)
    return runs, ckernels.compiled(runs, lambda _: bound)


def chains(statements: list, alone: frozenset = frozenset()) -> tuple[list, list]:
    """(runs, bounds): `ckernels.chains(statements, alone=alone)` and `ckernels.bind_chains`
    of its runs, each segment's found once per description (see the module's docstring)."""
    runs: list = []
    bounds: list = []
    templates: dict = {}  # description -> _Template
    views = ckernels.Views()  # for the segments found in full
    blocks = _Blocks()
    lo, end = 0, len(statements)
    while lo < end:
        if statements[lo] is None:
            lo += 1
            continue
        hi = lo + 1
        while hi < end and statements[hi] is not None:
            hi += 1
        description, addresses = blocks.describe(statements, lo, hi, alone)
        template = templates.get(description) if description is not None else None
        if template is not None:
            template.stamp(statements, lo, addresses, runs, bounds)
        else:
            template = _Template(statements, lo, hi, alone, views)
            runs += [(lo + a, lo + b) for a, b, _, _ in template.runs]
            bounds += template.bounds
            if description is not None:
                templates[description] = template
        lo = hi
    return runs, bounds


class _Blocks:
    """Each array's memory block (the ndarray owning its memory), address and geometry,
    asked once per array and segment: an array of the segment before (a scratch buffer
    every step writes, a ring) is not asked again."""

    def __init__(self):
        self.owners: dict = {}  # id of a block -> (block, whether it owns its memory)
        self.geometries: dict = {}  # (strides, shape, dtype) -> its number
        self.recent: dict = {}  # id of an array -> its facts, for the segment before

    def facts(self, a: np.ndarray) -> tuple:
        """(array, id of its block, address, number of its strides, shape and dtype)."""
        base = a.base
        block = a if base is None else base  # NumPy points a view's base at the owner
        if id(block) not in self.owners:
            owns = isinstance(block, np.ndarray) and block.flags.owndata
            self.owners[id(block)] = (block, owns)
        geometries = self.geometries
        geometry = geometries.setdefault((a.strides, a.shape, a.dtype), len(geometries))
        return a, id(block), address(a), geometry

    def describe(self, statements: list, lo: int, hi: int, alone: frozenset) -> tuple:
        """(description, addresses) of statements[lo:hi]: addresses by array number; the
        description None where a block does not own its memory."""
        places: dict = {}  # (block number, offset from its anchor, geometry) -> number
        addresses: list = []
        anchors: dict = {}  # id of a block -> (its number in the segment, first address)
        numbers: dict = {}  # id of an array -> its number
        current, recent, owners, geometries = {}, self.recent, self.owners, self.geometries
        lines = []
        owned = True
        for j in range(lo, hi):
            statement = statements[j]
            line = []
            for a in (*statement.operands, statement.dest):
                key = id(a)
                number = numbers.get(key)
                if number is None:
                    facts = recent.get(key)
                    if facts is None:  # `facts`, inline where the block is known (420,000
                        base = a.base  # arrays at T = 10,000, in a few dozen blocks)
                        block = id(a if base is None else base)
                        if block in owners:
                            geometry = (a.strides, a.shape, a.dtype)
                            geometry = geometries.setdefault(geometry, len(geometries))
                            facts = (a, block, address(a), geometry)
                        else:
                            facts = self.facts(a)
                    current[key] = facts
                    _, block, here, geometry = facts
                    anchor = anchors.get(block)
                    if anchor is None:
                        anchor = anchors[block] = (len(anchors), here)
                        owned = owned and owners[block][1]
                    place = (anchor[0], here - anchor[1], geometry)
                    number = places.get(place)
                    if number is None:
                        number = places[place] = len(addresses)
                        addresses.append(here)
                    numbers[key] = number
                line.append(number)
            lines.append((statement.expr, statement.add, tuple(line), j in alone))
        self.recent = current
        return ((tuple(lines), tuple(places)) if owned else None), addresses

    def places(self, arrays: list) -> tuple:
        """(description, addresses) of a group's operands, one each, in order: each its
        block's number, offset from the block's first operand and geometry; the description
        None where a block does not own its memory. (A group's operands are new arrays
        each step: no array facts are kept.)"""
        anchors: dict = {}  # id of a block -> (its number, first address)
        owners, geometries = self.owners, self.geometries
        places, addresses = [], []
        for a in arrays:
            base = a.base
            block = id(a if base is None else base)
            here = address(a)
            anchor = anchors.get(block)
            if anchor is None:
                if block not in owners:
                    self.facts(a)
                if not owners[block][1]:
                    return None, addresses
                anchor = anchors[block] = (len(anchors), here)
            geometry = geometries.setdefault((a.strides, a.shape, a.dtype), len(geometries))
            places.append((anchor[0], here - anchor[1], geometry))
            addresses.append(here)
        return tuple(places), addresses


class _Template:
    """A segment's runs found in full, with what stamping them elsewhere needs: each run's
    arrays in the order `ckernels.bind_chain` numbers them, as (statement, operand position
    or -1 for the dest) and the array's number in the segment's description."""

    def __init__(self, statements: list, lo: int, hi: int, alone: frozenset, views):
        segment = statements[lo:hi]
        here = frozenset(j - lo for j in alone if lo <= j < hi)
        found = ckernels.chains(segment, views, here)
        self.bounds = ckernels.bind_chains([segment[a:b] for a, b in found], views)
        keys = [[views.key(a) for a in (*s.operands, s.dest)] for s in segment]
        number = {key: n for n, key in enumerate(dict.fromkeys(k for ks in keys for k in ks))}
        self.runs = []
        for a, b in found:
            seen, picks = {}, []
            for i in range(a, b):
                for position, key in enumerate(keys[i]):
                    if key not in seen:
                        seen[key] = True
                        last = position == len(keys[i]) - 1
                        picks.append((i, -1 if last else position, number[key]))
            self.runs.append((a, b, tuple(picks), [n for _, _, n in picks]))

    def stamp(self, statements: list, lo: int, addresses: list, runs: list, bounds: list):
        """Append this template's runs, moved to statements[lo:], and their `Bound`s."""
        for (a, b, picks, numbers), bound in zip(self.runs, self.bounds, strict=True):
            runs.append((lo + a, lo + b))
            args = bound.args.copy()
            args[2::2] = [addresses[n] for n in numbers]
            arrays = tuple(
                statements[lo + i].dest if p < 0 else statements[lo + i].operands[p]
                for i, p, _ in picks
            )
            bounds.append(ckernels.Bound(bound.name, bound.text, args, arrays))


def compile_groups(plan, runs: list, keep_all: bool) -> list:
    """A kernel (or None) per group in `runs`, as `ckernels.compile_groups` makes them."""
    return ckernels.compiled(runs, lambda items: bind_groups(plan, items, keep_all))


def bind_groups(plan, runs: list, keep_all: bool) -> list:
    """`ckernels.bind(plan, run, keep_all)` of each group in `runs` (a `Bound` or None),
    each structure and description bound once (see the module's docstring)."""
    forms = _Forms(plan, keep_all)
    blocks = _Blocks()
    views = ckernels.Views()  # shared by the groups bound in full
    value = plan.layout.value
    templates: dict = {}  # (classes, written classes, description) -> Bound or None
    out: list = []
    others = []  # (index, group) of the groups without a class form
    for run in runs:
        members = [u[1] for u in run]
        found = forms.operands(members)
        if found is None:
            others.append((len(out), run))
            out.append(None)
            continue
        classes, inputs, outputs = found
        arrays = [value[k] for k in inputs] + [value[k] for k in outputs]
        description, addresses = blocks.places(arrays)
        key = (classes, tuple(k[:2] for k in outputs), description)
        if description is None or key not in templates:
            bound = ckernels.bind(plan, run, keep_all, views)
            if description is not None and forms.agrees(run, classes, inputs, outputs):
                templates[key] = bound
            out.append(bound)
            continue
        template = templates[key]
        if template is None:
            out.append(None)
            continue
        args = template.args.copy()
        args[2::2] = addresses
        out.append(ckernels.Bound(template.name, template.text, args, tuple(arrays)))
    if others:  # step by step (a bidirectional layer's groups join two steps)
        bound = ckernels.bind_groups(plan, [run for _, run in others], keep_all)
        for (index, _), one in zip(others, bound, strict=True):
            out[index] = one
    return out


NEVER, ALWAYS, ASK = 0, 1, 2  # whether a group writes a member back (`fusion.written`)


class _Forms:
    """A group's operands from its members' classes (`fusion.source`'s inputs and outputs,
    in its order): per tuple of classes, each input the group reads as (class D, step offset
    d) or (node, None) for one shared node, numbered by first use; the steps where that
    does not hold (a boundary step reading an initial state); and whether each member is
    written back: never (a later member overwrites its buffer), always (backward reads every
    value not in a one-step buffer), or as its step's readers say."""

    def __init__(self, plan, keep_all: bool):
        self.plan, self.an, self.keep_all = plan, plan.an, keep_all
        self.of_classes: dict = {}  # classes -> (inputs, boundary steps, writes), or None

    def operands(self, members: list) -> tuple | None:
        """(classes, input keys, output keys) of a group, or None where no class form holds:
        members at more than one step, a class without one op, meta and input pattern per
        position, or a boundary step."""
        t = members[0][2]
        if t is None or [k[2] for k in members].count(t) != len(members):
            return None
        classes = tuple(k[:2] for k in members)
        form = self.of_classes.get(classes, False)
        if form is False:
            form = self.of_classes[classes] = self._form(classes)
        if form is None or t in form[1]:
            return None
        inputs = [key if d is None else (*key, t + d) for key, d in form[0]]
        if ASK not in form[2]:
            return classes, inputs, list(compress(members, form[2]))
        outputs, plan, consumers, inside = [], self.plan, self.an.consumers, set(members)
        for k, write in zip(members, form[2]):
            if write == ASK:  # `fusion.written`: an output, or read outside the group
                write = k in plan.outputs or any(u not in inside for u, _ in consumers.get(k, ()))
            if write:
                outputs.append(k)
        return classes, inputs, outputs

    def _form(self, classes: tuple) -> tuple | None:
        an, lay = self.an, self.plan.layout
        if len(set(classes)) != len(classes):
            return None
        inputs: dict = {}  # (class, offset) or (node, None) -> number
        boundaries = set()
        for c in classes:
            if c not in an.members or an.same_op(c) is None or not an.stackable(c):
                return None
            arities = set(map(len, an.member_inputs(c)))
            if len(arities) != 1:
                return None
            for position in range(arities.pop()):
                pattern = an.input_pattern(c, position)
                if pattern is None:
                    return None
                if pattern[0] == "shared":
                    inputs.setdefault((pattern[1], None), len(inputs))
                    continue
                _, source, d, boundary = pattern
                if d == 0 and source in classes:
                    continue  # a member of the group: read in the loop
                if boundary is not None:  # the first step (d < 0) or the last reads it
                    steps = an.members[c]
                    boundaries.add(min(steps) if d < 0 else max(steps))
                inputs.setdefault((source, d), len(inputs))
        overwritten = {lay.in_place[c] for c in classes if c in lay.in_place}
        one_step = {c for c in classes if isinstance(lay.value_stack.get(c), Slot)}
        writes = [
            NEVER if c in overwritten else ALWAYS if self.keep_all and c not in one_step else ASK
            for c in classes
        ]
        return list(inputs), frozenset(boundaries), writes

    def agrees(self, run: list, classes: tuple, inputs: list, outputs: list) -> bool:
        """Whether `fusion.source` reads and writes what the class form found, in its order
        (a check on the form, made once per template); if not, the form is dropped."""
        if fusion.source(self.plan, run, self.keep_all)[3:] == (inputs, outputs):
            return True
        self.of_classes[classes] = None
        return False
