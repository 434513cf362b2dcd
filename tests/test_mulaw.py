"""The `mulaw_audio` source (μ-law companding, FSDD-style WAVs split by recording index, the
sum-of-sines stand-in), its baselines and listen-free checks, and a tiny run through the API
and the CLI that writes a WAV. Everything runs on tiny WAVs in tmp_path or generated audio."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqgraph import api, load_spec
from seqgraph.apps import audio, audio_checks, mulaw
from seqgraph.cli import main
from seqgraph.errors import DataError, SpecError
from seqgraph.train import data as datasets

RATE = 8000


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    audio.write_wav(path, samples, rate)


def sine(hz: float, count: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(count) / RATE)


def wav_facts(path) -> tuple[int, int, int, int]:
    with wave.open(str(path), "rb") as f:
        return f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()


def test_mulaw_known_values_and_round_trip():
    np.testing.assert_array_equal(mulaw.encode([-1.0, 0.0, 1.0, -2.0, 2.0]), [0, 128, 255, 0, 255])
    np.testing.assert_allclose(mulaw.decode([0, 255]), [-1.0, 1.0], rtol=1e-12)
    # 256 levels have no zero: 0.0 sits at the level just above, F = 1/255
    assert mulaw.decode(128) == pytest.approx((256 ** (1 / 255) - 1) / 255, rel=1e-12)
    assert mulaw.decode(127) == pytest.approx(-mulaw.decode(128), rel=1e-12)
    # F(0.5) = ln(128.5) / ln(256) = 0.87569 -> (1.87569 / 2) * 255 + 0.5 = 239.65 -> 239
    assert mulaw.encode(0.5) == 239
    ids = np.arange(256)
    np.testing.assert_array_equal(mulaw.encode(mulaw.decode(ids)), ids)
    x = np.linspace(-1, 1, 20001)
    err = np.abs(mulaw.decode(mulaw.encode(x)) - x)
    # half a level in the companded domain is 1/mu: |x' - x| <= (|x| + 1/mu)(256^(1/mu) - 1)
    bound = (np.abs(x) + 1 / 255) * (256 ** (1 / 255) - 1)
    assert np.all(err <= bound + 1e-12)
    assert err[np.abs(x) < 0.01].max() < 3e-4 and err.max() < 0.023
    assert np.all(np.diff(mulaw.encode(x)) >= 0) and len(np.unique(mulaw.encode(x))) == 256


def test_fsdd_style_wavs_are_read_and_split_by_index(tmp_path, capsys):
    (tmp_path / "recordings").mkdir()
    lengths = {}
    for digit in (0, 1):
        for index in (3, 7, 12, 30):
            count = 400 + 10 * index + digit
            write_wav(tmp_path / f"recordings/{digit}_tester_{index}.wav", sine(440, count))
            lengths[digit, index] = count
    (tmp_path / "recordings" / "notes.wav").write_bytes(b"")  # not an FSDD name: skipped
    data = datasets.load({"source": "mulaw_audio", "path": str(tmp_path)}, "many_to_many", 0)
    assert capsys.readouterr().err == ""  # real data: no note
    assert data.kind == "audio" and data.rate == RATE and len(data.vocab) == 256
    assert len(data.test) == lengths[0, 3] + lengths[1, 3]
    assert len(data.valid) == lengths[0, 7] + lengths[1, 7]
    assert len(data.train) == sum(n for (_, i), n in lengths.items() if i >= 10)
    # files join in name order: 0_tester_12 comes first in train
    first, _ = audio.read_wav(tmp_path / "recordings/0_tester_12.wav")
    np.testing.assert_array_equal(data.train[: len(first)], mulaw.encode(first))
    assert datasets.describe(data)["kind"] == "audio"


def test_missing_data_falls_back_to_sines_deterministically(tmp_path, capsys):
    config = {"source": "mulaw_audio", "examples": 20}
    a = datasets.load(config, "many_to_many", 3)
    b = datasets.load(config, "many_to_many", 3)
    other = datasets.load(config, "many_to_many", 4)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert len(a.train) != len(other.train) or np.any(a.train != other.train)
    assert a.origin == "sum-of-sines stand-in" and len(a.test) > 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[0] == lines[1]
    assert "no data.path given" in lines[0] and "sum-of-sines" in lines[0]
    assert "pass --data ../shared/data/fsdd_digits" in lines[0]
    missing = {**config, "path": str(tmp_path / "nope")}
    datasets.load(missing, "many_to_many", 3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope does not exist" in err and "--data" in err
    # 20 clips get recording indices 0-19: 5 test, 5 valid, 10 train
    clips = mulaw.sines(config, 3)
    assert [index for index, _, _ in clips] == list(range(20))
    assert max(np.abs(s).max() for _, s, _ in clips) <= 0.6


def test_bits_and_baselines_on_a_hand_example():
    train = np.array([0, 0, 0, 1])
    # add-one counts [4, 2]: p = 2/3, 1/3
    expected = -(math.log2(2 / 3) + math.log2(1 / 3)) / 2
    assert mulaw.unigram_bits(train, np.array([0, 1]), 2) == pytest.approx(expected)
    # pairs (0,0) (0,0) (0,1): row 0 counts [3, 2], row 1 [1, 1]
    bits = mulaw.bigram_bits(train, np.array([0, 1]), np.array([1, 0]), 2)
    assert bits == pytest.approx(-(math.log2(2 / 5) + math.log2(1 / 2)) / 2)
    # the baselines see exactly the steps the model is scored on
    ids = np.arange(21)
    stream = mulaw.AudioStream(ids, ids, [str(i) for i in range(21)])
    batches = list(stream.valid_batches(2, 4))
    previous, targets = mulaw.scored_pairs(ids, 2, 4)
    np.testing.assert_array_equal(
        np.concatenate([b["x"] for b in batches], axis=1).ravel(), previous
    )
    np.testing.assert_array_equal(
        np.concatenate([b["y"] for b in batches], axis=1).ravel(), targets
    )
    np.testing.assert_array_equal(previous[:8], np.arange(8))


def test_band_energy_level_and_wav_writing(tmp_path):
    n = RATE
    assert audio_checks.band_fraction(sine(1000, n), RATE) > 0.999
    assert audio_checks.band_fraction(sine(3900, n), RATE) < 0.001
    assert audio_checks.band_fraction(sine(100, n), RATE) < 0.001
    noise = np.random.default_rng(0).normal(size=4 * n)
    assert audio_checks.band_fraction(noise, RATE) == pytest.approx(3100 / 4000, abs=0.02)
    assert audio_checks.spectrum_distance(sine(1000, n), sine(1000, n, 0.1), RATE) < 1e-9
    assert audio_checks.spectrum_distance(sine(500, n), sine(2500, n), RATE) > 0.99
    assert audio_checks.rms_dbfs(sine(1000, n, 1.0)) == pytest.approx(-3.0103, abs=1e-3)
    assert audio_checks.report(np.zeros(n), noise, RATE)["gen_level"] == "silent"
    square = np.sign(sine(1000, n, 1.0))
    assert audio_checks.clipped_fraction(square) > 0.99
    assert audio_checks.report(square, noise, RATE)["gen_level"] == "clipped"
    assert audio_checks.report(sine(300, n), noise, RATE)["gen_level"] == "ok"
    path = audio.write_wav(tmp_path / "s.wav", sine(440, 1234), RATE)
    assert wav_facts(path) == (1, 2, RATE, 1234)
    back, rate = audio.read_wav(path)
    np.testing.assert_allclose(back, sine(440, 1234), atol=2 / 32768)


def tiny_spec_dict(**data) -> dict:
    return {
        "name": "tiny_audio",
        "seed": 0,
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "lstm", "hidden": 8}],
        },
        "data": {"source": "mulaw_audio", **data},
        "train": {"sample_length": 50, "seq_len": 16},
    }


def tiny_spec(tmp_path: Path, **data) -> Path:
    spec = tiny_spec_dict(examples=12, prime_seconds=0.002, **data)
    spec["train"] = {
        "steps": 4,
        "batch_size": 8,
        "seq_len": 16,
        "log_every": 2,
        "eval_every": 100,
        "valid_batches": 2,
        "sample_length": 300,
    }
    path = tmp_path / "tiny_audio.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_tiny_run_scores_and_writes_a_wav(tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = api.train(str(tiny_spec(tmp_path)), out=str(run_dir), progress=False)
    assert summary["steps_done"] == 4 and "sample" not in summary
    app = summary["valid"]["app"]
    assert app["audio"] == "sum-of-sines stand-in"
    assert 0 < app["bits_per_sample"] < 8.5 and 0 < app["unigram_bits"] <= 8
    assert 0 < app["bigram_bits"] < 16  # 65,536 add-one cells: too few samples to help here
    assert 0 <= app["gen_band_fraction"] <= 1 and app["gen_level"] in ("ok", "silent", "clipped")
    assert wav_facts(summary["artifacts"]["wav"]) == (1, 2, RATE, 300)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "test"]) == 0
    out = capsys.readouterr()
    assert "bits_per_sample" in out.out and "unigram_bits" in out.out
    assert "sum-of-sines" in out.err
    wav = tmp_path / "g.wav"
    assert main(["sample", str(run_dir), "--wav", str(wav), "--length", "100"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {wav}"
    assert wav_facts(wav) == (1, 2, RATE, 100)
    assert main(["sample", str(run_dir), "--prime", "x"]) == 2
    assert "data.prime_seconds" in capsys.readouterr().err


def test_bits_per_sample_is_the_loss_in_bits():
    config = {"source": "mulaw_audio", "examples": 12, "prime_seconds": 0.002}
    data = datasets.load(config, "many_to_many", 0)
    spec = load_spec(tiny_spec_dict(), auto={"input": 256, "target": 256})
    model = api.Model(spec)
    model.set_params({k: np.zeros(v.shape) for k, v in model.param_info.items() if "out" in k})
    scores = data.app.metrics(model, "valid", 8)  # zero readout: uniform over 256 -> 8 bits
    assert scores["bits_per_sample"] == pytest.approx(8.0, abs=1e-5)


def test_bad_options_say_what_to_change(tmp_path):
    with pytest.raises(DataError, match=r"set model.pattern: many_to_many \(not many_to_one\)"):
        datasets.load({"source": "mulaw_audio"}, "many_to_one", 0)
    with pytest.raises(DataError, match=r"no recordings/ folder.*--data ../shared/data/fsdd"):
        datasets.load({"source": "mulaw_audio", "path": str(tmp_path)}, "many_to_many", 0)
    (tmp_path / "recordings").mkdir()
    write_wav(tmp_path / "recordings/0_tester_20.wav", sine(440, 500))
    with pytest.raises(DataError, match=r"no valid recordings \(index 5-9\)"):
        datasets.load({"source": "mulaw_audio", "path": str(tmp_path)}, "many_to_many", 0)
    write_wav(tmp_path / "recordings/0_tester_6.wav", sine(440, 500), rate=16000)
    with pytest.raises(DataError, match=r"sample rates \[8000, 16000\]; resample"):
        datasets.load({"source": "mulaw_audio", "path": str(tmp_path)}, "many_to_many", 0)
    with pytest.raises(DataError, match=r"data.examples = 5 .* use 11 or more"):
        datasets.load({"source": "mulaw_audio", "examples": 5}, "many_to_many", 0)
    bad = tiny_spec_dict()
    bad["data"]["mu"] = 0
    with pytest.raises(SpecError, match=r"data.mu") as caught:
        load_spec(bad, auto={"input": 256, "target": 256})
    assert "\n" not in str(caught.value)
