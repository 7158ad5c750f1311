"""Commands that look at runs from another terminal: status, stop, runs,
logs.  They read the run registry and talk to a live run over its control
socket."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from typing import Any

import click

from flowctl import runcontrol
from flowctl.display import format_count, format_rate
from flowctl.home import resolve_home
from flowctl.registry import Registry, RunRow

EXIT_NOT_FOUND = 1
FOLLOW_INTERVAL = 0.2
STOP_POLL_INTERVAL = 0.1

home_option = click.option(
    "--home", type=click.Path(file_okay=False),
    help="State directory [default: $FLOWCTL_HOME or ~/.flowctl].")


def _registry(home: str | None) -> Registry:
    return Registry(resolve_home(home))


def _find(registry: Registry, prefix: str) -> RunRow:
    try:
        return registry.find_run(prefix)
    except LookupError as error:
        click.echo(f"flowctl: {error}", err=True)
        sys.exit(EXIT_NOT_FOUND)


def _refresh(registry: Registry, run: RunRow) -> RunRow:
    """Mark a run lost when the registry lists it as running but its
    flowctl process is gone."""
    if run.ended_at is None and not run.is_alive():
        registry.mark_lost(run)
        return registry.find_run(run.id)
    return run


def _checkpoint_status(run: RunRow) -> dict[str, Any] | None:
    """Return the newest checkpoint the registry stores for a run, or None
    when the run took none or the entry is not a JSON object."""
    if not run.checkpoint:
        return None
    try:
        value = json.loads(run.checkpoint)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _snapshot(registry: Registry, run: RunRow) -> dict[str, Any]:
    """Return a run as `status --json` prints it, with live data from its
    control socket when the run replies."""
    if run.ended_at is None:
        try:
            reply = runcontrol.request(run.socket, {"type": "status"})
            if reply.get("ok"):
                snapshot = reply["run"]
                # A run started by an earlier flowctl replies without it.
                snapshot.setdefault("checkpoint", _checkpoint_status(run))
                return snapshot
        except OSError:
            pass
    return {
        "id": run.id, "pipeline": run.pipeline, "source": run.source,
        "pid": run.pid, "state": run.state, "started_at": run.started_at,
        "ended_at": run.ended_at, "exit_code": run.exit_code,
        "message": run.message,
        "stages": [{key: row[key] for key in (
            "id", "role", "pid", "state", "restarts", "records_in",
            "records_out", "last_error")}
            for row in registry.stages(run.id)],
        "checkpoint": _checkpoint_status(run),
    }


def _format_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _print_run(snapshot: dict[str, Any]) -> None:
    ended = snapshot.get("ended_at")
    elapsed = (ended or time.time()) - snapshot["started_at"]
    click.echo(f"run {snapshot['id']}  pipeline {snapshot['pipeline']}  "
               f"{snapshot['state']}  pid {snapshot.get('pid')}  "
               f"started {_format_time(snapshot['started_at'])} "
               f"({_format_duration(elapsed)})")
    rows = [("STAGE", "PID", "STATE", "RESTARTS", "IN", "OUT", "RATE",
             "LAST ERROR")]
    for stage in snapshot["stages"]:
        rows.append((stage["id"], str(stage.get("pid") or "-"),
                     stage["state"], str(stage["restarts"]),
                     format_count(stage["records_in"]),
                     format_count(stage["records_out"]),
                     format_rate(stage.get("rate")),
                     (stage.get("last_error") or "")[:60]))
    widths = [max(len(row[column]) for row in rows)
              for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  " + "  ".join(value.ljust(width) for value, width
                                    in zip(row, widths)).rstrip())
    if snapshot.get("checkpoint"):
        for line in _describe_checkpoint(snapshot["checkpoint"],
                                         live=ended is None):
            click.echo(f"  {line}")
    if snapshot.get("message"):
        click.echo(f"  {snapshot['message']}")


def _describe_checkpoint(checkpoint: dict[str, Any], live: bool
                         ) -> list[str]:
    """Return the lines `status` prints about a run's checkpoints."""
    if checkpoint.get("last"):
        age = _format_duration(time.time() - checkpoint["last_at"])
        newest = f"{checkpoint['last']}, {age} ago"
    else:
        newest = "none stored yet"
    line = (f"checkpoint  {newest} ({checkpoint.get('completed', 0)} stored, "
            f"{checkpoint.get('failed', 0)} failed) in "
            f"{checkpoint.get('directory')}")
    if live and checkpoint.get("in_flight"):
        line += f"; {checkpoint['in_flight']} in progress"
    lines = [line]
    if checkpoint.get("last_error"):
        lines.append(f"checkpoint error: {checkpoint['last_error']}")
    return lines


@click.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of runs, each with its stages.")
@home_option
def status(run_id: str | None, as_json: bool, home: str | None) -> None:
    """Show live runs and their stages, or one run by id (or prefix).

    Per stage: pid, state, restarts, records in and out, rate, last error.
    For a run that takes checkpoints: the newest one, its age, how many
    were stored and failed, and the checkpoint directory.

    \b
    Examples:
      flowctl status
      flowctl status 3fa2 --json
    """
    registry = _registry(home)
    if run_id is not None:
        runs = [_refresh(registry, _find(registry, run_id))]
    else:
        runs = [_refresh(registry, run) for run in registry.runs()
                if run.ended_at is None]
        runs = [run for run in runs if run.ended_at is None]
    snapshots = [_snapshot(registry, run) for run in runs]
    if as_json:
        click.echo(json.dumps(snapshots, indent=2))
        return
    if not snapshots:
        click.echo("no live runs; 'flowctl runs' lists past ones")
        return
    for snapshot in snapshots:
        _print_run(snapshot)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--kill", is_flag=True,
              help="Kill every stage at once instead of draining.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for the run to end.")
@home_option
def stop(run_id: str, kill: bool, timeout: float, home: str | None) -> None:
    """Stop a live run: its sources stop and the records in flight drain.

    Waits for the run to end.  The run exits as if it got SIGTERM (143).

    \b
    Examples:
      flowctl stop 3fa2
      flowctl stop 3fa2 --kill
    """
    registry = _registry(home)
    run = _refresh(registry, _find(registry, run_id))
    if run.ended_at is not None:
        click.echo(f"flowctl: run {run.id} is not running ({run.state})",
                   err=True)
        sys.exit(EXIT_NOT_FOUND)
    try:
        runcontrol.request(run.socket, {"type": "stop", "kill": kill})
    except OSError as error:
        click.echo(f"flowctl: cannot reach run {run.id} at {run.socket}: "
                   f"{error}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    deadline = time.monotonic() + timeout
    while run.is_alive() and time.monotonic() < deadline:
        time.sleep(STOP_POLL_INTERVAL)
    if run.is_alive():
        click.echo(f"flowctl: run {run.id} is still stopping after "
                   f"{timeout:g}s; 'flowctl stop {run.id} --kill' ends it "
                   f"at once", err=True)
        sys.exit(EXIT_NOT_FOUND)
    ended = _refresh(registry, registry.find_run(run.id))
    click.echo(f"run {run.id} {ended.state}")


@click.command()
@click.option("--limit", default=20, show_default=True,
              help="How many of the newest runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@home_option
def runs(limit: int, as_json: bool, home: str | None) -> None:
    """List past and live runs, newest first.

    \b
    Examples:
      flowctl runs
      flowctl runs --limit 100 --json
    """
    registry = _registry(home)
    rows = [_refresh(registry, run) for run in registry.runs(limit)]
    if as_json:
        click.echo(json.dumps([run.__dict__ for run in rows], indent=2))
        return
    table = [("RUN", "PIPELINE", "STATE", "STARTED", "DURATION", "EXIT")]
    for run in rows:
        duration = (run.ended_at or time.time()) - run.started_at
        table.append((run.id, run.pipeline, run.state,
                      _format_time(run.started_at),
                      _format_duration(duration),
                      "-" if run.exit_code is None else str(run.exit_code)))
    widths = [max(len(row[column]) for row in table)
              for column in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(value.ljust(width) for value, width
                             in zip(row, widths)).rstrip())


@click.command()
@click.argument("run_id", metavar="RUN")
@click.argument("stage_id", metavar="[STAGE]", required=False)
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines until the run ends.")
@home_option
def logs(run_id: str, stage_id: str | None, follow: bool,
         home: str | None) -> None:
    """Show the stderr of a run's stages, from their log files.

    Without STAGE, every stage's lines are shown prefixed with its id.

    \b
    Examples:
      flowctl logs 3fa2
      flowctl logs 3fa2 parse -f
    """
    registry = _registry(home)
    run = _refresh(registry, _find(registry, run_id))
    stages = registry.stages(run.id)
    if stage_id is not None:
        stages = [stage for stage in stages if stage["id"] == stage_id]
        if not stages:
            names = ", ".join(row["id"] for row in registry.stages(run.id))
            click.echo(f"flowctl: run {run.id} has no stage {stage_id!r}; "
                       f"its stages are {names}", err=True)
            sys.exit(EXIT_NOT_FOUND)
    prefix = stage_id is None
    positions = {stage["id"]: 0 for stage in stages}
    while True:
        for stage in stages:
            positions[stage["id"]] = _print_new_lines(
                stage["log_path"], positions[stage["id"]],
                f"[{stage['id']}] " if prefix else "")
        if not follow or not run.is_alive():
            break
        time.sleep(FOLLOW_INTERVAL)
    if not any(positions.values()):
        if stage_id:
            message = f"stage {stage_id!r} of run {run.id} wrote nothing"
        else:
            message = f"no stage of run {run.id} wrote anything"
        click.echo(f"flowctl: {message} to stderr", err=True)


def _print_new_lines(path: str, position: int, prefix: str) -> int:
    """Print complete lines from `position` on; return the new position."""
    try:
        with open(path, "rb") as file:
            file.seek(position)
            data = file.read()
    except FileNotFoundError:
        return position
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode("utf-8", "replace").splitlines():
        click.echo(prefix + line)
    return position + end

