"""`cpoa demo` end to end: a topic becomes a finished episode with every file a podcast needs."""

from __future__ import annotations

import json
import pathlib
import re
import time
import wave

import feedparser
import numpy as np
import pytest
from PIL import Image

from tests.acceptance.helpers import cli_env, run_cli
from tests.agents.audio_checks import median_pitch
from tests.fix_db import database

FILES = {"episode.mp3", "episode.wav", "cover.png", "script.json", "transcript.md",
         "chapters.json", "feed.xml"}


@pytest.fixture(scope="module")
def demo_dsn(server_dsn, template_db):
    """A fresh database for the demo, dropped after the module."""
    with database(server_dsn, template=template_db, prefix="cpoa_demo_") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_dsn):
    """Runs `cpoa demo` once on a fresh database; yields (folder, status, seconds)."""
    root = tmp_path_factory.mktemp("demo")
    env = cli_env(demo_dsn, "http://127.0.0.1:9")
    started = time.monotonic()
    result = run_cli(env, "demo", "tidal energy", "--output", str(root / "output"),
                     "--data-dir", str(root / "agents"), timeout=240)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workflow_id = re.search(r"workflow ([0-9a-f-]{36})", result.stdout).group(1)
    status = json.loads(run_cli(env, "status", workflow_id, "--json").stdout)
    print(f"demo took {seconds:.1f} s for {status['outputs']['audio']['duration_s']:.0f} s "
          "of audio")
    yield root / "output" / workflow_id, status, result.stdout


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
