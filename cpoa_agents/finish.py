"""The episode's finish: loudness to a podcast target (ITU-R BS.1770) and chapters in the MP3.

:func:`to_loudness` measures integrated loudness with pyloudnorm and applies one gain, with a
soft limiter above -1.5 dBFS so that the gain never clips; it measures again and corrects once
for what the limiter took. :func:`tag_chapters` writes ID3v2 CHAP frames (one per chapter, with
its title) and a CTOC table of contents with mutagen, as podcast apps read them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

TARGET_LUFS = -16.0
"""Integrated loudness of a finished episode (the usual podcast target for mono speech)."""
LIMIT_DBFS = -1.5
"""Above this level samples are softly compressed towards 0 dBFS instead of clipping."""
_FULL = 32767.0


def loudness(samples: np.ndarray, rate: int) -> float:
    """Integrated loudness in LUFS of int16 (or int16-scaled float) mono samples."""
    import pyloudnorm  # the agents' extra

    signal = samples.astype(np.float64) / _FULL
    if len(signal) < rate // 2:  # BS.1770 gates 400 ms blocks: too short to measure
        return float("-inf")
    return float(pyloudnorm.Meter(rate).integrated_loudness(signal))


def to_loudness(samples: np.ndarray, rate: int, target: float = TARGET_LUFS) -> np.ndarray:
    """Returns int16 samples at ``target`` LUFS integrated (silence stays silence)."""
    signal = samples.astype(np.float64)
    for _ in range(2):  # the limiter lowers loudness a little: measure again once
        level = loudness(signal, rate)
        if not np.isfinite(level):
            break
        signal = _limit(signal * 10 ** ((target - level) / 20))
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


def _limit(signal: np.ndarray) -> np.ndarray:
    """Soft-knee limiter: linear up to LIMIT_DBFS, then a tanh curve that never reaches full
    scale."""
    knee = _FULL * 10 ** (LIMIT_DBFS / 20)
    room = _FULL - knee
    over = np.abs(signal) > knee
    out = signal.copy()
    excess = np.abs(signal[over]) - knee
    out[over] = np.sign(signal[over]) * (knee + room * np.tanh(excess / room))
    return out


def tag_chapters(mp3: bytes, chapters: Sequence[dict[str, Any]], title: str) -> bytes:
    """Returns the MP3 with an ID3v2.4 tag: title, one CHAP per chapter and a CTOC.

    Args:
        mp3: The encoded episode.
        chapters: ``{segment_title, start_s, end_s}`` in order.
        title: The episode's title (TIT2).
    """
    from mutagen.id3 import CHAP, CTOC, ID3, TIT2, CTOCFlags  # the agents' extra

    tags = ID3()
    tags.add(TIT2(encoding=3, text=[title or "Episode"]))
    ids = [f"chp{i}" for i in range(len(chapters))]
    for element_id, chapter in zip(ids, chapters):
        tags.add(CHAP(element_id=element_id, start_time=int(round(chapter["start_s"] * 1000)),
                      end_time=int(round(chapter["end_s"] * 1000)),
                      sub_frames=[TIT2(encoding=3, text=[chapter["segment_title"] or
                                                         element_id])]))
    tags.add(CTOC(element_id="toc", flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED,
                  child_element_ids=ids, sub_frames=[TIT2(encoding=3, text=["Chapters"])]))
    out = io.BytesIO(mp3)
    tags.save(out)
    return out.getvalue()
