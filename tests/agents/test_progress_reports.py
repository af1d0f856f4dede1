"""The reference agents' live progress (contract §2) over real HTTP: VFA's finished turns with
playable audio URLs, PSWA's segments written; both within what CPOA keeps (cpoa.reports)."""

from __future__ import annotations

from typing import Any

import requests

from cpoa import reports
from cpoa_agents.pswa import ScriptAgent
from tests.agents.gated import GatedVoiceAgent
from tests.agents.protocol import finished, serving, submit
from tests.agents.test_pswa import REQUEST
from tests.agents.test_vfa import script
from tests.fix_agents import wait_until


def poll(agent: Any, task_id: str) -> dict[str, Any]:
    return requests.get(f"{agent.base_url}/v1/tasks/{task_id}", timeout=15).json()


def test_forge_voice__pending_replies_report_finished_turns_with_their_audio(tmp_path):
    """Six turns, the synthesis held after two: a pending poll says progress 2/6 and lists
    turns 0 and 1 in order, each URL serving a WAV; CPOA would keep the report as it is. Once
    finished, the reply carries the result and no progress."""
    with serving(GatedVoiceAgent(tmp_path, open_turns=2)) as vfa:
        accepted = submit(vfa, {"script": script(3, 2), "voice_params": {}}).json()
        report = wait_until(lambda: (r := poll(vfa, accepted["task_id"])).get("partial")
                            and len(r["partial"]) == 2 and r, timeout=30)
        assert report["status"] in ("PENDING", "STARTED")
        assert report["progress"] == round(2 / 6, 4)
        assert [t["turn"] for t in report["partial"]] == [0, 1]
        assert [t["speaker"] for t in report["partial"]] == ["Host", "Guest"]
        for turn in report["partial"]:
            audio = requests.get(turn["audio_url"], timeout=10)
            assert audio.status_code == 200 and audio.headers["Content-Type"] == "audio/wav"
            assert audio.content[:4] == b"RIFF"
        kept, problems = reports.read(report["progress"], report["partial"])
        assert problems == () and kept.partial == report["partial"]
        vfa.go_on()
        done = finished(vfa, accepted["task_id"])
    assert done["status"] == "SUCCESS"
    assert "progress" not in done and "partial" not in done


def test_get_turns__only_cached_turn_names_are_served(tmp_path):
    """/turns/ serves a 64-hex-digit .wav name that exists, nothing else (no traversal)."""
    with serving(GatedVoiceAgent(tmp_path, open_turns=99)) as vfa:
        for path in ("/turns/" + "0" * 64 + ".wav", "/turns/..%2Fvfa-tasks.sqlite3",
                     "/turns/" + "a" * 63 + ".wav"):
            assert requests.get(vfa.base_url + path, timeout=10).status_code == 404


class RecordingScriptAgent(ScriptAgent):
    """PSWA recording every progress report it makes."""

    def __init__(self, data_dir: Any) -> None:
        super().__init__(data_dir, env={})
        self.reports: list[tuple[float, list]] = []

    def report_progress(self, task_id: str, progress: float, partial: Any = None) -> None:
        self.reports.append((progress, list(partial or [])))
        super().report_progress(task_id, progress, partial)


def test_weave_script__reports_each_segment_written(tmp_path):
    """PSWA reports its segments as written, in order, ending at progress 1 with every
    segment's title and line count."""
    with serving(RecordingScriptAgent(tmp_path)) as pswa:
        accepted = submit(pswa, REQUEST).json()
        result = finished(pswa, accepted["task_id"])["result"]
    segments = result["script_data"]["segments"]
    assert [p for p, _ in pswa.reports] == [(i + 1) / len(segments)
                                           for i in range(len(segments))]
    last = pswa.reports[-1][1]
    assert [(s["segment_index"], s["segment_title"], s["lines"]) for s in last] == [
        (i, s["segment_title"], len(s["lines"])) for i, s in enumerate(segments)]
    assert reports.read(1.0, last)[1] == ()
