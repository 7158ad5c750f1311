"""The state directory: run logs now, the run registry as it grows.

It is `~/.flowctl` unless `--home` or the FLOWCTL_HOME environment variable
names another directory.  It is created readable by its owner only.
"""

from __future__ import annotations

import os

ENV_HOME = "FLOWCTL_HOME"
RUN_ID_BYTES = 5


def resolve_home(option: str | None = None) -> str:
    path = option or os.environ.get(ENV_HOME) or os.path.join(
        os.path.expanduser("~"), ".flowctl")
    return os.path.abspath(path)


def new_run_id() -> str:
    """Return a short random run id; any unique prefix of it names the run."""
    return os.urandom(RUN_ID_BYTES).hex()


def run_directory(home: str, run_id: str) -> str:
    """Create and return the directory for one run's stage logs."""
    path = os.path.join(home, "runs", run_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(home, 0o700)
    return path
