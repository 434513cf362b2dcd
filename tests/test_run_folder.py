"""A run folder under hostile conditions: an --out that cannot be written, a full disk, damaged
files, a spec name that escapes runs/, two runs on one folder, a resume with other data or
another spec, no validation data, primes the vocabulary lacks. Each ends in one line on stderr,
exit code 2, and the files already on disk unchanged."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_train import TEXT, char_spec, write_spec

from seqgraph import api
from seqgraph.cli import main
from seqgraph.train import run_folder

QUIET = {"progress": False, "sample": False, "log": lambda line: None}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def snapshot(folder: Path) -> dict:
    """Every file of a folder and its bytes, but the lock file (its PID changes)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != run_folder.LOCK
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step character run, copied by tests that damage it."""
    tmp = tmp_path_factory.mktemp("trained")
    out = tmp / "run"
    api.train(str(char_spec(tmp, steps=4)), out=str(out), **QUIET)
    return out


def copy_run(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    for name, data in snapshot(trained).items():
        (out / name).write_bytes(data)
    return out


# ---- 1. an --out that cannot be written --------------------------------------------------


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert main(["run", str(char_spec(tmp_path)), "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert err == f"error: {out}: is a file, not a folder; pass --out DIR with a folder path " + (
        "(new or a run's)"
    )
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.EACCES, "no permission to write there; pass --out DIR with a folder you can write"),
        (errno.EROFS, "the file system is read-only; pass --out DIR on a writable disk"),
    ],
)
def test_unwritable_out_is_one_line_and_the_run_is_kept(
    trained, tmp_path, capsys, monkeypatch, code, fix
):
    out = copy_run(trained, tmp_path)
    before = snapshot(out)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(run_folder.tempfile, "mkstemp", refuse)
    spec = char_spec(tmp_path, steps=6)
    assert main(["run", str(spec), "--out", str(out), "--resume"]) == 2
    err = one_error_line(capsys)
    reason = os.strerror(code)
    assert err == (
        f"error: {out / 'spec.yaml'}: cannot write ({reason}); the previous spec.yaml is "
        f"unchanged; {fix}"
    )
    assert snapshot(out) == before


def test_out_in_a_folder_without_write_permission(tmp_path, capsys, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # root may write anywhere: simulate it
    out = tmp_path / "locked-away" / "run"
    assert main(["run", str(char_spec(tmp_path)), "--out", str(out)]) == 2
    assert one_error_line(capsys) == (
        f"error: {out}: cannot write (Permission denied); no permission to write there; pass "
        "--out DIR with a folder you can write"
    )


def test_full_disk_keeps_the_old_checkpoint_and_leaves_no_temp_file(
    trained, tmp_path, capsys, monkeypatch
):
    out = copy_run(trained, tmp_path)
    checkpoint = (out / run_folder.CHECKPOINT).read_bytes()
    savez = np.savez

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.np, "savez", disk_full)
    spec = char_spec(tmp_path, steps=6)
    assert main(["run", str(spec), "--out", str(out), "--resume"]) == 2
    err = one_error_line(capsys)
    assert err == (
        f"error: {out / 'checkpoint.npz'}: cannot write (No space left on device); the previous "
        "checkpoint.npz is unchanged; the disk is full; free some space and continue with "
        "--resume, or pass --out DIR on another disk"
    )
    assert (out / run_folder.CHECKPOINT).read_bytes() == checkpoint
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(run_folder.np, "savez", savez)  # space freed: the resume goes on
    assert main(["run", str(spec), "--out", str(out), "--resume"]) == 0
    assert run_folder.load_checkpoint(out)[3]["step"] == 6


def test_run_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        out = tmp_path / "run"
        api.train(str(char_spec(tmp_path, steps=2)), out=str(out), **QUIET)
    finally:
        os.umask(previous)
    for name in ("spec.yaml", "data.json", "checkpoint.npz", "metrics.jsonl", "loss.png"):
        if (out / name).exists():
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o640, name


# ---- 2. a damaged run folder ---------------------------------------------------------------


def damage_truncated(out: Path) -> None:
    data = (out / run_folder.CHECKPOINT).read_bytes()
    (out / run_folder.CHECKPOINT).write_bytes(data[: len(data) // 2])


def damage_garbage(out: Path) -> None:
    (out / run_folder.CHECKPOINT).write_bytes(b"\x80\x04 not a zip at all" * 10)


def damage_no_meta(out: Path) -> None:
    params = run_folder.load_checkpoint(out)[0]
    with (out / run_folder.CHECKPOINT).open("wb") as handle:
        np.savez(handle, **{f"param/{k}": v for k, v in params.items()})


@pytest.mark.parametrize(
    "damage, reason",
    [
        (damage_truncated, "a damaged zip archive: "),
        (damage_garbage, "not an .npz archive"),
        (damage_no_meta, "no 'meta' entry in its metadata"),
    ],
)
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_damaged_checkpoint_is_one_line_without_pickle_advice(
    trained, tmp_path, capsys, damage, reason, command
):
    out = copy_run(trained, tmp_path)
    damage(out)
    assert main([command, str(out), "--checkpoint", "last"]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {out / 'checkpoint.npz'}: not a readable checkpoint ({reason}")
    assert err.endswith(
        "it was cut short or is not a seqgraph checkpoint: restore it from a copy, or train "
        "again with --out DIR"
    )
    assert "pickle" not in err and "trust" not in err


def test_corrupt_data_json_is_one_line(trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    (out / "data.json").write_text('{"kind": "stream", "vocab": [')
    assert main(["sample", str(out)]) == 2
    assert one_error_line(capsys) == (
        f"error: {out / 'data.json'}: not valid JSON (Expecting value, line 1); restore it from "
        f"a copy, or train again with `seqgraph run SPEC --out {out}`"
    )


def test_nan_parameters_are_refused_and_eval_json_stays_json(
    trained, tmp_path, capsys, monkeypatch
):
    out = copy_run(trained, tmp_path)
    params, opt_state, carry, meta = run_folder.load_checkpoint(out)
    params["l0.W_hh"][0, 0] = np.nan
    run_folder.save_checkpoint(out, params, opt_state, carry, meta)
    for argv in (["sample", str(out)], ["eval", str(out), "--json"]):
        assert main([*argv, "--checkpoint", "last"]) == 2
        assert one_error_line(capsys) == (
            f"error: {out / 'checkpoint.npz'}: parameter(s) 'l0.W_hh' hold NaN or Inf (the run "
            "diverged); restore an earlier copy, or train again with a lower train.lr or with "
            "train.clip"
        )
    # a finite model can still score NaN or Inf on other data: JSON output says null
    result = {"run_dir": str(out), "loss": float("nan"), "app": {"bleu": float("inf")}}
    monkeypatch.setattr("seqgraph.cli.api.evaluate_run", lambda *a, **k: result)
    assert main(["eval", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"run_dir": str(out), "loss": None, "app": {"bleu": None}}
    assert captured.err == "warning: not finite, written as null: loss (nan), app.bleu (inf)\n"


# ---- 3. a spec name that is not a folder name ----------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "ABSOLUTE", "", "a/b", ".."])
def test_spec_name_must_be_a_plain_folder_name(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "elsewhere" / "escaped"
    name = str(absolute) if name == "ABSOLUTE" else name
    spec = char_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    raw["name"] = name
    spec.write_text(yaml.safe_dump(raw))
    assert main(["run", str(spec)]) == 2
    assert one_error_line(capsys) == (
        f"error: {spec}: name: {name!r} cannot name the run folder runs/NAME; use a plain folder "
        "name (not empty, no '/' or '\\', not '.' or '..'), or pass --out DIR"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()
    assert not absolute.exists()


# ---- 4. two runs on one folder ---------------------------------------------------------------


def test_a_second_run_on_a_locked_folder_refuses_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from seqgraph.train import run_folder\n"
            f"with run_folder.locked({str(out)!r}):\n"
            "    print('ready', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == b"ready"
        began = time.perf_counter()
        assert main(["run", str(char_spec(tmp_path)), "--out", str(out)]) == 2
        assert time.perf_counter() - began < 30
        assert one_error_line(capsys) == (
            f"error: {out}: another `seqgraph run` is writing this folder (PID {holder.pid}); "
            "wait for it to finish, or pass --out DIR for a new run"
        )
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.communicate(b"", timeout=30)
    assert main(["run", str(char_spec(tmp_path, steps=2)), "--out", str(out)]) == 0


def test_the_lock_is_exclusive_within_one_process(tmp_path, capsys):
    out = tmp_path / "run"
    with run_folder.locked(out):
        assert main(["run", str(char_spec(tmp_path)), "--out", str(out)]) == 2
    assert f"(PID {os.getpid()})" in one_error_line(capsys)


# ---- 5. a resume with other data or another spec ---------------------------------------------


def test_resume_with_other_characters_is_refused(trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    before = snapshot(out)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("x", "z"))  # as many characters, one of them another
    spec = char_spec(tmp_path, steps=6)
    assert main(["run", str(spec), "--out", str(out), "--resume", "--data", str(other)]) == 2
    assert one_error_line(capsys) == (
        f"error: {out}: the data differs from this run's (the data has characters ['z'] the run "
        "lacks; the run has characters ['x'] the data lacks); resume with the data the run was "
        "started on (data in its spec.yaml), or start a new run with --out DIR"
    )
    assert snapshot(out) == before


def test_resume_of_a_folder_without_a_run_creates_nothing(tmp_path, capsys):
    out = tmp_path / "typo"
    assert main(["run", str(char_spec(tmp_path)), "--out", str(out), "--resume"]) == 2
    assert one_error_line(capsys) == (
        f"error: {out / 'checkpoint.npz'}: no checkpoint; train first with `seqgraph run SPEC "
        f"--out {out}`"
    )
    assert not out.exists()


def test_resume_with_a_changed_spec_says_so(trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    before = snapshot(out)
    spec = char_spec(tmp_path, steps=6)
    raw = yaml.safe_load(spec.read_text())
    raw["model"]["layers"][0]["hidden"] = 16
    spec.write_text(yaml.safe_dump(raw))
    assert main(["run", str(spec), "--out", str(out), "--resume"]) == 2
    assert one_error_line(capsys) == (
        f"error: {out}: the spec changed since this run was started (model.layers[0].hidden: "
        "8 -> 16); use a new --out or the original spec"
    )
    assert snapshot(out) == before


# ---- 6. no validation data, no steps ------------------------------------------------------


def test_no_validation_data_warns_once_and_reports_no_loss(tmp_path, capsys):
    spec = char_spec(tmp_path, steps=3, eval_every=1)
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["valid_fraction"] = 0.0
    spec.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: no validation data: valid_fraction 0.0 gives 0 characters, too few for one "
        "batch (batch_size 4, seq_len 7); no validation loss will be reported (raise "
        "data.valid_fraction)"
    ]
    assert "validation loss" not in printed.replace("no validation loss will", "")
    assert f"done: 3 steps in {out}\n" in printed
    assert not [r for r in run_folder.Metrics(out, 10**9).read() if r["kind"] == "valid"]
    assert main(["eval", str(out)]) == 2
    assert one_error_line(capsys) == (
        f"error: {out}: the valid split of {tmp_path / 'code.txt'} has no examples (too few for "
        "one batch); evaluate on other data with --data PATH"
    )


def test_run_with_zero_steps_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(char_spec(tmp_path)), "--out", str(out), "--steps", "0"]) == 2
    assert one_error_line(capsys) == (  # the command line's own range check
        "error: seqgraph run: --steps must be a whole number of at least 1, got '0' "
        "(see `seqgraph run --help`)"
    )
    assert not out.exists()


def test_the_python_api_refuses_zero_steps_too(tmp_path):
    from seqgraph import api
    from seqgraph.errors import SeqgraphError

    out = tmp_path / "run"
    with pytest.raises(SeqgraphError, match="steps must be at least 1, got 0"):
        api.train(str(char_spec(tmp_path)), out=str(out), steps=0, log=lambda line: None)
    assert not out.exists()


# ---- 7. primes ------------------------------------------------------------------------------


def test_text_without_newline_trains_and_samples(tmp_path, capsys):
    text = tmp_path / "line.txt"
    text.write_text("the cat sat on the mat " * 40)
    model = {
        "pattern": "many_to_many",
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        "encoders": [{"type": "embedding", "size": 4}],
        "layers": [{"cell": "rnn", "hidden": 5}],
    }
    train = {"steps": 2, "batch_size": 2, "seq_len": 5}
    spec = write_spec(tmp_path, model, {"source": "text", "path": str(text)}, train)
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split("--- sample ---\n")[1].startswith(" ")  # vocab[0]
    assert main(["sample", str(out), "--length", "5"]) == 0
    assert len(capsys.readouterr().out) == len(" ") + 5 + 1
    assert main(["sample", str(out), "--prime", "Dog"]) == 2
    assert one_error_line(capsys) == (
        "error: --prime 'Dog': characters ['D', 'g'] are not in this run's vocabulary of 10 "
        "characters; use characters of its training text"
    )
    raw = yaml.safe_load(spec.read_text())
    raw["train"]["prime"] = "\n"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["run", str(spec), "--out", str(tmp_path / "other")]) == 2
    assert one_error_line(capsys) == (
        f"error: {spec}: train.prime: '\\n' has characters ['\\n'] the data lacks; use "
        "characters of the training text or drop train.prime"
    )
    assert not (tmp_path / "other" / "checkpoint.npz").exists()


def test_sample_refuses_a_prime_for_vectors_and_a_classifier(tmp_path, capsys):
    sine = {
        "pattern": "many_to_many",
        "input": {"type": "vectors", "size": 1},
        "target": {"type": "vectors", "size": 1},
        "layers": [{"cell": "gru", "hidden": 3}],
    }
    data = {"source": "sine", "steps": 6, "examples": 20}
    out = tmp_path / "sine"
    spec = write_spec(tmp_path, sine, data, {"steps": 1, "batch_size": 4}, name="sine")
    api.train(str(spec), out=str(out), **QUIET)
    assert main(["sample", str(out), "--length", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["sample", str(out), "--prime", "abc"]) == 2
    assert one_error_line(capsys) == (
        "error: --prime is text for character models; this run's model generates vectors "
        "(starting from zeros): drop --prime"
    )
    labels = tmp_path / "labels.tsv"
    labels.write_text("good film\tpos\nbad film\tneg\n" * 10)
    classifier = {
        "pattern": "many_to_one",
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        "encoders": [{"type": "embedding", "size": 3}],
        "layers": [{"cell": "gru", "hidden": 3}],
    }
    data = {"source": "tsv", "path": str(labels)}
    out = tmp_path / "cls"
    spec = write_spec(tmp_path, classifier, data, {"steps": 1, "batch_size": 4}, name="cls")
    api.train(str(spec), out=str(out), **QUIET)
    assert main(["sample", str(out)]) == 2
    assert one_error_line(capsys) == (
        f"error: {out}: `sample` generates from a model fed its own output (characters, or "
        "vectors of its input size); this run's model is many_to_one from ids to ids: score it "
        f"with `seqgraph eval {out}`"
    )


# ---- 8. metrics.jsonl --------------------------------------------------------------------------


def test_metrics_are_replaced_atomically_on_resume(trained, tmp_path, monkeypatch):
    out = copy_run(trained, tmp_path)
    history = (out / "metrics.jsonl").read_bytes()
    replaced = []
    real_replace = os.replace

    def watch(src, dst):
        replaced.append(Path(dst).name)
        if Path(dst).name == "metrics.jsonl":
            raise KeyboardInterrupt  # a kill at the moment of the swap
        real_replace(src, dst)

    monkeypatch.setattr(run_folder.os, "replace", watch)
    with pytest.raises(KeyboardInterrupt):
        api.train(str(char_spec(tmp_path, steps=6)), out=str(out), resume=True, **QUIET)
    assert "metrics.jsonl" in replaced
    assert (out / "metrics.jsonl").read_bytes() == history  # the history is whole
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
