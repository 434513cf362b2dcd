"""The backward's compiled chains found once per step structure and stamped over the steps.

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
"""

from __future__ import annotations

import numpy as np

from seqgraph.plan import ckernels


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
        return a, id(block), a.__array_interface__["data"][0], geometry

    def describe(self, statements: list, lo: int, hi: int, alone: frozenset) -> tuple:
        """(description, addresses) of statements[lo:hi]: addresses by array number; the
        description None where a block does not own its memory."""
        places: dict = {}  # (block number, offset from its anchor, geometry) -> number
        addresses: list = []
        anchors: dict = {}  # id of a block -> (its number in the segment, first address)
        numbers: dict = {}  # id of an array -> its number
        current, recent, owners = {}, self.recent, self.owners
        lines = []
        owned = True
        for j in range(lo, hi):
            statement = statements[j]
            line = []
            for a in (*statement.operands, statement.dest):
                number = numbers.get(id(a))
                if number is None:
                    facts = recent.get(id(a)) or self.facts(a)
                    current[id(a)] = facts
                    _, block, address, geometry = facts
                    anchor = anchors.get(block)
                    if anchor is None:
                        anchor = anchors[block] = (len(anchors), address)
                        owned = owned and owners[block][1]
                    place = (anchor[0], address - anchor[1], geometry)
                    number = places.get(place)
                    if number is None:
                        number = places[place] = len(addresses)
                        addresses.append(address)
                    numbers[id(a)] = number
                line.append(number)
            lines.append((statement.expr, statement.add, tuple(line), j in alone))
        self.recent = current
        return ((tuple(lines), tuple(places)) if owned else None), addresses


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
