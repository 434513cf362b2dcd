"""Listen-free checks of generated audio: where its spectral energy lies and how loud it is.

The long-term spectrum is the mean power of 256-sample Hann-windowed frames (hop 128). At
8 kHz the telephone speech band (300-3,400 Hz) covers 78 % of the spectrum, so white noise
also puts ~78 % of its energy there; the band fraction alone cannot tell speech from noise.
The spectrum distance can: the total-variation distance between two spectra pooled into
250 Hz bands (0 = same shape, 1 = no overlap), reported for the generated audio and for white
noise, each against the real audio.
"""

from __future__ import annotations

import numpy as np

FRAME, HOP = 256, 128
SPEECH_BAND = (300.0, 3400.0)
POOL_HZ = 250.0
SILENT_DBFS = -50.0  # below this RMS level a clip counts as silent
CLIPPED_LIMIT = 0.01  # more than this fraction of samples at full scale counts as clipped


def spectrum(samples: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in Hz, mean power per bin) of Hann-windowed frames."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < FRAME:
        x = np.concatenate([x, np.zeros(FRAME - len(x))])
    count = 1 + (len(x) - FRAME) // HOP
    frames = x[np.arange(FRAME)[None, :] + HOP * np.arange(count)[:, None]]
    power = np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1)) ** 2
    return np.fft.rfftfreq(FRAME, 1.0 / rate), power.mean(axis=0)


def band_fraction(samples: np.ndarray, rate: int, band=SPEECH_BAND) -> float:
    """Fraction of the spectral energy between band[0] and band[1] Hz."""
    hz, power = spectrum(samples, rate)
    inside = (hz >= band[0]) & (hz <= band[1])
    return float(power[inside].sum() / max(power.sum(), 1e-300))


def spectrum_distance(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    """Total-variation distance between the spectra of a and b pooled into 250 Hz bands."""
    pooled = []
    for samples in (a, b):
        hz, power = spectrum(samples, rate)
        bands = np.minimum((hz // POOL_HZ).astype(int), int(rate / 2 // POOL_HZ) - 1)
        sums = np.bincount(bands, weights=power)
        pooled.append(sums / max(sums.sum(), 1e-300))
    return float(0.5 * np.abs(pooled[0] - pooled[1]).sum())


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    rms = np.sqrt(np.mean(np.square(samples))) if len(samples) else 0.0
    return float(20 * np.log10(max(rms, 1e-10)))


def clipped_fraction(samples: np.ndarray) -> float:
    """Fraction of samples at full scale (μ-law's end levels decode to exactly +-1)."""
    return float(np.mean(np.abs(samples) >= 0.999)) if len(samples) else 0.0


def report(generated: np.ndarray, real: np.ndarray, rate: int, seed: int = 0) -> dict:
    """The checks of a generated clip, beside the real audio's and white noise's values."""
    noise = np.random.default_rng([seed, 29]).normal(scale=0.1, size=max(len(real), FRAME))
    level, clipped = rms_dbfs(generated), clipped_fraction(generated)
    verdict = "silent" if level < SILENT_DBFS else "clipped" if clipped > CLIPPED_LIMIT else "ok"
    return {
        "gen_band_fraction": band_fraction(generated, rate),
        "real_band_fraction": band_fraction(real, rate),
        "noise_band_fraction": band_fraction(noise, rate),
        "gen_spectrum_distance": spectrum_distance(generated, real, rate),
        "noise_spectrum_distance": spectrum_distance(noise, real, rate),
        "gen_rms_dbfs": level,
        "real_rms_dbfs": rms_dbfs(real),
        "gen_clipped_fraction": clipped,
        "gen_level": verdict,
    }
