"""Tiny valid media files for tests that only need a player or an <img> to load something."""

from __future__ import annotations

import base64
import io
import wave

PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD"
                           "hgGAWjR9awAAAABJRU5ErkJggg==")


def tiny_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """Half a second of 16-bit mono silence as WAV."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setparams((1, 2, rate, 0, "NONE", "not compressed"))
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()
