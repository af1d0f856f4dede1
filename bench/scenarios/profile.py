"""Summarises a py-spy ``raw`` (collapsed stacks) profile: by layer, by function.

The harness records with ``py-spy record --gil``: each sample is the stack of the thread that
holds the GIL, so the shares are shares of the worker's Python time (what its single GIL
serialises); native time with the GIL released (libpq waiting on the socket) is not in it. Only
stacks under ``cpoa/worker.py`` are kept (the worker's threads, not the harness's start-up).
"""

from __future__ import annotations

import collections
import re
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (layer, path fragments); the deepest frame of a stack that matches one names the layer.
LAYERS = [
    ("psycopg: send, wait, adapt, parse rows", ("psycopg/", "psycopg_pool/", "psycopg_binary",
                                                 "psycopg_c")),
    ("HTTP client: requests, urllib3, http.client", ("requests/", "urllib3/", "http/client",
                                                     "http/cookiejar", "email/", "socket.py",
                                                     "idna/", "charset_normalizer/")),
    ("JSON encode/decode", ("json/",)),
    ("logging", ("logging/", "pythonjsonlogger/")),
    ("backoff (retry decorator)", ("backoff/",)),
    ("thread pool hand-off, events", ("threading.py", "concurrent/", "queue.py")),
    ("bench instrumentation (timers, counters)", ("bench/",)),
]
CPOA = "CPOA's own Python (engine, steps, store, models)"


def parse(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            m = FRAME.match(part)
            frames.append((m["func"], m["file"]) if m else (part, ""))
        stacks.append((frames, int(count)))
    return stacks


def layer_of(frames: list[tuple[str, str]]) -> str:
    for func, path in reversed(frames):
        for name, fragments in LAYERS:
            if any(f in path for f in fragments):
                return name
        if path.startswith("cpoa/") or "/cpoa/" in path:
            return CPOA
    return "other Python (stdlib, interpreter)"


def summarise(raw: str) -> dict[str, Any]:
    """Shares of samples by layer, by leaf function (self) and by CPOA function (inclusive)."""
    stacks = [(frames, count) for frames, count in parse(raw)
              if any(path.endswith("cpoa/worker.py") for _, path in frames)]
    total = sum(count for _, count in stacks) or 1
    layers: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    cpoa: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        layers[layer_of(frames)] += count
        func, path = frames[-1]
        leaf[f"{func} ({path})"] += count
        for name in {f"{fn} ({p})" for fn, p in frames if p.startswith("cpoa/")}:
            cpoa[name] += count

    def shares(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(n / total, 3)) for name, n in counter.most_common(k)]
    return {"samples": total, "layers": shares(layers, 10), "self": shares(leaf, 10),
            "cpoa_inclusive": shares(cpoa, 10)}
