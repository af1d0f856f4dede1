"""Audio assembly for the voice forge: trim, level, join with pauses, encode WAV and MP3.

Pure functions on numpy arrays of mono samples, except :func:`write_atomic`. The episode layout is
fixed and documented here because turn timings (chapters) and tests rely on it:

    LEAD_S | turn | TURN_PAUSE_S | turn | SEGMENT_PAUSE_S | turn | ... | turn | TAIL_S

A pause goes between consecutive turns: :data:`SEGMENT_PAUSE_S` when the next turn starts a new
segment, :data:`TURN_PAUSE_S` otherwise, both times one factor (:func:`pause_scale`) when the
script has a target length. Each turn's span is exactly its trimmed speech.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import tempfile
import wave
from collections.abc import Sequence

import numpy as np

LEAD_S = 0.25
TAIL_S = 0.5
TURN_PAUSE_S = 0.35
SEGMENT_PAUSE_S = 0.9
PAUSE_SCALE = (0.6, 1.8)
"""Bounds of the factor that fits the pauses to a script's target length."""
TARGET_RMS_DBFS = -18.0
"""Loudness of every turn's speech (RMS over its voiced frames), so both voices sound as loud."""
PEAK_DBFS = -1.0
"""Ceiling for any sample: normalisation never pushes a peak above it, so nothing clips."""
MP3_KBPS = 64
"""Plenty for 22.05 kHz mono speech; keeps an hour under 30 MB."""

_FRAME_S = 0.01  # 10 ms frames for silence and loudness measurements
_SILENCE_DBFS = -45.0  # frames quieter than this are silence (espeak's pauses are digital zero)
_MARGIN_S = 0.03  # kept around trimmed speech so word onsets and releases are not cut
_FADE_S = 0.005  # ramps at the cut points avoid clicks


@dataclasses.dataclass(frozen=True)
class Span:
    """Where one turn sits in the episode, in seconds."""

    start_s: float
    end_s: float


def _amplitude(level: float) -> float:
    """Converts dBFS to a linear amplitude on the int16 scale."""
    return 32767.0 * 10 ** (level / 20)


def _frame_rms(samples: np.ndarray, rate: int) -> np.ndarray:
    frame = max(1, int(rate * _FRAME_S))
    usable = len(samples) // frame * frame
    frames = samples[:usable].astype(np.float64).reshape(-1, frame)
    return np.sqrt(np.mean(frames ** 2, axis=1)) if usable else np.zeros(0)


def trim_silence(samples: np.ndarray, rate: int) -> np.ndarray:
    """Returns ``samples`` without leading and trailing silence (a short margin is kept).

    espeak-ng pads every utterance with silence; trimming it lets the pauses between turns be
    exactly the documented ones.
    """
    rms = _frame_rms(samples, rate)
    loud = np.flatnonzero(rms > _amplitude(_SILENCE_DBFS))
    if not len(loud):
        return samples[:0]
    frame = max(1, int(rate * _FRAME_S))
    margin = int(rate * _MARGIN_S)
    start = max(0, loud[0] * frame - margin)
    end = min(len(samples), (loud[-1] + 1) * frame + margin)
    return samples[start:end]


def normalise(samples: np.ndarray, rate: int, target_dbfs: float = TARGET_RMS_DBFS,
              peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Scales speech to ``target_dbfs`` RMS over its voiced frames, never past ``peak_dbfs``.

    Measuring only voiced frames keeps a turn with long pauses from being over-amplified.

    Returns:
        float32 samples on the int16 scale.
    """
    signal = samples.astype(np.float32)
    rms = _frame_rms(samples, rate)
    voiced = rms[rms > _amplitude(_SILENCE_DBFS)]
    peak = float(np.max(np.abs(signal))) if len(signal) else 0.0
    if not len(voiced) or peak == 0.0:
        return signal
    level = float(np.sqrt(np.mean(voiced ** 2)))
    gain = min(_amplitude(target_dbfs) / level, _amplitude(peak_dbfs) / peak)
    return signal * np.float32(gain)


def fade(samples: np.ndarray, rate: int) -> np.ndarray:
    """Ramps the first and last few milliseconds in and out (float32 copy)."""
    out = samples.astype(np.float32)
    n = min(int(rate * _FADE_S), len(out) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def prepare_turn(samples: np.ndarray, rate: int) -> np.ndarray:
    """Trims, levels and fades one synthesised turn; returns float32 samples."""
    return fade(normalise(trim_silence(samples, rate), rate), rate)


def pause_before(index: int, segments: Sequence[int]) -> float:
    """Seconds of silence before turn ``index`` (none before the first)."""
    if index == 0:
        return 0.0
    return SEGMENT_PAUSE_S if segments[index] != segments[index - 1] else TURN_PAUSE_S


def pause_scale(turns: Sequence[np.ndarray], segments: Sequence[int], rate: int,
                target_s: float | None) -> float:
    """The factor on every pause that brings the episode nearest ``target_s``, within
    :data:`PAUSE_SCALE` (1.0 without a target): the script aims at the target, the pauses
    take up what the speech estimate missed."""
    pauses = sum(pause_before(i, segments) for i in range(len(turns)))
    if not target_s or not pauses:
        return 1.0
    speech_s = sum(len(t) for t in turns) / rate + LEAD_S + TAIL_S
    low, high = PAUSE_SCALE
    return min(high, max(low, (target_s - speech_s) / pauses))


def assemble(turns: Sequence[np.ndarray], segments: Sequence[int],
             rate: int, stretch: float = 1.0) -> tuple[np.ndarray, list[Span]]:
    """Joins prepared turns with the documented pauses.

    Args:
        turns: float32 samples per turn, in order.
        segments: The segment index of each turn (a change means a longer pause).
        rate: Sample rate in Hz.
        stretch: Factor on every pause (:func:`pause_scale`).

    Returns:
        The episode as int16 samples and each turn's span in it.
    """
    starts, cursor = [], round(LEAD_S * rate)
    for i, turn in enumerate(turns):
        cursor += round(pause_before(i, segments) * stretch * rate)
        starts.append(cursor)
        cursor += len(turn)
    episode = np.zeros(cursor + round(TAIL_S * rate), dtype=np.float32)
    for start, turn in zip(starts, turns):
        episode[start:start + len(turn)] = turn
    spans = [Span(round(start / rate, 3), round((start + len(turn)) / rate, 3))
             for start, turn in zip(starts, turns)]
    return to_int16(episode), spans


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Rounds float samples on the int16 scale to int16, saturating (never wrapping)."""
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Encodes int16 mono samples as a 16-bit PCM WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decodes a 16-bit mono WAV file into int16 samples and the sample rate."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError("expected 16-bit mono WAV")
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(
            np.int16), wav.getframerate()


def mp3_bytes(samples: np.ndarray, rate: int, kbps: int = MP3_KBPS) -> bytes:
    """Encodes int16 mono samples as a constant-bitrate MP3 (LAME via ``lameenc``)."""
    import lameenc  # the agents' extra; imported late so the module loads without it

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(kbps)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(5)  # LAME's speed/quality middle: ample for speech, several times faster
    return bytes(encoder.encode(samples.astype("<i2").tobytes()) + encoder.flush())


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers (and a restart) never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        pathlib.Path(temp).unlink(missing_ok=True)
        raise
