"""Fault hooks: kill a process at a named point, to test crash windows.

The environment variable FLOWCTL_FAULT lists the points, separated by
commas, each as `POINT` or `POINT@STAGE`, optionally followed by `#N` to
fire the Nth time the point is reached instead of the first.  The
orchestrator's points name no stage, or `flowctl`.  When a listed point is reached, the process
kills itself with SIGKILL, as a power cut or the OOM killer would.

Points in a stage: `save` (after the stage computed its state, before it
reported it), `prepared` (a sink that prepared a checkpoint, before it
commits it), `commit` (a sink halfway through a commit).  Points in the
orchestrator: `parts` (some parts of a checkpoint written, not all),
`manifest` (every part written, the manifest written to its temporary
file but not renamed into place), `published`
(the manifest stored, before any sink was told to commit).

Hooks fire only in a stage's first incarnation, so that a pipeline
recovered after a hook's kill runs through.
"""

from __future__ import annotations

import os
import signal

ENV_FAULT = "FLOWCTL_FAULT"
_counts: dict[str, int] = {}


def _requested_count(point: str, where: str) -> int | None:
    for item in os.environ.get(ENV_FAULT, "").split(","):
        item = item.strip()
        if not item:
            continue
        item, _, nth = item.partition("#")
        name, _, target = item.partition("@")
        if name == point and (target or "flowctl") == where:
            return int(nth or 1)
    return None


def hit(point: str, where: str = "flowctl") -> None:
    """Kill this process if FLOWCTL_FAULT names this point here."""
    if ENV_FAULT not in os.environ:
        return
    if where != "flowctl" and os.environ.get("FLOWCTL_RESTARTS", "0") != "0":
        return
    nth = _requested_count(point, where)
    if nth is None:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
