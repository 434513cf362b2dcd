"""Speech features in NumPy: WAV reading and writing (standard-library `wave`) and log-mel
frames.

A frame is a 25 ms Hamming window every 10 ms of the pre-emphasised signal; its power
spectrum is pooled by triangular filters equally spaced on the mel scale and logged, and each
utterance's frames are normalised to zero mean and unit variance per band (which removes the
recording's gain and channel colouring, as cepstral mean normalisation does).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from seqgraph.errors import DataError

WINDOW_MS = 25.0
HOP_MS = 10.0
MEL_BANDS = 40
PREEMPHASIS = 0.97


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono samples as floats in [-1, 1], sample rate) of a 16-bit PCM WAV file."""
    try:
        with wave.open(str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable WAV file ({exc})") from None
    if width != 2:
        raise DataError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is read")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1), rate


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(bands: int, n_fft: int, rate: int, low_hz: float = 20.0) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular filters, centres equally spaced in mel up to the
    Nyquist frequency; each filter's peak is 1."""
    edges = mel_to_hz(np.linspace(hz_to_mel(low_hz), hz_to_mel(rate / 2), bands + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def frames(
    samples: np.ndarray, rate: int, window_ms: float = WINDOW_MS, hop_ms: float = HOP_MS
) -> np.ndarray:
    """(n_frames, window) overlapping slices; a clip shorter than a window is zero-padded."""
    window, hop = int(round(rate * window_ms / 1000)), int(round(rate * hop_ms / 1000))
    if len(samples) < window:
        samples = np.concatenate([samples, np.zeros(window - len(samples))])
    count = 1 + (len(samples) - window) // hop
    index = np.arange(window)[None, :] + hop * np.arange(count)[:, None]
    return samples[index]


def log_mel(
    samples: np.ndarray,
    rate: int,
    bands: int = MEL_BANDS,
    window_ms: float = WINDOW_MS,
    hop_ms: float = HOP_MS,
) -> np.ndarray:
    """(n_frames, bands) log mel-filterbank energies (natural log, floored at 1e-10)."""
    emphasised = np.append(samples[:1], samples[1:] - PREEMPHASIS * samples[:-1])
    chunks = frames(emphasised, rate, window_ms, hop_ms)
    n_fft = 1 << (chunks.shape[1] - 1).bit_length()
    power = np.abs(np.fft.rfft(chunks * np.hamming(chunks.shape[1]), n=n_fft)) ** 2
    return np.log(np.maximum(power @ mel_filterbank(bands, n_fft, rate).T, 1e-10))


def normalise(features: np.ndarray) -> np.ndarray:
    """Per-utterance mean and variance normalisation of each band."""
    return (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-5)


def features(path: str | Path, bands: int = MEL_BANDS, stack: int = 1) -> np.ndarray:
    """Normalised log-mel frames of one WAV file, (n_frames, bands * stack). With `stack` > 1,
    each `stack` consecutive frames are joined into one (a shorter sequence for the RNN)."""
    samples, rate = read_wav(path)
    out = normalise(log_mel(samples, rate, bands))
    if stack > 1:
        count = len(out) // stack
        out = out[: count * stack].reshape(count, bands * stack)
    return out.astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    """Write mono samples in [-1, 1] as a 16-bit PCM WAV file (clipped to full scale)."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767.0), -32768, 32767)
    path = Path(path)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(rate))
        f.writeframes(pcm.astype("<i2").tobytes())
    return path
