"""Autoregressive audio (`data.source: mulaw_audio`): a waveform as μ-law ids, one per step.

Each recording of the Free Spoken Digit Dataset (8 kHz, 16-bit) is μ-law companded to mu + 1
= 256 classes (WaveNet's companding) and the recordings of a split are joined into one long
stream. A `Stream` rather than a `SequenceSet` of utterances: a recording is 2,700-7,000
samples, far more steps than is sensible to unroll whole, so the model trains as the
character models do, on B parallel streams in truncated-BPTT windows (`train.seq_len`,
`train.stride`) with the state carried between windows. The split is FSDD's, by recording
index (`fsdd.split_of`). Without the folder a deterministic sum-of-sines generator stands in
and a one-line note says so and what to pass.

`AudioApp` scores bits per sample on held-out audio against unigram and bigram baselines, and
writes a generated WAV with listen-free checks of its spectrum and level (`audio_checks.py`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from seqgraph.apps import audio, audio_checks, fsdd
from seqgraph.apps.base import App, app_hooks
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT
from seqgraph.train.data import Stream

MU = 255
RATE = 8000
HINT = "pass --data ../shared/data/fsdd_digits"
SPLITS = ("train", "valid", "test")


def encode(x, mu: int = MU) -> np.ndarray:
    """μ-law ids in 0..mu of samples in [-1, 1]: F(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu),
    then (F + 1) / 2 quantised to mu + 1 levels (torchaudio's convention; 0.0 -> 128)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((companded + 1) / 2 * mu + 0.5).astype(np.int64)


def decode(ids, mu: int = MU) -> np.ndarray:
    """Samples in [-1, 1] of μ-law ids: the inverse of F at each level's centre."""
    companded = 2 * np.asarray(ids, dtype=np.float64) / mu - 1
    return np.sign(companded) * np.expm1(np.abs(companded) * np.log1p(mu)) / mu


@dataclass
class AudioStream(Stream):
    """A `Stream` of μ-law ids with a test split, the sample rate and where it came from."""

    test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rate: int = RATE
    mu: int = MU
    origin: str = "speech"
    kind: str = "audio"

    def held_out(self, split: str) -> np.ndarray:
        return self.test if split == "test" else self.valid

    def valid_batches(self, batch_size: int, seq_len: int, split: str = "valid"):
        if split == "test" and not len(self.test):
            raise DataError("this audio has no test split (FSDD index 0-4); use --split valid")
        return Stream.valid_batches(replace(self, valid=self.held_out(split)), batch_size, seq_len)


def notice(text: str) -> None:
    """One line on stderr: data sources have no logger, and stdout may be a sample or JSON."""
    print(f"note: {text}", file=sys.stderr, flush=True)


def load(config: dict, pattern: str, seed: int) -> AudioStream:
    """The `mulaw_audio` data set: FSDD recordings, or the sum-of-sines stand-in."""
    if pattern != "many_to_many":
        raise DataError(
            f"data.source 'mulaw_audio' predicts the next sample at every step; set "
            f"model.pattern: many_to_many (not {pattern})"
        )
    mu = int(config.get("mu", MU))
    if not 1 <= mu <= 65535:
        raise DataError(f"data.mu must lie in 1..65535 (classes = mu + 1), not {mu}")
    root = Path(config["path"]) if config.get("path") else None
    if root is not None and root.exists():
        clips, origin = read_recordings(root), "speech"
    else:
        why = "no data.path given" if root is None else f"{root} does not exist"
        notice(
            f"{why}: training on generated sum-of-sines audio, not speech; {HINT} "
            "for the Free Spoken Digit recordings"
        )
        clips, origin = sines(config, seed), "sum-of-sines stand-in"
    parts = {split: [] for split in SPLITS}
    for index, samples, _ in clips:
        parts[fsdd.split_of(index)].append(encode(samples, mu))
    for split, indices in (("train", "10 and up"), ("valid", "5-9")):
        if not parts[split]:
            raise DataError(f"{root}: no {split} recordings (index {indices}); {HINT}")
    train, valid, test = (
        np.concatenate(parts[s]) if parts[s] else np.zeros(0, np.int64) for s in SPLITS
    )
    vocab = [str(i) for i in range(mu + 1)]
    rate = _common_rate(clips)
    stream = AudioStream(train, valid, vocab, test=test, rate=rate, mu=mu, origin=origin)
    stream.app = AudioApp(stream, float(config.get("prime_seconds", 0.05)))
    return stream


def read_recordings(root: Path) -> list[tuple[int, np.ndarray, int]]:
    """(recording index, samples, rate) of every `recordings/{digit}_{speaker}_{index}.wav`."""
    if not (root / "recordings").is_dir():
        raise DataError(
            f"{root}: no recordings/ folder there, so this is not the fsdd_digits folder; {HINT}"
        )
    out = []
    for _, _, index, path in fsdd.recordings(root):
        samples, rate = audio.read_wav(path)
        out.append((index, samples, rate))
    return out


def _common_rate(clips: list) -> int:
    rates = sorted({rate for _, _, rate in clips})
    if len(rates) > 1:
        raise DataError(
            f"the recordings have sample rates {rates}; resample them all to one rate first"
        )
    return rates[0]


def sines(config: dict, seed: int) -> list[tuple[int, np.ndarray, int]]:
    """`data.examples` word-like clips (0.3-0.9 s at 8 kHz) of `data.waves` sines between
    150 and 2,500 Hz under a half-sine envelope; clip k gets recording index k mod 50, so
    FSDD's split applies. Deterministic for a seed."""
    count, waves = int(config.get("examples", 200)), int(config.get("waves", 3))
    if count < 11:  # index 5-9 is validation, 10 and up training
        raise DataError(
            f"data.examples = {count} sum-of-sines clips leave no training clip (clip k has "
            "recording index k mod 50); use 11 or more"
        )
    rng = np.random.default_rng([seed, 23])
    clips = []
    for k in range(count):
        n = int(RATE * rng.uniform(0.3, 0.9))
        t = np.arange(n)[:, None] / RATE
        hz = rng.uniform(150.0, 2500.0, size=waves)
        amplitude = rng.uniform(0.2, 1.0, size=waves)
        phase = rng.uniform(0.0, 2 * np.pi, size=waves)
        signal = (amplitude * np.sin(2 * np.pi * hz * t + phase)).sum(axis=1) / amplitude.sum()
        clips.append((k % 50, 0.6 * np.sin(np.pi * np.arange(n) / n) * signal, RATE))
    return clips


def scored_pairs(ids: np.ndarray, batch_size: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) ids of exactly the steps `Stream.valid_batches` feeds the model, so
    the baselines are scored on the same samples as the model."""
    width = (len(ids) - 1) // batch_size
    used = (width - window) // window * window + window if width >= window else 0
    xs = ids[: batch_size * width].reshape(batch_size, width)[:, :used]
    ys = ids[1 : batch_size * width + 1].reshape(batch_size, width)[:, :used]
    return xs.ravel(), ys.ravel()


def unigram_bits(train: np.ndarray, targets: np.ndarray, classes: int) -> float:
    """Bits per sample of `targets` under the add-one smoothed histogram of `train`."""
    counts = np.bincount(train, minlength=classes) + 1.0
    return float(-np.mean(np.log2(counts[targets] / counts.sum())))


def bigram_bits(
    train: np.ndarray, previous: np.ndarray, targets: np.ndarray, classes: int
) -> float:
    """Bits per sample of `targets` given the sample before, add-one smoothed per row."""
    counts = np.ones((classes, classes))
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    probs = counts[previous, targets] / counts[previous].sum(axis=1)
    return float(-np.mean(np.log2(probs)))


class AudioApp(App):
    """Bits per sample against baselines, and a generated WAV with listen-free checks."""

    def __init__(self, stream: AudioStream, prime_seconds: float):
        self.stream = stream
        self.prime = stream.valid[: max(1, int(round(prime_seconds * stream.rate)))]
        self._generated: tuple | None = None  # (key, samples): run's metrics then artifacts

    def metrics(self, model, split: str, batch_size: int) -> dict:
        from seqgraph.train.evaluate import evaluate

        s = self.stream
        ids = s.held_out(split)
        # train.seq_len windows: the run has compiled that length already
        window = min(int(model.spec.train.get("seq_len", 64)), (len(ids) - 1) // batch_size)
        if window < 2:
            raise DataError(
                f"the {split} audio has {len(ids)} samples, too few for batch_size "
                f"{batch_size}; use a smaller train.batch_size"
            )
        nll = evaluate(model, s.valid_batches(batch_size, window, split))
        previous, targets = scored_pairs(ids, batch_size, window)
        classes = s.mu + 1
        out = {
            "audio": s.origin,
            "bits_per_sample": nll["loss"] / math.log(2),
            "unigram_bits": unigram_bits(s.train, targets, classes),
            "bigram_bits": bigram_bits(s.train, previous, targets, classes),
        }
        real = decode(ids, s.mu)
        return {**out, **audio_checks.report(self.generate(model, model.seed), real, s.rate)}

    def artifacts(self, model, run_dir: Path, seed: int) -> dict:
        path = Path(run_dir) / "sample.wav"
        audio.write_wav(path, self.generate(model, seed), self.stream.rate)
        return {"wav": str(path)}

    def generate(
        self, model, seed: int, length=None, temperature=None, greedy: bool = False
    ) -> np.ndarray:
        """Samples in [-1, 1] generated after the prime (cached for the same model state, so
        a run's metrics and artifacts share one clip). Defaults: train.sample_length (else
        2 s) and train.temperature (else 1)."""
        from seqgraph.runtime.generate import sample_ids

        train = model.spec.train
        length = int(length or train.get("sample_length", 2 * self.stream.rate))
        if temperature is None:
            temperature = float(train.get("temperature", 1.0))
        key = (id(model), seed, length, temperature, greedy, _fingerprint(model))
        if self._generated is None or self._generated[0] != key:
            prime = [int(i) for i in self.prime]
            ids = sample_ids(model, prime, length, temperature, greedy, seed)
            self._generated = (key, decode(ids, self.stream.mu))
        return self._generated[1]


def _fingerprint(model) -> float:
    """A cheap stand-in for the parameters' identity: their sum."""
    from seqgraph.engine.xp_extra import to_numpy

    return float(sum(float(to_numpy(v).sum()) for v in model.params.values()))


def sample_run(model, run_dir: Path, out=None, prime=None, **options) -> Path:
    """`seqgraph sample` of a μ-law run: a WAV (`out`, default RUN_DIR/generated.wav)
    generated after data.prime_seconds of real audio (`options`: those of `sample_wav`)."""
    if prime is not None:
        raise DataError("--prime is text; an audio run starts from data.prime_seconds of audio")
    path = Path(out) if out else Path(run_dir) / "generated.wav"
    return sample_wav(model, path, **options)


def sample_wav(model, path, length=None, temperature=None, greedy=False, seed=0) -> Path:
    """Generate from a μ-law run's model after its prime and write a 16-bit WAV (what
    `seqgraph sample RUN --wav FILE` does); `length` in samples (default train.sample_length)."""
    from seqgraph.train.data import load as load_data

    spec = model.spec
    stream = load_data(dict(spec.data), spec.model.pattern, spec.seed)
    samples = stream.app.generate(model, seed, length, temperature, greedy)
    return audio.write_wav(path, samples, stream.rate)


OPTIONS = {
    "path": {"type": "string", "description": "the FSDD folder (else sum-of-sines audio)"},
    "mu": {
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
        "description": "μ-law parameter; mu + 1 classes (default 255)",
    },
    "prime_seconds": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 10,
        "description": "seconds of real validation audio fed before generating (default 0.05)",
    },
    "examples": {**COUNT, "description": "clips of the sum-of-sines stand-in"},
    "waves": {**COUNT, "description": "sines per clip of the sum-of-sines stand-in"},
}
SOURCES = [
    DataSource(
        "mulaw_audio",
        load,
        OPTIONS,
        "a waveform as μ-law ids, one per step (FSDD recordings or sums of sines)",
        sample=sample_run,
        **app_hooks(),
    )
]
