"""The cell equation language: a tiny, safe subset of Python expressions parsed with `ast`.

    gates = x @ W_ih + b_ih + h @ W_hh + b_hh
    i, f, g, o = split(gates, 4)
    c = sigmoid(f) * c + sigmoid(i) * tanh(g)

Allowed: names, numbers, `+ - * / @`, unary minus, and calls of op-table names (plus
`split`, which lowers to `chunk` steps). `dropout(x, p)` takes the drop probability instead of
the op's mask input: the unroller adds the mask, in training only. Its mask is drawn once per
sequence and reused at every step (variational, Gal & Ghahramani 2016: what a cell usually
wants); `dropout(x, p, per_step=1)` draws a fresh one each step. `p` may name the layer's
`recurrent_dropout` (the built-in cells write `dropout(h, recurrent_dropout)`).
Array arguments come first, then the op's attributes positionally or by keyword. Attribute
values are numbers or size expressions (`hidden`, `4*hidden`). Nothing else parses: no
attribute access, no subscripts, no lambdas, no dunders.
Assigning to a state name sets the next state; reading it before that reads the previous one.
The parser lowers each equation to steps `{out, op, in, attrs}` with fresh temporaries.

Python's parser and the walks here recurse once per operator or bracket, so an equation or
size expression is first counted token by token (no recursion): more than `MAX_OPERATORS`
operators or `MAX_NESTING` levels of brackets is refused with a SpecError, never a
RecursionError.
"""

from __future__ import annotations

import ast
import io
import math
import tokenize
from dataclasses import dataclass, field
from typing import Any

from seqgraph.engine import ops
from seqgraph.errors import SpecError

BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matmul"}
SIZE_FUNCS = {"sqrt": math.sqrt}
MAX_OPERATORS = 256  # + - * / @ in one equation; an LSTM cell needs about ten
MAX_NESTING = 32  # levels of brackets (calls and parentheses) in one equation


def check_size(text: str, path: str, what: str = "equation") -> None:
    """Refuse an expression too big for Python's recursive parser before it is parsed."""
    operators = depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type != tokenize.OP:
                continue
            if token.string in "([{":
                depth += 1
                if depth > MAX_NESTING:
                    raise SpecError(
                        path,
                        f"{what} nests brackets deeper than {MAX_NESTING} levels; "
                        "name the inner parts in equations of their own",
                    )
            elif token.string in ")]}":
                depth -= 1
            elif token.string in ("+", "-", "*", "/", "@"):
                operators += 1
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse says what is wrong with it
    if operators > MAX_OPERATORS:
        raise SpecError(
            path,
            f"{what} has {operators:,} operators; at most {MAX_OPERATORS} are allowed: split "
            "it into equations of their own (`s1 = a + b`, `s = s1 + c`)",
        )


@dataclass(frozen=True)
class Const:
    """A literal number used as an operand (`1 - z`)."""

    value: float


@dataclass(frozen=True)
class Step:
    """One op application: `out = op(*inputs, **attrs)` inside a cell."""

    out: str
    op: str
    inputs: tuple[Any, ...]  # local names (str) or Const
    attrs: dict = field(default_factory=dict, hash=False)
    source: str = ""  # the YAML path of the equation it came from


@dataclass(frozen=True)
class SizeExpr:
    """An attribute value that depends on the layer's sizes, resolved when the cell is unrolled."""

    text: str


def eval_size(text: str | int | float, sizes: dict[str, float], path: str = "") -> float:
    """Evaluate a size expression such as `4*hidden` or `1/sqrt(hidden)` against `sizes`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = text
    else:
        check_size(str(text), path, "size expression")
        try:
            tree = ast.parse(str(text), mode="eval")
        except SyntaxError:
            raise SpecError(path, f"cannot parse size expression {text!r}") from None
        try:
            value = _eval_size_node(tree.body, sizes, path, str(text))
        except OverflowError:
            value = math.inf
    if not math.isfinite(value):
        raise SpecError(
            path,
            f"size expression {text!r} is {value} (overflow); it must be a finite positive integer",
        )
    return value


def _eval_size_node(node, sizes, path, text):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in sizes:
            known = ", ".join(sorted(sizes))
            raise SpecError(path, f"unknown size {node.id!r} in {text!r}; known sizes: {known}")
        return sizes[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        a = _eval_size_node(node.left, sizes, path, text)
        b = _eval_size_node(node.right, sizes, path, text)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise SpecError(path, f"division by zero in size expression {text!r}")
            return a / b
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(node.op)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_size_node(node.operand, sizes, path, text)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in SIZE_FUNCS
        and len(node.args) == 1
        and not node.keywords
    ):
        return SIZE_FUNCS[node.func.id](_eval_size_node(node.args[0], sizes, path, text))
    raise SpecError(path, f"size expression {text!r} may use only numbers, sizes, + - * / and sqrt")


class _Lowerer:
    """Turns equation ASTs into steps, tracking the current binding of every name."""

    def __init__(self, known: set[str], state: list[str]):
        self.bindings = {name: name for name in known}  # name -> current local
        self.state = state
        self.steps: list[Step] = []
        self.counter = 0
        self.drops = 0
        self.path = ""

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}#{self.counter}"

    def fail(self, message: str):
        raise SpecError(self.path, message)

    def statement(self, text: str, path: str) -> None:
        self.path = path
        check_size(text, path)
        try:
            tree = ast.parse(text, mode="exec")
        except SyntaxError as exc:
            self.fail(f"cannot parse equation {text!r}: {exc.msg}; write `name = expression`")
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assign):
            self.fail(f"equation {text!r} must be one assignment `name = expression`")
        stmt = tree.body[0]
        if len(stmt.targets) != 1:
            self.fail("chained assignment (a = b = ...) is not allowed; write two equations")
        target = stmt.targets[0]
        if isinstance(target, ast.Tuple):
            self._split_assign(target, stmt.value)
        elif isinstance(target, ast.Name):
            self._check_name(target.id)
            local = self.expr(stmt.value, hint=target.id)
            self.bindings[target.id] = local
        else:
            self.fail("the left side must be a name or `a, b = split(x, 2)`")

    def _split_assign(self, target: ast.Tuple, value) -> None:
        names = []
        for element in target.elts:
            if not isinstance(element, ast.Name):
                self.fail("the left side of a split must be plain names: `i, f = split(x, 2)`")
            self._check_name(element.id)
            names.append(element.id)
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)):
            self.fail("only `split(x, n)` may be assigned to several names")
        if value.func.id != "split":
            self.fail(f"only `split(x, n)` may be assigned to several names, not {value.func.id}()")
        if len(value.args) != 2 or not isinstance(value.args[1], ast.Constant):
            self.fail("write split as `split(x, n)` with n a whole number")
        parts = value.args[1].value
        if parts != len(names):
            self.fail(f"split into {parts} parts but {len(names)} names on the left")
        axis = self._keywords(value.keywords, ("axis",)).get("axis", -1)
        source = self.expr(value.args[0], hint="split")
        for index, name in enumerate(names):
            local = self.fresh(name)
            attrs = {"index": index, "parts": parts, "axis": axis}
            self.steps.append(Step(local, "chunk", (source,), attrs, self.path))
            self.bindings[name] = local

    def _check_name(self, name: str) -> None:
        if name.startswith("_"):
            self.fail(f"names may not start with '_' ({name!r})")

    def expr(self, node, hint: str = "t"):
        """Lower an expression; returns the local name (or Const) holding its value."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self.fail(f"only numbers may appear as constants, not {node.value!r}")
            return Const(float(node.value))
        if isinstance(node, ast.Name):
            self._check_name(node.id)
            if node.id not in self.bindings:
                known = ", ".join(sorted(n for n in self.bindings))
                self.fail(f"unknown name {node.id!r}; defined so far: {known}")
            return self.bindings[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            a, b = self.expr(node.left), self.expr(node.right)
            return self._emit(BINARY[type(node.op)], (a, b), {}, hint)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.expr(node.operand)
            if isinstance(node.op, ast.UAdd):
                return operand
            if isinstance(operand, Const):
                return Const(-operand.value)
            return self._emit("neg", (operand,), {}, hint)
        if isinstance(node, ast.Call):
            return self._call(node, hint)
        self.fail(
            f"{type(node).__name__} is not allowed in an equation; use names, numbers, "
            "+ - * / @ and op calls"
        )

    def _call(self, node: ast.Call, hint: str):
        if not isinstance(node.func, ast.Name):
            self.fail("only op names may be called (no attribute access such as a.b())")
        name = node.func.id
        if name == "split":
            self.fail("split(x, n) must be assigned to n names: `a, b = split(x, 2)`")
        if name == "dropout":
            return self._dropout(node)
        if name not in ops.OPS or name.startswith("_"):
            self.fail(f"unknown op {name!r}; known ops: {', '.join(sorted(ops.OPS))}")
        op = ops.OPS[name]
        n_arrays = len(node.args) if op.arity == ops.VARIADIC else op.arity
        if len(node.args) < n_arrays:
            self.fail(f"{name}() takes {op.arity} array argument(s), got {len(node.args)}")
        extra = node.args[n_arrays:]
        if len(extra) > len(op.attrs):
            self.fail(f"{name}() takes at most {n_arrays + len(op.attrs)} arguments")
        attrs = {key: self._attr_value(value) for key, value in zip(op.attrs, extra)}
        attrs.update(self._keywords(node.keywords, op.attrs))
        inputs = tuple(self.expr(arg) for arg in node.args[:n_arrays])
        return self._emit(name, inputs, attrs, hint)

    def _dropout(self, node: ast.Call):
        """`dropout(x, p, per_step=0)`: one array, then p and per_step (see the module doc)."""
        attrs = dict(zip(("p", "per_step"), (self._attr_value(a) for a in node.args[1:3])))
        attrs.update(self._keywords(node.keywords, ("p", "per_step")))
        if not 1 <= len(node.args) <= 3 or "p" not in attrs:
            self.fail("write dropout as `dropout(x, p)` or `dropout(x, p, per_step=1)`")
        if attrs.get("per_step", 0) not in (0, 1):
            self.fail("dropout's per_step is 0 (one mask per sequence) or 1 (one per step)")
        # its own counter, so that adding dropout to a cell leaves the names of the cell's
        # other temporaries (hence its node keys) as they were
        self.drops += 1
        local = f"dropout{self.drops}"
        self.steps.append(Step(local, "dropout", (self.expr(node.args[0]),), attrs, self.path))
        return local

    def _keywords(self, keywords, allowed) -> dict:
        out = {}
        for keyword in keywords:
            if keyword.arg not in allowed:
                self.fail(f"unknown attribute {keyword.arg!r}; allowed: {', '.join(allowed)}")
            out[keyword.arg] = self._attr_value(keyword.value)
        return out

    def _attr_value(self, node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self._attr_value(node.operand)
            if isinstance(inner, (int, float)):
                return -inner
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._attr_value(e) for e in node.elts)
        if isinstance(node, (ast.Name, ast.BinOp)):
            return SizeExpr(ast.unparse(node))
        self.fail("attributes must be numbers, tuples of numbers or size expressions")

    def _emit(self, op: str, inputs: tuple, attrs: dict, hint: str) -> str:
        local = self.fresh(hint)
        self.steps.append(Step(local, op, inputs, attrs, self.path))
        return local


def lower(
    equations: list[str], known: set[str], state: list[str], path: str
) -> tuple[list[Step], dict[str, str]]:
    """Lower a cell's equations to steps; returns (steps, final binding of every name)."""
    lowerer = _Lowerer(known, state)
    for index, text in enumerate(equations):
        if not isinstance(text, str):
            raise SpecError(f"{path}[{index}]", "each equation must be a string `name = expr`")
        lowerer.statement(text, f"{path}[{index}]")
    return lowerer.steps, lowerer.bindings
