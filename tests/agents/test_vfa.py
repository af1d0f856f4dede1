"""VFA over real HTTP: the protocol, real espeak-ng audio, two voices, timings, kill, restart."""

from __future__ import annotations

import http.client
import pathlib
import signal
import urllib.parse
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from cpoa.agents import results
from cpoa_agents import audio
from cpoa_agents.service import MAX_BODY_BYTES
from cpoa_agents.vfa import MAX_SCRIPT_CHARS, VoiceAgent
from tests.agents.audio_checks import median_pitch
from tests.agents.protocol import finished, raw_get, serving, submit
from tests.agents.vfa_runner import VfaProcess
from tests.fix_agents import wait_until

SENTENCES = [
    "Durable workflows keep their state in a database, so a crash loses nothing.",
    "That sounds simple, but what happens when an agent dies in the middle of a task?",
    "The engine polls again after a restart, and the agent replays its finished work.",
    "Idempotency keys make every retry safe, even when the network lies to you.",
    "A worker claims a due workflow, advances it by one step, and lets it go.",
    "So the listener never notices that anything went wrong along the way.",
]


def script(turns_per_segment: int, segments: int, sentences: int = 2) -> dict[str, Any]:
    """A Host/Guest script whose every line is distinct (so no two turns share a cache entry)."""
    made = []
    for s in range(segments):
        lines = []
        for j in range(turns_per_segment):
            n = s * turns_per_segment + j
            picked = [SENTENCES[(n + k) % len(SENTENCES)] for k in range(sentences)]
            lines.append({"speaker": "Host" if j % 2 == 0 else "Guest",
                          "text": f"Line {n + 1}. " + " ".join(picked)})
        made.append({"segment_title": f"Part {s + 1}", "lines": lines})
    return {"script_id": "script-1", "title": "Crash-proof podcasts", "segments": made}


@pytest.fixture(scope="module")
def vfa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VoiceAgent]:
    """One VFA agent on loopback with a fresh data folder."""
    with serving(VoiceAgent(tmp_path_factory.mktemp("vfa"), neural_host=False)) as agent:
        yield agent


@pytest.fixture(scope="module")
def episode(vfa: VoiceAgent) -> dict[str, Any]:
    """A two-segment, eight-turn episode forged over HTTP, with its downloaded WAV and MP3."""
    response = submit(vfa, {"script": script(4, 2), "voice_params": {}}, "key-episode")
    assert response.status_code == 202, response.text
    accepted = response.json()
    report = finished(vfa.base_url, accepted["task_id"])
    assert report["status"] == "SUCCESS", report
    result = report["result"]
    wav = requests.get(result["wav_url"], timeout=10)
    mp3 = requests.get(result["audio_url"], timeout=10)
    samples, rate = audio.read_wav(wav.content)
    return {"accepted": accepted, "result": result, "wav": wav, "mp3": mp3,
            "samples": samples, "rate": rate}


def test_forge_voice__success_returns_a_valid_result(episode: dict[str, Any]) -> None:
    """A script becomes a result that CPOA's VFA validator accepts, with every turn timed."""
    accepted, result = episode["accepted"], episode["result"]
    assert accepted["status_url"] == f"/v1/tasks/{accepted['task_id']}"
    cleaned = results.audio(result)
    assert cleaned["format"] == "mp3" and cleaned["stream_id"] == result["stream_id"]
    assert cleaned["turns"] == result["turns"] and cleaned["wav_url"] == result["wav_url"]
    assert [t["text"] for t in result["turns"]] == [
        line["text"] for segment in script(4, 2)["segments"] for line in segment["lines"]]
    assert result["tts_settings_used"]["voices"] == {"Host": "en-us+m3", "Guest": "en+f3"}
    assert [c["segment_title"] for c in result["segments"]] == ["Part 1", "Part 2"]


def test_forge_voice__serves_wav_and_mp3(episode: dict[str, Any]) -> None:
    """Both files download with their content types and decode to the reported duration."""
    wav, mp3, result = episode["wav"], episode["mp3"], episode["result"]
    assert wav.headers["Content-Type"] == "audio/wav"
    assert mp3.headers["Content-Type"] == "audio/mpeg"
    assert len(episode["samples"]) / episode["rate"] == pytest.approx(result["duration_s"],
                                                                      abs=0.001)
    head = mp3.content[:3]
    assert head == b"ID3" or (head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
    # Constant bitrate: the MP3's size gives its length, which must match the WAV's.
    mp3_seconds = len(mp3.content) * 8 / (audio.MP3_KBPS * 1000)
    assert mp3_seconds == pytest.approx(result["duration_s"], rel=0.05)


def test_forge_voice__host_and_guest_have_distinct_voices(episode: dict[str, Any]) -> None:
    """The guest's median pitch, measured on the WAV inside guest turns, is far above the
    host's."""
    turns, samples, rate = episode["result"]["turns"], episode["samples"], episode["rate"]
    host = median_pitch(samples, rate, [(t["start_s"], t["end_s"]) for t in turns
                                        if t["speaker"] == "Host"])
    guest = median_pitch(samples, rate, [(t["start_s"], t["end_s"]) for t in turns
                                         if t["speaker"] == "Guest"])
    print(f"median pitch: host {host:.0f} Hz, guest {guest:.0f} Hz")
    assert guest > 1.2 * host


def test_forge_voice__duration_matches_turn_timings(episode: dict[str, Any]) -> None:
    """The WAV is the timed turns plus the documented pauses, and the timings point at speech.

    Compared: the WAV's length (frames / rate) against (a) the sum of the turns' ``end_s -
    start_s`` alone, within 10 % (pauses are the rest), and (b) that sum plus the lead, the
    pauses between turns and segments and the tail, to the millisecond; then every turn span is
    loud and everything outside the spans is silent, so the timings are where the speech is.
    """
    turns, samples, rate = episode["result"]["turns"], episode["samples"], episode["rate"]
    wav_s = len(samples) / rate
    spoken = sum(t["end_s"] - t["start_s"] for t in turns)
    assert abs(wav_s - spoken) <= 0.10 * wav_s
    segments = [t["segment_index"] for t in turns]
    pauses = sum(audio.pause_before(i, segments) for i in range(len(turns)))
    layout = audio.LEAD_S + spoken + pauses + audio.TAIL_S
    assert wav_s == pytest.approx(layout, abs=0.001 * (len(turns) + 1))
    outside = np.ones(len(samples), dtype=bool)
    slack = int(np.ceil(0.001 * rate))  # timings are rounded to the millisecond
    for t in turns:
        start, end = round(t["start_s"] * rate), round(t["end_s"] * rate)
        level = np.sqrt(np.mean(samples[start:end].astype(np.float64) ** 2))
        assert level > 32767 * 10 ** (-30 / 20), t
        outside[max(0, start - slack):end + slack] = False
    assert np.max(np.abs(samples[outside])) == 0


def test_forge_voice__same_key_replays_same_task(vfa: VoiceAgent,
                                                 episode: dict[str, Any]) -> None:
    """Submitting the finished key again answers 200 with the same task and result."""
    again = submit(vfa, {"script": script(4, 2), "voice_params": {}}, "key-episode")
    assert again.status_code == 200
    assert again.json()["task_id"] == episode["accepted"]["task_id"]
    assert again.json()["result"] == episode["result"]


def test_forge_voice__cached_turns_are_not_synthesised_again(vfa: VoiceAgent,
                                                             episode: dict[str, Any]) -> None:
    """The same script under a new key reuses every cached turn and gives the same audio."""
    before = requests.get(f"{vfa.base_url}/stats", timeout=10).json()
    response = submit(vfa, {"script": script(4, 2)}, "key-episode-again")
    report = finished(vfa.base_url, response.json()["task_id"])
    after = requests.get(f"{vfa.base_url}/stats", timeout=10).json()
    assert after["synthesised_turns"] == before["synthesised_turns"]
    assert after["cached_turns"] == before["cached_turns"] + 8
    wav = requests.get(report["result"]["wav_url"], timeout=10).content
    assert wav == episode["wav"].content


@pytest.mark.parametrize(("params", "voices", "wpm", "pitch"), [
    ({"language_code": "en-US", "speaking_rate": 1.5, "pitch": 10},
     {"Host": "en-us+m3", "Guest": "en-us+f3"}, 262, 75),
    ({"voice_name": "en+f3", "pitch": -20}, {"Host": "en+f3", "Guest": "en+m3"}, 175, 0),
], ids=["language-rate-pitch", "host-takes-guest-voice"])
def test_forge_voice__voice_params_shape_the_settings(vfa: VoiceAgent, params: dict[str, Any],
                                                      voices: dict[str, str], wpm: int,
                                                      pitch: int) -> None:
    """Voice parameters pick the voices, words per minute and espeak pitch that are reported."""
    body = {"script": script(2, 1, sentences=1), "voice_params": params}
    response = submit(vfa, body, f"params-{sorted(params.items())}")
    settings = finished(vfa.base_url, response.json()["task_id"])["result"]["tts_settings_used"]
    assert settings["voices"] == voices
    assert (settings["rate_wpm"], settings["espeak_pitch"]) == (wpm, pitch)


@pytest.mark.parametrize(("body", "field"), [
    ({"voice_params": {}}, "script"),
    ({"script": {"segments": []}}, "script.segments"),
    ({"script": {"segments": [{"lines": [{"speaker": "Host", "text": "Hi."},
                                         {"speaker": "Guest"}]}]}},
     "script.segments[0].lines[1].text"),
    ({"script": {"segments": [{"lines": [{"speaker": " ", "text": "Hi."}]}]}},
     "script.segments[0].lines[0].speaker"),
    ({"script": {"segments": [{"lines": "Hi."}]}}, "script.segments[0].lines"),
    ({"script": {"segments": [{"lines": [
        {"speaker": "Host", "text": "x" * (MAX_SCRIPT_CHARS // 2 + 1)},
        {"speaker": "Guest", "text": "y" * (MAX_SCRIPT_CHARS // 2 + 1)}]}]}},
     "script.segments[0].lines[1].text"),
    ({"script": script(1, 1), "voice_params": {"speaking_rate": 3}},
     "voice_params.speaking_rate"),
    ({"script": script(1, 1), "voice_params": {"pitch": "high"}}, "voice_params.pitch"),
    ({"script": script(1, 1), "voice_params": {"voice_name": "en-US-Wavenet-D"}},
     "voice_params.voice_name"),
    ({"script": script(1, 1), "voice_params": {"voice_name": "en-us+../../x"}},
     "voice_params.voice_name"),
    ({"script": script(1, 1), "voice_params": {"language_code": "xx-YY"}},
     "voice_params.language_code"),
    ({"script": script(1, 1), "voice_params": {"volume": 3}}, "voice_params.volume"),
], ids=["no-script", "no-segments", "line-without-text", "blank-speaker", "lines-not-list",
        "text-over-limit", "rate-out-of-range", "pitch-not-number", "unknown-voice",
        "voice-path", "unknown-language", "unknown-param"])
def test_forge_voice__bad_input_names_the_field(vfa: VoiceAgent, body: dict[str, Any],
                                                field: str) -> None:
    """A malformed request is refused with 422 naming the offending field."""
    response = submit(vfa, body, f"bad-{field}-{len(str(body))}")
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(field + ":")


def test_forge_voice__oversized_body_is_refused(vfa: VoiceAgent) -> None:
    """A body declared larger than the agent's limit is refused with 413 before it is read."""
    parts = urllib.parse.urlsplit(vfa.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("POST", "/forge_voice")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("X-Idempotency-Key", "too-big")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert b'"field": "body"' in response.read()
    finally:
        conn.close()


def test_forge_voice__unspeakable_script_is_skipped(vfa: VoiceAgent) -> None:
    """A script with no letter or digit to speak finishes with a ``skipped`` result."""
    body = {"script": {"segments": [{"lines": [{"speaker": "Host", "text": "..."},
                                               {"speaker": "Guest", "text": " "}]}]}}
    report = finished(vfa.base_url, submit(vfa, body, "unspeakable").json()["task_id"])
    assert report["status"] == "SUCCESS"
    assert report["result"]["status"] == "skipped" and report["result"]["message"]


@pytest.mark.parametrize("path", [
    "/audio/../vfa-tasks.sqlite3", "/audio/..%2fvfa-tasks.sqlite3",
    "/audio/%2e%2e/vfa-tasks.sqlite3", "/audio/stream-x.mp3", "/audio/turns.wav",
    "/audio/stream-" + "0" * 32 + ".mp3", "/audio/stream-" + "0" * 32 + ".mp3/../../x",
])
def test_get_audio__path_traversal_is_refused(vfa: VoiceAgent, episode: dict[str, Any],
                                              path: str) -> None:
    """Only existing episode files by their exact name are served; anything else is 404."""
    status = raw_get(vfa, path)
    body = status.body
    assert status == 404
    assert not body.startswith(b"SQLite")


@pytest.mark.slow
def test_forge_voice__killed_mid_synthesis_resumes_without_redoing_turns(
        tmp_path: pathlib.Path) -> None:
    """After SIGKILL mid-synthesis a new process finishes the task and skips the cached turns."""
    total = 30
    body = {"script": script(6, 5, sentences=4)}
    first = VfaProcess(tmp_path)
    try:
        response = submit(first.base, body, "key-restart", path=VoiceAgent.path)
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        wait_until(lambda: len(list((tmp_path / "turns").glob("*.wav"))) >= 3, timeout=60,
                   interval=0.005)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
    finally:
        first.close()
    cached = len(list((tmp_path / "turns").glob("*.wav")))
    print(f"cached at kill: {cached}/{total}")
    assert cached < total, "synthesis finished before the kill; the test proves nothing"
    second = VfaProcess(tmp_path)
    try:
        report = finished(second.base, task_id, timeout=120)
        stats = requests.get(f"{second.base}/stats", timeout=10).json()
        wav = requests.get(report["result"]["wav_url"], timeout=10).content
    finally:
        second.close()
    assert report["status"] == "SUCCESS"
    assert stats == {"synthesised_turns": total - cached, "cached_turns": cached}
    turns = report["result"]["turns"]
    assert [t["text"].split(".")[0] for t in turns] == [f"Line {n}" for n in range(1, total + 1)]
    samples, rate = audio.read_wav(wav)
    assert len(samples) / rate == pytest.approx(report["result"]["duration_s"], abs=0.001)
    for t in turns:  # cached and freshly synthesised turns alike are audible where timed
        span = samples[round(t["start_s"] * rate):round(t["end_s"] * rate)].astype(np.float64)
        assert np.sqrt(np.mean(span ** 2)) > 32767 * 10 ** (-30 / 20), t
