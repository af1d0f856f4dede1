"""Text to speech with espeak-ng, driven through ``ctypes`` (the library and voice data ship in the
``espeakng-loader`` wheel, so nothing is downloaded and no system package is needed).

espeak-ng keeps one global synthesiser per process and is not thread-safe, so every call into the
library goes through :data:`_LOCK`. The engine runs in synchronous mode: :func:`synthesise` returns
once the text is spoken, having collected the 16-bit mono samples from the synth callback.

Licence: espeak-ng is GPL-3.0-or-later; it is loaded as a separate shared library.
"""

from __future__ import annotations

import ctypes
import dataclasses
import pathlib
import re
import threading

import numpy as np

ENGINE = "espeak-ng"
DEFAULT_RATE_WPM = 175
"""espeak-ng's own default speed; ``speaking_rate`` 1.0 maps to it."""
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450
"""The range espeak-ng accepts for ``espeakRATE``."""
DEFAULT_PITCH = 50
"""espeak-ng's pitch parameter (0–100) at which a voice keeps its own pitch."""
VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}(?:\+[A-Za-z0-9_-]{1,40})?")
"""What a voice name may look like (``en-us+m3``): a language or voice, an optional variant."""

# speak_lib.h constants (values are part of the stable C API).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside a server
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_BUFFER_MS = 200  # callback chunk length: larger chunks mean fewer Python callbacks

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)
_LOCK = threading.Lock()


class SpeechError(RuntimeError):
    """espeak-ng refused: the library is missing, a voice is unknown, or synthesis failed."""


@dataclasses.dataclass(frozen=True)
class VoiceSettings:
    """How one turn is spoken.

    Attributes:
        voice: espeak-ng voice name with an optional variant, e.g. ``en-us+m3``.
        rate_wpm: Words per minute (80–450).
        pitch: espeak-ng pitch parameter (0–100, 50 keeps the voice's own pitch).
    """

    voice: str
    rate_wpm: int = DEFAULT_RATE_WPM
    pitch: int = DEFAULT_PITCH


class _Engine:
    """The loaded library: explicit ctypes signatures, the callback and its sample buffer."""

    def __init__(self) -> None:
        import espeakng_loader  # imported here so the engine stays importable without it

        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise SpeechError(f"cannot load espeak-ng: {exc}") from exc
        self._declare()
        self.chunks: list[bytes] = []
        # Kept on the instance: ctypes would otherwise free the trampoline under espeak's feet.
        self._callback = _SynthCallback(self._collect)
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, espeakng_loader.get_data_path().encode(),
            _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise SpeechError(f"espeak_Initialize failed ({self.sample_rate})")
        self.lib.espeak_SetSynthCallback(self._callback)

    def _declare(self) -> None:
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int

    def _collect(self, wav: ctypes._Pointer, count: int, _events: int) -> int:
        # Called by espeak on this thread while espeak_Synth runs; a NULL/0 chunk marks the end.
        if wav and count > 0:
            self.chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # 0 = keep going

    def select(self, settings: VoiceSettings) -> None:
        status = self.lib.espeak_SetVoiceByName(settings.voice.encode())
        if status != _EE_OK:
            raise SpeechError(f"unknown espeak-ng voice {settings.voice!r}")
        # Set after the voice: choosing a voice may reset the prosody parameters.
        self.lib.espeak_SetParameter(_PARAM_RATE, settings.rate_wpm, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, settings.pitch, 0)

    def speak(self, text: str) -> np.ndarray:
        data = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(data, len(data))
        self.chunks = []
        status = self.lib.espeak_Synth(buffer, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                       None, None)
        if status != _EE_OK:
            raise SpeechError(f"espeak_Synth failed ({status})")
        self.lib.espeak_Synchronize()
        samples = np.frombuffer(b"".join(self.chunks), dtype="<i2").astype(np.int16)
        self.chunks = []
        return samples


_engine: _Engine | None = None


def _loaded() -> _Engine:
    """Returns the process's engine, initialising it once (callers hold ``_LOCK``)."""
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def sample_rate() -> int:
    """Returns the engine's output sample rate in Hz (espeak-ng's is 22050)."""
    with _LOCK:
        return _loaded().sample_rate


def voice_exists(voice: str) -> bool:
    """Tells whether espeak-ng's shipped data has ``voice`` (with its variant, if any)."""
    if not VOICE_NAME.fullmatch(voice):
        return False
    _, _, variant = voice.partition("+")
    # espeak-ng ignores an unknown variant silently, so look for its file ourselves.
    if variant and not _variant_path(variant).is_file():
        return False
    with _LOCK:
        return _loaded().lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK


def _variant_path(variant: str) -> pathlib.Path:
    import espeakng_loader

    return pathlib.Path(espeakng_loader.get_data_path()) / "voices" / "!v" / variant


def synthesise(text: str, settings: VoiceSettings) -> np.ndarray:
    """Speaks ``text`` and returns its samples.

    Args:
        text: Plain text (no SSML); control characters are dropped.
        settings: Voice, rate and pitch.

    Returns:
        Mono int16 samples at :func:`sample_rate`.

    Raises:
        SpeechError: the voice is unknown or espeak-ng failed.
    """
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if not clean:
        return np.zeros(0, dtype=np.int16)
    with _LOCK:
        engine = _loaded()
        engine.select(settings)
        return engine.speak(clean)


def rate_wpm(speaking_rate: float) -> int:
    """Maps a relative speaking rate (1.0 = normal) onto espeak-ng's words per minute."""
    return int(min(MAX_RATE_WPM, max(MIN_RATE_WPM, round(DEFAULT_RATE_WPM * speaking_rate))))


def pitch_parameter(offset: float) -> int:
    """Maps a pitch offset in [-20, 20] (0 = the voice's own pitch) onto espeak-ng's 0–100.

    The offset uses the range of Google TTS's ``pitch`` so existing callers fit, but it is a
    linear scale on espeak-ng's pitch parameter (2.5 steps per unit), not exact semitones.
    """
    return int(min(100, max(0, round(DEFAULT_PITCH + 2.5 * offset))))
