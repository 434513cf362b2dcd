"""Forward evaluation and the reverse-mode pass over an unrolled graph.

Backward visits nodes in reverse topological order and adds each dependent's contribution
out of place (`acc = acc + g`), so a parameter used at every step receives
dL/dW = sum_t dL_t/dW and a node used twice by one op receives both halves. Nothing here
knows an op by name: it calls the op table's forward and VJP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from seqgraph.engine import ops
from seqgraph.engine.graph import Graph, Key, key_str
from seqgraph.errors import GraphError, MissingVJPError


@dataclass(frozen=True)
class Instruction:
    key: Key
    op: ops.Op
    inputs: tuple[Key, ...]
    attrs: dict
    source: str


class Program:
    """A graph flattened into an instruction list, plus which nodes need a gradient.

    The list is made on the first `forward` or `backward`: a model run by its plan keeps
    the program of every sequence length it saw, and needs only its graph and order."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = graph.order()
        self.param_keys = set(graph.params.values())
        self.consts = {
            k: graph.node(k)["attrs"]["value"]
            for k in self.order
            if graph.node(k)["kind"] == "const"
        }

    @property
    def instructions(self) -> list[Instruction]:
        return self._flat[0]

    @property
    def needs_grad(self) -> set[Key]:
        return self._flat[1]

    @cached_property
    def _flat(self) -> tuple:
        graph, instructions, needs_grad = self.graph, [], set()
        for key in self.order:
            node = graph.node(key)
            if node["kind"] == "param":
                needs_grad.add(key)
            elif node["kind"] == "op":
                op = ops.OPS[node["op"]]
                instructions.append(
                    Instruction(key, op, node["inputs"], node["attrs"], node.get("source", ""))
                )
                if any(i in needs_grad for i in node["inputs"]):
                    needs_grad.add(key)
        return instructions, needs_grad

    def forward(self, xp, leaves: dict[Key, Any]) -> dict[Key, Any]:
        """Evaluate every op; `leaves` holds params, inputs and consts. Returns all values."""
        values = dict(leaves)
        for ins in self.instructions:
            try:
                values[ins.key] = ins.op.forward(xp, *[values[i] for i in ins.inputs], **ins.attrs)
            except KeyError as exc:
                raise GraphError(
                    f"node {key_str(ins.key)} needs {exc.args[0]}, which has no "
                    "value: feed it in the batch"
                ) from None
            except (ValueError, TypeError, IndexError) as exc:
                shapes = ", ".join(str(tuple(values[i].shape)) for i in ins.inputs)
                where = f" ({ins.source})" if ins.source else ""
                error = GraphError(
                    f"{ins.op.name} at node {key_str(ins.key)}{where} failed on "
                    f"inputs of shape {shapes}: {exc}"
                )
                error.source, error.shapes, error.op = ins.source, shapes, ins.op.name
                raise error from None
        return values

    def backward(
        self,
        xp,
        values: dict,
        loss: Key,
        seed=None,
        observe: Callable[[Key, Any, Key | None], None] | None = None,
    ) -> dict:
        """Gradients of `loss` for every node that needs one; params always get an entry.

        `observe(key, grad, consumer)` sees each node's complete gradient (consumer None) and,
        for parameters, each consumer's contribution before they are summed: the gradient
        ledger of `seqgraph gradflow`."""
        grads: dict[Key, Any] = {loss: seed if seed is not None else xp.ones_like(values[loss])}
        instructions, needs_grad = self._flat
        for ins in reversed(instructions):
            g = grads.pop(ins.key, None)
            if g is None:
                continue
            if observe is not None:
                observe(ins.key, g, None)
            inputs = [values[i] for i in ins.inputs]
            contributions = ins.op.vjp(xp, g, values[ins.key], *inputs, **ins.attrs)
            for position, (source, grad) in enumerate(zip(ins.inputs, contributions)):
                if source not in needs_grad:
                    continue
                if grad is None:
                    if not xp.isdtype(values[source].dtype, "real floating"):
                        continue  # ids and masks carry no gradient (e.g. an argmax fed back)
                    raise MissingVJPError(ins.op.name, position, key_str(ins.key))
                grads[source] = grads[source] + grad if source in grads else grad
                if observe is not None and source in self.param_keys:
                    observe(source, grad, ins.key)
        for key in self.graph.params.values():
            if key not in grads:  # unused parameter: a zero gradient, not a missing one
                grads[key] = xp.zeros_like(values[key])
        return grads
