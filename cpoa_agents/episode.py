"""Writes a finished podcast workflow to a folder: audio, cover, script, transcript, chapters, feed.

Everything comes from the workflow's outputs (``cpoa status --json``) and the files the agents
serve at the URLs in them.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import pathlib
import xml.etree.ElementTree as ET
from typing import Any

import requests

ITUNES = "http://www.itunes.com/dtds/podcast-1.0.dtd"
PODCAST = "https://podcastindex.org/namespace/1.0"
DOWNLOAD_LIMIT_BYTES = 512 * 1024 * 1024
ET.register_namespace("itunes", ITUNES)
ET.register_namespace("podcast", PODCAST)


def write(status: dict[str, Any], folder: pathlib.Path, *,
          public_url: str = "http://localhost:8000/") -> dict[str, pathlib.Path]:
    """Writes every episode file of a completed podcast workflow.

    Args:
        status: The workflow's status document (``Engine.get_workflow``).
        folder: Where to write (created).
        public_url: Where the folder will be served; the feed's links start with it.

    Returns:
        The written files by name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    outputs = status["outputs"]
    audio, script = outputs["audio"], outputs["script"]
    files = {"script.json": folder / "script.json", "transcript.md": folder / "transcript.md",
             "chapters.json": folder / "chapters.json", "episode.mp3": folder / "episode.mp3"}
    _download(audio["url"], files["episode.mp3"])
    if audio.get("wav_url"):
        files["episode.wav"] = folder / "episode.wav"
        _download(audio["wav_url"], files["episode.wav"])
    if outputs.get("image_url"):
        files["cover.png"] = folder / "cover.png"
        _download(outputs["image_url"], files["cover.png"])
    files["script.json"].write_text(json.dumps(script, indent=2, ensure_ascii=False) + "\n")
    files["transcript.md"].write_text(transcript(script))
    files["chapters.json"].write_text(json.dumps(chapters(audio.get("turns", [])), indent=2,
                                                 ensure_ascii=False) + "\n")
    files["transcript.vtt"] = folder / "transcript.vtt"
    files["transcript.vtt"].write_text(webvtt(audio.get("turns", [])))
    files["feed.xml"] = folder / "feed.xml"
    files["feed.xml"].write_bytes(feed(status, files, public_url.rstrip("/") + "/"))
    return files


def transcript(script: dict[str, Any]) -> str:
    """Returns the script as speaker-tagged Markdown."""
    lines = [f"# {script['title']}", ""]
    for segment in script["segments"]:
        if segment.get("segment_title"):
            lines += [f"## {segment['segment_title']}", ""]
        for line in segment["lines"]:
            lines += [f"**{line['speaker']}:** {line['text']}", ""]
    return "\n".join(lines)


def webvtt(turns: list[dict[str, Any]]) -> str:
    """Returns a WebVTT transcript: one cue per turn at its timing, with a voice tag."""
    cues = ["WEBVTT", ""]
    for n, turn in enumerate(turns, 1):
        speaker = turn["speaker"].replace(">", "").replace("&", "and")
        words = turn["text"].replace("&", "&amp;").replace("<", "&lt;").replace("-->", "->")
        cues += [str(n), f"{_vtt_time(turn['start_s'])} --> {_vtt_time(turn['end_s'])}",
                 f"<v {speaker}>{words}", ""]
    return "\n".join(cues)


def _vtt_time(seconds: float) -> str:
    millis = int(round(float(seconds) * 1000))
    return f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d}." \
           f"{millis % 1000:03d}"


def chapters(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Returns Podcasting 2.0 JSON chapters: one per script segment, at its first turn."""
    found: dict[int, dict[str, Any]] = {}
    for turn in turns:
        index = turn.get("segment_index", 0)
        if index not in found:
            found[index] = {"startTime": round(float(turn["start_s"]), 2),
                            "title": turn.get("segment_title") or f"Part {index + 1}"}
    return {"version": "1.2.0", "chapters": [found[i] for i in sorted(found)]}


def feed(status: dict[str, Any], files: dict[str, pathlib.Path], public_url: str) -> bytes:
    """Returns an RSS 2.0 feed with one item whose enclosure is the MP3 (iTunes tags)."""
    script, audio = status["outputs"]["script"], status["outputs"]["audio"]
    title = script["title"]
    summary = f"An episode about {status['params']['topic']}, made by CPOA."
    rss = ET.Element("rss", {"version": "2.0"})
    channel = ET.SubElement(rss, "channel")
    for tag, text in (("title", "CPOA demo podcast"), ("link", public_url),
                      ("description", "Episodes made offline by CPOA's reference agents."),
                      ("language", "en")):
        ET.SubElement(channel, tag).text = text
    _itunes(channel, author="CPOA", explicit="false", type="episodic")
    ET.SubElement(channel, f"{{{ITUNES}}}category", {"text": "Technology"})
    if "cover.png" in files:
        ET.SubElement(channel, f"{{{ITUNES}}}image", {"href": public_url + "cover.png"})
    item = ET.SubElement(channel, "item")
    published = _published(status)
    for tag, text in (("title", title), ("description", summary),
                      ("pubDate", email.utils.format_datetime(published))):
        ET.SubElement(item, tag).text = text
    ET.SubElement(item, "guid", {"isPermaLink": "false"}).text = status["workflow_id"]
    ET.SubElement(item, "enclosure", {"url": public_url + "episode.mp3", "type": "audio/mpeg",
                                      "length": str(files["episode.mp3"].stat().st_size)})
    _itunes(item, duration=_hms(float(audio["duration_s"])), episodeType="full",
            explicit="false", summary=summary)
    ET.SubElement(item, f"{{{PODCAST}}}transcript", {"url": public_url + "transcript.vtt",
                                                      "type": "text/vtt"})
    ET.SubElement(item, f"{{{PODCAST}}}chapters", {"url": public_url + "chapters.json",
                                                    "type": "application/json+chapters"})
    return ET.tostring(rss, encoding="utf-8", xml_declaration=True)


def _itunes(parent: ET.Element, **tags: str) -> None:
    for tag, text in tags.items():
        ET.SubElement(parent, f"{{{ITUNES}}}{tag}").text = text


def _published(status: dict[str, Any]) -> datetime.datetime:
    stamp = status.get("ended_at") or status.get("started_at")
    if stamp:
        return datetime.datetime.fromisoformat(stamp)
    return datetime.datetime.now(datetime.timezone.utc)


def _hms(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _download(url: str, path: pathlib.Path) -> None:
    """Copies one agent-served file, bounded in size, through a temporary name."""
    partial = path.with_suffix(path.suffix + ".part")
    with requests.get(url, stream=True, timeout=30) as response:
        response.raise_for_status()
        size = 0
        with partial.open("wb") as out:
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > DOWNLOAD_LIMIT_BYTES:
                    raise ValueError(f"{url}: larger than {DOWNLOAD_LIMIT_BYTES} bytes")
                out.write(chunk)
    partial.replace(path)
