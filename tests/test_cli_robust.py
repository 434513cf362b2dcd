"""What the machine says reaches the user as one line: OS errors (a file where a folder should
be, permissions, a read-only or full disk), MemoryError and RecursionError become one line
with the path, the errno's meaning and a hint, exit 2 (`--traceback` shows the stack); numeric
flags are checked by argparse; `render` takes a run folder; `seqgraph schema` gives defaults."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_spec_errors import BASE

from seqgraph import api, cli, load_spec
from seqgraph.runtime import memory
from seqgraph.spec import schema
from seqgraph.train import run_folder

TINY_RUN = """\
model:
  pattern: many_to_many
  input: {type: ids, vocab: auto}
  target: {type: ids, vocab: auto}
  encoders:
    - {type: embedding, size: 4}
  layers:
    - {cell: rnn, hidden: 3}
data: {max_chars: 2000}
train: {batch_size: 2, seq_len: 5, log_every: 1, eval_every: 2, valid_batches: 1,
        checkpoint_every: 1, sample_length: 5}
"""


def one_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    return path


@pytest.fixture
def trained(tmp_path) -> Path:
    path, out = tmp_path / "run.yaml", tmp_path / "run"
    path.write_text(TINY_RUN)
    assert cli.main(["run", str(path), "--steps", "2", "--out", str(out)]) == 0
    return out


# ---- 1. OS errors, MemoryError, RecursionError: one handler at the top -----------------------


def test_a_file_where_a_folder_is_expected(spec, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target = blocker / "graph.dot"
    assert cli.main(["render", str(spec), "-o", str(target)]) == 2
    err = one_line(capsys)
    assert err == (
        f"error: {target}: {os.strerror(errno.ENOTDIR)}; a file stands where a folder is "
        "expected; remove it or choose another path\n"
    )


def test_out_folder_that_is_a_file(tmp_path, capsys):
    spec, blocker = tmp_path / "run.yaml", tmp_path / "out"
    spec.write_text(TINY_RUN)
    blocker.write_text("a file")
    assert cli.main(["gradflow", str(spec), "--batch", "2", "--out", str(blocker)]) == 2
    err = one_line(capsys)
    assert str(blocker) in err and os.strerror(errno.EEXIST) in err


def test_a_folder_where_a_file_is_expected(spec, tmp_path, capsys):
    folder = tmp_path / "graph.dot"
    folder.mkdir()
    assert cli.main(["render", str(spec), "-o", str(folder)]) == 2
    err = one_line(capsys)
    assert f"{folder}: {os.strerror(errno.EISDIR)}; that is a folder; give a file path" in err


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_a_folder_without_write_permission(spec, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["render", str(spec), "-o", str(locked / "g.dot")]) == 2
    finally:
        locked.chmod(0o700)
    assert os.strerror(errno.EACCES) in one_line(capsys)


def _fail_with(number: int):
    def fail(*args, **kwargs):
        path = kwargs.get("dir") or (args[0] if args else "?")
        raise OSError(number, os.strerror(number), str(Path(path) / ".checkpoint.npz.tmp"))

    return fail


@pytest.mark.parametrize(
    "number, hint",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission to write"),
    ],
    ids=["full_disk", "read_only", "permission"],
)
def test_run_writing_its_checkpoint_fails(number, hint, trained, capsys, monkeypatch):
    spec = trained.parent / "run.yaml"
    before = (trained / run_folder.CHECKPOINT).read_bytes()
    monkeypatch.setattr(run_folder.tempfile, "mkstemp", _fail_with(number))
    argv = ["run", str(spec), "--steps", "4", "--out", str(trained), "--resume"]
    assert cli.main(argv) == 2
    err = one_line(capsys)
    assert str(trained) in err and os.strerror(number) in err and hint in err
    assert (trained / run_folder.CHECKPOINT).read_bytes() == before  # the old one survives


def test_a_full_disk_in_the_middle_of_a_write(trained, capsys, monkeypatch):
    spec = trained.parent / "run.yaml"
    before = (trained / run_folder.CHECKPOINT).read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # fsync names no file

    monkeypatch.setattr(run_folder.os, "fsync", full)
    argv = ["run", str(spec), "--steps", "4", "--out", str(trained), "--resume"]
    assert cli.main(argv) == 2
    err = one_line(capsys)
    # the run folder names the file it was writing, though fsync's error names none
    assert err.startswith(f"error: {trained}/") and os.strerror(errno.ENOSPC) in err
    assert "the disk is full" in err
    assert (trained / run_folder.CHECKPOINT).read_bytes() == before
    assert not list(trained.glob(".*.tmp"))


@pytest.mark.parametrize(
    "exc, says",
    [
        (MemoryError(), "out of memory; use a smaller hidden/batch_size/seq_len"),
        (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
        (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), "raise `ulimit -n`"),
    ],
    ids=["memory", "recursion", "open_files"],
)
def test_memory_and_recursion_errors(exc, says, spec, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(api, "check", broken)
    assert cli.main(["check", str(spec)]) == 2
    assert says in one_line(capsys)
    assert cli.main(["--traceback", "check", str(spec)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: ")


def test_system_message_names_both_paths_of_a_rename():
    exc = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a/b", None, "/c/d")
    assert cli.system_message(exc) == f"/a/b -> /c/d: {os.strerror(errno.EXDEV)}"


# ---- 2. a model too large for memory is refused before it is allocated -----------------------


def test_available_memory_is_read_from_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemFree:  100 kB\nMemAvailable:  6000000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    assert memory.available_bytes() == 6_000_000 * 1024
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "absent"))
    assert memory.available_bytes() is None  # not Linux: no check


def test_parameters_too_large_are_refused_before_allocating(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text(BASE.replace("hidden: 3", "hidden: 8000"))
    monkeypatch.setattr(memory, "available_bytes", lambda: 3 * 10**9)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(memory, "_ulimit_room", lambda: None)
    drawn = []
    monkeypatch.setattr("seqgraph.runtime.model.initialize", lambda *a: drawn.append(a))
    assert cli.main(["check", str(path)]) == 2
    err = one_line(capsys)
    assert not drawn  # refused before one parameter was drawn
    count = 4 * 8000 * (4 + 8000 + 2) + 8000 * 5 + 5 + 5 * 4  # LSTM, readout, embedding
    assert f"{path}:7: model.layers: needs ~{count * 4 * 4 / 1e9:.1f} GB for parameters" in err
    assert "available ~3.0 GB (MemAvailable); use a smaller hidden" in err
    assert "train.segment_steps" in err


def test_activations_too_large_are_refused(tmp_path, capsys, monkeypatch):
    path = tmp_path / "long.yaml"
    path.write_text(BASE + "train: {batch_size: 50000, seq_len: 2000}\n")
    monkeypatch.setattr(memory, "available", lambda: (4 * 10**9, "MemAvailable"))
    assert cli.main(["check", str(path)]) == 2
    err = one_line(capsys)
    assert "MB for parameters" in err
    assert "GB for the activations of one training step (batch 50000 x 2000 steps)" in err
    # gradient checkpointing holds one segment: the same model then fits
    path.write_text(BASE + "train: {batch_size: 50000, seq_len: 2000, segment_steps: 10}\n")
    assert cli.main(["check", str(path)]) == 0


def test_a_model_that_fits_is_not_refused(spec, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: (10**9, "MemAvailable"))
    api.check(str(spec))
    monkeypatch.setattr(memory, "available", lambda: None)  # not Linux: no check
    api.check(str(spec))


def test_a_container_limit_or_ulimit_counts_when_it_is_lower(tmp_path, monkeypatch):
    """A 6 GB container on a 64 GB machine: MemAvailable says 64, the cgroup says 6."""
    (tmp_path / "memory.max").write_text("6000000000\n")
    (tmp_path / "memory.current").write_text("1500000000\n")
    (tmp_path / "memory.stat").write_text("anon 1000000000\ninactive_file 500000000\n")
    monkeypatch.setattr(memory, "CGROUP", str(tmp_path))
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 10**9)
    monkeypatch.setattr(memory, "_ulimit_room", lambda: None)
    assert memory.available() == (5 * 10**9, "cgroup memory limit")
    (tmp_path / "memory.max").write_text("max\n")  # no limit: MemAvailable decides
    assert memory.available() == (64 * 10**9, "MemAvailable")
    monkeypatch.setattr(memory, "_ulimit_room", lambda: 2 * 10**9)
    assert memory.available() == (2 * 10**9, "ulimit -v")


def test_ulimit_room_reads_rlimit_as(monkeypatch):
    monkeypatch.setattr(memory.resource, "getrlimit", lambda kind: (6 * 2**30, -1))
    room = memory._ulimit_room()
    assert room is not None and 0 <= room < 6 * 2**30


# ---- 3. command-line numbers are checked like the spec's --------------------------------------


@pytest.mark.parametrize(
    "argv, flag, allowed",
    [
        (["check", "S", "--steps", "0"], "--steps", "from 1 to 100,000"),
        (["check", "S", "--steps", "-2"], "--steps", "from 1 to 100,000"),
        (["check", "S", "--steps", "2.5"], "--steps", "from 1 to 100,000"),
        (["render", "S", "--steps", "0"], "--steps", "from 1 to 100,000"),
        (["render", "S", "--out-steps", "0"], "--out-steps", "from 1 to 100,000"),
        (["render", "S", "--lengths", "3,-1"], "--lengths", "from 1 to 100,000"),
        (["gradflow", "S", "--batch", "0"], "--batch", "from 1 to 100,000"),
        (["gradflow", "S", "--batch", "-8"], "--batch", "from 1 to 100,000"),
        (["gradflow", "S", "--steps", "0"], "--steps", "from 1 to 100,000"),
        (["gradflow", "S", "--threshold", "-1"], "--threshold", "from 0 to 1"),
        (["gradflow", "S", "--threshold", "nan"], "--threshold", "from 0 to 1"),
        (["run", "S", "--steps", "0"], "--steps", "of at least 1"),
        (["sample", "R", "--length", "0"], "--length", "from 1 to"),
        (["sample", "R", "--temperature", "0"], "--temperature", "above 0"),
        (["sample", "R", "--temperature", "inf"], "--temperature", "above 0"),
        (["sample", "R", "--seed", "-1"], "--seed", "from 0 to"),
    ],
)
def test_numeric_flags_are_checked(argv, flag, allowed, capsys):
    assert cli.main(argv) == 2
    err = one_line(capsys)
    assert err.startswith(f"error: seqgraph {argv[0]}: {flag} ")
    assert allowed in err and f"see `seqgraph {argv[0]} --help`" in err


def test_every_numeric_flag_has_a_checked_type():
    """A new int/float flag must say its range: plain `type=int` lets 0 and -1 through."""
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.type not in (int, float), f"seqgraph {name} {action.option_strings}"


def test_help_still_exits_0(capsys):
    assert cli.main(["check", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out


# ---- 4. render takes a run folder; notes; schema defaults -------------------------------------


def test_render_a_run_folder(trained, tmp_path, capsys):
    capsys.readouterr()
    dot = tmp_path / "run.dot"
    assert cli.main(["render", str(trained), "--steps", "3", "-o", str(dot)]) == 0
    assert capsys.readouterr().out == f"{dot}\n"
    assert dot.read_text().count("RNN l0") == 3
    assert cli.main(["gradflow", str(trained), "--batch", "2"]) == 0  # the same folder works


def test_render_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["render", str(tmp_path), "-o", str(tmp_path / "g.dot")]) == 2
    err = one_line(capsys)
    assert f"error: {tmp_path}: <root>: a folder without spec.yaml" in err
    assert "the --out of `seqgraph run`" in err


def test_render_says_when_it_uses_a_placeholder_vocabulary(tmp_path, capsys):
    path = tmp_path / "auto.yaml"
    path.write_text(BASE.replace("vocab: 5", "vocab: auto") + "data: {source: text}\n")
    assert cli.main(["check", str(path), "--steps", "2"]) == 0
    checked = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert cli.main(["render", str(path), "-o", str(tmp_path / "g.dot")]) == 0
    rendered = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert checked == rendered and len(rendered) == 1
    assert f"placeholder of {api.AUTO_PLACEHOLDER}" in rendered[0]


def test_schema_lists_defaults(capsys):
    assert cli.main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    train = printed["properties"]["train"]["properties"]
    assert train["batch_size"]["default"] == 32 and train["seq_len"]["default"] == 64
    assert printed["properties"]["dtype"]["default"] == "float32"
    assert printed["properties"]["data"]["properties"]["source"]["default"] == "python_stdlib"
    layer = printed["properties"]["model"]["properties"]["layers"]["items"]["properties"]
    assert layer["merge"]["default"] == "concat" and layer["init_state"]["default"] == "zeros"


def _schema_defaults(node: dict, prefix=()) -> dict:
    """Every (path) -> default in a schema fragment's properties."""
    found = {}
    for key, child in node.get("properties", {}).items():
        if "default" in child:
            found[prefix + (key,)] = child["default"]
        found.update(_schema_defaults(child, prefix + (key,)))
    return found


def test_schema_defaults_are_what_the_code_uses(spec):
    from seqgraph.train import optim
    from seqgraph.train.loop import DEFAULTS, train_config

    train = schema.SPEC["properties"]["train"]
    # the training loop's defaults, key by key
    for key, value in DEFAULTS.items():
        assert schema.default("train", key) == value, key
    config = train_config(load_spec(spec), None)
    assert config["batch_size"] == schema.default("train", "batch_size")
    # the optimizer's, read back from an Optimizer built from nothing
    opt = optim.Optimizer({}, np)
    defaults = _schema_defaults(train)
    assert opt.name == defaults[("optimizer", "name")]
    assert (opt.momentum, opt.nesterov) == (
        defaults[("optimizer", "momentum")],
        defaults[("optimizer", "nesterov")],
    )
    assert [opt.beta1, opt.beta2] == defaults[("optimizer", "betas")]
    assert (opt.alpha, opt.eps, opt.weight_decay) == (
        defaults[("optimizer", "alpha")],
        defaults[("optimizer", "eps")],
        defaults[("optimizer", "weight_decay")],
    )
    assert optim.learning_rate({}, 10, 100) == defaults[("lr",)]
    # the loader's and the model section's, read back from a spec that leaves them out
    loaded = load_spec(spec)
    assert (loaded.backend, loaded.dtype, loaded.seed) == (
        schema.default("backend"),
        schema.default("dtype"),
        schema.default("seed"),
    )
    layer = loaded.model.layers[0]
    assert layer.merge == "concat" and layer.init_state == "zeros" and not layer.bidirectional
    assert loaded.model.readout == schema.default("model", "readout")
    assert loaded.model.bos == schema.default("model", "bos")
    assert loaded.cells["lstm"].params  # built-in cells load with the schema's init default
