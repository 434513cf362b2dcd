"""Graph rewrites the planner applies before it lays out buffers, each a pure change of the
analysis' copy of the graph (`an.node`, `an.order`) that leaves every value the same:

- `merge_common`: common subexpressions, merged class by class;
- `fuse_gates`: products of one operand with several weight matrices become one product
  with the matrices side by side, read back as column slices (a user cell with one weight
  per gate runs like the built-in cells, whose gates share one matrix);
- `reassociate`: (a + r) + p -> (a + p) + r, so a bias joins the time-batched projection;
- `join_biases`: (a + p) + q -> a + (p + q) for p, q outside time: one pass, not two;
(`siblings.merge_siblings`, one op over side-by-side column blocks, runs after these.)

Each edits through `Analysis.set_node` and returns whether it changed anything; the analysis
then derives its facts again where the edits reach (`Analysis.update`), not over the whole
graph. `rewrite` is the pipeline stage: it takes the analysis of the unrolled graph and hands on
the analysis of the rewritten one (its own copy; the one it was given is left as it was).
"""

from __future__ import annotations

from collections import defaultdict

from seqgraph.engine import ops
from seqgraph.plan import siblings
from seqgraph.plan.analysis import Analysis, AttrsKeys, class_of
from seqgraph.plan.edits import op_node, reorder


def rewrite(an: Analysis, merge_siblings: bool = True) -> Analysis:
    """Every rewrite in turn on a copy of `an` (`Analysis.fork`), its facts updated after
    each that changed something; then sibling merges until none is left (r+z, then
    sigmoid(r|z))."""
    an = an.fork()
    for step in steps():
        if step(an):
            an.update()
    joined: set = set()  # nodes the sibling merge made
    while merge_siblings and siblings.merge_siblings(an, joined):
        an.update()
    return an


def merge_common(an) -> bool:
    """Common subexpressions: a class whose every step applies the same op and attrs to the
    same inputs as the same step of an earlier class is read through that class, and its own
    nodes die. Whole classes, never single steps, so a merge leaves no hole in a time-batched
    class; requested outputs are never merged away. Rewrites `an.node` (a copy)."""
    if not _any_duplicate(an):
        return False  # what the scan below finds then: no node to merge
    refused: set = set()
    while True:
        same_as = _duplicates(an, refused)
        bad = _partial_merges(an, same_as)
        if not bad:
            break
        refused |= bad
    if not same_as:
        return False
    for k in an.order:
        node = an.node[k]
        if k in an.live and any(i in same_as for i in node["inputs"]):
            an.set_node(k, {**node, "inputs": tuple(same_as.get(i, i) for i in node["inputs"])})
    return True


def _partial_merges(an, same_as: dict) -> set:
    """Per-step classes that would merge only in part: a step without a duplicate, or steps
    whose duplicates are not the same steps of one other class."""
    targets, counts = defaultdict(set), defaultdict(int)
    for k, earlier in same_as.items():
        counts[class_of(k)] += 1
        targets[class_of(k)].add(class_of(earlier) if earlier[2] == k[2] else None)
    return {
        c
        for c in counts
        if len(c) == 2
        and (counts[c] != len(an.members[c]) or len(targets[c]) != 1 or targets[c] & {None, c})
    }


def _any_duplicate(an) -> bool:
    """Whether two live op nodes apply the same op and attrs to the same inputs: the
    first duplicate `_duplicates` finds is one such pair (its inputs are mapped through
    duplicates found before it, and there are none), so where this says no, so does the
    scan, and the graph is left as it is. Two nodes with the same inputs both read the
    first of them at position 0: only the readers that share such an input with another
    (a few per step) are compared, and the nodes of ops that may read nothing, not every
    node of the graph."""
    keys, nodes = AttrsKeys(), an.node

    def signature(k) -> tuple:
        node = nodes[k]
        return (node["op"], keys(node["attrs"]) if node["attrs"] else "", node["inputs"])

    for users in an.consumers.values():
        if len(users) < 2:
            continue
        firsts = [k for k, position in users if position == 0]
        if len(firsts) > 1 and len(set(map(signature, firsts))) < len(firsts):
            return True
    for op, found in an.by_op.items():
        if ops.OPS[op].arity in (0, ops.VARIADIC):
            empty = [k for k in found if not nodes[k]["inputs"]]
            if len(set(map(signature, empty))) < len(empty):
                return True
    return False


def _duplicates(an, refused: set) -> dict:
    """node -> the earlier node that computes the same value (classes in `refused` excluded)."""
    first, same_as, nodes, live, keys = {}, {}, an.node, an.live, AttrsKeys()
    for k in an.order:
        node = nodes[k]
        if node["kind"] != "op" or k not in live:
            continue
        inputs = node["inputs"]
        if same_as:  # each input or the node it is the same as: same_as.get(i, i), in C
            inputs = tuple(map(same_as.get, inputs, inputs))
        signature = (node["op"], keys(node["attrs"]) if node["attrs"] else "", inputs)
        earlier = first.setdefault(signature, k)
        if earlier != k and k not in an.outputs and class_of(k) not in refused:
            same_as[k] = earlier
    return same_as


def fuse_gates(an) -> bool:
    """x @ W_1 .. x @ W_n, one left operand and parameter matrices with the same rows, in
    every step where any of them runs -> x @ concat(W_1 .. W_n) once per step, each old
    product a column slice of it (a view: no copy forward, and its gradient lands in the
    fused product's gradient). The concatenated matrix is built once per call. Where two
    such groups are summed block by block (x @ W_j + h @ U_j for every gate j), the sum is
    taken once over the fused products and the gate sums become its slices: then both
    products share the sum's gradient and backward copies nothing."""
    groups = [g for g in _gate_groups(an) if len(g) > 1]
    pairs = _summed_pairs(an, groups)
    for _, second, _ in pairs:  # the second group's blocks in the first's order
        groups[groups.index(tuple(sorted(second)))] = second
    before: dict = {}  # new node -> the old nodes it must sort just before
    fused = {classes: _fuse(an, classes, before) for classes in groups}
    for first, second, sums in pairs:
        _sum_fused(an, fused[first], fused[second], sums, before)
    if groups:
        an.order = reorder(an, before)
    return bool(groups)


def _fuse(an, classes: tuple, before: dict) -> dict:
    """Rewrite one group of products (see fuse_gates); {t: the fused product's node}."""
    members = [an.members[c] for c in classes]
    params = [an.inputs(next(iter(m.values())))[1] for m in members]
    scope, name = classes[0][0], "|".join(c[1] for c in classes)
    cat = (scope, f"cat({','.join(p[1] for p in params)})", None)
    an.set_node(cat, op_node("concat", tuple(params), axis=-1))
    before[cat] = [k for m in members for k in m.values()]
    fused = {}
    for t in members[0]:
        fused[t] = (scope, f"{name}|fused", t)
        an.set_node(fused[t], op_node("matmul", (an.inputs(members[0][t])[0], cat)))
        before[fused[t]] = [m[t] for m in members]
    start = 0
    for m, p in zip(members, params):
        stop = start + an.meta[p][0][1]
        for t, k in m.items():
            an.set_node(k, op_node("slice", (fused[t],), start=start, stop=stop, axis=-1))
        start = stop
    return fused


def _sum_fused(an, first: dict, second: dict, sums: list, before: dict) -> None:
    """P = first + second per step; each block sum becomes P's slice (see fuse_gates)."""
    for t in first:
        total = (first[t][0], f"{first[t][1]}+{second[t][1]}", t)
        an.set_node(total, op_node("add", (first[t], second[t])))
        before[total] = [an.members[c][t] for c in sums]
        for c in sums:
            # either input block: the second group was reordered to sit at the same columns
            attrs = dict(an.node[an.node[an.members[c][t]]["inputs"][0]]["attrs"])
            an.set_node(an.members[c][t], op_node("slice", (total,), **attrs))


def _summed_pairs(an, groups: list) -> list:
    """(group, other group reordered to match, the block-sum classes) where every block of
    the first is added, at every step and nowhere else, to one block of the other."""
    out, used = [], set()
    for first in groups:
        for second in groups:
            if first == second or {first, second} & used:
                continue
            match = [_block_sum(an, c, second) for c in first]
            if all(match) and len({d for d, _ in match}) == len(second):
                out.append((first, tuple(d for d, _ in match), [s for _, s in match]))
                used |= {first, second}
    return out


def _block_sum(an, cls, others: tuple):
    """(class d in `others`, the add class) if each step of `cls` is only ever read by one
    add, with d at the same step, of the same shape; else None."""
    found = set()
    for t, k in an.members[cls].items():
        uses = an.consumers.get(k, [])
        if len(uses) != 1 or k in an.outputs:
            return None
        user = uses[0][0]
        node = an.node[user]
        if node["op"] != "add" or node["attrs"] or user[2] != t:
            return None
        other = node["inputs"][1 - uses[0][1]]
        if class_of(other) not in others or other[2] != t or an.meta[other] != an.meta[k]:
            return None
        if an.consumers.get(other) != [(user, 1 - uses[0][1])] or other in an.outputs:
            return None
        found.add((class_of(other), class_of(user)))
    if len(found) != 1:
        return None
    d, s = next(iter(found))
    return (d, s) if set(an.members[s]) == set(an.members[cls]) else None


def _gate_groups(an) -> list[tuple]:
    """Tuples of matmul classes that share their left operand at every step (see fuse_gates)."""
    by_left: dict = defaultdict(list)
    nodes = an.node
    for k in an.nodes_of("matmul"):
        node = nodes[k]
        if node["attrs"]:
            continue
        left, right = node["inputs"]
        if nodes[right]["kind"] == "param" and len(an.meta[right][0]) == 2:
            # one group per scope: the two directions read the same x, but each adds its
            # products to its own recurrent ones (see _summed_pairs)
            by_left[(left, an.meta[right][0][0], k[0], k[2])].append(k)
    steps_of: dict = defaultdict(set)
    for nodes in by_left.values():
        steps_of[tuple(sorted(class_of(k) for k in nodes))].add(nodes[0][2])
    out, used = [], set()
    for classes, steps in steps_of.items():
        whole = all(set(an.members[c]) == steps and len(c) == 2 for c in classes)
        right = {c: {an.inputs(k)[1] for k in an.members[c].values()} for c in classes}
        if whole and not used & set(classes) and all(len(r) == 1 for r in right.values()):
            out.append(classes)
            used |= set(classes)
    return out


def reassociate(an) -> bool:
    """(a + r) + p -> (a + p) + r, with r on a recurrence, a off it and p a parameter or
    constant: the bias of `x W_ih + b_ih + h W_hh + b_hh` then joins the input projection,
    added once over all steps, and each step does one add less. Rounding differs from the
    graph's order by an ulp. Rewrites `an.node` and `an.order` (copies, not the graph)."""
    rewrites = {}
    for k in an.nodes_of("add"):
        found = _bias_pattern(an, k) if k[2] is not None else None
        if found is not None:
            rewrites[k] = found
    for k, (u, a, r, p) in rewrites.items():
        v = (k[0], f"{u[1]}+{p[1]}", k[2])
        an.set_node(v, {**an.node[u], "inputs": (a, p)})
        an.set_node(k, {**an.node[k], "inputs": (v, r)})
        an.replace_in_order(u, v)  # v needs only a and p, which precede u
    return bool(rewrites)


def _bias_pattern(an, k):
    """(u, a, r, p) if node k is add(u, p) / add(p, u) with u = add(a, r) as described."""
    node = an.node[k]
    if node["kind"] != "op" or node["op"] != "add" or node["attrs"]:
        return None
    for u, p in (node["inputs"], node["inputs"][::-1]):
        inner = an.node[u]
        if (
            p[2] is not None
            or an.kind(p) not in ("param", "const")
            or inner["kind"] != "op"
            or inner["op"] != "add"
            or inner["attrs"]
            or u[2] != k[2]
            or an.consumers.get(u) != [(k, node["inputs"].index(u))]
            or u in an.outputs
            or an.meta[u] != an.meta[k]
        ):
            continue
        for a, r in (inner["inputs"], inner["inputs"][::-1]):
            if (
                class_of(r) in an.recurrent
                and class_of(a) not in an.recurrent
                and len(class_of(a)) == 2
                and an.meta[a] == an.meta[u]
            ):
                return u, a, r, p
    return None


def join_biases(an) -> bool:
    """(a + p) + q -> a + (p + q) per step, with p and q outside time (the two biases of
    `x W_ih + b_ih + b_hh` once reassociate has moved b_hh out of the recurrence): p + q is
    computed once per call, so the time-batched projection takes one pass over all steps
    instead of two, and backward sums its gradient once for both biases."""
    joined, before = {}, {}
    for k in an.nodes_of("add"):
        node = an.node[k]
        if node["attrs"] or not isinstance(k[2], int):
            continue
        u, q = node["inputs"]
        inner = an.node[u]
        if q[2] is not None or inner["kind"] != "op" or inner["op"] != "add" or inner["attrs"]:
            continue
        a, p = inner["inputs"]
        if (
            p[2] is not None
            or u[2] != k[2]
            or an.consumers.get(u) != [(k, 0)]
            or u in an.outputs
            or not an.meta[a] == an.meta[u] == an.meta[k]
        ):
            continue
        total = joined.get((p, q))
        if total is None:
            total = joined[(p, q)] = (k[0], f"{p[1]}+{q[1]}", None)
            an.set_node(total, op_node("add", (p, q)))
            before[total] = [k]
        an.set_node(k, {**node, "inputs": (a, total)})
    if before:
        an.order = reorder(an, before)
    return bool(before)


def steps() -> tuple:
    """The rewrites `rewrite` applies, in order (looked up when called, so a test can
    switch one off)."""
    return (merge_common, fuse_gates, reassociate, join_biases)
