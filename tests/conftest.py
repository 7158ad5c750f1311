"""Shared fixtures: a private flowctl home, and running flowctl for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = Path(__file__).resolve().parent / "stages"
FLOWCTL = [sys.executable, "-m", "flowctl"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["FLOWCTL_HOME"] = str(home)
    return environment


def write_pipeline(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run_flowctl(args: list[str], env: dict[str, str], cwd: Path | None = None,
                timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run flowctl to completion and return its output as text."""
    return subprocess.run(FLOWCTL + args, env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def read_jsonl(path: Path) -> list:
    """Return the records of a JSON-lines file."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def line_count(path: Path) -> int:
    """Return the number of lines in a file, 0 if it does not exist yet."""
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as file:
        return sum(1 for _ in file)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll `predicate` until it returns a true value or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {predicate}")


def stage_processes(run_id_env: str) -> list[psutil.Process]:
    """Every live process that carries this test's FLOWCTL_HOME."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            environ = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if environ.get("FLOWCTL_HOME") == run_id_env and process.pid != os.getpid():
            found.append(process)
    return found


@pytest.fixture
def spawned():
    """Popen objects started by a test; killed with their groups at the end."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            for child in descendants(process.pid):
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            process.kill()
            process.wait()
