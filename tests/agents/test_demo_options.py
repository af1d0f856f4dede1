"""`cpoa demo` episode options: length, format and your own files, measured on the WAV."""

from __future__ import annotations

import pytest
from pypdf import PdfReader

from cpoa.testing.cli import cli_env, run_cli
from tests.agents.audio_checks import median_pitch
from tests.agents import test_demo
from tests.agents.test_demo import _wav, run_demo

demo_dsn = test_demo.demo_dsn
"""The demo's database fixture, shared with tests.agents.test_demo."""

PDF_LINES = ["Glacier ice records the air of past centuries in tiny trapped bubbles.",
             "Drilling teams in Antarctica have recovered cores that are eight hundred "
             "thousand years old."]


@pytest.mark.slow
@pytest.mark.parametrize(("topic", "fmt", "minutes", "voices"), [
    ("urban beekeeping", "bulletin", 2, 1),
    ("urban beekeeping", "panel", 5, 3),
    ("tides, waves and volcanoes", "conversation", 10, 2)])
def test_demo__duration_within_10_percent_of_target(tmp_path, demo_dsn, topic, fmt, minutes,
                                                    voices):
    """The WAV lasts target_minutes ± 10 % on the sample corpus; a bulletin has one voice, a
    panel three clearly different pitches."""
    folder, status, _, seconds = run_demo(tmp_path, demo_dsn, topic, "--format", fmt,
                                          "--minutes", str(minutes))
    samples, rate = _wav(folder / "episode.wav")
    duration = len(samples) / rate
    print(f"{fmt} {minutes} min: {duration:.1f} s of audio in {seconds:.1f} s")
    assert abs(duration - 60 * minutes) <= 0.10 * 60 * minutes, duration
    turns = status["outputs"]["audio"]["turns"]
    assert len({t["voice"] for t in turns}) == voices
    if fmt == "panel":
        pitch = sorted(median_pitch(samples, rate, [(t["start_s"], t["end_s"]) for t in turns
                                                    if t["speaker"] == s])
                       for s in {t["speaker"] for t in turns} - {"Host"})
        host = [t for t in turns if t["speaker"] == "Host"]
        if host[0]["voice"].startswith("en"):  # espeak-ng host: its pitch is the third one
            pitch = sorted([*pitch, median_pitch(samples, rate, [(t["start_s"], t["end_s"])
                                                                 for t in host])])
        assert all(b > 1.2 * a for a, b in zip(pitch, pitch[1:])), pitch


def _pdf(lines: list[str]) -> bytes:
    """A one-page PDF (Helvetica, one text line per entry) written by hand."""
    text = " ".join(f"({line}) Tj T*" for line in lines)
    stream = f"BT /F1 11 Tf 14 TL 40 780 Td {text} ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


@pytest.mark.slow
def test_demo__quotes_your_markdown_text_and_pdf_files(tmp_path, demo_dsn):
    """--file with a Markdown, a text and a PDF file: the episode quotes each of them."""
    notes = tmp_path / "notes.md"
    notes.write_text("# Ice Core Notes\n\n## Drilling\n\nThe **deepest** ice cores come from the "
                     "East Antarctic plateau where snow barely melts.\n")
    plain = tmp_path / "log.txt"
    plain.write_text("Field log\n\nOur camp measured forty degrees below zero on the first "
                     "morning of the season.\n")
    paper = tmp_path / "paper.pdf"
    paper.write_bytes(_pdf(PDF_LINES))
    assert PdfReader(paper).pages[0].extract_text()  # the test's PDF is a real one
    _, status, _, _ = run_demo(tmp_path, demo_dsn, "ice cores", "--file", str(notes),
                               "--file", str(plain), "--file", str(paper), "--minutes", "1")
    spoken = " ".join(line["text"] for segment in status["outputs"]["script"]["segments"]
                      for line in segment["lines"])
    for sentence in ["The deepest ice cores come from the East Antarctic plateau where snow "
                     "barely melts.", "Our camp measured forty degrees below zero on the first "
                     "morning of the season.", PDF_LINES[0]]:
        assert sentence in spoken, sentence


@pytest.mark.parametrize(("args", "named"), [
    (["--format", "radio"], "--format"), (["--minutes", "0"], "--minutes"),
    (["--minutes", "31"], "--minutes"), (["--minutes", "five"], "--minutes"),
    (["--file", "/nonexistent/notes.md"], "--file"), (["--file", "/etc"], "--file"),
    (["--file", "/etc/hostname"], "--file")])
def test_demo__bad_option_is_a_usage_error(tmp_path, args, named):
    """A bad format, length or file exits 2 naming the option, with no traceback."""
    result = run_cli(cli_env("postgresql://nobody@127.0.0.1:9/none", "http://127.0.0.1:9"),
                     "demo", "bees", *args, "--data-dir", str(tmp_path), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
