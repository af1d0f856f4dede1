"""Your own documents in the demo: local files checked, then served to WCHA over local HTTP.

``cpoa demo --file notes.md --file paper.pdf`` checks each file (it exists, is readable, is a
supported type and at most :data:`MAX_FILE_BYTES`), then :class:`FileServer` serves them on
127.0.0.1 so that WCHA harvests them as it harvests any page: an HTTP fetch and extraction.
"""

from __future__ import annotations

import os
import pathlib
import re
import urllib.parse
from collections.abc import Sequence

from cpoa import errors
from cpoa_agents.service import Handler, Request, Response, Service, error
from cpoa_agents.wcha import MAX_PAGE_BYTES

CONTENT_TYPES = {".md": "text/markdown; charset=utf-8", ".markdown": "text/markdown; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8",
                 ".htm": "text/html; charset=utf-8", ".pdf": "application/pdf"}
MAX_FILE_BYTES = MAX_PAGE_BYTES
"""Largest document accepted: the largest page WCHA reads."""


def check(paths: Sequence[str]) -> list[pathlib.Path]:
    """Returns the files as resolved paths.

    Raises:
        cpoa.errors.InvalidInput: Naming ``--file`` and the path: missing, not a file,
            unreadable, an unsupported type, or too large.
    """
    checked = []
    for raw in paths:
        path = pathlib.Path(raw).expanduser()
        def refuse(reason: str) -> errors.InvalidInput:
            return errors.InvalidInput(f"--file {raw}: {reason}", field="--file")
        if not path.exists():
            raise refuse("no such file")
        if not path.is_file():
            raise refuse("not a regular file")
        if path.suffix.lower() not in CONTENT_TYPES:
            raise refuse(f"unsupported type (use {', '.join(sorted(CONTENT_TYPES))})")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise refuse(f"larger than {MAX_FILE_BYTES} bytes")
        if not os.access(path, os.R_OK):
            raise refuse("not readable")
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise refuse(f"not readable ({exc.strerror})") from None
        checked.append(path.resolve())
    return checked


class FileServer(Service):
    """Serves the given files at ``/files/<n>/<name>`` (nothing else on disk is reachable).

    Args:
        data_dir: The service's folder.
        files: The checked files, in order.
    """

    name = "files"

    def __init__(self, data_dir: str | pathlib.Path, files: Sequence[pathlib.Path]) -> None:
        super().__init__(data_dir)
        self.files = list(files)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("GET", r"/files/\d+/[^/]+", self.serve_file)]

    def urls(self) -> list[str]:
        """The URL of each file, in order."""
        return [f"{self.base_url}/files/{i}/{urllib.parse.quote(p.name)}"
                for i, p in enumerate(self.files)]

    def serve_file(self, request: Request) -> Response:
        match = re.fullmatch(r"/files/(\d+)/[^/]+", request.path)
        index = int(match.group(1)) if match else -1
        if not 0 <= index < len(self.files):
            return error(404, "no such file")
        path = self.files[index]
        return Response(200, path.read_bytes(), CONTENT_TYPES[path.suffix.lower()])
