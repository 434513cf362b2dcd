"""A model's batches through an execution plan: the plan-side twin of `Model.interpret`.

A `Runner` is built once per batch shape (and purpose: gradients or forward only) and holds
what a call needs besides the plan's kernels: how to cut a batch into the plan's data buffers
(one whole-array slice per data class, not one small array per step) and which nodes hold the
states to hand back. Everything it returns is a fresh array: the plan's buffers are reused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqgraph.engine.graph import Key
from seqgraph.plan.lower import Plan
from seqgraph.runtime import batch as batching


def state_keys(program, after: int | None = None) -> dict[str, Key]:
    """The node holding each input layer's state after the last step (or after `after`
    steps), named like `batch['state']` (`l0.h0`)."""
    graph, steps = program.graph, {}
    for scope, var, t in program.order:
        if isinstance(t, int):
            steps.setdefault((scope, var), []).append(t)
    out = {}
    for key, role in graph.inputs.items():
        scope, name, _ = key
        if role["role"] != "state":
            continue
        found = steps.get((scope, name[:-1]), [])
        # the last step computed: t=T-1 forward, t=0 for a reverse direction (`order` is
        # topological, and each step's state reads the previous step's)
        last = found[-1] if found else None
        if after is not None and found:
            last = after - 1
        if last is not None:
            out[f"{scope}.{name}"] = (scope, name[:-1], last)
    return out


class Runner:
    """One plan, a batch loader for it and the nodes a call reads back."""

    def __init__(
        self, model, program, batch: dict, full: bool, grads: bool, state_at: int | None = None
    ):
        spec, bk, graph = model.spec, model.backend, program.graph
        self.spec, self.graph, self.xp = spec, graph, bk.xp
        self.states = state_keys(program, state_at)
        self.single = spec.model.pattern in ("many_to_one", "one_to_one")
        predictions = [] if grads else list(graph.outputs["predictions"])
        attention = [] if grads else list(graph.outputs.get("attention", ()))
        feeds = batching.feeds(spec, graph, batch)
        meta = {
            k: (
                v.shape,
                np.dtype(bk.dtype_name)
                if v.dtype.kind == "f"
                else np.dtype(np.int64)
                if v.dtype.kind in "iu"
                else v.dtype,
            )
            for k, v in feeds.items()
        }
        self.plan = Plan(
            graph,
            meta,
            bk.xp,
            bk.name,
            bk.dtype_name,
            outputs=predictions + attention + list(self.states.values()),
            full=full,
            grads=grads,
        )
        lay = self.plan.layout
        self.slots = [
            (dest, keys, graph.inputs[keys[0]], stacked)
            for dest, keys, stacked in self.plan.leaf_slots()
        ]
        self.loaded: list = [None] * len(self.slots)
        self.state_views = [(name, lay.value[k]) for name, k in self.states.items()]
        self.prediction_views = [lay.value[k] for k in predictions]
        self.attention_views = [lay.value[k] for k in attention]

    def load(self, prepared: batching.Prepared) -> None:
        """Copy a batch (checked by `batch.prepare`) into the plan's data buffers. Masks,
        loss weights, coins and absent states depend only on a few small arrays: a slot whose
        inputs match the last call's keeps what it holds."""
        spec, load, loaded = self.spec, self.plan.load, self.loaded
        for i, (dest, keys, role, stacked) in enumerate(self.slots):
            tag = _slot_tag(prepared, role, keys[0])
            if tag is not None and loaded[i] == tag:
                continue
            if stacked:
                load(dest, batching.stacked(spec, prepared, keys, role))
            else:
                load(dest, batching.feed_one(spec, prepared, keys[0], role))
            loaded[i] = tag

    def final_states(self) -> dict[str, Any]:
        return {name: view.copy() for name, view in self.state_views}

    def train_step(self, prepared, params: dict, states: bool = True) -> tuple[float, dict, dict]:
        """(loss, grads by parameter name, states), as `Model.train_step` returns them;
        `states=False`: no copies of the final states (an empty dict), for a caller that
        drops them (`Model.loss_and_grads`)."""
        self.load(prepared)
        loss = self.plan.execute(params)
        return loss, self.plan.gradients(), self.final_states() if states else {}

    def forward(self, prepared, params: dict) -> dict[str, Any]:
        """What `Model.forward` returns: predictions, loss (None without `y`), states."""
        self.load(prepared)
        loss = self.plan.execute(params)
        preds = self.prediction_views
        out = {
            "predictions": preds[0].copy() if self.single else self.xp.stack(preds, axis=1),
            "loss": loss if prepared.has_y else None,
            "state": self.final_states(),
        }
        if self.attention_views:
            out["attention"] = self.xp.stack(self.attention_views, axis=1)
        return out


def _slot_tag(p: batching.Prepared, role: dict, key: Key):
    """What a data slot's content depends on, when that is small (None: reload every call)."""
    kind = role["role"]
    if kind == "mask":
        return (kind, (p.x_len if key[0] == "x" else p.y_len).tobytes())
    if kind == "weight":
        return (kind, p.y_len.tobytes(), p.loss_from)
    if kind == "coin":
        return (kind, p.coins.tobytes())
    if kind == "state" and f"{key[0]}.{key[1]}" not in p.states:
        return (kind, "zeros")
    return None
