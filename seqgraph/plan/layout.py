"""Where every value and gradient of a plan lives: preallocated buffers and views into them.

Each per-step class gets one buffer stacked over time (step t at `arr[t + offset]`), so a
time-batched consumer reads all steps as one array and a step-by-step loop writes its slot.
Views cost nothing: a `chunk` of a class is a slice of its buffer, a `where` whose mask is
known to be all true is its first branch, and the node that seeds a recurrence (h0) is stored
in an extra slot in front of the state's buffer so [h0, h_0 .. h_T-2] is one contiguous block.
Gradients mirror values; an `add` input whose only use is that add shares its output's
gradient buffer, since the two gradients are equal, and an add whose input is a view read
by it alone keeps its gradient in that view's region ("adopt").

Where backward's elementwise VJPs run as compiled chains that compute each local derivative
inline (`inline_derivatives`), a step's chain reads each element before it writes it, so
values and gradients may take each other's place as hand-written NumPy has them: a tanh or
sigmoid writes over the column block of pre-activations it alone reads (an LSTM's gates:
`activations`), and the gradient of y = f(x) on a recurrence lives where dL/dx will, which
y's VJP writes over it (an RNN's dL/dh: `under`).
"""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter

import numpy as np

from seqgraph.engine import ops
from seqgraph.engine.ops.buffers import owner
from seqgraph.plan import analysis
from seqgraph.plan.analysis import Analysis, class_of

_FIRST = itemgetter(0)


class Stack:
    """The buffer of one class: member t lives at arr[t + offset]."""

    __slots__ = ("arr", "offset", "base")

    def __init__(self, arr, offset: int, base: int | None = None):
        self.arr, self.offset, self.base = arr, offset, base  # base: index of the gradient buffer

    def at(self, t: int):
        return self.arr[t + self.offset, ...]  # `...` keeps a 0-d step a view, not a scalar

    def views(self, members: dict) -> dict:
        """{node: `at(t)`} for members {t: node}: where each step is a row of an array of
        2 or more axes, the same views made by one iteration over the rows in C, not an
        index per step (every class's values and gradients are made this way)."""
        steps = self.arr[min(members) + self.offset : max(members) + self.offset + 1]
        if self.arr.ndim < 2 or len(steps) != max(members) - min(members) + 1:
            return {k: self.at(t) for t, k in members.items()}
        rows, lo = list(steps), min(members)
        if list(members) == list(range(lo, lo + len(rows))):  # steps in order, as is usual
            return dict(zip(members.values(), rows))
        return {k: rows[t - lo] for t, k in members.items()}

    def span(self, lo: int, hi: int):
        """Members lo..hi as one array, or None if that runs past the buffer."""
        start, stop = lo + self.offset, hi + self.offset + 1
        return self.arr[start:stop] if 0 <= start and stop <= self.arr.shape[0] else None


class Slot(Stack):
    """A class buffer of ONE step that every member reuses (`Layout.reuse_values`)."""

    __slots__ = ()

    def at(self, t: int):
        return self.arr[0, ...]

    def views(self, members: dict) -> dict:
        return {k: self.at(t) for t, k in members.items()}

    def span(self, lo: int, hi: int):
        return None  # there is no stacked view: the steps do not coexist


class Ring(Stack):
    """A gradient buffer of TWO steps that the members take in turn: member t at
    arr[(t + offset) % 2] (`Layout.roll_grads`), for a gradient that lives from the step
    after its own, where backward first writes it, to its own step (an LSTM's dc)."""

    __slots__ = ()

    def at(self, t: int):
        return self.arr[(t + self.offset) % 2, ...]

    def span(self, lo: int, hi: int):
        return None  # no stacked view: step t + 2 has taken step t's place


def resolve_cells(links: dict, keys) -> dict:
    """key -> the end of its chain of `links` (node -> the node whose gradient its gradient
    is), for each of `keys`, in their order; a key without a link is its own. Most nodes
    are their own cell: every key is mapped to itself in C, then the few that `links`
    sends elsewhere are followed."""

    def end(k):
        while links.get(k, k) != k:
            k = links[k]
        return k

    cells = dict(zip(keys, keys))
    for k, other in links.items():
        if other != k and k in cells:
            cells[k] = end(k)
    return cells


class Layout:
    """Value and gradient locations of every live node (see the module docstring)."""

    def __init__(self, an: Analysis, ctx, inline_derivatives: bool = False):
        self.an, self.m = an, ctx.m
        # backward's chains compute each local derivative inline, step by step, reading an
        # element before writing it: values and gradients may then take each other's place
        self.inline_derivatives = inline_derivatives
        # activation class -> the view class whose region it takes (`_activations_over_views`)
        self.activations: dict = {}
        # y -> x, for y = f(x) whose gradient lives where x's will (`_gradient_under_input`)
        self.under: dict = {}
        # parent class -> its column view nodes that backward reads (`liveness.read_views`,
        # found by `liveness.gradients_over_activations`)
        self.read_views: dict = {}
        self.classes = sorted(
            (c for c in an.members if len(c) == 2 and an.stackable(c)),
            key=lambda c: an.pos[next(iter(an.members[c].values()))],
        )
        self.range = {c: (min(an.members[c]), max(an.members[c])) for c in self.classes}
        self.source = self._class_sources()
        self.value_stack: dict = {}
        self.value: dict = {}
        self.alias_of: dict = {}  # node -> the node it reads through (views and aliases)
        self.placed: dict = {}  # seed node -> (root class, slot)
        self.stacked_shape: dict = {}  # class shrunk to one step -> (its stack's shape, offset)
        self._values()
        self.grad_stack: dict = {}
        self.grad: dict = {}
        self.cell: dict = {}
        self.children: dict = {}  # gradient cell -> the cells of its views' gradients
        self.parent: dict = {}  # view cell -> the cell it is a view of
        self.covered: set = set()  # cells whose views' gradients cover all of theirs
        self.overlapping: set = set()  # view cells that share elements with another view
        self.base: dict = {}  # node -> index into self.grad_buffers (its gradient's buffer)
        self.grad_buffers: list = []
        self.hosted: dict = {}  # gradient buffer index -> the class whose value buffer it is
        self.own_hosted: set = set()  # classes whose gradient is in their own value buffer

    def add_grads(self, loss, hosts: list | None = None, own: list | None = None) -> None:
        """Lay out the gradients of everything `loss` depends on. `hosts`: classes whose value
        buffer backward never reads (`liveness.dead_in_backward`); a gradient stack of the
        same shape and dtype is placed in one of them instead of a buffer of its own, since
        forward writes the value afresh before anything reads it, and backward is over before
        the next forward starts. `own`: classes whose gradient goes in their own value
        buffer, which their reader's forward overwrote with what its VJP reads elementwise
        (`liveness.overwritten_inputs`: the logits, holding exp(z - max))."""
        self._hosts = list(hosts or ())
        self.own_hosted = set(own or ())
        self._grads()

    # ---- values ------------------------------------------------------------------------------

    def _class_sources(self) -> dict:
        """Classes that are views or aliases of another class: cls -> (kind, D, index)."""
        an, out = self.an, {}
        stackable = set(self.classes)
        for c in self.classes:
            same = an.same_op(c)
            if same is None:
                continue
            op, attrs = same
            k0 = next(iter(an.members[c].values()))
            # An identity of one op, not an op fact: where(mask known all true, a, _) is a.
            position = 1 if op == "where" else 0
            pattern = an.input_pattern(c, position)
            if pattern is None or pattern[0] != "class" or pattern[1] not in stackable:
                continue
            if (
                op == "where"
                and pattern[2] == 0
                and all(an.inputs(k)[0] in an.const_true for k in an.members[c].values())
            ):
                out[c] = ("alias", pattern[1], None)
            elif ops.OPS[op].view is not None and pattern[2] == 0:
                shape = an.meta[an.inputs(k0)[0]][0]
                out[c] = ("view", pattern[1], analysis.view_index(op, attrs, shape))
        return out

    def root(self, cls):
        while cls in self.source and self.source[cls][0] == "alias":
            cls = self.source[cls][1]
        return cls

    def _extensions(self) -> dict:
        """Seed nodes placed in an extra slot before (d=-1) or after (d=+1) a root buffer."""
        an, ext = self.an, {}
        for c, members in an.members.items():
            k0 = next(iter(members.values()))
            if len(c) != 2 or an.kind(k0) != "op":
                continue
            for position in range(len(an.inputs(k0))):
                pattern = an.input_pattern(c, position)
                if not pattern or pattern[0] != "class" or pattern[3] is None:
                    continue
                _, target, d, seed = pattern
                root = self.root(target) if target in self.range else None
                side = "pre" if d < 0 else "post"
                if (
                    root is None
                    or root in self.source
                    or seed in self.placed
                    or (root, side) in ext
                    or an.kind(seed) == "const"
                    or an.meta[seed] != an.meta[next(iter(an.members[root].values()))]
                ):
                    continue
                ext[(root, side)] = seed
                self.placed[seed] = (root, side)
        return ext

    def _in_place(self, ext: dict) -> dict:
        """cls -> the input class whose buffer it overwrites (an in-place chain: the bias adds
        after a projection share one buffer). Only where the input's value is dead once read:
        its one reader is this op at the same step, and no VJP reads it (`Op.in_place`)."""
        an, out = self.an, {}
        slotted = {c for c, _ in ext}
        for c in self.classes:
            same = an.same_op(c)
            if same is None or not ops.OPS[same[0]].in_place or same[1] or c in self.source:
                continue
            for position in range(len(an.inputs(an.members[c][self.range[c][0]]))):
                pattern = an.input_pattern(c, position)
                if pattern and pattern[0] == "class" and pattern[2] == 0 and pattern[3] is None:
                    if self._dead_after(pattern[1], c, position) and not {c, pattern[1]} & slotted:
                        out[c] = pattern[1]
                        break
        if self.inline_derivatives:
            self.activations = self._activations_over_views(out, slotted)
            out.update(self.activations)
        return out

    def _activations_over_views(self, taken: dict, slotted: set) -> dict:
        """cls -> the view class whose region it writes over: an op that may write over its
        input (`Op.out_may_alias_input`: tanh, sigmoid) reading at each step a view that it
        alone reads, no other view overlapping it (`_alone`: an LSTM gate's column block of
        the pre-activations), so the activations take the pre-activations' place, as a
        hand-written LSTM keeps them. Only with `inline_derivatives`: backward then reads the
        activations there (no local factor of all steps is made from them first), and the
        buffer holds no other gradient than the one whose regions those views are
        (`liveness.gradients_over_activations`)."""
        an, out = self.an, {}
        for c in self.classes:
            same = an.same_op(c)
            if c in taken or c in self.source or c in slotted or same is None or same[1]:
                continue
            if not ops.OPS[same[0]].out_may_alias_input:
                continue
            pattern = an.input_pattern(c, 0)
            if not pattern or pattern[0] != "class" or pattern[2] != 0 or pattern[3] is not None:
                continue
            view = pattern[1]
            if self.source.get(view, ("",))[0] != "view" or self.range.get(view) != self.range[c]:
                continue
            parent = self.source[view][1]
            if {view, parent} & slotted or parent in self.source or not self._alone(view):
                continue
            if any(k in an.outputs for k in an.members[parent].values()):
                continue
            if self._each_read_alone(c, 0):
                out[c] = view
        return out

    def _each_read_alone(self, cls, position: int) -> bool:
        """Whether each node k of `cls` alone reads its input x at `position` (x's one
        consumer is (k, position)), x is no output, and both hold values of one shape and
        dtype. Asked as columns: the inputs from the class's input table
        (`Analysis.member_inputs`, no lookup of each record), their consumers and both
        shapes looked up in C, and the consumers compared whole with what each should be."""
        an = self.an
        members = list(an.members[cls].values())
        read = list(map(itemgetter(position), an.member_inputs(cls)))
        readers = list(map(an.consumers.get, read, repeat(())))
        if list(map(len, readers)).count(1) != len(readers):
            return False
        if list(map(_FIRST, readers)) != list(zip(members, repeat(position))):
            return False
        if not an.outputs.isdisjoint(read):
            return False
        return list(map(an.meta.__getitem__, read)) == list(map(an.meta.__getitem__, members))

    def _dead_after(self, source, cls, position) -> bool:
        an = self.an
        same = an.same_op(source) if source in self.range else None
        if same is None or not ops.OPS[same[0]].output_overwritable or source in self.source:
            return False
        if self.range[source] != self.range[cls] or any(
            r == source for r, _ in self.placed.values()
        ):
            return False
        # cls reads source at `position` at the same step, over the same steps (the
        # caller's input pattern): each step of source is that input of one step of cls
        return self._each_read_alone(cls, position)

    def _values(self) -> None:
        an, m = self.an, self.m
        ext = self._extensions()
        self.in_place = self._in_place(ext)
        for c in self.classes:
            lo, hi = self.range[c]
            kind, target, index = self.source.get(c, (None, None, None))
            if kind == "alias":
                self.value_stack[c] = self.value_stack[target]
            elif c in self.in_place:
                self.value_stack[c] = self.value_stack[self.in_place[c]]
            elif kind == "view":
                parent = self.value_stack[target]
                self.value_stack[c] = Stack(parent.arr[(slice(None),) + index], parent.offset)
            else:
                shape, dtype = an.meta[an.members[c][lo]]
                pre, post = int((c, "pre") in ext), int((c, "post") in ext)
                arr = m.empty((hi - lo + 1 + pre + post,) + shape, dtype=dtype)
                self.value_stack[c] = Stack(arr, pre - lo)
            members = an.members[c]
            self.value.update(self.value_stack[c].views(members))
            if kind is not None:
                # each member's input from the class's input table: no record looked up
                read = map(itemgetter(1 if kind == "alias" else 0), an.member_inputs(c))
                self.alias_of.update(zip(members.values(), read))
        for seed, (root, side) in self.placed.items():
            arr = self.value_stack[root].arr
            self.value[seed] = arr[0, ...] if side == "pre" else arr[arr.shape[0] - 1, ...]
        self._single_values()

    def _single_values(self) -> None:
        """Nodes outside every class buffer: a view of their input, or their own array."""
        an, m = self.an, self.m
        self.singles: list = []  # these nodes, for `nodes_by_buffer`
        # most live nodes are in a class's buffer by now: the rest found in C, in graph order
        for k in sorted(an.live.difference(self.value), key=an.pos.__getitem__):
            self.singles.append(k)
            node = an.node[k]
            index = (
                analysis.view_index(node["op"], node["attrs"], an.meta[node["inputs"][0]][0])
                if node["kind"] == "op" and node["inputs"]
                else None
            )
            if index is not None:
                self.value[k] = self.value[node["inputs"][0]][index]
                self.alias_of[k] = node["inputs"][0]
            else:
                shape, dtype = an.meta[k]
                self.value[k] = m.empty(shape, dtype=dtype)

    def nodes_by_buffer(self) -> dict:
        """id(array that owns the memory) -> the nodes whose value lives in it (through a
        view or an alias too), in no particular order. Every member of a class lives in its
        class's stack, so one `owner` per class, not per node: liveness and the local
        factors ask this several times per plan."""
        out: dict = {}
        value, members = self.value, self.an.members
        for c in self.classes:
            nodes = out.setdefault(id(owner(self.value_stack[c].arr)), [])
            nodes.extend(members[c].values())
        for k in [*self.placed, *self.singles]:  # the seeds, then nodes outside every class
            out.setdefault(id(owner(value[k])), []).append(k)
        return out

    def stacked(self, cls, position: int, grad: bool = False, pad: int = 0):
        """Input `position` of every step of `cls` as one array (a shared node: its own
        array); None if the inputs do not form one block. `pad` inserts unit axes after the
        time axis so that a lower-rank stacked input broadcasts like its members do."""
        an = self.an
        pattern = an.input_pattern(cls, position)
        if pattern is None:
            return None
        if pattern[0] == "shared":
            return (self.grad if grad else self.value).get(pattern[1])
        _, target, d, seed = pattern
        stack = (self.grad_stack if grad else self.value_stack).get(target)
        if stack is None:
            return None
        if seed is not None and self.placed.get(seed, (None,))[0] != self.root(target):
            return None
        lo, hi = self.range.get(cls) or (min(an.members[cls]), max(an.members[cls]))
        view = stack.span(lo + d, hi + d)
        if view is not None and pad:
            view = view[(slice(None),) + (None,) * pad]
        return view

    def reuse_values(self, classes: list) -> None:
        """Give each of these classes ONE step's value buffer that every step reuses (the
        classes `liveness.dead_values` found dead before their next step)."""
        for c in classes:
            arr = self.value_stack[c].arr
            self.stacked_shape[c] = (tuple(arr.shape), self.value_stack[c].offset)
            self.value_stack[c] = Slot(self.m.empty((1,) + arr.shape[1:], dtype=arr.dtype), 0)
            for t, k in self.an.members[c].items():
                self.value[k] = self.value_stack[c].at(t)

    def reuse_grads(self, classes: dict) -> None:
        """Give each of these classes ONE step's gradient buffer, and re-point its column
        views into it: class -> {view class: index} (`liveness.dead_grads`)."""
        for c, views in classes.items():
            stack = self.grad_stack[c]
            arr = self.m.zeros((1,) + stack.arr.shape[1:], dtype=stack.arr.dtype)
            self.hosted.pop(stack.base, None)
            self.grad_buffers[stack.base] = arr
            self.grad_stack[c] = Slot(arr, 0, stack.base)
            for t, k in self.an.members[c].items():
                self.grad[k] = self.grad_stack[c].at(t)
            for v, index in views.items():
                self.grad_stack[v] = Slot(arr[(slice(None),) + index], 0, stack.base)
                for t, k in self.an.members[v].items():
                    self.grad[k] = self.grad_stack[v].at(t)

    def roll_grads(self, buffers: dict) -> None:
        """Give each of these gradient buffers TWO steps, taken in turn (`Ring`): base ->
        (the classes whose gradient stack it is, {node: its step's index in the stack} for
        every node whose gradient lives there: members, a seed in the extra slot, the
        stack's length), as `liveness.rolling_grads` finds them."""
        self._rebuild(buffers, 2, Ring)

    def restore_grads(self, buffers: dict) -> None:
        """Give the buffers `roll_grads` made rings (the same argument) full stacks again."""
        self._rebuild(buffers, None, Stack)

    def _rebuild(self, buffers: dict, steps: int | None, kind) -> None:
        for base, (classes, slots, length) in buffers.items():
            old, stack = self.grad_buffers[base], self.grad_stack[classes[0]]
            steps_now = steps or length
            arr = self.m.empty((steps_now,) + old.shape[1:], dtype=old.dtype)
            self.grad_buffers[base] = arr
            new = kind(arr, stack.offset, base)
            for c in classes:
                self.grad_stack[c] = new
            for k, index in slots.items():
                self.grad[k] = arr[index % steps_now, ...]

    def unhost(self, base: int) -> None:
        """Give gradient buffer `base`, kept in a value buffer (`hosted`), an array of its own:
        every gradient stack and view in it is made again at the same place in the new array
        (where backward would read a value there after writing a gradient over it:
        `liveness.activation_reads_first`)."""
        old = self.grad_buffers[base]
        new = self.m.empty(old.shape, dtype=old.dtype)
        start = old.__array_interface__["data"][0]

        def moved(view):
            offset = view.__array_interface__["data"][0] - start
            return np.ndarray(view.shape, view.dtype, new, offset, view.strides)

        for c, stack in list(self.grad_stack.items()):
            if stack.base == base:
                self.grad_stack[c] = type(stack)(moved(stack.arr), stack.offset, base)
        for k, b in self.base.items():
            if b == base:
                self.grad[k] = moved(self.grad[k])
        self.grad_buffers[base] = new
        self.own_hosted.discard(self.hosted.pop(base, None))

    # ---- gradients ---------------------------------------------------------------------------

    def _pass_target(self, cls):
        """The class whose gradient buffer `cls` can share (`Op.pass_through`), or None.

        Each step's one reader must pass its gradient through at the same step, with the
        same shape, from one class laid out over time. Per reader class, not per node:
        `cls` and a class laid out over time each hold one (shape, dtype) for all their
        steps (`Analysis.stackable`), and a class of one op (`Analysis.same_op`) names it
        once; only each step's reader list is looked up per node."""
        an = self.an
        if cls in self.source or any(r == cls for r, _ in self.placed.values()):
            return None
        target, passes = None, {}  # passes: (reader class, position) -> whether it passes
        consumers, own_meta = an.consumers, an.meta[next(iter(an.members[cls].values()))]
        for t, k in an.members[cls].items():
            uses = consumers.get(k, [])
            if len(uses) != 1:
                return None
            user, position = uses[0]
            if user[2] != t:
                return None
            reader = user if user[2] is None else user[:2]  # class_of, inline
            if reader not in self.range:
                return None
            passing = passes.get((reader, position))
            if passing is None:
                passing = passes[(reader, position)] = self._passes(reader, position, own_meta)
            if passing == "per node":  # a reader class of several ops
                op = an.node[user]["op"]
                passing = position in ops.OPS[op].pass_through and an.meta[user] == own_meta
            if not passing or target not in (None, reader):
                return None
            target = reader
        return target

    def _passes(self, reader, position: int, meta: tuple):
        """Whether every node of class `reader` (laid out over time) passes its gradient
        to input `position` unchanged and holds values of `meta`; "per node" where the
        class applies more than one op."""
        an = self.an
        same = an.same_op(reader)
        if same is None:
            return "per node"
        k0 = next(iter(an.members[reader].values()))
        return position in ops.OPS[same[0]].pass_through and an.meta[k0] == meta

    def _adopted_input(self, cls):
        """(view class, position) if `cls` is an add one of whose inputs, at every step, is
        a view (a column block of a time-batched projection, say) read by that add alone:
        the add's gradient then lives in the view's region, and backward copies nothing
        into it (the GRU's x_n + r * h_n). None otherwise."""
        an = self.an
        same = an.same_op(cls)
        if same is None or not ops.OPS[same[0]].pass_through or same[1]:
            return None
        if any(r == cls for r, _ in self.placed.values()) or cls in self.in_place.values():
            return None
        k0 = an.members[cls][self.range[cls][0]]
        for position in ops.OPS[same[0]].pass_through:
            pattern = an.input_pattern(cls, position)
            if not pattern or pattern[0] != "class" or pattern[2] != 0 or pattern[3] is not None:
                continue
            view = pattern[1]
            if self.source.get(view, ("",))[0] != "view" or self.range.get(view) != self.range[cls]:
                continue
            if an.meta[an.inputs(k0)[position]] != an.meta[k0] or not self._alone(view):
                continue
            if all(
                an.consumers.get(an.inputs(k)[position]) == [(k, position)]
                and an.inputs(k)[position] not in an.outputs
                and an.inputs(k)[position] in an.needs_grad
                for k in an.members[cls].values()
            ):
                return view, position
        return None

    def _alone(self, view) -> bool:
        """Whether no gradient but the view's own reaches its region of the buffer it views:
        that buffer is read only through views, none overlapping this one (the gate blocks
        of one projection). A view of a value that is also read whole, or by an
        overlapping view, shares its region with those readers' gradients."""
        an, (_, parent, index) = self.an, self.source[view]
        if parent in self.source and (self.source[parent][0] != "view" or not self._alone(parent)):
            return False
        readers = an.reader_classes(parent)
        if any(self.source.get(c, ("",))[:2] != ("view", parent) for c in readers):
            return False
        k0 = next(iter(an.members[parent].values()))
        cover = np.zeros(an.meta[k0][0], dtype=int)
        for c in readers:
            cover[self.source[c][2]] += 1
        return bool(np.all(cover[index] == 1))

    def grad_source(self, cls) -> tuple | None:
        """Where class `cls`'s gradient lives: None, a buffer of its own; ("alias", c, None),
        class c's buffer; ("view", c, index), the view [index] of c's; ("pass", c, None), the
        buffer of the class c it passes g to; ("adopt", c, position), that of the view class
        c its input `position` is (`_adopted_input`)."""
        if cls in self.source:
            return self.source[cls]
        target = self._pass_target(cls)
        if target is not None:
            return ("pass", target, None)
        adopted = self._adopted_input(cls)
        if adopted:
            return ("adopt", adopted[0], adopted[1])
        x = self._gradient_under_input(cls) if self.inline_derivatives else None
        return None if x is None else ("under", x, None)

    def _gradient_under_input(self, cls):
        """The class x, for `cls` = f(x) whose VJP is g * f'(y) from y alone (`Op.local`:
        tanh, sigmoid), where y's gradient can live where x's will: at each step x is read by
        y alone and dL/dx is written by y's VJP alone, which reads dL/dy at each element
        before writing dL/dx there (a compiled chain's line), and nothing reads dL/dy after
        it. So dL/dy takes the gradient buffer of x (an RNN's dL/dh, in the buffer of
        x W_ih + b, which backward never reads: `liveness.dead_in_backward`), as hand-written
        NumPy does `dG[t] *= 1 - h[t]**2`. An initial state's gradient, in the slot before
        y's stack, then takes an array of its own: only where no class off the recurrence
        reads y a step apart (its VJP over all steps would want that slot in the stack).
        Only for y on a recurrence, which runs step by step (a VJP over all steps writes
        dL/dx by NumPy calls); none where x's gradient is not its own or has views. The
        emitter checks the order (`liveness.check_gradients_under_inputs`)."""
        an = self.an
        same = an.same_op(cls)
        if same is None or same[1] or ops.OPS[same[0]].local_c_expr is None or cls in self.source:
            return None
        if cls not in an.recurrent:  # else it may run over all steps at once, its VJP too
            return None
        pattern = an.input_pattern(cls, 0)
        if not pattern or pattern[0] != "class" or pattern[2] != 0 or pattern[3] is not None:
            return None
        x = pattern[1]
        if x not in self.range or self.range[x] != self.range[cls] or x in self.source:
            return None
        if any(target == x for _, target, _ in self.source.values()) or x in self.activations:
            return None
        if any(r == x for r, _ in self.placed.values()) or self.grad_source(x) is not None:
            return None
        if not self._each_read_alone(cls, 0):
            return None
        return x if self._no_shifted_batched_reader(cls) else None

    def _no_shifted_batched_reader(self, cls) -> bool:
        """Whether every class reading `cls` (or an alias of it) at another step is on a
        recurrence: it then runs step by step, never over a stacked span of the gradient."""
        an, names = self.an, {cls} | {c for c, s in self.source.items() if s[1] == cls}
        for c in self.classes:
            if c in an.recurrent:
                continue
            k0 = next(iter(an.members[c].values()))
            for position in range(len(an.inputs(k0))):
                pattern = an.input_pattern(c, position)
                if pattern and pattern[0] == "class" and pattern[1] in names and pattern[2]:
                    return False
        return True

    def _resolve_grad_stack(self, cls, sources: dict):
        if cls in self.grad_stack:
            return self.grad_stack[cls]
        kind, target, index = sources.get(cls) or (None, None, None)
        if kind is None:
            value = self.value_stack[cls]
            shape, offset = self.stacked_shape.get(cls, (value.arr.shape, value.offset))
            arr = self._grad_buffer(shape, value.arr.dtype, cls)
            self.grad_buffers.append(arr)
            stack = Stack(arr, offset, len(self.grad_buffers) - 1)
        else:
            parent = self._resolve_grad_stack(target, sources)
            stack = (
                parent
                if kind != "view"  # alias, pass, adopt and under: the very same buffer
                else Stack(parent.arr[(slice(None),) + index], parent.offset, parent.base)
            )
            if kind == "under":
                self.under[cls] = target
        self.grad_stack[cls] = stack
        return stack

    def _grad_buffer(self, shape, dtype, cls):
        """A buffer for the gradient stack of `cls`: a value buffer (`add_grads`) of that
        shape and dtype, holding whatever forward last left in it, or a new one, not zeroed
        either: backward zero-fills, every call, what it reads before writing
        (`backward.Tracker`). Zeros would cost more than time: calloc served from the heap
        writes every page, and a stack that `reuse_grads` then drops stays resident
        (medium GRU: 16 MiB of peak RSS)."""
        own = self.value_stack[cls].arr
        if cls in self.own_hosted and tuple(own.shape) == tuple(shape) and own.dtype == dtype:
            self.hosted[len(self.grad_buffers)] = cls
            return own
        self.own_hosted.discard(cls)
        for i, host in enumerate(self._hosts):
            arr = self.value_stack[host].arr
            if tuple(arr.shape) == tuple(shape) and arr.dtype == dtype:
                del self._hosts[i]
                self.hosted[len(self.grad_buffers)] = host
                return arr
        return self.m.empty(shape, dtype=dtype)

    def _grads(self) -> None:
        an = self.an
        needs = an.needs_grad
        grad_classes = [c for c in self.classes if any(k in needs for k in an.members[c].values())]
        sources = {c: self.grad_source(c) for c in grad_classes}
        for c in grad_classes:
            self._resolve_grad_stack(c, sources)
        for c in grad_classes:
            members, stack = an.members[c], self.grad_stack[c]
            self.grad.update(stack.views(members))
            self.base.update(dict.fromkeys(members.values(), stack.base))
        for seed, (root, side) in self.placed.items():
            if root in self.under and seed in needs:  # x's stack has no slot for it
                shape, dtype = an.meta[seed]
                self.base[seed] = len(self.grad_buffers)
                self.grad_buffers.append(self.m.zeros(shape, dtype=dtype))
                self.grad[seed] = self.grad_buffers[-1]
            elif root in self.grad_stack and root not in self.under:
                arr = self.grad_stack[root].arr
                self.grad[seed] = arr[0, ...] if side == "pre" else arr[arr.shape[0] - 1, ...]
                self.base[seed] = self.grad_stack[root].base
        # most nodes are in a class's buffer by now: the rest found in C, in graph order
        for k in sorted(needs.difference(self.grad), key=an.pos.__getitem__):
            if k in self.alias_of and self.alias_of[k] in self.grad:
                index = analysis.view_index(
                    an.node[k]["op"], an.node[k]["attrs"], an.meta[self.alias_of[k]][0]
                )
                self.grad[k] = self.grad[self.alias_of[k]][index]
                self.base[k] = self.base[self.alias_of[k]]
            else:
                shape, dtype = an.meta[k]
                self.base[k] = len(self.grad_buffers)
                self.grad_buffers.append(self.m.zeros(shape, dtype=dtype))
                self.grad[k] = self.grad_buffers[-1]
        self._cells(grad_classes, sources)

    def _cells(self, grad_classes, sources) -> None:
        """cell: the node whose gradient a node's gradient *is*; children: view regions."""
        an = self.an
        for c in grad_classes:
            kind = (sources.get(c) or (None,))[0]
            if kind not in ("alias", "pass", "adopt"):
                continue  # its nodes' gradients are their own cells (or views: below)
            for k in an.members[c].values():
                if kind == "alias":
                    self.cell[k] = an.inputs(k)[1]
                elif kind == "pass":
                    self.cell[k] = an.consumers[k][0][0]
                elif kind == "adopt":  # the third field is the adopted input's position
                    self.cell[k] = an.inputs(k)[sources[c][2]]
        for k in list(filter(self.alias_of.__contains__, self.grad)):  # a view's, in C
            if k not in self.cell:
                self.cell[k] = k
                self.children.setdefault(self.alias_of[k], []).append(k)
        self.cell = resolve_cells(self.cell, self.grad)
        self.children = {self.cell[p]: kids for p, kids in self.children.items()}
        self.parent = {k: p for p, kids in self.children.items() for k in kids}
        self.covered, self.overlapping, memo = set(), set(), {}
        for p, kids in self.children.items():
            signature = (class_of(p), tuple(class_of(k) for k in kids))
            if signature not in memo:
                memo[signature] = self._paint(p, kids)
            covered, overlapping = memo[signature]
            if covered:
                self.covered.add(p)
            self.overlapping.update(kids[i] for i in overlapping)

    def _paint(self, parent, kids) -> tuple[bool, set]:
        """(whether the kids' gradient views together cover every element of the parent's
        (a slice of some columns does not), the positions of kids that overlap another
        one): found by painting the views into the parent's buffer, which holds nothing
        yet. One class's steps all give the same answer."""
        whole = self.grad[parent]
        whole[...] = 0
        for k in kids:
            self.grad[k][...] += 1
        covered = bool((whole > 0).all())
        overlapping = {i for i, k in enumerate(kids) if (self.grad[k] > 1).any()}
        whole[...] = 0
        return covered, overlapping
