"""`cpoa demo` end to end: a topic becomes a finished episode with every file a podcast needs."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import time
import wave

import feedparser
import numpy as np
import pyloudnorm
import pytest
from mutagen.id3 import ID3
from PIL import Image

from cpoa_agents import neural, text
from cpoa_agents.corpus import CORPUS_DIR
from cpoa_agents.text import STOP_WORDS
from cpoa.testing.cli import cli_env, run_cli
from tests.agents.audio_checks import high_band_share, median_pitch
from tests.fix_db import database

FILES = {"episode.mp3", "episode.wav", "cover.png", "script.json", "transcript.md",
         "transcript.vtt", "chapters.json", "feed.xml"}


@pytest.fixture(scope="module")
def demo_dsn(server_dsn, template_db):
    """A fresh database for the demo, dropped after the module."""
    with database(server_dsn, template=template_db, prefix="cpoa_demo_") as dsn:
        yield dsn


def run_demo(root, dsn, *args, neural_host="no"):
    """Runs `cpoa demo ARGS` into ``root``; returns (folder, status, stdout, seconds).

    ``neural_host``: VFA_NEURAL_HOST for the run (``auto``: Piper's host voice when the
    [neural] extra is installed)."""
    env = cli_env(dsn, "http://127.0.0.1:9", VFA_NEURAL_HOST=neural_host)
    started = time.monotonic()
    result = run_cli(env, "demo", *args, "--output", str(root / "output"),
                     "--data-dir", str(root / "agents"), timeout=240)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workflow_id = re.search(r"workflow ([0-9a-f-]{36})", result.stdout).group(1)
    status = json.loads(run_cli(env, "status", workflow_id, "--json").stdout)
    print(f"demo {args} took {seconds:.1f} s for "
          f"{status['outputs']['audio']['duration_s']:.0f} s of audio")
    return root / "output" / workflow_id, status, result.stdout, seconds


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_dsn):
    """Runs `cpoa demo` once on a fresh database; yields (folder, status, stdout)."""
    folder, status, stdout, _ = run_demo(tmp_path_factory.mktemp("demo"), demo_dsn,
                                         "tidal energy", neural_host="auto")
    yield folder, status, stdout


def _wav(path: pathlib.Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16), wav.getframerate()


@pytest.mark.slow
def test_demo__writes_every_episode_file(demo):
    """The output folder holds the audio, cover, script, transcript, chapters and feed."""
    folder, status, stdout = demo
    assert status["state"] == "completed" and status["warnings"] == []
    assert {p.name for p in folder.iterdir()} == FILES
    assert "live page: http://127.0.0.1:" in stdout and "episode ready" in stdout
    assert f"listen: {folder / 'episode.mp3'} (the live page closes now; --serve keeps it " \
           "open)" in stdout


@pytest.mark.slow
def test_demo__episode_has_two_distinct_voices(demo):
    """Host and guest turns of the WAV differ clearly in pitch."""
    folder, status, _ = demo
    samples, rate = _wav(folder / "episode.wav")
    turns = status["outputs"]["audio"]["turns"]
    speakers = sorted({t["speaker"] for t in turns})
    assert len(speakers) == 2
    pitch = {s: median_pitch(samples, rate, [(t["start_s"], t["end_s"]) for t in turns
                                             if t["speaker"] == s]) for s in speakers}
    low, high = sorted(pitch.values())
    assert high > 1.2 * low, pitch


@pytest.mark.slow
def test_demo__duration_matches_turn_timings_and_target(demo):
    """The WAV lasts 2–4 minutes, within 10 % of the summed turn timings."""
    folder, status, _ = demo
    samples, rate = _wav(folder / "episode.wav")
    duration = len(samples) / rate
    spoken = sum(t["end_s"] - t["start_s"] for t in status["outputs"]["audio"]["turns"])
    assert abs(duration - spoken) <= 0.10 * duration
    assert 100 <= duration <= 260
    assert abs(duration - status["outputs"]["audio"]["duration_s"]) < 0.1


@pytest.mark.slow
def test_demo__cover_feed_and_transcript(demo):
    """The cover is 1400×1400, the feed parses with its enclosure, the transcript is the
    script line by line with speaker tags, and chapters follow the segments."""
    folder, status, _ = demo
    with Image.open(folder / "cover.png") as cover:
        assert cover.size == (1400, 1400)
    parsed = feedparser.parse((folder / "feed.xml").read_bytes())
    assert not parsed.bozo, parsed.bozo_exception
    [entry] = parsed.entries
    [enclosure] = entry.enclosures
    assert enclosure.href.endswith("/episode.mp3") and enclosure.type == "audio/mpeg"
    assert int(enclosure.length) == (folder / "episode.mp3").stat().st_size
    assert entry.itunes_duration.count(":") == 2
    script = json.loads((folder / "script.json").read_text())
    assert script == status["outputs"]["script"]
    expected = [f"**{line['speaker']}:** {line['text']}"
                for segment in script["segments"] for line in segment["lines"]]
    tagged = [line for line in (folder / "transcript.md").read_text().splitlines()
              if line.startswith("**")]
    assert tagged == expected
    chapters = json.loads((folder / "chapters.json").read_text())["chapters"]
    assert [c["title"] for c in chapters] == [s["segment_title"] for s in script["segments"]]
    assert [c["startTime"] for c in chapters] == sorted(c["startTime"] for c in chapters)


def _lines(script, speaker=None):
    return [line for segment in script["segments"] for line in segment["lines"]
            if speaker is None or (line["speaker"] == "Host") == (speaker == "Host")]


@pytest.mark.slow
def test_demo__host_lines_are_built_around_source_phrases(demo):
    """Every host question names phrases of two or more words, each said in the line and taken
    from the harvested sources; never a single keyword."""
    _, status, _ = demo
    script, content = status["outputs"]["script"], status["outputs"]["content"].lower()
    asking = [line for line in _lines(script, "Host") if "about" in line]
    assert len(asking) >= 5
    for line in asking:
        for phrase in line["about"]:
            words = [w for w in re.findall(r"[\w'-]+", phrase.lower()) if w not in STOP_WORDS]
            assert len(words) >= 2, line
            assert phrase in line["text"] and phrase.lower() in content, line


@pytest.mark.slow
def test_demo__guest_lines_quote_a_source_and_vary_their_openings(demo):
    """Each guest line quotes sentences of the source it names (read from the corpus files),
    and no opening filler (what comes before the quote) starts more than 20 % of them."""
    _, status, _ = demo
    script = status["outputs"]["script"]
    guest = _lines(script, "Guest")
    for line in guest:
        source = script["sources"][line["source"]]
        article = (CORPUS_DIR / (source["url"].rsplit("/", 1)[-1].removesuffix(".html")
                                 + ".md")).read_text()
        assert line["text"].endswith(line["quote"])
        assert all(sentence in " ".join(article.split())
                   for sentence in text.split_sentences(line["quote"])), line
    fillers = collections.Counter(line["text"][:-len(line["quote"])].strip() for line in guest)
    fillers.pop("", None)
    assert not fillers or fillers.most_common(1)[0][1] <= 0.2 * len(guest), fillers


@pytest.mark.slow
def test_demo__loudness_is_minus_16_lufs(demo):
    """episode.wav's integrated loudness (ITU-R BS.1770, pyloudnorm) is -16 ± 1 LUFS."""
    folder, _, _ = demo
    samples, rate = _wav(folder / "episode.wav")
    level = pyloudnorm.Meter(rate).integrated_loudness(samples / 32768.0)
    print(f"integrated loudness {level:.2f} LUFS")
    assert abs(level + 16) <= 1, level


@pytest.mark.slow
def test_demo__mp3_chapters_vtt_and_feed_links(demo):
    """The MP3's CHAP frames match chapters.json, the VTT's cues match the turn timings, and
    the feed validates and links the transcript and the chapters."""
    folder, status, _ = demo
    chapters = json.loads((folder / "chapters.json").read_text())["chapters"]
    tags = ID3(folder / "episode.mp3")
    frames = sorted(tags.getall("CHAP"), key=lambda f: f.start_time)
    assert [(f.start_time / 1000, f.sub_frames["TIT2"].text[0]) for f in frames] == [
        (pytest.approx(c["startTime"], abs=0.01), c["title"]) for c in chapters]
    [toc] = tags.getall("CTOC")
    assert toc.child_element_ids == [f.element_id for f in frames]
    cues = re.findall(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n<v ([^>]+)>",
                      (folder / "transcript.vtt").read_text(), re.M)
    assert (folder / "transcript.vtt").read_text().startswith("WEBVTT\n")
    seconds = [(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000) for cue in cues
               for h, m, s, ms in (cue[0:4], cue[4:8])]
    turns = status["outputs"]["audio"]["turns"]
    assert seconds == [pytest.approx(t[k], abs=0.002) for t in turns for k in ("start_s", "end_s")]
    assert [cue[8] for cue in cues] == [t["speaker"] for t in turns]
    parsed = feedparser.parse((folder / "feed.xml").read_bytes())
    assert not parsed.bozo, parsed.bozo_exception
    feed = (folder / "feed.xml").read_text()
    assert 'podcast:transcript url="http://localhost:8000/transcript.vtt" type="text/vtt"' in feed
    assert 'podcast:chapters url="http://localhost:8000/chapters.json"' in feed


@pytest.mark.slow
@pytest.mark.skipif(not neural.available() and not os.environ.get("CI"),
                    reason="the [neural] extra is not installed (CI installs it: never skipped)")
def test_demo__host_speaks_with_piper_when_neural_is_installed(demo):
    """With [neural] the host's turns are Piper's: reported so, and measurably different from
    espeak-ng in spectrum (espeak-ng's formant synthesis has far less energy above 4 kHz)."""
    folder, status, _ = demo
    audio = status["outputs"]["audio"]
    assert audio["tts_settings_used"]["voices"]["Host"] == neural.VOICE
    samples, rate = _wav(folder / "episode.wav")
    share = {s: high_band_share(samples, rate, [(t["start_s"], t["end_s"]) for t in audio["turns"]
                                                if t["speaker"] == s]) for s in ("Host", "Guest")}
    print(f"energy share above 4 kHz: {share}")
    assert abs(share["Host"] - share["Guest"]) > 0.5 * min(share.values()), share
