"""Speech features and the `fsdd` data source, on tiny synthetic WAVs made in tmp_path; and a
CTC training run through the CLI with `seqgraph eval --split test` reporting PER."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqgraph.apps import audio, fsdd
from seqgraph.cli import main
from seqgraph.errors import DataError
from seqgraph.train import data as datasets

RATE = 8000
PHONEMES = (
    "digit\tword\tcmudict_arpabet\tcmudict_alternatives\tespeak_en_us_mnemonic\t"
    "espeak_en_us_ipa\n"
    "0\tzero\tZ IH1 R OW0\tZ IY1 R OW0\tz 'i@ r oU\tz ˈiə ɹ oʊ\n"
    "1\tone\tW AH1 N\t\tw 'V n\tw ˈʌ n\n"
    "2\ttwo\tT UW1\t\tt 'u:\tt ˈuː\n"
)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    audio.write_wav(path, samples, rate)


def tone(hz: float, seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    noise = np.random.default_rng(seed).normal(scale=0.01, size=t.shape)
    return 0.5 * np.sin(2 * np.pi * hz * t) + noise


def make_folder(root: Path, indices=range(12)) -> Path:
    """Digits 0-2 as tones of 300/900/2000 Hz, recordings `indices` of each."""
    (root / "recordings").mkdir(parents=True)
    (root / "phonemes.tsv").write_text(PHONEMES, encoding="utf-8")
    for digit, hz in enumerate((300.0, 900.0, 2000.0)):
        for i in indices:
            write_wav(
                root / "recordings" / f"{digit}_tester_{i}.wav",
                tone(hz, 0.2 + 0.01 * i, seed=10 * digit + i),
            )
    return root


def test_read_wav_and_frames(tmp_path):
    samples = np.linspace(-0.5, 0.5, 801)
    write_wav(tmp_path / "a.wav", samples)
    read, rate = audio.read_wav(tmp_path / "a.wav")
    assert rate == RATE and read.shape == (801,)
    np.testing.assert_allclose(read, samples, atol=1 / 32768 + 1e-12)
    # 25 ms = 200 samples every 10 ms = 80 samples: 1 + (801 - 200) // 80 = 8 frames
    frames = audio.frames(read, rate)
    assert frames.shape == (8, 200)
    np.testing.assert_array_equal(frames[1], read[80:280])
    assert audio.frames(read[:50], rate).shape == (1, 200)  # padded up to one window


def test_log_mel_puts_a_tone_in_the_right_band(tmp_path):
    bank = audio.mel_filterbank(40, 256, RATE)
    # no band is empty, though the lowest are narrower than the 31.25 Hz FFT bins
    assert bank.shape == (40, 129) and np.all(bank.max(axis=1) > 0.6) and bank.max() <= 1
    centres = np.argmax(bank, axis=1)
    assert np.all(np.diff(centres) >= 0)  # bands rise in frequency
    for hz in (300.0, 2000.0):
        mel = audio.log_mel(tone(hz, 0.3, 0), RATE)
        assert mel.shape == (1 + (2400 - 200) // 80, 40)
        loudest = np.argmax(mel.mean(axis=0))
        peak_hz = np.fft.rfftfreq(256, 1 / RATE)[centres[loudest]]
        assert abs(peak_hz - hz) < 0.15 * hz


def test_features_are_normalised_per_utterance(tmp_path):
    write_wav(tmp_path / "a.wav", tone(500.0, 0.4, 1))
    x = audio.features(tmp_path / "a.wav")
    assert x.shape == (38, 40) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-2)
    stacked = audio.features(tmp_path / "a.wav", stack=2)
    np.testing.assert_array_equal(stacked, x.reshape(19, 80))


def test_fsdd_source_splits_by_index_and_encodes_phonemes(tmp_path):
    root = make_folder(tmp_path / "fsdd")
    data = datasets.load({"source": "fsdd", "path": str(root)}, "many_to_many", 0)
    assert data.labels == ["<blank>", "AH", "IH", "N", "OW", "R", "T", "UW", "W", "Z"]
    assert (len(data.x), len(data.valid_x), len(data.test_x)) == (6, 15, 15)
    words = {tuple(data.labels[i] for i in y) for y in data.test_y}
    assert words == {("Z", "IH", "R", "OW"), ("W", "AH", "N"), ("T", "UW")}
    batch = data.batch_at(0, 4, 0, 0)
    assert batch["x"].shape[0] == 4 and batch["x"].shape[2] == 40
    assert set(batch) == {"x", "lengths", "y", "y_lengths"}
    assert np.all(batch["y"][np.arange(batch["y"].shape[1]) < batch["y_lengths"][:, None]] > 0)
    espeak = datasets.load(
        {"source": "fsdd", "path": str(root), "phonemes": "espeak"}, "many_to_many", 0
    )
    assert "V" in espeak.labels and "i@" in espeak.labels  # stress marks dropped


def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match=r"pass --data PATH/TO/fsdd_digits"):
        datasets.load({"source": "fsdd"}, "many_to_many", 0)
    with pytest.raises(DataError, match=r"no recordings there.*--data PATH/TO/fsdd_digits"):
        datasets.load({"source": "fsdd", "path": str(tmp_path / "nope")}, "many_to_many", 0)
    assert fsdd.split_of(4) == "test" and fsdd.split_of(9) == "valid"
    assert fsdd.split_of(10) == "train"


def test_ctc_run_and_eval_report_per_through_the_cli(tmp_path, capsys):
    root = make_folder(tmp_path / "fsdd", indices=range(11))
    model = {
        "pattern": "many_to_many",
        "input": {"type": "vectors", "size": 40},
        "target": {"type": "ids", "vocab": "auto"},
        "loss": "ctc",
        "layers": [{"cell": "lstm", "hidden": 4, "bidirectional": True}],
    }
    spec = {
        "name": "tiny_ctc",
        "seed": 1,
        "model": model,
        "data": {"source": "fsdd"},
        "train": {
            "steps": 3,
            "batch_size": 3,
            "log_every": 1,
            "eval_every": 100,
            "valid_batches": 2,
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    assert main(["run", str(path), "--data", str(root), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "done: 3 steps" in line and "PER" in line
    assert main(["eval", str(out), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["sequences"] == 15
    assert result["tokens"] == 5 * (4 + 3 + 2)  # loss per phoneme of the test split
    assert 0 <= result["digit_accuracy"] <= result["nearest_accuracy"] <= 1
    assert result["per"] >= 0 and np.isfinite(result["loss"])
    assert main(["eval", str(out), "--split", "test"]) == 0
    assert "PER" in capsys.readouterr().out
