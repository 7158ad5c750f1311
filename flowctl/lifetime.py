"""Tie a child process's lifetime to its parent's (Linux).

A stage must not outlive flowctl, even when flowctl dies by SIGKILL and has
no chance to clean up.  The kernel's parent-death signal does that: the
child requests SIGKILL for when its parent thread exits.

Any executable gets the request made for it between fork and exec, by a
`preexec_fn`.  flowctl's own stage programs make it themselves, as soon as
they start.  Without a `preexec_fn`, Popen can use vfork instead of copying
the orchestrator's page tables with fork: about 0.3 ms a stage instead of
2 ms, all of it before the next stage can start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Starting a child in a process group of its own without a `preexec_fn`
# needs Popen's `process_group`, new in Python 3.11.
SELF_BINDING = sys.version_info >= (3, 11)

# The running interpreter already links libc; CDLL(None) finds prctl there
# without ctypes.util.find_library, which runs /sbin/ldconfig to search.
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def child_setup(new_process_group: bool) -> Callable[[], None]:
    """Return a `preexec_fn` that binds the child to this process.

    The function is built before fork, so the child makes only a few
    system calls between fork and exec.  If the parent died before the
    child requested the signal, the child finds that it has been
    re-parented and exits.
    """
    parent = os.getpid()

    def setup() -> None:
        if new_process_group:
            os.setpgid(0, 0)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def bind_to_parent(parent: int) -> None:
    """Request SIGKILL for when the parent exits, from the child itself.

    Exit at once if `parent` has already gone and this process was
    re-parented.
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def become_subreaper() -> None:
    """Adopt the orphans of our descendants instead of letting init have
    them, so a background child a stage left behind can still be found
    and killed when the run ends.

    NOTE: this covers a run that ends normally or by a signal flowctl can
    handle.  When flowctl dies by SIGKILL, the stages die through their
    parent-death signal, but a child that a stage's program started itself
    (a command that the shell of a `shell:` stage forks, say) is adopted by
    init and may survive.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# Process inspection through /proc, for the orchestrator's hot paths:
# importing psutil costs tens of milliseconds at every start.

def children_of(pid: int) -> list[int]:
    """Return the pids of a process's children (Linux /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found.extend(int(child) for child in file.read().split())
        except OSError:
            continue
    return found


def descendants_of(pid: int) -> list[int]:
    """Return the pids of a process's children, their children, and so on."""
    found: list[int] = []
    pending = [pid]
    while pending:
        children = children_of(pending.pop())
        found.extend(children)
        pending.extend(children)
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces.
    return text[text.rindex(")") + 2:].split()


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"


def start_time(pid: int) -> float | None:
    """Return when a process started, in seconds since the epoch, computed
    as psutil's create_time is: boot time plus the start in clock ticks."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    with open("/proc/stat") as file:
        boot = next(float(line.split()[1]) for line in file
                    if line.startswith("btime "))
    # starttime is field 22 of stat; fields here start at field 3.
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
