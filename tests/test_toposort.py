"""The one topological sort (`engine.graph.topological_order`): stable, ties by priority,
networkx's order without a priority, no recursion, and a cycle named in a GraphError."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from seqgraph.engine.graph import topological_order
from seqgraph.errors import GraphError


def test_ready_items_go_by_priority_then_by_when_they_became_ready():
    deps = {"a": [], "b": [], "c": ["a"], "d": ["a"], "e": ["b", "c"]}
    rank = {"a": 3, "b": 1, "c": 0, "d": 0, "e": 0}
    assert topological_order(deps, deps.__getitem__, rank.__getitem__) == list("bacde")
    same = dict.fromkeys(deps, 0)  # equal priorities: the order they became ready
    assert topological_order(deps, deps.__getitem__, same.__getitem__) == list("abcde")
    assert topological_order(deps, deps.__getitem__) == list("abcde")


def test_without_priority_it_is_networkx_topological_sort():
    """`Graph.order` keeps networkx's order (the interpreter sums gradients in it)."""
    rng = random.Random(0)
    for _ in range(50):
        graph, inputs = nx.MultiDiGraph(), {}
        for node in range(rng.randint(1, 40)):
            sources = [rng.randrange(node) for _ in range(rng.randint(0, 3))] if node else []
            graph.add_node(node)
            for position, source in enumerate(sources):  # repeats: mul(x, x)
                graph.add_edge(source, node, key=position)
            inputs[node] = sources
        assert topological_order(inputs, inputs.__getitem__) == list(nx.topological_sort(graph))


def test_a_repeated_input_counts_once():
    deps = {"x": [], "y": ["x", "x"], "z": ["y", "x", "y"]}
    assert topological_order(deps, deps.__getitem__) == ["x", "y", "z"]


def test_a_long_chain_needs_no_recursion():
    n = 100_000
    order = topological_order(reversed(range(n)), lambda i: (i - 1,) if i else ())
    assert order == list(range(n))
    by_rank = topological_order(range(n), lambda i: (i - 1,) if i else (), lambda i: -i)
    assert by_rank == list(range(n))


def test_a_cycle_is_named():
    deps = {"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"], "e": ["d"]}
    with pytest.raises(GraphError, match=r"cycle: 'b' -> 'd' -> 'c' -> 'b'"):
        topological_order(deps, deps.__getitem__)
    with pytest.raises(GraphError, match="cycle: 'a' -> 'a'"):
        topological_order(["a"], lambda item: ["a"], lambda item: 0)


def test_an_input_outside_the_items_is_an_error():
    with pytest.raises(GraphError, match="'b' depends on 'z', which is not among"):
        topological_order(["a", "b"], {"a": [], "b": ["z"]}.__getitem__)
