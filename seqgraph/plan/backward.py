"""The backward half of a plan: VJP kernels in reverse unit order, written or accumulated.

Buffers are reused from call to call, so every gradient must be *written* by its first
contribution and *added to* by later ones. Which is which is decided here, once, by walking
the kernels in the order they will run (`Tracker`); a buffer that some reader could see before
anything is written (an unused state, a slice nobody differentiates) is zero-filled at the
start of backward instead.

`emit` is the pipeline stage: it takes the `Schedule` (the layout's gradient buffers by now
as liveness left them), the classes whose shared-input gradients are summed after the loop
(`schedule.deferred`) and the keys to differentiate, and hands on a `Backward`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter, ne

from seqgraph.engine import ops
from seqgraph.errors import GraphError
from seqgraph.plan import ckernels, kernels_vjp, listing, liveness, local_factors, stamps
from seqgraph.plan.analysis import class_of
from seqgraph.plan.kernels import Context
from seqgraph.plan.listing import Kernels, grad
from seqgraph.plan.schedule import Schedule, stacked_inputs


class Tracker:
    """Which gradient cells have been written so far, in emission order."""

    def __init__(self, layout):
        self.lay = layout
        self.written: set = set()
        self.zero: set = set()  # indices of gradient buffers to zero-fill first

    def state(self, cell) -> bool | None:
        """True: written; None: partly written; False: not yet. A view's gradient is
        written when the gradient it is a region of is; a gradient with views is written
        when views covering all of it are (`Layout.covered`), partly when some are, and
        so is a view when another view overlapping it is (`Layout.overlapping`)."""
        lay, written, up = self.lay, self.written, cell
        while up is not None:
            if up in written:
                return True
            up = lay.parent.get(up)
        # the set tests in C (the cell itself is not written by now)
        if cell in lay.overlapping and not written.isdisjoint(lay.children[lay.parent[cell]]):
            return None  # another view wrote some of its elements: zero-fill, then add
        kids = lay.children.get(cell)
        if kids and cell in lay.covered and written.issuperset(kids):
            return True
        if kids and not written.isdisjoint(kids):
            return None
        return False

    def target(self, keys) -> bool:
        """Record a contribution to these nodes' gradients; True if it must add."""
        if len(keys) == 1:
            return self.target_one(keys[0])
        cells = {self.lay.cell[k] for k in keys}
        states = [self.state(c) for c in cells]
        mixed = None in states or any(c in self.lay.children for c in cells) and not all(states)
        if mixed or (any(states) and not all(states)):
            self.zero.update(self.lay.base[k] for k in keys)
            add = True
        else:
            add = bool(states and states[0])
        for c in cells:
            self.written.add(c)
            self.written.update(self.lay.children.get(c, ()))
        return add

    def target_one(self, key) -> bool:
        """`target([key])`, the case of nearly every VJP, without its sets and lists."""
        lay, written = self.lay, self.written
        cell = lay.cell[key]
        kids = lay.children.get(cell)
        if kids is None and cell not in lay.parent:  # no views, no view of another: `state`
            add = cell in written  # is whether it is written
            written.add(cell)
            return add
        state = self.state(cell)
        if state is None or (cell in lay.children and not state):
            self.zero.add(lay.base[key])
            add = True
        else:
            add = bool(state)
        written.add(cell)
        if kids:
            written.update(kids)
        return add

    def ready(self, keys) -> None:
        """These gradients are about to be read: zero-fill any that nothing wrote."""
        cells, written, state = self.lay.cell, self.written, self.state
        for k in keys:
            cell = cells[k]
            if cell not in written and not state(cell):  # written: `state` says so first
                self.zero.add(self.lay.base[k])


@dataclass
class Backward:
    """The backward kernels of a plan, in run order (`kernels.kernels`, each with its listing
    entry), and `zero`: the gradient buffers (indices into `Layout.grad_buffers`) to
    zero-fill before they run."""

    kernels: Kernels
    zero: set
    factors: list = field(default_factory=list)  # the `local_factors.Factor`s, in run order
    transposes: list = field(default_factory=list)  # the W^T copies, made as backward starts


def emit(
    sched: Schedule,
    ctx: Context,
    deferred: dict,
    loss,
    wanted: list,
    batch_derivatives: bool = True,
) -> Backward:
    """VJP kernels from `loss` back to every node; `wanted`: the keys (parameters, initial
    states) whose gradients a caller reads; `batch_derivatives`: local factors first."""
    factors_in_gradients, transposes_in_gradients = True, True
    while True:
        emitter = _Emitter(sched, ctx, factors_in_gradients, transposes_in_gradients)
        try:
            return emitter.run(deferred, loss, wanted, batch_derivatives)
        except _FactorOverwritten:  # a factor in a gradient is not its first write: keep apart
            factors_in_gradients = False
        except _TransposeOverwritten:  # a W^T in dW is read after dW is written: its own
            transposes_in_gradients = False
        except _ActivationOverwritten as failed:  # gradients over activations read later
            for base in failed.bases:
                sched.layout.unhost(base)


class _FactorOverwritten(Exception):
    """A local factor waiting in its input's gradient would be overwritten or added to
    before its multiply reads it (`local_factors.check_in_gradients`)."""


class _ActivationOverwritten(Exception):
    """A gradient kept over activations (`liveness.gradients_over_activations`) would be
    written before backward's last read of an activation there, or zero-filled first
    (`liveness.activation_reads_first`): `bases`, those gradient buffers."""

    def __init__(self, bases: list):
        super().__init__(bases)
        self.bases = bases


class _TransposeOverwritten(Exception):
    """A W^T kept in W's gradient buffer would be read after that gradient's first write
    (or the buffer is zero-filled first): `_Emitter.check_transposes_in_gradients`."""


class _Emitter:
    """The state of one backward emission: the gradient tracker, the kernels so far and the
    transposed weight buffers they asked for."""

    def __init__(
        self,
        sched: Schedule,
        ctx: Context,
        factors_in_gradients: bool = True,
        transposes_in_gradients: bool = True,
    ):
        self.sched, self.an, self.lay, self.ctx = sched, sched.an, sched.layout, ctx
        self.factors_in_gradients = factors_in_gradients
        self.transposes_in_gradients = transposes_in_gradients
        self.factor_writes: dict = {}  # (class, t) -> whether its factor's multiply adds
        self.tracker = Tracker(sched.layout)
        self.out = Kernels(partial(describe, sched))
        self.transposes: dict = {}  # filled by _transposed while the VJPs are emitted
        # W -> its W^T's last reader and dW's first writer (kernel indices, with whether it
        # adds), for a W^T kept in dW's buffer (`_transposed`)
        self.hosted_transposes: dict = {}
        self.statements: dict = {}  # kernel index -> its `ckernels.Statement`, if it is one
        # kernel index -> the `kernels_vjp.vjp` arguments of a statement that writes (not
        # adds), its NumPy kernel made by `_compile_chains` only where no chain runs it
        self.unmade: dict = {}
        self.factor_kernels: list = []  # indices of the local factors' own kernels
        # the elementwise VJPs will run as compiled chains (`_compile_chains`)
        self.chains_compile = ctx.name == "numpy" and ckernels.enabled()

    def run(self, deferred: dict, loss, wanted: list, batch_derivatives: bool) -> Backward:
        an, lay, out, tracker = self.an, self.lay, self.out, self.tracker
        has = an.has_grad(loss)
        seed = lay.grad[loss]
        out.add(lambda: seed.fill(1), ("=", "fill 1", ((grad(loss), seed),), (), None))
        tracker.written.add(lay.cell[loss])
        factors, folds, skips = self._local_factors() if batch_derivatives else ({}, {}, {})
        remaining = {c: len(an.members[c]) for c in deferred}
        # class -> (the input positions its nodes' VJPs skip, `class_wanted` or None where
        # a factor is folded in, whether it has a factor, its fold, whether it is deferred):
        # made once, so that a unit hashes its class once
        of_class: dict = {}
        cells, base, zero, state = lay.cell, lay.base, tracker.zero, tracker.state
        written = tracker.written
        for unit in reversed(self.sched.units):
            if unit[0] == "class":
                self._class_vjp(unit[1], has, skips.get(unit[1], set()))
                continue
            k = unit[1]
            c = k if k[2] is None else k[:2]  # `class_of`, inline: once per unit
            facts = of_class.get(c)
            if facts is None:
                skip = set(deferred.get(c, ())) | skips.get(c, set())
                folded = c in factors or c in folds
                positions = None if folded else class_wanted(an, lay, c, skip)
                facts = of_class[c] = (skip, positions, c in factors, folds.get(c), c in remaining)
            skip, positions, factored, fold, counted = facts
            if k in has and positions == []:  # what `_node_vjp` does: its gradient is ready
                cell = cells[k]
                if cell not in written and not state(cell):  # written: `state` says so first
                    zero.add(base[k])
            elif k in has:
                factor = factors[c].stack.at(k[2]) if factored else None
                upstream = an.members[fold[0]][k[2]] if fold else None  # the product it feeds
                self._node_vjp(k, skip, factor, upstream, positions)
            if counted:
                remaining[c] -= 1
                if not remaining[c]:
                    self._deferred_vjp(c, deferred[c])
        if not local_factors.check_in_gradients(lay, factors, self.factor_writes, tracker.zero):
            raise _FactorOverwritten
        if not self.check_transposes_in_gradients():
            raise _TransposeOverwritten
        over = {k for nodes in liveness.hosted_read_views(lay).values() for k in nodes}
        if lay.activations or lay.under or over:
            if factors:  # a factor of all steps would read values a step wrote over
                raise GraphError("plan: values under gradients need inline local derivatives")
            failed = liveness.activation_reads_first(an, lay, out.records, tracker.zero)
            if failed:
                raise _ActivationOverwritten(failed)
            liveness.check_gradients_under_inputs(an, lay, out.records)
        if self.ctx.name == "numpy":
            self._compile_chains()
        if lay.activations or lay.under or over:  # after the chains: what runs alone
            self._vjps_apart_from_their_reads(over)
        copies = [self._transpose_kernel(bt, value) for bt, value in self.transposes.values()]
        entries = [
            ("=", "transpose", ((_transposed_name(k), bt),), ((k, value),), None)
            for k, (bt, value) in self.transposes.items()
        ]
        out.insert(1, copies, entries)
        tracker.ready([k for k in wanted if k in lay.grad])
        transposes = [bt for bt, _ in self.transposes.values()]
        return Backward(out, tracker.zero, list(factors.values()), transposes)

    def _vjps_apart_from_their_reads(self, over: set) -> None:
        """The VJP of y = f(x) whose dL/dx is written over y (`Layout.activations`) or over
        dL/dy (`Layout.under`), and a VJP writing a gradient over the value of its own input
        (`over`: `liveness.hosted_read_views`): as NumPy calls (where its chain does not compile),
        first into scratch, then copied there, since `local_out` may write before it reads
        (a sigmoid's 1 - y, then times y; then times g). Run after `_compile_chains`: in a
        compiled chain the VJP is one C line that reads each operand at an element before
        writing there, so only the VJPs left alone (at T = 10,000, none of 100,000: making
        them all first took a second) get the scratch."""
        an, lay, ctx, out = self.an, self.lay, self.ctx, self.out
        for index, record in enumerate(out.records):
            if record[0] != "vjp":
                continue
            k, position = record[1], record[2]
            c = class_of(k)
            target = an.inputs(k)[position]
            mine = position == 0 and (c in lay.activations or c in lay.under)
            if not mine and target not in over:
                continue
            g = lay.grad[record[4]]
            node, dest = an.node[k], lay.grad[target]
            ins = [lay.value[i] for i in node["inputs"]]
            part = ctx.tmp(dest.shape, dest.dtype, tag=ACTIVATION_PART_TAG)
            vjp, attrs = kernels_vjp.vjp, node["attrs"]
            kernel = vjp(ctx, node["op"], position, part, False, g, lay.value[k], ins, attrs)
            out.kernels[index] = partial(_then_copy, kernel, ctx.m.copyto, dest, part)

    def _compile_chains(self) -> None:
        """Runs of elementwise VJP kernels (a step's gate gradients) as one compiled C loop
        each (`ckernels.chains`), where the kernels can be; found once per step structure and
        stamped over the steps (`stamps`). The NumPy kernels of the statements that write
        (`unmade`) are made here for those that no chain runs: at T = 10,000 that is none of
        200,000, and making them all cost 0.3 s. Such a kernel (`kernels_vjp._direct_vjp`)
        takes no scratch from `ctx.tmp`, so the plan's buffers stay the ones it had when
        every kernel was made as its VJP was emitted."""
        out = self.out
        statements = [self.statements.get(i) for i in range(len(out.kernels))]
        runs, compiled = stamps.compile_chains(statements, frozenset(self.factor_kernels))
        chained = set()
        for (lo, hi), kernel in zip(runs, compiled, strict=True):
            if kernel is not None:
                chained.update(range(lo, hi))
        for index in self.unmade.keys() - chained:
            out.kernels[index] = kernels_vjp.vjp(self.ctx, *self.unmade[index])
        kernels, records, start = [], [], 0
        for (lo, hi), kernel in zip(runs, compiled, strict=True):
            if kernel is None:
                continue
            kernels += out.kernels[start:lo] + [kernel]
            records += out.records[start:lo] + [("fused", tuple(out.records[lo:hi]))]
            start = hi
        out.kernels[:] = kernels + out.kernels[start:]
        out.records[:] = records + out.records[start:]

    def _local_factors(self) -> tuple:
        """(factors, folds, skips) of `local_factors`, their kernels emitted: factors, class
        -> its `Factor`; folds, class -> (product class, position); skips: product class ->
        the input positions whose gradient a fold makes needless."""
        sched, lay, m, out = self.sched, self.lay, self.ctx.m, self.out
        factors, folds, skips = {}, {}, {}
        for f in local_factors.factors(sched, m, self.factors_in_gradients):  # in run order
            c, (lo, hi) = f.cls, lay.range[f.cls]
            name, buffer = (c[0], f"{c[1]}'", (lo, hi)), f.stack.span(lo, hi)
            value = lay.value_stack[c].span(lo, hi)
            expr = ops.OPS[self.an.same_op(c)[0]].local_c_expr
            if expr is not None and buffer.dtype in ckernels.C_TYPES:
                expr = expr.replace("{t}", ckernels.C_TYPES[buffer.dtype])
                self.factor_kernels.append(len(out.kernels))  # 2 or 3 NumPy passes: a loop alone
                self.statements[len(out.kernels)] = ckernels.Statement(
                    buffer, False, expr, (value,)
                )
            reads = (((c[0], c[1], (lo, hi)), value),)
            out.add(f.kernel, ("=", "local factor", ((name, buffer),), reads, (lo, hi)))
            factors[c] = f
            if f.reader is None:
                continue
            name_other = (f.reader[0], f"{f.reader[1]}.in{1 - f.position}", (lo, hi))
            reads = ((name, buffer), (name_other, f.other))
            self.statements[len(out.kernels)] = kernels_vjp.statement(
                "mul", 0, buffer, False, buffer, None, [buffer, f.other], {}
            )
            out.add(f.fold, ("=", "mul", ((name, buffer),), reads, (lo, hi)))
            folds[c] = (f.reader, f.position)
            skips.setdefault(f.reader, set()).add(f.position)
        return factors, folds, skips

    def _transposed(self, op: str, position: int, inputs: tuple):
        """For dx of x @ W with W outside time (a parameter, a fused gate matrix): a buffer
        that holds W^T contiguous, refreshed once when backward starts (`run`). OpenBLAS
        multiplies by a transposed view more slowly: 55 vs 35 us per (32, 512) x (512, 128)
        step here, and the recurrent product runs once per step."""
        transposed = ops.OPS[op].vjp_transposed_right and position == 0 and len(inputs) == 2
        right = inputs[1] if transposed else None
        if right is None or right[2] is not None or len(self.an.meta[right][0]) != 2:
            return None
        if right not in self.transposes:
            value = self.lay.value[right]
            buffer = self._gradient_region_for_transpose(right)
            if buffer is None:
                buffer = self.ctx.m.empty(value.shape[::-1], dtype=value.dtype)
            self.transposes[right] = (buffer, value)
        if right in self.hosted_transposes:  # this kernel reads W^T: dW must come later
            self.hosted_transposes[right][0] = len(self.out.kernels)
        return self.transposes[right][0]

    def _transpose_kernel(self, bt, value):
        """bt = value^T, refreshed when backward starts: a compiled loop over 32 x 32 tiles
        where the chains compile (NumPy's strided copy of a (1024, 256) matrix takes 3-4
        times as long), else NumPy's copy."""
        m = self.ctx.m
        tiled = self.chains_compile and value.ndim == 2 and value.dtype in ckernels.C_TYPES
        if tiled and value.flags.c_contiguous and bt.flags.c_contiguous:
            text = TRANSPOSE_C.replace("{t}", ckernels.C_TYPES[value.dtype])
            kernel = ckernels.function_kernel(text, [*value.shape, value, bt])
            if kernel is not None:
                return kernel
        return partial(m.copyto, bt, value.T)

    def _gradient_region_for_transpose(self, right):
        """W^T (refreshed when backward starts) in W's own gradient buffer, where that buffer
        holds dW alone: dW of a product in the loop is summed over the steps after it (one
        batched product: `schedule.deferred`), so W^T's last read comes before dW's first
        write, and W^T needs no buffer of its own. `run` checks the order once the kernels
        are emitted (`check_transposes_in_gradients`); None: W^T takes a buffer."""
        lay = self.lay
        if not self.transposes_in_gradients or right not in lay.grad or right not in lay.base:
            return None
        index, g = lay.base[right], lay.grad[right]
        buffer = lay.grad_buffers[index]
        sole = buffer.size == g.size and g.flags.c_contiguous and index not in lay.hosted
        if not sole or sum(1 for b in lay.base.values() if b == index) != 1:
            return None
        self.hosted_transposes[right] = [-1, None]  # [last W^T read, (first dW write, adds)]
        return g.reshape(g.shape[::-1])

    def _target(self, keys: list) -> bool:
        """`tracker.target` for the kernel emitted next, noting dW's first write where W^T
        waits in dW's buffer."""
        add = self.tracker.target(keys)
        for k in keys:
            if k in self.hosted_transposes:
                self._note_first_write(k, add)
        return add

    def _note_first_write(self, right, add: bool) -> None:
        """The kernel emitted next writes (or adds to) dW, where W^T waits in dW's buffer:
        noted if it is the first."""
        hosted = self.hosted_transposes[right]
        if hosted[1] is None:
            hosted[1] = (len(self.out.kernels), add)

    def check_transposes_in_gradients(self) -> bool:
        """Every W^T kept in dW's buffer is read only before dW's first write, which writes
        (not adds), and the buffer is not zero-filled when backward starts."""
        lay, zero = self.lay, self.tracker.zero
        for right, (last_read, first_write) in self.hosted_transposes.items():
            if lay.base[right] in zero or first_write is None:
                return False
            if first_write[1] or first_write[0] <= last_read:
                return False
        return True

    def _node_vjp(self, k, skip, factor=None, upstream=None, wanted=None) -> None:
        """VJP kernels of node k; with `factor` (local_factors) its input's gradient is g
        times the factor, g being k's gradient or, where k is folded into the product
        `upstream`, that product's; `wanted`: the positions that get a kernel, if its class
        says (`class_wanted`)."""
        an, lay, ctx, tracker = self.an, self.lay, self.ctx, self.tracker
        source_of_g = upstream if upstream is not None else k
        node, g = an.node[k], lay.grad[source_of_g]
        op, inputs, cells = node["op"], node["inputs"], lay.cell
        entry = ops.OPS[op]
        cell = cells[source_of_g]  # `tracker.ready([source_of_g])`, written cells asked first
        if cell not in tracker.written and not tracker.state(cell):
            tracker.zero.add(lay.base[source_of_g])
        if entry.variadic_sum and self._addn_vjp(k, g, source_of_g):
            return
        if wanted is None:  # the inputs that get a kernel, found before anything is
            needs, own = an.needs_grad, cells[k]  # looked up for them
            wanted = [
                i
                for i, source in enumerate(inputs)
                if source in needs and i not in skip and cells[source] != own
            ]
        if not wanted:
            return
        ins, value = list(map(lay.value.__getitem__, inputs)), lay.value[k]
        grads, out, statements = lay.grad, self.out, self.statements
        compiles, hosted = self.chains_compile, self.hosted_transposes
        for i in wanted:
            source, index = inputs[i], len(out.kernels)
            add = tracker.target_one(source)  # `_target([source])`, one call fewer
            if source in hosted:
                self._note_first_write(source, add)
            if factor is not None:  # g * (d out / d input), the factor computed before the loop
                self.factor_writes[(class_of(k), k[2])] = add
                how = ("mul", 0, grads[source], add, g, None, [g, factor], {})
                statements[index] = kernels_vjp.statement(*how)
                out.add(kernels_vjp.vjp(ctx, *how), ("factor", k, i, add, source_of_g, factor))
                continue
            bt = self._transposed(op, i, inputs) if entry.vjp_transposed_right else None
            if add and bt is not None and compiles:
                self._product_then_add(k, i, source, g, value, ins, bt, source_of_g)
                continue
            how = (op, i, grads[source], add, g, value, ins, node["attrs"])
            record = ("vjp", k, i, add, source_of_g, bt)
            if bt is None:
                statement = statements[index] = kernels_vjp.statement(*how)
                if statement is not None and not add and compiles:
                    self.unmade[index] = how
                    out.add(None, record)
                    continue
            out.add(kernels_vjp.vjp(ctx, *how, bt), record)

    def _addn_vjp(self, k, g, source_of_g) -> bool:
        """The VJP of an addn that sums every step of a class (`Analysis.addn_of_class`):
        one kernel into that class's stacked gradient; False if k is no such sum."""
        an, lay, m = self.an, self.lay, self.ctx.m
        total = an.addn_of_class(k)
        if total is None:
            return False
        members = [an.members[total][t] for t in sorted(an.members[total])]
        targets = [s for s in members if s in an.needs_grad]
        if not targets:
            return True
        dest, add = lay.grad_stack[total].span(*lay.range[total]), self._target(targets)
        kernel = (lambda: m.add(dest, g, out=dest)) if add else (lambda: m.copyto(dest, g))
        self.out.add(kernel, ("addn", k, total, add, source_of_g))
        return True

    def _product_then_add(self, k, i, source, g, value, ins, bt, source_of_g) -> None:
        """dx += g @ W^T as the product into scratch, then the add as a statement of its own:
        the add then joins the compiled chain of the step's elementwise VJPs that comes next
        and reads dx (an RNN's dh += dgates W_hh^T, then the gate gradients of the step
        before), instead of a NumPy add at every step."""
        ctx, dest, node = self.ctx, self.lay.grad[source], self.an.node[k]
        part = ctx.tmp(dest.shape, dest.dtype, tag=PRODUCT_PART_TAG)
        kernel = kernels_vjp.vjp(ctx, node["op"], i, part, False, g, value, ins, {}, bt)
        self.out.add(kernel, ("product part", k, i, False, source_of_g, bt, part))
        self.statements[len(self.out.kernels)] = ckernels.Statement(dest, True, "{0}", (part,))
        self.out.add(partial(ctx.m.add, dest, part, out=dest), ("add part", k, i, True, part))

    def _class_vjp(self, cls, has: set, skip=()) -> None:
        an, lay, ctx = self.an, self.lay, self.ctx
        kind, attrs, ins = self.sched.batched[cls]
        op = an.same_op(cls)[0]
        members = [an.members[cls][t] for t in sorted(an.members[cls])]
        if not any(k in has for k in members):
            return
        self.tracker.ready(members)
        span = lay.range[cls]
        g, value = lay.grad_stack[cls].span(*span), lay.value_stack[cls].span(*span)
        in_nd = [len(an.meta[i][0]) for i in an.inputs(members[0])]
        dests = stacked_inputs(an, lay, cls, op, in_nd, members[0], grad=True)
        inputs = list(map(an.inputs, members))  # each member's, asked once for all positions
        for i in range(len(in_nd)):
            if i in skip:
                continue
            sources = list(map(itemgetter(i), inputs))
            targets = [s for s in dict.fromkeys(sources) if s in an.needs_grad]
            pairs = zip(sources, members, strict=True)
            if not targets or all(lay.cell.get(s) == lay.cell[k] for s, k in pairs):
                continue
            if dests[i] is None:
                raise GraphError(f"plan: no stacked gradient for input {i} of {cls}")
            add = self._target(targets)
            bt = None
            if kind == "reduce_rest":
                kernel = _reduce_rest_vjp(ctx, op, dests[i], add, g)
            else:
                bt = self._transposed(op, i, an.inputs(members[0]))
                kernel = kernels_vjp.vjp(ctx, op, i, dests[i], add, g, value, ins, attrs, bt)
            self.out.add(kernel, ("class", cls, i, add, dests[i], bt))

    def _deferred_vjp(self, cls, positions) -> None:
        an, lay, ctx = self.an, self.lay, self.ctx
        op, attrs = an.same_op(cls)
        members = [an.members[cls][t] for t in sorted(an.members[cls])]
        self.tracker.ready(members)
        span = lay.range[cls]
        g, value = lay.grad_stack[cls].span(*span), lay.value_stack[cls].span(*span)
        in_nd = [len(an.meta[i][0]) for i in an.inputs(members[0])]
        ins = stacked_inputs(an, lay, cls, op, in_nd, members[0])
        for i in positions:
            source = an.inputs(members[0])[i]
            add = self._target([source])
            kernel = kernels_vjp.vjp(ctx, op, i, lay.grad[source], add, g, value, ins, attrs)
            self.out.add(kernel, ("deferred", cls, i, add, None, None))


def class_wanted(an, lay, cls, skip: set) -> list | None:
    """The input positions at which `_node_vjp` emits a kernel for every node of the
    per-step class `cls` (given the positions it skips), or None where that is a fact of
    each node: one op that is no sum of a class (`_addn_vjp`) and, at each other position,
    either every step's input needs a gradient and has a gradient cell other than the
    step's own, or none does (no gradient needed, or the step's own cell: a view's input,
    whose gradient the view's is a region of). Decided column by column over the class's
    steps, in C, not node by node. [] (an idle class): each node's VJP comes down to its
    first step (its gradient zero-filled if nothing wrote it)."""
    same = an.same_op(cls) if len(cls) == 2 else None
    if same is None or ops.OPS[same[0]].variadic_sum:
        return None
    columns = an.member_inputs(cls)
    if len(set(map(len, columns))) != 1:
        return None
    needs, cells = an.needs_grad, lay.cell
    own = None  # the members' cells, fetched when a position needs them
    wanted = []
    for i in range(len(columns[0])):
        if i in skip:
            continue
        sources = list(map(itemgetter(i), columns))
        if needs.isdisjoint(sources):
            continue
        if own is None:
            own = list(map(cells.get, an.members[cls].values()))
        if None in own or not needs.issuperset(sources):
            return None
        source_cells = list(map(cells.get, sources))
        if all(map(ne, source_cells, own)):
            wanted.append(i)
        elif source_cells != own:
            return None
    return wanted


def describe(sched: Schedule, record: tuple) -> tuple:
    """The listing entry (`listing.py`) of a backward kernel from what `_Emitter` recorded:
    ("=", *entry) as is, or what a VJP kernel was built from, so that emitting one costs a
    tuple of references, and names and buffers are looked up only to print."""
    if record[0] == "=":
        return record[1:]
    if record[0] == "fused":  # a compiled run of elementwise VJPs (`_compile_chains`)
        return listing.joined([describe(sched, r) for r in record[1]])
    if record[0] in ("class", "deferred"):
        return _stacked_entry(sched, record)
    an, lay = sched.an, sched.layout
    if record[0] == "addn":
        _, k, total, add, upstream = record
        dest = lay.grad_stack[total].span(*lay.range[total])
        name = grad((total[0], total[1], lay.range[total]))
        return _vjp_entry("addn", add, name, dest, [(grad(upstream), lay.grad[upstream])], k[2])
    if record[0] == "add part":  # dx += the product's part (`_Emitter._product_then_add`)
        _, k, i, _, part = record
        source = an.inputs(k)[i]
        reads = [(_part_name(source), part)]
        return _vjp_entry("add", True, grad(source), lay.grad[source], reads, k[2])
    kind, k, i, add, upstream, extra = record[:6]
    node, source = an.node[k], an.inputs(k)[i]
    g = (grad(upstream), lay.grad[upstream])
    if kind == "factor":  # extra: the local factor
        reads = [g, ((k[0], f"{k[1]}'", k[2]), extra)]
        return _vjp_entry("mul", add, grad(source), lay.grad[source], reads, k[2])
    reads = [g] + [(j, lay.value[j]) for j in node["inputs"]]
    if extra is not None:  # reads W^T, not W
        reads[-1] = (_transposed_name(node["inputs"][1]), extra)
    op = f"vjp[{i}] {node['op']}"
    if kind == "product part":  # into scratch: its add follows
        return _vjp_entry(op, False, _part_name(source), record[6], reads, k[2])
    return _vjp_entry(op, add, grad(source), lay.grad[source], reads, k[2])


def _part_name(source) -> tuple:
    """The listing name of the scratch a product's share of dx waits in before its add."""
    return grad((source[0], f"{source[1]}.part", source[2]))


def _stacked_entry(sched: Schedule, record: tuple) -> tuple:
    """The entry of a VJP over all steps of a class: time-batched, or after the loop."""
    an, lay = sched.an, sched.layout
    kind, cls, i, add, dest, bt = record
    op, span = an.same_op(cls)[0], lay.range[cls]
    k0 = an.members[cls][span[0]]
    if kind == "class":
        ins = sched.batched[cls][2]
    else:
        ins = stacked_inputs(an, lay, cls, op, [len(an.meta[j][0]) for j in an.inputs(k0)], k0)
        dest = lay.grad[an.inputs(k0)[i]]
    reads = [(grad((*cls, span)), lay.grad_stack[cls].span(*span))]
    reads += [(listing.input_name(an, cls, j), view) for j, view in enumerate(ins)]
    if bt is not None:  # reads W^T, not W
        reads[-1] = (_transposed_name(an.inputs(k0)[1]), bt)
    name = grad(listing.input_name(an, cls, i))
    return _vjp_entry(f"vjp[{i}] {op}", add, name, dest, reads, span)


def _vjp_entry(op: str, add: bool, name, dest, reads: list, when) -> tuple:
    """`op` writes (or, with `add`, adds) into `dest`, the gradient called `name`."""
    return (f"{op} +=" if add else op, ((name, dest),), tuple(reads), when)


PRODUCT_PART_TAG = 8  # `Context.tmp` tag of `_Emitter._product_then_add`'s scratch
ACTIVATION_PART_TAG = 9  # and of `_Emitter._activation_vjps_apart`'s


def _then_copy(kernel, copyto, dest, part) -> None:
    kernel()
    copyto(dest, part)


# W^T from W (rows x cols, both C order), tile by tile so that reads and writes both stay
# within a few cache lines (`_Emitter._transpose_kernel`)
TRANSPOSE_C = """
void {name}(const i64* a) {
    const i64 rows = a[0], cols = a[1];
    const {t}* w = (const {t}*)a[2];
    {t}* wt = ({t}*)a[3];
    for (i64 i0 = 0; i0 < rows; i0 += 32)
        for (i64 j0 = 0; j0 < cols; j0 += 32) {
            const i64 i1 = i0 + 32 < rows ? i0 + 32 : rows;
            const i64 j1 = j0 + 32 < cols ? j0 + 32 : cols;
            for (i64 j = j0; j < j1; j++)
                for (i64 i = i0; i < i1; i++)
                    wt[j * rows + i] = w[i * cols + j];
        }
}
"""


def _transposed_name(key) -> tuple:
    """The listing name of the W^T buffer of `key` (`_Emitter._transposed`)."""
    return (key[0], f"{key[1]}^T", key[2])


def _reduce_rest_vjp(ctx, op, dest, add, g):
    m, n = ctx.m, dest.shape[0]
    scale = 1.0 / (dest.size // max(n, 1)) if ops.OPS[op].averages else 1.0
    g_b = g.reshape((n,) + (1,) * (dest.ndim - 1))
    tmp = ctx.tmp(dest.shape, dest.dtype)

    def run():
        m.multiply(g_b, scale, out=tmp)  # broadcast over each step's entries
        if add:
            m.add(dest, tmp, out=dest)
        else:
            m.copyto(dest, tmp)

    return run
