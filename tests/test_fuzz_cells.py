"""Random user cells in random unroll patterns: the plan must equal the interpreter (loss and
every parameter gradient, float64, to 1e-10) and both must match central differences.

A cell is a few random equations over `x` and one or two states, built from the equation
language's ops (+ - * /, @ with parameters, tanh, sigmoid, relu, exp and log on safe domains,
concat, split, slice, sum, mean); its values may go unused (a dropped value, an ignored
`x`), and a state may be read after it is assigned. It runs in many_to_many, many_to_one,
one_to_one, encoder_decoder or one_to_many, one or two layers, bidirectional (concat or sum)
where the pattern allows, with zero or learned initial states, teacher, free or scheduled
feedback, over batches of one to three sequences of random (often different) lengths. The
plan runs each batch twice, since it reuses its buffers from call to call.

A spec the loader refuses is counted (a SpecError is a right answer); any other exception
fails. SEQGRAPH_HYPOTHESIS_EXAMPLES sets the number of cases (default 60; a few hundred
locally); `pytest -s` prints the counts."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import host, make_batch, model_spec, record

from seqgraph import Model, SpecError

EXAMPLES = int(os.environ.get("SEQGRAPH_HYPOTHESIS_EXAMPLES", "60"))
COUNTS = {"cases": 0, "spec_errors": 0, "checked": 0}
REFUSED: list[str] = []  # the loader's messages, printed with the counts

# a width is (a, b, c): a*input + b*hidden + c columns, so one cell fits every layer
INPUT, HIDDEN, ONE = (1, 0, 0), (0, 1, 0), (0, 0, 1)
UNARY = [
    "tanh({})",
    "sigmoid({})",
    "relu({})",
    "-{}",
    "0.5 * {}",
    "exp(tanh({}))",
    "log(1.5 + tanh({}))",
    "{0} * {0}",
    "1 - sigmoid({})",
]
BINARY = ["{} + {}", "{} - {}", "{} * {}", "{} / (2 + tanh({}))"]


def width_text(width: tuple) -> str:
    terms = [
        name if n == 1 else f"{n}*{name}" for n, name in zip(width[:2], ("input", "hidden")) if n
    ]
    return "+".join(terms + ([str(width[2])] if width[2] else []))


def add(a: tuple, b: tuple) -> tuple:
    return tuple(p + q for p, q in zip(a, b))


class CellBuilder:
    """Draws equations one at a time, tracking each value's width."""

    def __init__(self, draw, states: list[str]):
        self.draw, self.states = draw, states
        self.values = {"x": INPUT, **{s: HIDDEN for s in states}}
        self.params: dict[str, dict] = {}
        self.equations: list[str] = []

    def param(self, *widths: tuple) -> str:
        name = f"P{len(self.params)}"
        scale = self.draw(st.sampled_from([0.3, 0.7, 1.2]))
        self.params[name] = {
            "shape": [width_text(w) for w in widths],
            "init": {"dist": "uniform", "scale": scale},
        }
        return name

    def pick(self, width: tuple | None = None) -> str | None:
        names = [n for n, w in self.values.items() if width is None or w == width]
        return self.draw(st.sampled_from(names)) if names else None

    def new(self, text: str, width: tuple) -> None:
        name = f"v{len(self.equations)}"
        self.equations.append(f"{name} = {text}")
        self.values[name] = width

    def step(self) -> None:
        kind = self.draw(
            st.sampled_from(["unary", "binary", "project", "concat", "split", "slice", "sum"])
        )
        u = self.pick()
        w = self.values[u]
        if kind == "unary":
            self.new(self.draw(st.sampled_from(UNARY)).format(u), w)
        elif kind == "binary":
            self.new(self.draw(st.sampled_from(BINARY)).format(u, self.pick(w)), w)
        elif kind == "project":
            out = self.draw(st.sampled_from([HIDDEN, INPUT, (0, 2, 0), (1, 1, 0)]))
            text = f"{u} @ {self.param(w, out)}"
            if self.draw(st.booleans()):
                text += f" + {self.param(out)}"
            self.new(text, out)
        elif kind == "concat":
            v = self.pick()
            self.new(f"concat({u}, {v})", add(w, self.values[v]))
        elif kind == "split" and all(n % 2 == 0 for n in w):
            half = tuple(n // 2 for n in w)
            a, b = f"v{len(self.equations)}a", f"v{len(self.equations)}b"
            self.equations.append(f"{a}, {b} = split({u}, 2)")
            self.values[a] = self.values[b] = half
        elif kind == "slice" and w[1] >= 1:
            self.new(f"slice({u}, 0, hidden)", HIDDEN)
        elif kind == "slice":
            self.new(f"slice({u}, 0, 1)", ONE)
        elif kind == "sum":
            op = self.draw(st.sampled_from(["sum", "mean"]))
            self.new(f"{op}({u}, axis=-1, keepdims=True)", ONE)

    def update(self, state: str) -> None:
        """The state's next value, from the newest values (so most of them are used)."""
        u = self.draw(st.sampled_from(list(self.values)[-3:]))
        w = self.values[u]
        new = u if w == HIDDEN else f"tanh({u} @ {self.param(w, HIDDEN)})"
        form = self.draw(st.sampled_from(["{n}", "0.5 * {s} + {n}", "tanh({n} + {s})"]))
        self.equations.append(f"{state} = " + form.format(n=new, s=state))
        del self.values[state]  # later equations read the new value
        self.values[state] = HIDDEN


@st.composite
def cells(draw) -> dict:
    states = draw(st.sampled_from([["h"], ["h", "c"], ["c", "h"]]))
    builder = CellBuilder(draw, states)
    for _ in range(draw(st.integers(1, 6))):
        builder.step()
    for state in states:
        builder.update(state)
        for _ in range(draw(st.integers(0, 1))):
            builder.step()  # a value computed from the new state, used or dropped
    output = states[0]
    hidden_valued = [n for n, w in builder.values.items() if w == HIDDEN and n != "x"]
    if draw(st.booleans()) and len(hidden_valued) > len(states):
        output = draw(st.sampled_from(hidden_valued))
    return {
        "inputs": ["x"],
        "state": states,
        "output": output,
        "params": builder.params,
        "equations": builder.equations,
    }


PATTERNS = ["many_to_many", "many_to_one", "one_to_one", "encoder_decoder", "one_to_many"]


@st.composite
def specs(draw) -> dict:
    pattern = draw(st.sampled_from(PATTERNS))
    hidden = draw(st.integers(1, 3))
    layers = draw(st.integers(1, 2))
    bidirectional = pattern != "one_to_many" and draw(st.booleans())
    spec = model_spec(pattern, "fuzz", bidirectional, hidden, layers, cells={"fuzz": draw(cells())})
    model = spec["model"]
    merge = draw(st.sampled_from(["concat", "sum"]))
    learned = pattern != "one_to_many" and draw(st.booleans())
    for layer in model["layers"]:
        if bidirectional:
            layer["merge"] = merge
        if learned:
            layer["init_state"] = "learned"
    if pattern == "encoder_decoder":
        size = 2 * hidden if bidirectional and merge == "concat" else hidden
        model["decoder_layers"] = [{"cell": "fuzz", "hidden": size} for _ in range(layers)]
    if pattern == "many_to_many":
        size = draw(st.integers(1, 3))
        model["encoders"] = [draw(st.sampled_from([{"type": "onehot"}, {"type": "embedding"}]))]
        if model["encoders"][0]["type"] == "embedding":
            model["encoders"][0]["size"] = size
    if pattern in ("many_to_one", "one_to_one", "one_to_many"):
        model["input"] = {"type": "vectors", "size": draw(st.integers(1, 3))}
        model["encoders"] = []
    return spec


def loss_and_grads(model: Model, batch: dict, feedback: str, params: dict) -> tuple:
    model.set_params(params)
    loss, grads = model.loss_and_grads(batch, feedback)
    return loss, {name: host(g) for name, g in grads.items()}


def check_case(spec: dict, batch_shape: tuple, feedback: str, seed: int) -> None:
    COUNTS["cases"] += 1
    try:
        models = {e: Model(spec, dtype="float64", engine=e) for e in ("interp", "plan")}
    except SpecError as exc:
        COUNTS["spec_errors"] += 1
        REFUSED.append(f"{exc.path}: {exc.message}")
        return
    size, steps, out_steps, ragged = batch_shape
    interp, plan = models["interp"], models["plan"]
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(0.0, 0.6, size=i.shape) for n, i in interp.param_info.items()}
    batch = make_batch(interp.spec, size, steps, out_steps, seed, ragged)
    if feedback == "scheduled":  # a coin per sequence and step: feed the prediction back
        batch["use_model"] = rng.random((size, out_steps)) < 0.5
    loss_i, grads_i = loss_and_grads(interp, batch, feedback, params)
    loss_p, grads_p = loss_and_grads(plan, batch, feedback, params)
    again = loss_and_grads(plan, batch, feedback, params)  # a plan reuses its buffers
    assert again[0] == loss_p and all(np.array_equal(again[1][n], grads_p[n]) for n in params)
    assert np.isfinite(loss_i)
    assert abs(loss_p - loss_i) <= 1e-10 * max(1.0, abs(loss_i)), (loss_p, loss_i)
    assert set(grads_p) == set(grads_i) == set(params)
    worst = 0.0
    for name, g in grads_i.items():
        assert grads_p[name].shape == g.shape == params[name].shape, name
        scale = max(1.0, float(np.max(np.abs(g), initial=0.0)))
        error = float(np.max(np.abs(grads_p[name] - g), initial=0.0)) / scale
        worst = max(worst, error)
        assert error <= 1e-10, f"{name}: plan and interpreter differ by {error:.3g} (scaled)"
    record("fuzz cells: plan vs interpreter (scaled abs)", worst, spec["model"]["pattern"])
    for model, grads in ((interp, grads_i), (plan, grads_p)):
        central_differences(model, batch, feedback, params, grads, rng)
    COUNTS["checked"] += 1


def central_differences(model, batch, feedback, params, grads, rng, eps=1e-6) -> None:
    """Every parameter at once along one random direction, then each alone along its own."""
    directions = {name: rng.normal(size=value.shape) for name, value in params.items()}
    groups = [list(params)] + [[name] for name in sorted(params)]
    worst = 0.0
    for names in groups:
        losses = []
        for sign in (1, -1):
            moved = {n: params[n] + sign * eps * directions[n] for n in names}
            model.set_params(moved)
            losses.append(model.forward(batch, feedback)["loss"])
            model.set_params({n: params[n] for n in names})
        fd = (losses[0] - losses[1]) / (2 * eps)
        an = sum(float(np.sum(grads[n] * directions[n])) for n in names)
        error = abs(fd - an)
        tolerance = 1e-6 * (abs(fd) + abs(an)) + 1e-8 * max(1.0, abs(losses[0]))
        assert error <= tolerance, f"{model.engine} {names}: fd={fd:.12g} analytic={an:.12g}"
        worst = max(worst, error / max(abs(fd) + abs(an), 1e-300))
    record("fuzz cells: directional FD (rel)", worst, model.engine)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    spec=specs(),
    batch_shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.booleans()),
    feedback=st.sampled_from(["teacher", "free", "scheduled"]),
    seed=st.integers(0, 2**16),
)
def test_random_cells_plan_equals_interpreter_and_central_differences(
    spec, batch_shape, feedback, seed
):
    model = spec["model"]
    feeds_back = model["pattern"] in ("encoder_decoder", "one_to_many")
    event(f"{model['pattern']}, {len(model['layers'])} layer(s)")
    event(f"bidirectional {model['layers'][0]['bidirectional']}")
    event(f"init_state {model['layers'][0].get('init_state', 'zeros')}")
    event(f"{len(spec['cells']['fuzz']['state'])} state(s)")
    event(f"feedback {feedback if feeds_back else 'none'}")
    for name in ("concat", "split", "slice", "sum", "mean", "exp", "log", "relu", "@", "/"):
        if any(name in text for text in spec["cells"]["fuzz"]["equations"]):
            event(f"uses {name}")
    check_case(spec, batch_shape, feedback if feeds_back else "teacher", seed)


def test_random_cells_were_checked():
    """Guards the property above: most generated cells must load and be checked, so that a
    generator that drifted into refused specs does not pass by testing nothing."""
    if COUNTS["cases"] == 0:
        test_random_cells_plan_equals_interpreter_and_central_differences()
    print(f"\nfuzz cells: {COUNTS}; refused: {sorted(set(REFUSED))}")
    assert COUNTS["checked"] >= COUNTS["cases"] // 2 > 0, COUNTS
