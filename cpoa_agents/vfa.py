"""VFA, the voice forge: a two-speaker script becomes an MP3 and a WAV episode (contract §3).

Each turn (one script line) is spoken by espeak-ng with its speaker's voice and cached on disk
under a hash of everything that shapes its sound, so a synthesis interrupted by a crash resumes
where it stopped: the framework re-runs the unfinished task at start and finished turns come from
the cache. The episode is served by this agent at ``GET /audio/<stream_id>.(mp3|wav)``.

Live progress (contract §2): while it synthesises, the task's pending poll replies carry
``progress`` (turns done / turns) and ``partial``, the finished turns in script order (the first
:data:`PARTIAL_MAX_TURNS`), each with the URL of its audio, ``GET /turns/<key>.wav`` (the cached
turn as spoken, before the episode's levelling): a player can start on them before the episode
is done.

Voice parameters (all optional):

- ``voice_name``: the host's espeak-ng voice, ``<language>[+<variant>]`` (e.g. ``en-us+m3``).
- ``language_code``: language of both default voices (e.g. ``en-GB``); default US host, British
  guest.
- ``speaking_rate``: 0.5–2.0, relative to espeak-ng's 175 words per minute.
- ``pitch``: -20–20, an offset on espeak-ng's 0–100 pitch parameter (2.5 steps per unit; 0 keeps
  each voice's own pitch). The range is Google TTS's; the unit is not an exact semitone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import re
import threading
import wave
from typing import Any

import numpy as np

from cpoa_agents import audio, finish, neural, speech, validate
from cpoa_agents.service import BadRequest, Handler, Request, Response, TaskAgent, error

logger = logging.getLogger(__name__)

DEFAULT_HOST_VOICE = "en-us+m3"
DEFAULT_GUEST_VOICE = "en+f3"
HOST_VARIANT, GUEST_VARIANT = "m3", "f3"
THIRD_VOICE, THIRD_PITCH_OFFSET = "en+m7", 35
"""A panel's second guest: a male variant raised in pitch (about 150 Hz, between the host's
~107 Hz and the guest's ~210 Hz), so three speakers are told apart."""
MAX_TARGET_S = 3600.0
MAX_SCRIPT_CHARS = 100_000
MAX_LINES = 2_000
MAX_SPEAKER_CHARS = 100
CACHE_VERSION = 1
"""Part of every turn's cache key: bump it when a change alters the synthesised samples."""
PARTIAL_MAX_TURNS = 150
"""Finished turns listed in a progress report at most (CPOA keeps a partial list of up to 200
items and 32 000 characters: 150 turns of at most ~200 characters each stay within both)."""
PARTIAL_SPEAKER_CHARS = 40
TURN_NAME = r"[0-9a-f]{64}\.wav"
"""The only file names ``/turns/`` serves (a turn's cache key)."""
AUDIO_NAME = r"stream-[0-9a-f]{32}\.(?:mp3|wav)"
"""The only file names ``/audio/`` serves: no dots, slashes or escapes can reach another file."""
CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}
_SPEAKABLE = re.compile(r"\w")  # a line with no letter or digit makes no sound


@dataclasses.dataclass(frozen=True)
class Turn:
    """One line of the script as it will be spoken."""

    segment_index: int
    segment_title: str
    speaker: str
    settings: speech.VoiceSettings
    text: str


# -- request checks ----------------------------------------------------------------------------

def check_script(body: dict[str, Any]) -> dict[str, Any]:
    """Returns the script's segments and lines, checked; errors name ``script.…`` fields."""
    script = validate.obj(body, "script")
    for field in ("script_id", "title"):
        if script.get(field) is not None and not isinstance(script[field], str):
            raise BadRequest(f"script.{field}: expected text", field=f"script.{field}")
    segments = script.get("segments")
    if not isinstance(segments, list) or not segments:
        raise BadRequest("script.segments: expected a non-empty list", field="script.segments")
    cleaned = [_check_segment(segment, f"script.segments[{i}]")
               for i, segment in enumerate(segments)]
    _check_size(cleaned)
    target = script.get("target_s")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0 < target <= MAX_TARGET_S):
        raise BadRequest(f"script.target_s: expected seconds up to {MAX_TARGET_S:g}",
                         field="script.target_s")
    return {"script_id": script.get("script_id") or "", "title": script.get("title") or "",
            "segments": cleaned, "target_s": float(target) if target else None}


def _check_segment(segment: Any, where: str) -> dict[str, Any]:
    if not isinstance(segment, dict):
        raise BadRequest(f"{where}: expected an object", field=where)
    title = segment.get("segment_title") or ""
    if not isinstance(title, str):
        raise BadRequest(f"{where}.segment_title: expected text", field=f"{where}.segment_title")
    lines = segment.get("lines")
    if not isinstance(lines, list):
        raise BadRequest(f"{where}.lines: expected a list", field=f"{where}.lines")
    checked = [_check_line(line, f"{where}.lines[{j}]") for j, line in enumerate(lines)]
    return {"segment_title": title,
            "lines": [{"speaker": speaker, "text": text} for speaker, text in checked]}


def _check_line(line: Any, where: str) -> tuple[str, str]:
    if not isinstance(line, dict):
        raise BadRequest(f"{where}: expected an object", field=where)
    speaker = line.get("speaker")
    if not isinstance(speaker, str) or not speaker.strip() or len(speaker) > MAX_SPEAKER_CHARS:
        raise BadRequest(f"{where}.speaker: expected non-empty text of at most "
                         f"{MAX_SPEAKER_CHARS} characters", field=f"{where}.speaker")
    text = line.get("text")
    if not isinstance(text, str):  # empty text is allowed: the line is simply not spoken
        raise BadRequest(f"{where}.text: expected text", field=f"{where}.text")
    return speaker.strip(), text


def _check_size(segments: list[dict[str, Any]]) -> None:
    """Bounds the whole script, naming the line where a limit is crossed."""
    total = count = 0
    for i, segment in enumerate(segments):
        for j, line in enumerate(segment["lines"]):
            where = f"script.segments[{i}].lines[{j}]"
            total, count = total + len(line["text"]), count + 1
            if total > MAX_SCRIPT_CHARS:
                raise BadRequest(f"{where}.text: the script's text exceeds {MAX_SCRIPT_CHARS} "
                                 "characters", field=f"{where}.text")
            if count > MAX_LINES:
                raise BadRequest(f"{where}: more than {MAX_LINES} lines in the script",
                                 field=where)


def check_voice_params(body: dict[str, Any]) -> dict[str, Any]:
    """Returns the voice parameters with defaults; errors name ``voice_params.…`` fields."""
    params = validate.obj(body, "voice_params", required=False)
    unknown = sorted(set(params) - {"voice_name", "speaking_rate", "pitch", "language_code"})
    if unknown:
        raise BadRequest(f"voice_params.{unknown[0]}: unknown field",
                         field=f"voice_params.{unknown[0]}")
    try:
        rate = validate.number(params, "speaking_rate", 0.5, 2.0, 1.0)
        pitch = validate.number(params, "pitch", -20.0, 20.0, 0.0)
    except BadRequest as exc:  # the shared check names the key; the caller needs the full path
        raise BadRequest(f"voice_params.{exc}", field=f"voice_params.{exc.field}") from None
    language = _voice_field(params, "language_code", variant_ok=False)
    host = _voice_field(params, "voice_name", variant_ok=True)
    return {"voice_name": host, "language_code": language, "speaking_rate": rate,
            "pitch": pitch}


def _voice_field(params: dict[str, Any], field: str, *, variant_ok: bool) -> str:
    value = params.get(field)
    if value is None:
        return ""
    name = f"voice_params.{field}"
    if not isinstance(value, str) or (not variant_ok and "+" in value) \
            or not speech.voice_exists(value.strip()):
        example = "en-us+m3" if variant_ok else "en-US"
        raise BadRequest(f"{name}: not an espeak-ng voice of the shipped data "
                         f"(e.g. {example!r})", field=name)
    return value.strip()


# -- planning ------------------------------------------------------------------------------------

def voices(params: dict[str, Any]) -> tuple[str, str]:
    """Returns the (host, guest) voice names.

    The guest keeps the default guest voice (or ``language_code`` with the female variant)
    unless the host already uses that variant; then the guest takes the male one, so the two
    never share a voice.
    """
    language = params["language_code"].lower()
    host = params["voice_name"] or (f"{language}+{HOST_VARIANT}" if language
                                    else DEFAULT_HOST_VOICE)
    if host.lower().partition("+")[2] == GUEST_VARIANT:
        return host, f"{language or 'en'}+{HOST_VARIANT}"
    return host, f"{language}+{GUEST_VARIANT}" if language else DEFAULT_GUEST_VOICE


def plan_turns(script: dict[str, Any], params: dict[str, Any],
               neural_host: bool = False) -> list[Turn]:
    """Lists the speakable lines with their voices.

    The first distinct speaker gets the host voice (Piper's neural voice when ``neural_host``
    and no ``voice_name`` was asked for), the second the guest voice, the third
    :data:`THIRD_VOICE` raised in pitch; further ones take these in turn.
    """
    host, guest = voices(params)
    rate = speech.rate_wpm(params["speaking_rate"])
    pitch = speech.pitch_parameter(params["pitch"])
    cast = [speech.VoiceSettings(neural.VOICE if neural_host and not params["voice_name"]
                                 else host, rate, pitch),
            speech.VoiceSettings(guest, rate, pitch),
            speech.VoiceSettings(THIRD_VOICE, rate, min(100, pitch + THIRD_PITCH_OFFSET))]
    order: dict[str, int] = {}
    turns = []
    for i, segment in enumerate(script["segments"]):
        for line in segment["lines"]:
            if not _SPEAKABLE.search(line["text"]):
                continue
            rank = order.setdefault(line["speaker"], len(order))
            turns.append(Turn(i, segment["segment_title"], line["speaker"],
                              cast[rank % len(cast)], " ".join(line["text"].split())))
    return turns


def turn_key(turn: Turn, sample_rate: int) -> str:
    """The cache key of a turn: a hash of everything that changes its samples."""
    material = json.dumps([CACHE_VERSION, speech.ENGINE, sample_rate, turn.settings.voice,
                           turn.settings.rate_wpm, turn.settings.pitch, turn.text])
    return hashlib.sha256(material.encode()).hexdigest()


# -- the agent -------------------------------------------------------------------------------

class VoiceAgent(TaskAgent):
    """The voice forge agent: ``POST /forge_voice``, ``GET /audio/<file>``, ``GET /stats``."""

    name = "VFA"
    path = "/forge_voice"

    def __init__(self, data_dir: str | pathlib.Path, *, neural_host: bool | None = None) -> None:
        super().__init__(data_dir)
        self.neural_host = neural.wanted() if neural_host is None else neural_host
        """The host speaks with Piper (default: VFA_NEURAL_HOST, or when the ``neural`` extra
        is installed)."""
        self.turns_dir = self.data_dir / "turns"
        self.audio_dir = self.data_dir / "audio"
        for folder in (self.turns_dir, self.audio_dir):
            folder.mkdir(parents=True, exist_ok=True)
            # Leftovers of writes cut short by a crash; finished files were renamed into place.
            for partial in folder.glob(".*.part"):
                partial.unlink(missing_ok=True)
        self._counter_lock = threading.Lock()
        self.synthesised_turns = 0
        """Turns this process spoke itself (cache misses); tests use it to prove the cache."""
        self.cached_turns = 0

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("GET", rf"/audio/{AUDIO_NAME}", self.serve_audio),
                ("GET", rf"/turns/{TURN_NAME}", self.serve_turn), ("GET", r"/stats", self.stats)]

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"script": check_script(body), "voice_params": check_voice_params(body)}

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        turns = plan_turns(request["script"], request["voice_params"], self.neural_host)
        if not turns:
            return {"status": "skipped", "message": "the script has no speakable text"}
        rate = speech.sample_rate()
        clips = self.speak_all(turns, rate, task_id)
        segments = [t.segment_index for t in turns]
        stretch = audio.pause_scale(clips, segments, rate, request["script"]["target_s"])
        episode, spans = audio.assemble(clips, segments, rate, stretch)
        episode = finish.to_loudness(episode, rate)
        stream_id = f"stream-{task_id}"
        result = self._result(stream_id, turns, spans, len(episode) / rate, request, rate)
        mp3 = finish.tag_chapters(audio.mp3_bytes(episode, rate), result["segments"],
                                  request["script"]["title"])
        audio.write_atomic(self.audio_dir / f"{stream_id}.wav", audio.wav_bytes(episode, rate))
        audio.write_atomic(self.audio_dir / f"{stream_id}.mp3", mp3)
        result["tts_settings_used"].update(pause_scale=round(stretch, 3),
                                           loudness_lufs=finish.TARGET_LUFS)
        return result

    def speak_all(self, turns: list[Turn], rate: int, task_id: str) -> list[np.ndarray]:
        """Every turn's prepared samples, in order, reporting progress after each one."""
        clips, done = [], []
        for i, turn in enumerate(turns):
            clips.append(audio.prepare_turn(self.turn_samples(turn, rate, task_id, i,
                                                              len(turns)), rate))
            if len(done) < PARTIAL_MAX_TURNS:
                done.append({"turn": i, "segment_index": turn.segment_index,
                             "speaker": turn.speaker[:PARTIAL_SPEAKER_CHARS],
                             "audio_url": f"{self.base_url}/turns/{turn_key(turn, rate)}.wav"})
            self.report_progress(task_id, (i + 1) / len(turns), done)
        return clips

    def turn_samples(self, turn: Turn, rate: int, task_id: str, index: int,
                     count: int) -> np.ndarray:
        """Returns a turn's raw samples from the cache, synthesising and caching them on a miss."""
        path = self.turns_dir / f"{turn_key(turn, rate)}.wav"
        cached = _read_cached(path, rate)
        if cached is not None:
            with self._counter_lock:
                self.cached_turns += 1
            return cached
        samples = self.synthesise(turn)
        audio.write_atomic(path, audio.wav_bytes(samples, rate))
        with self._counter_lock:
            self.synthesised_turns += 1
        logger.info("synthesised turn %d/%d (%s, %d chars)", index + 1, count,
                    turn.settings.voice, len(turn.text),
                    extra={"agent": self.name, "task_id": task_id})
        return samples

    def synthesise(self, turn: Turn) -> np.ndarray:
        """Speaks one turn (the cache-miss path): Piper for the neural voice, else espeak-ng."""
        if turn.settings.voice == neural.VOICE:
            return neural.synthesise(turn.text, speech.sample_rate(),
                                     turn.settings.rate_wpm / speech.DEFAULT_RATE_WPM)
        return speech.synthesise(turn.text, turn.settings)

    def serve_audio(self, request: Request) -> Response:
        name = request.path.rsplit("/", 1)[-1]
        if not re.fullmatch(AUDIO_NAME, name):  # the route already matched; checked again here
            return error(404, "no such audio")  # because a file path is built from it
        path = self.audio_dir / name
        if not path.is_file():
            return error(404, "no such audio")
        return Response(200, path.read_bytes(), CONTENT_TYPES[name.rsplit(".", 1)[1]])

    def serve_turn(self, request: Request) -> Response:
        """``GET /turns/<key>.wav``: one finished turn (what a progress report links to)."""
        name = request.path.rsplit("/", 1)[-1]
        path = self.turns_dir / name
        if not re.fullmatch(TURN_NAME, name) or not path.is_file():
            return error(404, "no such turn")
        return Response(200, path.read_bytes(), CONTENT_TYPES["wav"])

    def stats(self, request: Request) -> Response:
        with self._counter_lock:
            return Response(200, {"synthesised_turns": self.synthesised_turns,
                                  "cached_turns": self.cached_turns})

    def _result(self, stream_id: str, turns: list[Turn], spans: list[audio.Span],
                duration_s: float, request: dict[str, Any], rate: int) -> dict[str, Any]:
        params = request["voice_params"]
        timed = [{"segment_index": t.segment_index, "segment_title": t.segment_title,
                  "speaker": t.speaker, "voice": t.settings.voice, "text": t.text,
                  "start_s": s.start_s, "end_s": s.end_s} for t, s in zip(turns, spans)]
        return {
            "status": "success",
            "audio_url": f"{self.base_url}/audio/{stream_id}.mp3",
            "wav_url": f"{self.base_url}/audio/{stream_id}.wav",
            "audio_format": "mp3",
            "duration_s": round(duration_s, 3),
            "stream_id": stream_id,
            "tts_settings_used": {
                "engine": "piper+espeak-ng" if any(t.settings.voice == neural.VOICE
                                                   for t in turns) else speech.ENGINE,
                "voices": {t.speaker: t.settings.voice for t in turns},
                "speaking_rate": params["speaking_rate"], "rate_wpm": turns[0].settings.rate_wpm,
                "pitch": params["pitch"], "espeak_pitch": turns[0].settings.pitch,
                "sample_rate": rate, "mp3_kbps": audio.MP3_KBPS,
            },
            "turns": timed,
            "segments": _segments(timed),
        }


def _read_cached(path: pathlib.Path, rate: int) -> np.ndarray | None:
    """A cached turn's samples, or None when absent or unusable (then it is synthesised again)."""
    try:
        samples, cached_rate = audio.read_wav(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, wave.Error):
        logger.warning("ignoring unreadable cached turn %s", path.name)
        return None
    return samples if cached_rate == rate else None


def _segments(timed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chapters: each segment that has speech, from its first turn's start to its last's end."""
    chapters: dict[int, dict[str, Any]] = {}
    for turn in timed:
        chapter = chapters.setdefault(turn["segment_index"], {
            "segment_index": turn["segment_index"], "segment_title": turn["segment_title"],
            "start_s": turn["start_s"]})
        chapter["end_s"] = turn["end_s"]
    return list(chapters.values())
