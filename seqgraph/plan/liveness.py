"""Buffer reuse by liveness: a per-step class whose value (or gradient) is dead by the time
its next step is computed gets ONE step's buffer, which every step reuses.

The layout first gives every class a buffer stacked over time, which time-batched kernels and
the after-the-loop weight gradients need. Many classes inside a recurrent step need no such
thing: `h W_hh` is read once, by the add after it, and by no backward rule (the add's VJP
reads nothing); a gate's gradient is written by the ops that read the gate at step t and read
by the gate's own VJP at step t. Once the units are scheduled, `dead_values` and
`dead_grads` find these classes; the layout, which owns the buffers, then shrinks each to
one step (`Layout.reuse_values`, `Layout.reuse_grads`).
"""

from __future__ import annotations

from itertools import chain, compress, filterfalse, repeat
from math import inf
from operator import gt, itemgetter

import numpy as np

from seqgraph.engine import ops
from seqgraph.engine.ops.buffers import owner
from seqgraph.errors import GraphError
from seqgraph.plan import analysis
from seqgraph.plan.layout import Slot, Stack
from seqgraph.plan.schedule import Schedule

_KIND, _OP = itemgetter("kind"), itemgetter("op")
_READER = itemgetter(0)  # of a consumer (reader, position)
_STEP = itemgetter(2)  # of a node key (scope, name, t)


def dead_values(sched: Schedule, position: dict | None = None) -> list:
    """The classes whose value is dead before their next step: read only by ops of the same
    step that run one by one, by no backward rule, and not their own (see the module
    docstring). `Layout.reuse_values` then gives each one step's buffer. `position`:
    `unit_positions(sched)`, if the caller has it."""
    lay = sched.layout
    position = unit_positions(sched) if position is None else position
    found = []
    for c in _candidates(lay, sched.batched):
        same = lay.an.same_op(c)
        if same is None or ops.OPS[same[0]].reads_output:
            continue
        if not _dead_soon(lay, c, position, lambda user, i: _reads_never(lay.an, user, i)):
            continue
        found.append(c)
    return found


def dead_grads(sched: Schedule, deferred: dict, position: dict | None = None) -> dict:
    """The classes whose gradient at step t is written by same-step readers and read only by
    its own VJP at step t: not summed after the loop (`deferred`), not shared with another
    node's gradient. Column views of the class (the gates of a merged sibling op) shrink
    with it: their readers count as its readers. Class -> {view class: index}, for
    `Layout.reuse_grads`. `position`: `unit_positions(sched)`, if the caller has it."""
    lay = sched.layout
    position = unit_positions(sched) if position is None else position
    views = _view_classes(lay)
    shared = {cell for k, cell in lay.cell.items() if cell != k}
    shared |= {p for p in lay.children if analysis.class_of(p) not in views}
    found = {}
    for c in _candidates(lay, sched.batched, views, grads=True):
        members = lay.an.members[c]
        if c in deferred or c not in lay.grad_stack or any(k in shared for k in members.values()):
            continue
        if c in lay.under or c in lay.under.values():  # one buffer for two gradients
            continue
        viewed = (k for v in views.get(c, {}) for k in lay.an.members[v].values())
        if any(k in shared for k in viewed):  # a view whose region another gradient adopted
            continue
        if any(lay.cell.get(k) != k for k in members.values()):
            continue
        if views.get(c) and not _only_through_views(lay, c, views[c]):
            continue  # its gradient would be zero-filled once and added to at each step
        if not _dead_soon(lay, c, position, None, views.get(c, {})):
            continue
        found[c] = views.get(c, {})
    return found


def rolling_grads(sched: Schedule, deferred: dict, position: dict | None = None) -> dict:
    """The gradient buffers that two steps taken in turn can hold (`layout.Ring`): each
    step's gradient is written first at a later step of backward (an LSTM's dc[t] by the VJP
    of f * c at t + 1) and read last at its own, so it lives across two steps, never three.
    A buffer over time qualifies when the VJPs that touch each of its steps (of the nodes in
    it, of the nodes reading them, and of the nodes they read, which a local factor's fold
    makes read their gradient) run one by one, per step, and those of the steps of one
    parity never interleave; an initial state's gradient, read after backward, must be the
    last of its parity. Not a buffer that holds a value too (`Layout.hosted`), that a batched
    kernel or a sum after the loop reads (`deferred`), or that holds a view's region.
    base -> (the classes whose gradient stack it is, {node: its index in the stack}, the
    stack's length), for `Layout.roll_grads`. `position`: `unit_positions(sched)`, if the
    caller has it."""
    an, lay = sched.an, sched.layout
    position = unit_positions(sched) if position is None else position
    keys_of: dict = {}
    for k, base in lay.base.items():
        keys_of.setdefault(base, []).append(k)
    found: dict = {}
    decided = set()  # bases asked already: the classes sharing a stack get one answer
    for c in lay.classes:
        stack = lay.grad_stack.get(c)
        if type(stack) is not Stack or stack.base in decided or stack.base in lay.hosted:
            continue
        decided.add(stack.base)
        classes = [d for d, other in lay.grad_stack.items() if other is stack]
        if stack.arr.shape[0] < 3 or any(d in deferred or d in sched.batched for d in classes):
            continue
        if any(d in lay.under for d in classes):  # two gradients in turn: not a ring's
            continue
        slots = _slots(lay, stack, classes, keys_of[stack.base])
        if slots is not None and _takes_turns(an, position, slots):
            found[stack.base] = (classes, slots, stack.arr.shape[0])
    return found


def _slots(lay, stack, classes: list, keys: list) -> dict | None:
    """{node: its index in `stack`} for the nodes whose gradient lives in it, if each is a
    member of `classes` or a seed in its extra slot; None if another's is there too."""
    of = set(classes)
    slots = {}
    for k in keys:
        if k[2] is not None and analysis.class_of(k) in of:
            slots[k] = k[2] + stack.offset
        elif k in lay.placed and lay.placed[k][0] in of:
            slots[k] = 0 if lay.placed[k][1] == "pre" else stack.arr.shape[0] - 1
        else:
            return None
    return slots


def _takes_turns(an, position: dict, slots: dict) -> bool:
    """Whether the steps of each parity are touched by backward in disjoint runs, an
    initial state's last (see `rolling_grads`).

    The forward positions of the units whose VJPs may touch dL/dk, for every k in `slots`:
    k's own, its readers' and those of the nodes it reads (a fold reads k's gradient
    there); a reader that is no unit of its own (a batched class) or sums a whole class
    (`Analysis.addn_of_class`) may only be another node of the buffer. They are looked up
    as columns in C (a unit's position -1: none), and each slot's span, the least and the
    greatest of its nodes' positions, taken by NumPy: a loop over the buffer's nodes and
    their edges was this pass's time (tens of thousands of nodes per buffer)."""
    keys, at = list(slots), position.get
    readers = list(map(an.consumers.get, keys, repeat(())))
    users = list(map(_READER, chain.from_iterable(readers)))
    user_places = np.fromiter(map(at, users, repeat(-1)), np.int64, len(users))
    summing = an.class_sums(users)
    if summing:
        user_places[[i for i, user in enumerate(users) if user in summing]] = -1
    if not slots.keys() >= {users[i] for i in np.flatnonzero(user_places < 0)}:
        return False
    records = list(map(an.node.__getitem__, keys))
    read = [r["inputs"] if r["kind"] == "op" else () for r in records]
    inputs = list(chain.from_iterable(read))
    count = len(keys)
    places = np.concatenate(
        [
            np.fromiter(map(at, keys, repeat(-1)), np.int64, count),
            user_places,
            np.fromiter(map(at, inputs, repeat(-1)), np.int64, len(inputs)),
        ]
    )
    nodes = np.concatenate(
        [
            np.arange(count),
            np.repeat(np.arange(count), list(map(len, readers))),
            np.repeat(np.arange(count), list(map(len, read))),
        ]
    )
    places, nodes = places[places >= 0], nodes[places >= 0]
    if np.bincount(nodes, minlength=count).min(initial=1) == 0:
        return False  # a node whose gradient no unit touches
    index = np.fromiter(slots.values(), np.int64, count)
    at_index = index[nodes]
    lo = np.full(index.max() + 1, np.iinfo(np.int64).max)
    hi = np.full(index.max() + 1, -1)
    np.minimum.at(lo, at_index, places)
    np.maximum.at(hi, at_index, places)
    used = np.unique(index)
    seeds = {index for k, index in slots.items() if k[2] is None}
    for parity in (0, 1):
        # backward runs the forward units in reverse: the latest forward span goes first
        ids = used[used % 2 == parity]
        runs = ids[np.lexsort((ids, hi[ids], lo[ids]))]  # by span, then index
        if np.any(hi[runs[:-1]] >= lo[runs[1:]]):
            return False
        if not seeds.isdisjoint(runs[1:].tolist()):
            return False
    return True


def rings_written_first(lay, rolled: dict, zero: set) -> bool:
    """Whether backward writes every step of each rolled buffer before reading it, never
    zero-filling it once and adding (the emitter decides; a ring holds other steps)."""
    return not any(base in zero for base in rolled)


def dead_in_backward(an, lay) -> list:
    """The classes whose value buffer no backward rule reads and no caller reads after a
    step: computed by forward from other values (no data, constants or seeds in it) and
    read by ops whose VJP ignores that input (an add, the projection of data: an LSTM's
    x W_ih + b). Every node whose value lives in the buffer, through a view or an alias,
    must be such a node. `Layout.add_grads` may put a gradient stack there."""
    nodes_of, unread = lay.nodes_by_buffer(), _UnreadByClass(an)
    found = []
    for c in lay.classes:
        if c in lay.source or c in lay.in_place:
            continue  # not a buffer of its own
        nodes = nodes_of.get(id(owner(lay.value_stack[c].arr)), [])
        if nodes and unread.every(nodes):
            found.append(c)
    return found


def gradients_over_activations(an, lay) -> list:
    """The classes whose gradient stack may take their own value buffer although backward
    reads values there (`Layout.add_grads` takes them as `own`):
    - the parents of the views that activations write over (`Layout.activations`: an
      LSTM's gates, whose activations then take the pre-activations' place): backward reads
      each activation of step t, by the VJPs of step t, before the activation's own VJP
      writes its input's gradient over it, element by element (an elementwise chain that
      reads an element before it writes it is right in place);
    - the parents of column views that backward reads (`read_views`: the GRU's h W_hn +
      b_hn, a block of h W_hh + b_hh read by the VJP of r * (h W_hn + b_hn)): the view's
      gradient is its region of the parent's, written by its reader's VJP of the same step,
      after the reads;
    where every other node in the buffer is unread in backward. The emitter holds each plan
    to that order (`activation_reads_first`) and gives the buffer back where it fails
    (`Layout.unhost`). Only with inline local derivatives (no factor of all steps reads a
    value before the loop)."""
    if not lay.inline_derivatives:
        return []
    nodes_of, over = lay.nodes_by_buffer(), set()
    parents = {lay.source[view][1] for view in lay.activations.values()}
    for c in lay.activations:
        over.update(an.members[c].values())
    read = lay.read_views = read_views(an, lay)
    parents |= set(read)
    found, unread = [], _UnreadByClass(an)
    for parent in sorted(parents, key=lambda c: lay.classes.index(c)):
        nodes = nodes_of.get(id(owner(lay.value_stack[parent].arr)), [])
        allowed = over | read.get(parent, set())
        if unread.every(list(filterfalse(allowed.__contains__, nodes))):
            found.append(parent)
    return found


def read_views(an, lay) -> dict:
    """parent class -> the nodes of its plain column views (`_view_classes`) that backward
    reads, for the parents with any: each such node's gradient is its own region of the
    parent's gradient, so the parent's value buffer can hold it once the node is read."""
    out: dict = {}
    unread = _UnreadByClass(an)
    for parent, views in _view_classes(lay).items():
        if parent in lay.activations or parent in lay.under:
            continue
        for v in views:
            nodes = list(an.members[v].values())
            if not unread.every(nodes):
                out.setdefault(parent, set()).update(nodes)
    return out


def hosted_read_views(lay) -> dict:
    """`Layout.read_views` of the parents whose value buffer holds their own gradient now
    (`Layout.unhost` may have given one back)."""
    own = set(lay.hosted.values()) & lay.own_hosted
    return {parent: nodes for parent, nodes in lay.read_views.items() if parent in own}


def activation_reads_first(an, lay, records: list, zero: set) -> list:
    """The gradient buffers (`Layout.grad_buffers` indices) kept over values backward reads
    (`gradients_over_activations`) where backward would read a value after a gradient took
    its place: each activation y of step t must be read by no kernel after the one that
    writes dL/dx of y = f(x) (its own VJP, which reads y at each element before writing it
    there), each read view node by no kernel after the first that writes its own gradient
    (its reader's VJP); that kernel must write, not add, and the buffer must not be
    zero-filled. `records`: the emitter's kernel records, in run order."""
    over = {lay.source[view][1] for view in lay.activations.values()}
    read = lay.read_views  # `gradients_over_activations` found them
    parents = over | set(read)
    watched = {base: c for base, c in lay.hosted.items() if c in parents & lay.own_hosted}
    if not watched:
        return []
    # watched node -> its parent class; an activation's gradient write is its own VJP's
    # (position 0, writing dL/dx over it), a read view node's is its reader's VJP's
    members = {
        k: lay.source[lay.activations[c]][1]
        for c in lay.activations
        for k in an.members[c].values()
    }
    viewed = {k: parent for parent, nodes in read.items() for k in nodes}
    members.update(viewed)
    last_read: dict = {}  # watched node -> the last kernel that may read its value
    writes: dict = {}  # watched node -> (the first kernel writing over it, whether it adds)
    for index, record in enumerate(records):
        for k in _nodes_read(an, record):
            if k in members:
                last_read[k] = index
        if record[0] != "vjp":
            continue
        if record[1] in members and record[1] not in viewed and record[2] == 0:
            writes.setdefault(record[1], (index, record[3]))
        target = an.inputs(record[1])[record[2]]
        if target in viewed:
            writes.setdefault(target, (index, record[3]))
    failed = []
    nodes_of: dict = {}  # parent class -> its watched nodes: each buffer walks its own only
    for k, parent in members.items():
        nodes_of.setdefault(parent, []).append(k)
    for base, parent in watched.items():
        if base in zero:
            failed.append(base)
            continue
        for k in nodes_of.get(parent, ()):
            if k not in last_read:
                continue
            write = writes.get(k)
            if write is None or write[1] or last_read[k] > write[0]:
                failed.append(base)
                break
    return failed


def check_gradients_under_inputs(an, lay, records: list) -> None:
    """Where y = f(x) keeps dL/dy in dL/dx's place (`Layout.under`), y's VJP at step t, which
    reads dL/dy and writes dL/dx over it element by element, must write (not add), and no
    later kernel may read or write dL/dy of that step. Backward runs the VJPs in reverse
    order of forward, so every reader of y, which writes dL/dy, comes before y's VJP: this
    holds that order to it, as `check_grads` holds the reused buffers. `records`: the
    emitter's kernel records, in run order."""
    if not lay.under:
        return
    cell = lay.cell
    watched = {cell[k]: k for c in lay.under for k in an.members[c].values()}
    done: set = set()
    for record in records:
        if record[0] == "class" and record[1] in lay.under:
            raise GraphError(f"plan: {record[1]} keeps its gradient under its input's, batched")
        touched = [cell.get(k) for k in _gradients_touched(an, record)]
        late = [watched[c] for c in touched if c in watched and watched[c] in done]
        if late:
            raise GraphError(f"plan: the gradient of {late[0]} is used after its VJP wrote over it")
        if record[0] == "vjp" and record[1] in watched.values() and record[2] == 0:
            if record[3]:
                raise GraphError(f"plan: the VJP of {record[1]} adds over its own gradient")
            done.add(record[1])


def _gradients_touched(an, record: tuple) -> list:
    """The nodes whose gradients a backward kernel reads (g) or writes, by its record; the
    VJP of y itself counts as touching dL/dx only."""
    kind = record[0]
    if kind in ("vjp", "factor"):
        k, i, upstream = record[1], record[2], record[4]
        return [an.inputs(k)[i]] + ([] if upstream == k and kind == "vjp" else [upstream])
    if kind == "product part":
        return [record[4]]
    if kind == "add part":
        return [an.inputs(record[1])[record[2]]]
    if kind == "addn":
        return [record[4], *an.members[record[2]].values()]
    if kind == "class":
        members = list(an.members[record[1]].values())
        return members + [an.inputs(k)[record[2]] for k in members]
    if kind == "deferred":
        return list(an.members[record[1]].values())
    return []


def _nodes_read(an, record: tuple) -> list:
    """The nodes whose values a backward kernel may read, by its record (`backward`): a
    node's VJP, its inputs and itself; a VJP over all steps of a class, every member's
    inputs; a kernel of another kind (a local factor, a fill, a transpose) names none, and
    `activation_reads_first` is used where no local factor is made before the loop."""
    kind = record[0]
    if kind in ("vjp", "product part", "add part", "factor", "addn"):
        return [record[1], *an.inputs(record[1])]
    if kind in ("class", "deferred"):
        return [i for k in an.members[record[1]].values() for i in an.inputs(k)]
    return []


class _UnreadByClass:
    """`_unread_in_backward` of one node, with what its readers' VJPs read decided once
    per reader class and input position where the class allows (every node of it applies
    one op with the same attrs: `Analysis.same_op`), not by looking up each reader's
    record: over a whole buffer of an unrolled graph those lookups were most of the
    pass. A node's own record is read only for what only it can say."""

    def __init__(self, an):
        self.an, self.ignores = an, {}  # (reader class, position) -> bool or None

    def __call__(self, k) -> bool:
        if _read_for_itself(self.an, k):
            return False
        return self._readers_ignore(self.an.consumers.get(k, ()))

    def every(self, nodes: list) -> bool:
        """`all(map(self, nodes))`, with the nodes' own records asked as columns: their
        kinds, ops and membership of the outputs and of the nodes that need a gradient
        each found in C for all of them (a call and three lookups per node were most of
        `dead_in_backward`, over buffers of tens of thousands of nodes); then their readers,
        as `__call__` asks them."""
        an = self.an
        records = list(map(an.node.__getitem__, nodes))
        if list(map(_KIND, records)).count("op") != len(records):
            return False  # not computed by forward
        if not an.outputs.isdisjoint(nodes):
            return False
        names = list(map(_OP, records))
        entries = {op: ops.OPS[op] for op in set(names)}
        reading = {op for op, entry in entries.items() if entry.reads_output and entry.view is None}
        if reading and not an.needs_grad.isdisjoint(
            compress(nodes, map(reading.__contains__, names))
        ):
            return False  # differentiated by a VJP that reads its output
        return self._readers_ignore(chain.from_iterable(map(an.consumers.get, nodes, repeat(()))))

    def _readers_ignore(self, readers) -> bool:
        """Whether each (user, input position) of `readers` ignores that input's value in
        backward: decided per reader class and position where the class allows."""
        an, ignores = self.an, self.ignores
        for user, i in readers:
            fact = (user if user[2] is None else user[:2], i)  # (class_of(user), i)
            ignored = ignores.get(fact, 0)
            if ignored == 0:
                ignored = ignores[fact] = self._class_ignores(*fact)
            if ignored is None:  # decided per node
                user_op = ops.OPS[an.node[user]["op"]]
                ignored = user_op.view is not None or _reads_never(an, user, i)
            if not ignored:
                return False
        return True

    def _class_ignores(self, cls, i: int) -> bool | None:
        """Whether every node of `cls` ignores its input i's value in backward (a view's
        VJP, or `_reads_never`); None where that is a fact of each node."""
        same = self.an.same_op(cls)
        if same is None:
            return None
        op, attrs = same
        entry = ops.OPS[op]
        if entry.view is not None:
            return True
        if attrs:
            return False
        if entry.other_operand:
            return None  # whether the other operand needs a gradient: step by step
        return i in entry.unread_inputs


def dead_regions(an, lay) -> list:
    """Column blocks of value buffers that no backward rule reads, in buffers that backward
    reads elsewhere: a view class (the GRU's r and z block of h W_hh + b_hh, whose n block
    the r * h_n VJP reads) whose nodes are unread in backward, in a buffer whose whole-array
    nodes are too, and that no read view overlaps. (buffer class, view class, the region
    as an array), for `local_factors.place` to put a factor in; none in a buffer that
    holds a gradient (`Layout.hosted`)."""
    nodes_of = lay.nodes_by_buffer()
    hosting = {id(owner(lay.grad_buffers[i])) for i in lay.hosted}  # hold a gradient
    views: dict = {}
    for v, (kind, target, index) in lay.source.items():
        if kind == "view" and target in lay.range and lay.range[v] == lay.range[target]:
            views.setdefault(target, []).append((v, index))
    found, taken_in = [], {}
    for c, blocks in views.items():
        if c in lay.source or isinstance(lay.value_stack[c], Slot):
            continue
        arr = lay.value_stack[c].arr
        if id(owner(arr)) in hosting:
            continue
        nodes = nodes_of.get(id(owner(arr)), [])
        inside = {k for v, _ in blocks for k in an.members[v].values()}
        if any(not _unread_in_backward(an, k) for k in nodes if k not in inside):
            continue
        read = np.zeros(arr.shape[1:], dtype=bool)
        for v, index in blocks:
            if any(not _unread_in_backward(an, k) for k in an.members[v].values()):
                read[index] = True
        # regions handed out do not overlap, also between classes sharing one buffer
        taken = taken_in.setdefault(id(owner(arr)), np.zeros(arr.shape[1:], dtype=bool))
        for v, index in blocks:
            if not read[index].any() and not taken[index].any():
                taken[index] = True
                found.append((c, v, arr[(slice(None),) + index]))
    return found


def overwritten_inputs(sched: Schedule) -> dict:
    """Inputs that their reader's forward kernel may write over (`Op.forward_overwrites`):
    a time-batched class whose stacked input is a class read by nothing else, forward or
    backward, and living in a buffer whose every node is read only within it (the
    readout's x W + b before softmax_ce). Input class -> (reader class, position)."""
    an, lay = sched.an, sched.layout
    nodes_of = lay.nodes_by_buffer()
    found = {}
    for cls in sched.batched:
        same = an.same_op(cls)
        for position in ops.OPS[same[0]].forward_overwrites if same else ():
            pattern = an.input_pattern(cls, position)
            if not pattern or pattern[0] != "class" or pattern[2] != 0 or pattern[3] is not None:
                continue
            source = pattern[1]
            if source in lay.source or lay.range.get(source) != lay.range[cls]:
                continue
            readers = {an.members[cls][t]: position for t in an.members[cls]}
            nodes = nodes_of.get(id(owner(lay.value_stack[source].arr)), [])
            group = set(nodes)
            if nodes and all(_read_only_within(an, k, group, readers) for k in nodes):
                found[source] = (cls, position)
    return found


def _read_only_within(an, k, group: set, readers: dict) -> bool:
    """k is computed by forward, no output, its VJP reads no value, and its readers are in
    `group` or are the overwriting `readers` (node -> the position it reads k at)."""
    node = an.node[k]
    if node["kind"] != "op" or k in an.outputs or ops.OPS[node["op"]].reads_output:
        return False
    for user, i in an.consumers.get(k, []):
        if user in readers and readers[user] == i:
            continue
        if user not in group or not _reads_never(an, user, i):
            return False
    return True


def _read_for_itself(an, k) -> bool:
    """Whether node k's own record says its value is read after forward: not computed by
    forward, a caller's output, or differentiated by a VJP that reads its output."""
    node = an.node[k]
    if node["kind"] != "op" or k in an.outputs:
        return True
    entry = ops.OPS[node["op"]]
    return entry.reads_output and entry.view is None and k in an.needs_grad


def _unread_in_backward(an, k) -> bool:
    if _read_for_itself(an, k):
        return False
    return all(
        ops.OPS[an.node[user]["op"]].view is not None or _reads_never(an, user, i)
        for user, i in an.consumers.get(k, [])
    )  # a view's VJP places g in zeros of its input's shape: it reads neither value


def _view_classes(lay) -> dict:
    """class -> {view class: index} for classes whose only sharers are plain column views,
    none of them viewed, aliased or differentiated through another class in turn."""
    out: dict = {}
    for v, (kind, target, index) in lay.source.items():
        out.setdefault(target, {})[v] = index if kind == "view" else None
    sharers = set(lay.in_place) | set(lay.in_place.values())
    sharers |= {root for root, _ in lay.placed.values()}
    return {
        c: views
        for c, views in out.items()
        if c not in lay.source
        and all(
            index is not None and v not in out and v not in sharers for v, index in views.items()
        )
        and not any(lay.cell.get(k, k) != k for v in views for k in lay.an.members[v].values())
    }


def _only_through_views(lay, c, views: dict) -> bool:
    """Whether every step of `c` gets its gradient through views that cover all of it (the
    gates of a merged sibling op), each written afresh by its readers. A view of some
    columns leaves the rest unwritten; a reader of the whole class adds to the views'
    writes (`backward.Tracker`): either way the buffer is zero-filled once, not per step."""
    an = lay.an
    for k in an.members[c].values():
        if k not in lay.covered or any(v in lay.overlapping for v in lay.children[k]):
            return False
        if any(analysis.class_of(user) not in views for user, _ in an.consumers.get(k, [])):
            return False
    return True


def check_grads(lay, compacted: dict, zero: set) -> None:
    """A reused gradient buffer must be written afresh at each step, never zero-filled once
    and added to (the backward emitter decides which; this holds it to the rule above)."""
    bad = [c for c in compacted if lay.grad_stack[c].base in zero]
    if bad:
        raise GraphError(f"plan: gradient buffers of {bad} are reused but zero-filled")


def check_own_hosts(lay, zero: set) -> None:
    """A gradient kept in its own class's value buffer (`Layout.add_grads`, `own`) must be
    written by its reader's VJP from what that buffer holds, never zero-filled first."""
    bad = [c for i, c in lay.hosted.items() if i in zero and c in lay.own_hosted]
    if bad:
        raise GraphError(f"plan: gradients of {bad} share their values' buffers but are zeroed")


def unit_positions(sched: Schedule) -> dict:
    """node -> its place in the run order, for the nodes that run as units of their own:
    what the three passes above ask (a dict over every node of an unrolled graph, so the
    plan makes it once for the three)."""
    return {unit[1]: i for i, unit in enumerate(sched.units) if unit[0] == "node"}


def _candidates(lay, batched: dict, views: dict | None = None, grads: bool = False) -> list:
    """Classes whose buffer nothing else shares: no views (but those in `views`), aliases,
    in-place writes or seeds. With `grads`, an activation over a view (`Layout.activations`)
    is one: it shares its value's buffer, not its gradient's."""
    shared = {target for _, target, _ in lay.source.values()} - set(views or ())
    shared |= set(lay.in_place.values()) | set(lay.in_place).difference(
        lay.activations if grads else ()
    )
    shared |= {root for root, _ in lay.placed.values()}
    return [c for c in lay.classes if c not in lay.source and c not in shared | set(batched)]


def _dead_soon(lay, c, position: dict, allowed=None, views: dict | None = None) -> bool:
    """Each step of `c` is read only by same-step units that run (one by one) before the
    next step of `c` is computed, each passing `allowed(user, input position)` (if given);
    a reader through one of `views` counts as reading `c`.

    Asked as columns: the members' places and readers, the readers' places and steps
    looked up in C and compared whole with what each member allows (its step; the place of
    the member that runs next), then `allowed` of each reader: a loop over the members and
    their edges was most of `dead_values` and `dead_grads`."""
    an = lay.an
    members = list(an.members[c].values())
    places = list(map(position.get, members))
    if None in places or not an.outputs.isdisjoint(members):
        return False
    if views:
        readers = [_readers(an, k, views) for k in members]
        if None in readers:
            return False
    else:
        readers = list(map(an.consumers.get, members, repeat(())))
    counts = list(map(len, readers))
    users = list(chain.from_iterable(readers))  # (user, input position)
    user_places = list(map(position.get, map(_READER, users)))
    if None in user_places:
        return False
    # each reader's step and latest place: its member's step, and the place of the member
    # that runs next (none after the last)
    if list(map(_STEP, map(_READER, users))) != list(_each(map(_STEP, members), counts)):
        return False
    by_place = sorted(range(len(members)), key=places.__getitem__)
    latest = [inf] * len(members)
    for this, following in zip(by_place, by_place[1:]):
        latest[this] = places[following]
    if any(map(gt, user_places, _each(latest, counts))):
        return False
    return allowed is None or all(allowed(user, i) for user, i in users)


def _each(items, counts: list):
    """Each of `items` repeated its count in `counts` times, in order (in C)."""
    return chain.from_iterable(map(repeat, items, counts))


def _readers(an, k, views: dict) -> list | None:
    """(user, input position) of node k, looking through the given view classes; None if
    one of those views is a requested output."""
    out = []
    for user, i in an.consumers.get(k, []):
        if analysis.class_of(user) in views:
            if user in an.outputs:
                return None
            out.extend(an.consumers.get(user, []))
        else:
            out.append((user, i))
    return out


def _reads_never(an, user, i: int) -> bool:
    """True if the backward rule of `user` never reads its input `i`."""
    node = an.node[user]
    if node["attrs"]:
        return False
    entry = ops.OPS[node["op"]]
    if entry.other_operand:
        return node["inputs"][1 - i] not in an.needs_grad
    return i in entry.unread_inputs
