"""Recompute activations in segments (gradient checkpointing) so a long sequence trains in
memory that grows with the segment, not with the sequence.

A training step over T steps in segments of S:
1. forward only, segment by segment, keeping just the states at the segment boundaries
   (T/S small arrays) and summing the loss;
2. backward, last segment first: run that segment again from its saved start state with a
   gradient plan (compiled with `state_grads`) whose final states are seeded with the
   gradient the later segment handed back, sum its parameter gradients, and hand the
   gradient of its start state to the segment before.
The gradient is the full one (the same sums in another order: equal to ~1e-12 in float64);
the price is about one more forward pass. Peak memory: one segment's plan (activations of S
steps) plus the forward plan, instead of T steps of activations.
"""

from __future__ import annotations

from seqgraph.errors import SpecError
from seqgraph.runtime import batch as batching


def check(spec, engine: str) -> None:
    """Refuse, naming the option, what segments cannot do exactly."""
    m, where = spec.model, "train.segment_steps"
    if engine != "plan":
        raise SpecError(where, "recomputing in segments needs the plan engine")
    if m.pattern != "many_to_many" or m.loss == "ctc":
        raise SpecError(
            where,
            f"works for many_to_many models with a per-step loss, not {m.pattern}"
            + (" with ctc" if m.loss == "ctc" else "")
            + "; remove it",
        )
    if any(layer.bidirectional for layer in m.layers):
        raise SpecError(where, "a bidirectional layer reads the whole sequence; remove it")
    if any(layer.direction == "reverse" for layer in m.layers):
        raise SpecError(where, "a reverse layer reads the whole sequence first; remove it")
    for layer in m.layers:
        cell = spec.cells[layer.cell]
        if cell.output not in cell.state:
            raise SpecError(where, f"cell {cell.name!r} outputs a value that is not its state")


def train_step(model, runner_for, batch: dict, size: int, feedback="teacher", state_at=None):
    """(loss, grads, states) as `Model.train_step` gives them, in segments of `size` steps.
    `runner_for(batch, feedback, **options)` is the model's cached plan runner (Model hands
    its own in, so the runner stays out of Model's public face)."""
    prepared = batching.prepare(model.spec, batch)
    if not prepared.full:
        raise SpecError(
            "train.segment_steps",
            "needs batches without padding (every sequence as long as the batch); "
            "remove segment_steps for padded data",
        )
    steps, loss_from = prepared.steps, int(batch.get("loss_from", 0))
    bounds = [(a, min(a + size, steps)) for a in range(0, steps, size)]

    def piece(a: int, b: int, state: dict, **extra) -> dict:
        part = {
            "x": prepared.x[:, a:b],
            "y": prepared.y[:, a:b],
            "state": state,
            "loss_from": min(max(0, loss_from - a), b - a),
            **extra,
        }
        if prepared.dropout is not None:  # the whole sequence's masks, step a onwards
            seed, step, first, offset, rows = prepared.dropout
            part["dropout"] = {
                "seed": seed,
                "step": step,
                "first_step": first + a,
                "row_offset": offset,
                "global_rows": rows,
            }
        return part

    starts, loss, carried = [dict(prepared.states)], 0.0, None
    for a, b in bounds:
        part = piece(a, b, starts[-1])
        out = model.forward(part, feedback)
        loss += out["loss"]
        starts.append(out["state"])
        if state_at is not None and a < state_at <= b:  # truncated BPTT's carry
            at_end = state_at == b
            carried = (
                out["state"]
                if at_end
                else _state_after(model, runner_for, part, feedback, state_at - a)
            )
    grads, handed = None, {}
    for (a, b), start in zip(reversed(bounds), reversed(starts[:-1])):
        part = piece(a, b, start, state_grad=handed)
        ready = batching.prepare(model.spec, part)
        runner = runner_for(part, feedback, prepared=ready, state_grads=True)
        _, got, _ = runner.train_step(ready, model.params)
        handed = runner.plan.state_gradients()
        grads = got if grads is None else {name: grads[name] + got[name] for name in got}
    return loss, grads, starts[-1] if state_at is None else carried


def _state_after(model, runner_for, part: dict, feedback: str, local: int) -> dict:
    """The states after `local` steps of one segment."""
    ready = batching.prepare(model.spec, part)
    runner = runner_for(part, feedback, grads=False, state_at=local, prepared=ready)
    return runner.forward(ready, model.params)["state"]
