"""Measurements on synthesised speech, shared by the VFA and demo tests."""

from __future__ import annotations

import numpy as np


def median_pitch(samples: np.ndarray, rate: int, spans: list[tuple[float, float]]) -> float:
    """Median fundamental frequency (Hz) of the voiced 40 ms frames inside ``spans``.

    Autocorrelation per frame, lags for 60–400 Hz; a frame counts as voiced when it is loud
    (above about -35 dBFS) and its best lag correlates at least half as well as lag zero.
    """
    frame, low, high = int(0.04 * rate), int(rate / 400), int(rate / 60)
    pitches = []
    for start_s, end_s in spans:
        part = samples[int(start_s * rate):int(end_s * rate)].astype(np.float64)
        for i in range(0, len(part) - frame, frame // 2):
            x = part[i:i + frame] - part[i:i + frame].mean()
            if np.sqrt(np.mean(x ** 2)) < 600:
                continue
            ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * frame)) ** 2)[:frame]
            lag = low + int(np.argmax(ac[low:high]))
            if ac[lag] > 0.5 * ac[0]:
                pitches.append(rate / lag)
    assert len(pitches) > 50, "too few voiced frames to measure pitch"
    return float(np.median(pitches))


def high_band_share(samples: np.ndarray, rate: int, spans: list[tuple[float, float]]) -> float:
    """Share of the spectral energy inside ``spans`` that lies above 4 kHz."""
    part = np.concatenate([samples[int(a * rate):int(b * rate)] for a, b in spans])
    power = np.abs(np.fft.rfft(part.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(part), 1 / rate)
    return float(power[freqs > 4000].sum() / power.sum())
