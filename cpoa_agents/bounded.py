"""Reading an HTTP answer within a size and a time budget (WCHA's pages, PSWA's LLM)."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

CHUNK_BYTES = 64 * 1024


def read(response: requests.Response, max_bytes: int, deadline: float,
         refuse: Callable[[str], Exception]) -> bytes:
    """Returns the body, streamed so a huge or endless one costs at most ``max_bytes``.

    requests' timeout bounds each socket read, not the whole answer, hence the deadline
    (a ``time.monotonic()`` value).

    Raises:
        What ``refuse(reason)`` returns, when the body is too large or too slow.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise refuse(f"larger than {max_bytes} bytes")
    chunks, size = [], 0
    for chunk in response.iter_content(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise refuse(f"larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise refuse("took longer than its time limit")
        chunks.append(chunk)
    return b"".join(chunks)
