"""Applications as plugins: an application defined here, never installed, registers its data
source through the registry (the call an entry point makes) and runs end to end through the
CLI; entry points of the group `seqgraph.apps` are discovered; each source checks its own
options."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import yaml

from seqgraph.cli import main
from seqgraph.errors import SeqgraphError
from seqgraph.spec import registry
from seqgraph.spec.schema import COUNT, NUMBER
from seqgraph.train import data as datasets

SOURCE = "tiny_counting"
LOADS: list[dict] = []  # every config the tiny loader was called with


def tiny_load(config: dict, pattern: str, seed: int) -> datasets.SequenceSet:
    """Example i: three steps of i/10; target i/10 + offset. A quarter is held out."""
    LOADS.append(dict(config))
    count, offset = int(config.get("examples", 8)), float(config.get("offset", 0.0))
    xs = [np.full((3, 1), i / 10) for i in range(count)]
    ys = [np.array([i / 10 + offset]) for i in range(count)]
    return datasets.hold_out(xs, ys, 0.25, seed, datasets.PADDING[pattern])


def tiny_metrics(model, dataset, split: str, batch_size: int) -> dict:
    ys = dataset.test_y if split == "test" else dataset.valid_y
    return {"tiny_examples": len(ys), "tiny_target_sum": float(np.sum(ys))}


def tiny_artifacts(model, dataset, run_dir, seed: int) -> dict:
    path = run_dir / "tiny.txt"
    path.write_text(f"{len(dataset.x)} training examples\n")
    return {"tiny_txt": str(path)}


class TinyScorer:
    """Counts the sequences evaluated, batch by batch."""

    def __init__(self):
        self.sequences = 0

    def add(self, batch: dict, out: dict) -> None:
        assert np.isfinite(float(out["loss"]))
        self.sequences += len(batch["y"])

    def result(self) -> dict:
        return {"tiny_sequences": self.sequences}


def tiny_score_line(result: dict) -> str:
    return f"tiny sequences {result['tiny_sequences']}"


def register() -> None:
    """What the tiny application's entry point would name."""
    registry.register_app(
        "tiny",
        [
            registry.DataSource(
                SOURCE,
                tiny_load,
                {"examples": COUNT, "offset": NUMBER},
                "a tiny counting task defined in a test",
                scorer=TinyScorer,
                metrics=tiny_metrics,
                artifacts=tiny_artifacts,
                score_line=tiny_score_line,
            )
        ],
    )


@pytest.fixture
def tiny_app():
    register()
    LOADS.clear()
    yield
    registry.unregister_app("tiny")


def tiny_spec(tmp_path, data: dict) -> str:
    spec = {
        "name": "tiny_app",
        "seed": 0,
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "vectors", "size": 1},
            "target": {"type": "vectors", "size": 1},
            "layers": [{"cell": "rnn", "hidden": 3}],
        },
        "data": {"source": SOURCE, **data},
        "train": {"steps": 2, "batch_size": 4, "log_every": 1, "eval_every": 100},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_registered_application_runs_end_to_end_through_the_cli(tiny_app, tmp_path, capsys):
    out = tmp_path / "run"
    spec = tiny_spec(tmp_path, {"examples": 20, "offset": 0.5})
    assert main(["run", spec, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert LOADS and LOADS[0]["offset"] == 0.5 and LOADS[0]["source"] == SOURCE
    valid = datasets.load({"source": SOURCE, "examples": 20, "offset": 0.5}, "many_to_one", 0)
    target_sum = float(np.sum(valid.valid_y))
    assert len(valid.valid_y) == 5 and len(valid.x) == 15
    done = next(line for line in printed.splitlines() if line.startswith("done: 2 steps"))
    assert done.endswith(f"; tiny sequences 5; tiny_examples 5; tiny_target_sum {target_sum:.4f}")
    assert f"wrote tiny_txt: {out / 'tiny.txt'}" in printed
    assert (out / "tiny.txt").read_text() == "15 training examples\n"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"kind": "app", "step": 2, "tiny_examples": 5} == {
        k: v for k, v in metrics[-1].items() if k != "tiny_target_sum"
    }

    LOADS.clear()
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(LOADS) == 1 and LOADS[0]["examples"] == 20  # eval reads the data again
    assert result["source"] == SOURCE and result["tiny_sequences"] == 5
    assert result["app"] == {"tiny_examples": 5, "tiny_target_sum": pytest.approx(target_sum)}
    assert main(["eval", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(f"; tiny sequences 5; tiny_examples 5; tiny_target_sum {target_sum:.4f}")
    assert main(["sample", str(out), "--wav", str(tmp_path / "x.wav")]) == 2  # no `sample` hook
    assert f"data.source '{SOURCE}' of this run generates none" in capsys.readouterr().err


def test_an_option_of_another_source_is_refused_with_the_path(tiny_app, tmp_path, capsys):
    spec = tiny_spec(tmp_path, {"examples": 20, "steps": 5})  # `adding` takes steps; tiny not
    assert main(["run", spec, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.endswith(
        f"data.steps: unknown key 'steps' for data.source '{SOURCE}'; "
        "it takes source, examples, offset"
    )
    assert not LOADS
    spec = tiny_spec(tmp_path, {"exampels": 20})
    assert main(["check", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("it takes source, examples, offset; did you mean 'examples'?")
    assert f"{spec}:2: data.exampels: unknown key 'exampels'" in err  # file, line, path


def test_the_schema_lists_registered_sources_and_their_own_options(tiny_app, capsys):
    assert main(["schema"]) == 0
    data = json.loads(capsys.readouterr().out)["properties"]["data"]
    assert SOURCE in data["properties"]["source"]["enum"]
    assert "fsdd" in data["properties"]["source"]["enum"]  # the built-ins, without installing
    branch = [b["then"] for b in data["allOf"] if b["then"]["title"] == f"data.source {SOURCE!r}"]
    assert list(branch[0]["properties"]) == ["source", "examples", "offset"]
    assert branch[0]["additionalProperties"] is False


def test_a_source_name_belongs_to_one_application(tiny_app):
    register()  # the same application again: no change, no error
    assert registry.source(SOURCE).app == "tiny"
    with pytest.raises(SeqgraphError, match="registered by application 'tiny'"):
        registry.register_app("other", [registry.DataSource(SOURCE, tiny_load)])
    with pytest.raises(SeqgraphError, match="registered by application 'synthetic'"):
        registry.register_app("other", [registry.DataSource("adding", tiny_load)])
    bad = registry.DataSource("tiny_bad", tiny_load, {"examples": {"type": "count"}})
    with pytest.raises(SeqgraphError, match="'tiny_bad': its options are not JSON Schema"):
        registry.register_app("other", [bad])
    assert "tiny_bad" not in registry.sources()


PLUGIN = """
from seqgraph.spec import registry
from seqgraph.train import data as datasets

CALLS = []


def load(config, pattern, seed):
    return datasets.hold_out([[1.0], [2.0]], [[1.0], [2.0]], 0.5, seed, {"x_time": False})


def register():
    CALLS.append("register")
    registry.register_app("tiny_plugin", [registry.DataSource("tiny_plugin_data", load)])
"""


def test_entry_points_of_the_group_are_discovered(tmp_path, monkeypatch):
    """A package installed elsewhere: a module and a dist-info with an entry point of the
    group seqgraph.apps, found on sys.path by importlib.metadata."""
    (tmp_path / "tiny_plugin_pkg.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "tiny_plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[seqgraph.apps]\ntiny_plugin = tiny_plugin_pkg:register\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_discovered", False)  # as in a fresh process
    try:
        assert "tiny_plugin_data" in registry.sources()
        import tiny_plugin_pkg

        assert tiny_plugin_pkg.CALLS == ["register"]
        assert registry.source("tiny_plugin_data").app == "tiny_plugin"
        assert "tiny_plugin" in registry.discover()  # again: idempotent
        data = datasets.load({"source": "tiny_plugin_data"}, "one_to_one", 0)
        assert len(data.x) == 1 and len(data.valid_x) == 1
    finally:
        registry.unregister_app("tiny_plugin")
        monkeypatch.delitem(__import__("sys").modules, "tiny_plugin_pkg", raising=False)


def test_a_broken_entry_point_warns_and_the_rest_still_load(monkeypatch):
    class Broken:
        name, value = "broken", "nowhere:register"

        def load(self):
            raise ImportError("no module named nowhere")

    class Good:
        name, value = "good", "here:register"

        def load(self):
            return register

    calls = []
    monkeypatch.setattr(
        registry.importlib.metadata,
        "entry_points",
        lambda group: calls.append(group) or [Broken(), Good()],
    )
    try:
        with pytest.warns(UserWarning, match="plugin 'broken'.*no module named nowhere"):
            assert registry.discover() == ["good"]
        assert calls == ["seqgraph.apps"] and registry.source(SOURCE).app == "tiny"
    finally:
        registry.unregister_app("tiny")
