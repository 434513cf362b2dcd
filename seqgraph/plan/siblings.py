"""Sibling merge: elementwise ops of one step that apply the same op to side-by-side column
blocks of the same arrays become one op over the joined block (see `merge_siblings`). Like
the rewrites in `rewrites.py`, a pure change of the analysis' copy of the graph."""

from __future__ import annotations

from collections import defaultdict
from itertools import chain, repeat
from operator import itemgetter

from seqgraph.engine import ops
from seqgraph.plan import analysis
from seqgraph.plan.analysis import class_of
from seqgraph.plan.edits import op_node, reorder

_READER = itemgetter(0)  # of a consumer (reader, position); of an input tuple, its first


def merge_siblings(an, joined: set) -> bool:
    """Elementwise ops of one step that apply the same op to side-by-side column blocks of
    the same arrays (the r and z gates of a GRU: sigmoid(x_r + h_r), sigmoid(x_z + h_z))
    -> one op over the joined block, each old node a column slice of it (a view). One call
    instead of several per step, forward and backward: on NumPy, where each call costs
    microseconds whatever its size, that is what small batches pay for. Whole classes
    only, as in fuse_gates. Returns whether it merged.

    A one-input op merges only over the output of an earlier merge (the GRU's sigmoid over
    the joined x_rz + h_rz): merged alone (the LSTM's i and f sigmoids) it saves one call
    each way but leaves its members strided column views that half a dozen later calls
    read, which measured slower on the long configuration (T=1,000, B=16, H=64: 1.04-1.06x;
    all four LSTM gates as one op, 4 calls instead of 13: 1.20x).

    `joined` holds the nodes earlier merges made; this one adds its own."""
    runs: dict = defaultdict(set)  # tuple of classes -> steps where they form one run
    for (_, _, reads), nodes in _sibling_sets(an, bool(joined)).items():
        if len(reads) == 1 and reads[0][1] not in joined:
            continue
        for run in _adjacent_runs(an, nodes):
            runs[tuple(class_of(k) for k in run)].add(run[0][2])
    taken, before = set(), {}
    for classes, steps in runs.items():
        whole = all(set(an.members[c]) == steps for c in classes)
        if whole and not taken & set(classes):
            taken |= set(classes)
            for t in steps:
                _merge(an, [an.members[c][t] for c in classes], before, joined)
    if before:
        an.order = reorder(an, before)
    return bool(before)


def _column_block(an, key):
    """(source, start, stop) if node `key` is a view of the last-axis columns of `source`."""
    node = an.node.get(key)
    if node is None or node["kind"] != "op" or ops.OPS[node["op"]].view is None:
        return None
    source = node["inputs"][0]
    shape = an.meta[source][0]
    if not shape or node["attrs"].get("axis", -1) % len(shape) != len(shape) - 1:
        return None
    index = analysis.view_index(node["op"], node["attrs"], shape)[-1]
    return source, index.start, index.stop


def _sibling_sets(an, after_merges: bool = True) -> dict:
    """(op, step, what each input reads) -> the nodes that could merge along columns;
    without `after_merges` (no merge made a node yet), not the one-input ops: they merge
    only over an earlier merge's output (`merge_siblings`), so their reads are not worked
    out (the LSTM's gate activations, every step, to find that nothing merges)."""
    out, blocks = defaultdict(list), {}
    for k in _readers_of_column_blocks(an, blocks, after_merges):
        node = an.node[k]
        if not ops.OPS[node["op"]].sibling_merge:
            continue
        if node["attrs"] or not isinstance(k[2], int) or k in an.outputs:
            continue
        if len(node["inputs"]) == 1 and not after_merges:
            continue
        width, reads = an.meta[k][0][-1:] or (None,), []
        for i in node["inputs"]:
            if i not in blocks:  # an input is read by several ops of its step
                blocks[i] = _column_block(an, i)
            block = blocks[i]
            if block is not None and (block[2] - block[1],) == tuple(width):
                reads.append(("columns", block[0]))
            elif an.meta[i][0][-1:] in ((), (1,)):  # broadcasts along the joined columns
                reads.append(("same", i))
            else:
                break
        else:
            if any(kind == "columns" for kind, _ in reads):
                out[(node["op"], k[2], tuple(reads))].append(k)
    return out


def _readers_of_column_blocks(an, blocks: dict, after_merges: bool | None = None) -> list:
    """The live op nodes that read a column block (`_column_block`, memoized in `blocks`),
    in graph order: only they can merge, and they are a few of every step's nodes. A class
    of views found whole (`_class_blocks`), the other views node by node. With
    `after_merges` (True or False, as `_sibling_sets` has it), not the readers of a class
    of views that no class reading it may merge (`_class_may_merge`: the LSTM's gate
    activations before any merge), which `_sibling_sets` would pass over one by one."""
    readers, consumers = set(), an.consumers
    for cls, members in an.members.items():
        first = an.node[next(iter(members.values()))]
        if first["kind"] != "op" or ops.OPS[first["op"]].view is None:
            continue  # no member a view (`_class_blocks`), or some: node by node
        if _class_blocks(an, cls, blocks):
            if after_merges is not None and not any(
                _class_may_merge(an, reader, after_merges) for reader in an.reader_classes(cls)
            ):
                continue
            found = [v for v in members.values() if blocks[v] is not None]
        else:
            found = []
            for v in members.values():
                blocks[v] = _column_block(an, v)
                if blocks[v] is not None:
                    found.append(v)
        # every reader of every found view, in C
        readers.update(map(_READER, chain.from_iterable(map(consumers.get, found, repeat(())))))
    for op in (name for name, op in ops.OPS.items() if op.view is not None):
        for v in an.by_op.get(op, ()):
            if v not in blocks:  # a view in a class whose first member is not one
                blocks[v] = _column_block(an, v)
                if blocks[v] is not None:
                    readers.update(k for k, _ in consumers.get(v, ()))
    return sorted(readers, key=an.pos.__getitem__)


def _class_may_merge(an, cls, after_merges: bool) -> bool:
    """Whether a node of class `cls` may pass `_sibling_sets`' own tests (a sibling-merge
    op without attrs, at a step; with more than one input before any merge): where every
    member applies one op with the same attrs (`Analysis.same_op`), its record says."""
    if len(cls) != 2:
        return False  # a node outside time
    same = an.same_op(cls)
    if same is None:
        return True  # node by node
    entry = ops.OPS[same[0]]
    return entry.sibling_merge and not same[1] and (after_merges or entry.arity != 1)


def _class_blocks(an, cls, blocks: dict) -> bool:
    """The column blocks of a whole class of views at once, into `blocks`: where every
    member applies one op with the same attrs (`Analysis.same_op`) to one input of one
    shape, `_column_block` of the first member holds for all but for the source, each
    member's own input. False (nothing entered) where the class is not of that form."""
    same = an.same_op(cls) if len(cls) == 2 else None
    if same is None:
        return False
    columns = an.member_inputs(cls)
    if len(set(map(len, columns))) != 1 or len(columns[0]) != 1:
        return False
    sources = list(map(_READER, columns))
    if len(set(map(an.meta.__getitem__, sources))) != 1:
        return False
    members = an.members[cls]
    block = _column_block(an, next(iter(members.values())))
    if block is None:
        blocks.update(zip(members.values(), repeat(None)))
    else:
        found = zip(sources, repeat(block[1]), repeat(block[2]))
        blocks.update(zip(members.values(), found))
    return True


def _adjacent_runs(an, nodes: list) -> list:
    """Maximal runs (2 or more) of `nodes` whose column blocks follow one another in every
    column input."""

    def blocks(k):
        return [_column_block(an, i) for i in an.inputs(k)]

    nodes = sorted(nodes, key=lambda k: [b[1] for b in blocks(k) if b])
    runs, run = [], nodes[:1]
    for k in nodes[1:]:
        joined = all(
            a is None or a[2] == b[1] for a, b in zip(blocks(run[-1]), blocks(k), strict=True)
        )
        if joined:
            run.append(k)
        else:
            runs.append(run)
            run = [k]
    runs.append(run)
    return [tuple(r) for r in runs if len(r) > 1]


def _merge(an, members: list, before: dict, made: set) -> None:
    """One step of a sibling merge: the joined op and its column-block inputs (see
    merge_siblings); each member becomes a slice of the joined op."""
    scope, t, first = members[0][0], members[0][2], an.node[members[0]]
    inputs = []
    for i, key in enumerate(first["inputs"]):
        block = _column_block(an, key)
        if block is None:
            inputs.append(key)
            continue
        source, start = block[0], block[1]
        stop = _column_block(an, an.inputs(members[-1])[i])[2]
        if start == 0 and stop == an.meta[source][0][-1]:  # every column: the source itself
            inputs.append(source)
            continue
        view = (source[0], f"{source[1]}[{start}:{stop}]", source[2])
        an.set_node(view, op_node("slice", (source,), start=start, stop=stop, axis=-1))
        before.setdefault(view, list(members))
        inputs.append(view)
    joined = (scope, "|".join(k[1] for k in members), t)
    an.set_node(joined, op_node(first["op"], tuple(inputs)))
    before[joined] = list(members)
    made.add(joined)
    start = 0
    for k in members:
        width = an.meta[k][0][-1]
        an.set_node(k, op_node("slice", (joined,), start=start, stop=start + width, axis=-1))
        start += width
