"""`flowctl checkpoint`: list, show, verify and clean the checkpoints of a
local checkpoint directory.

Every subcommand reads one directory: DIR or --dir, else the directory of
the checkpoint section of `--pipeline FILE`, else ./checkpoints.  Relative
paths are resolved against the current directory, as `flowctl run` does.
Each listed checkpoint is verified (every part's size and SHA-256 checksum
against its manifest), so "complete" means whole and readable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NoReturn

import click

from flowctl import units
from flowctl.checkpoints.config import CheckpointConfig
from flowctl.checkpoints.local import MANIFEST_NAME, LocalStorage
from flowctl.checkpoints.manifest import Manifest
from flowctl.checkpoints.recovery import verify
from flowctl.checkpoints.storage import CheckpointInfo, StorageError

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_DIRECTORY = CheckpointConfig().directory
# Hex digits of a part's SHA-256 checksum that `show` prints.
SHORT_CHECKSUM = 12
PART_SUFFIXES = (".state.zst", ".state")
LABEL_WIDTH = 15


# Formatting


def format_size(size: int) -> str:
    """Return `size` bytes in binary units: 15B, 1.2KiB, 3.4MiB."""
    if size < 1024:
        return f"{size}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if round(value, 1) < 1024:
            return f"{value:.1f}{unit}"
    return f"{value / 1024:.1f}TiB"


def format_age(seconds: float) -> str:
    """Return an age in its largest whole unit: 4s, 3m, 2h, 5d.

    A negative age (a timestamp ahead of this machine's clock) shows as 0s.
    """
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def format_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _format_pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={_format_value(value)}"
                    for key, value in values.items())


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows)
              for column in range(len(rows[0]))]
    return ["  ".join(value.ljust(width) for value, width
                      in zip(row, widths)).rstrip() for row in rows]


# Reading a directory


@dataclass
class Checkpoint:
    """A listed checkpoint with the result of verifying it."""

    info: CheckpointInfo
    problems: list[str]
    # From the manifest; for a partial checkpoint, which has none, the
    # modification time of its directory.
    created_at: float | None
    # Bytes stored per stage that has a part.
    stage_sizes: dict[str, int]

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def manifest(self) -> Manifest | None:
        return self.info.manifest

    @property
    def state(self) -> str:
        if self.manifest is None:
            return "partial"
        if self.problems:
            return "damaged"
        return "final" if self.manifest.final else "complete"

    @property
    def valid(self) -> bool:
        return self.state in ("complete", "final")

    def to_json(self) -> dict[str, Any]:
        manifest = self.manifest
        return {"id": self.id, "state": self.state,
                "created_at": self.created_at, "size": self.info.size,
                "pipeline": manifest.pipeline if manifest else None,
                "run_id": manifest.run_id if manifest else None,
                "final": manifest.final if manifest else False,
                "stages": self.stage_sizes, "problems": self.problems}


def _fail(message: str) -> NoReturn:
    click.echo(f"flowctl: {message}", err=True)
    sys.exit(EXIT_FAILED)


def _pipeline_directory(file: str) -> str:
    """Return the checkpoint directory that a pipeline file configures;
    exit 2 when the file is invalid or does not turn checkpointing on."""
    # Imported here: loading a pipeline file pulls in the validator, which
    # the commands given a directory do not need.
    from flowctl.validate import load_pipeline

    pipeline, problems, _ = load_pipeline(file)
    if pipeline is None:
        for problem in sorted(problems, key=lambda item: item.line):
            click.echo(problem.format(file), err=True)
        click.echo(f"flowctl: cannot read the checkpoint directory from "
                   f"{file}; fix the problems above or give the directory "
                   f"with --dir DIR", err=True)
        sys.exit(EXIT_USAGE)
    if not pipeline.checkpoint.enabled:
        click.echo(f"flowctl: {file} does not turn checkpointing on (it has "
                   f"no spec.checkpoint section, or enabled: false), so it "
                   f"names no checkpoint directory; give the directory with "
                   f"--dir DIR", err=True)
        sys.exit(EXIT_USAGE)
    return pipeline.checkpoint.directory


def _resolve_directory(argument: str | None, option: str | None,
                       pipeline_file: str | None) -> str:
    if argument is not None and option is not None and argument != option:
        raise click.UsageError("give the checkpoint directory once, as DIR "
                               "or with --dir, not both")
    directory = argument if argument is not None else option
    if directory is not None and pipeline_file is not None:
        raise click.UsageError("give a checkpoint directory or --pipeline "
                               "FILE, not both")
    if directory is not None:
        return directory
    if pipeline_file is not None:
        return _pipeline_directory(pipeline_file)
    return DEFAULT_DIRECTORY


def _open_storage(directory: str) -> LocalStorage:
    """Return the storage of an existing directory; exit 1 otherwise."""
    storage = LocalStorage(directory)
    if not os.path.exists(storage.location):
        _fail(f"checkpoint directory {storage.location} does not exist; give "
              f"the directory as DIR, with --dir DIR, or with --pipeline "
              f"FILE (default: {DEFAULT_DIRECTORY})")
    if not os.path.isdir(storage.location):
        _fail(f"{storage.location} is not a directory; give the checkpoint "
              f"directory as DIR, with --dir DIR, or with --pipeline FILE")
    return storage


def _partial_stage_sizes(directory: str) -> dict[str, int]:
    """Return the sizes of the parts in a directory without a manifest."""
    sizes = {}
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda item: item.name):
            for suffix in PART_SUFFIXES:
                if entry.name.endswith(suffix) and entry.is_file():
                    sizes[entry.name[:-len(suffix)]] = entry.stat().st_size
                    break
    return sizes


def _inspect_one(storage: LocalStorage, info: CheckpointInfo) -> Checkpoint:
    problems = verify(storage, info, integrity=True)
    manifest = info.manifest
    if manifest is None:
        directory = os.path.join(storage.location, info.id)
        return Checkpoint(info, problems, os.stat(directory).st_mtime,
                          _partial_stage_sizes(directory))
    sizes = {}
    for stage_id, entry in manifest.stages.items():
        part = manifest.parts.get(entry.get("part") or "")
        if part is not None:
            sizes[stage_id] = part.size
    return Checkpoint(info, problems, manifest.created_at, sizes)


def _inspect(storage: LocalStorage) -> list[Checkpoint]:
    """Return every checkpoint of the directory, oldest first, verified."""
    try:
        return [_inspect_one(storage, info)
                for info in storage.list_checkpoints()]
    except StorageError as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"cannot read the checkpoints in {storage.location}: "
              f"{error.strerror or error}")


def _matches(checkpoint_id: str, requested: str) -> bool:
    """Return whether ids are equal, ignoring leading zeros (12, 000012)."""
    return (checkpoint_id == requested
            or checkpoint_id.lstrip("0") == requested.lstrip("0"))


def _find(checkpoints: list[Checkpoint], requested: str,
          storage: LocalStorage) -> Checkpoint:
    for checkpoint in checkpoints:
        if _matches(checkpoint.id, requested):
            return checkpoint
    _fail(f"checkpoint {requested} not found in {storage.location}; "
          f"`flowctl checkpoint list {storage.location}` shows the "
          f"checkpoints there")


def _check_id(checkpoint_id: str | None) -> None:
    """Reject a directory given where a checkpoint ID belongs."""
    if (checkpoint_id is not None and not checkpoint_id.isdigit()
            and os.path.isdir(checkpoint_id)):
        raise click.UsageError(
            f"{checkpoint_id!r} is a directory, not a checkpoint ID (give "
            f"the directory as --dir {checkpoint_id})")


def _newest_complete_index(checkpoints: list[Checkpoint]) -> int:
    """Return the index of the newest checkpoint with a manifest, or -1."""
    for index in range(len(checkpoints) - 1, -1, -1):
        if checkpoints[index].manifest is not None:
            return index
    return -1


# Options shared by the subcommands

def _directory_options(function):
    function = click.option(
        "--pipeline", "pipeline_file", metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Read the checkpoint directory from the checkpoint section "
             "of this pipeline file.")(function)
    function = click.option(
        "--dir", "directory_option", metavar="DIR",
        type=click.Path(file_okay=False),
        help=f"Checkpoint directory [default: {DEFAULT_DIRECTORY}].")(function)
    return function


def _directory_argument(function):
    return click.argument("directory_argument", metavar="[DIR]",
                          required=False,
                          type=click.Path(file_okay=False))(function)


@click.group()
def checkpoint() -> None:
    """List, inspect, verify and remove checkpoints.

    Each command reads one checkpoint directory: DIR or --dir DIR, the
    directory set in a pipeline file's checkpoint section (--pipeline
    FILE), or ./checkpoints.

    \b
    Examples:
      flowctl checkpoint list
      flowctl checkpoint show 12 --dir ./checkpoints
      flowctl checkpoint verify --pipeline pipeline.yaml
      flowctl checkpoint clean --older-than 7d --keep 3
    """


# list


@checkpoint.command(name="list")
@_directory_argument
@_directory_options
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of objects, one per checkpoint.")
def list_command(directory_argument: str | None,
                 directory_option: str | None, pipeline_file: str | None,
                 as_json: bool) -> None:
    """List the checkpoints in a directory, oldest first.

    One line per checkpoint: id, local time it was taken, age, total size,
    state and the size of each stage's part.  The state is one of:

    \b
      complete  whole and readable
      final     whole, and taken after every stage reached the end of its
                stream
      partial   no readable manifest, because its writing was interrupted
                or a live run is still writing it
      damaged   a part is missing or does not match the manifest

    A partial checkpoint has no manifest, so its time is its directory's
    modification time.

    \b
    Examples:
      flowctl checkpoint list
      flowctl checkpoint list /var/lib/etl/checkpoints
      flowctl checkpoint list --pipeline pipeline.yaml --json
    """
    storage = _open_storage(_resolve_directory(
        directory_argument, directory_option, pipeline_file))
    checkpoints = _inspect(storage)
    if as_json:
        click.echo(json.dumps([checkpoint.to_json()
                               for checkpoint in checkpoints], indent=2))
        return
    if not checkpoints:
        click.echo(f"no checkpoints in {storage.location}")
        return
    now = time.time()
    rows = [("ID", "CREATED", "AGE", "SIZE", "STATE", "STAGES")]
    for item in checkpoints:
        age = ("-" if item.created_at is None
               else format_age(now - item.created_at))
        stages = " ".join(f"{stage_id}={format_size(size)}"
                          for stage_id, size in item.stage_sizes.items())
        rows.append((item.id, format_time(item.created_at), age,
                     format_size(item.info.size), item.state, stages))
    for line in _table(rows):
        click.echo(line)
    damaged = sum(1 for item in checkpoints if item.state == "damaged")
    if damaged:
        click.echo(f"{damaged} damaged; `flowctl checkpoint verify --dir "
                   f"{storage.location}` names the problems", err=True)


# show


def _field(label: str, value: str) -> None:
    click.echo(f"  {label:<{LABEL_WIDTH}} {value}")


def _print_stage(manifest: Manifest, stage_id: str,
                 entry: dict[str, Any]) -> None:
    click.echo(f"stage {stage_id} ({entry.get('role', '?')})")
    name = entry.get("part")
    part = manifest.parts.get(name) if name else None
    if name is None:
        _field("part", "none (the stage saved no state)")
    elif part is None:
        _field("part", f"{name} (missing from the manifest's parts)")
    else:
        _field("part", f"{name}, {format_size(part.size)} stored, "
                      f"{format_size(part.raw_size)} raw, compression "
                      f"{part.compression}")
        _field("sha256", part.sha256[:SHORT_CHECKSUM])
    _field("finished", "yes" if entry.get("finished") else "no")
    if entry.get("info"):
        _field("info", _format_pairs(entry["info"]))
    if entry.get("metrics"):
        _field("metrics", _format_pairs(entry["metrics"]))


def _print_manifest(item: Checkpoint, storage: LocalStorage) -> None:
    manifest = item.manifest
    click.echo(f"checkpoint {manifest.id} in {storage.location}")
    _field("pipeline", manifest.pipeline)
    _field("run", manifest.run_id or "-")
    _field("created", f"{format_time(manifest.created_at)} "
                     f"({format_age(time.time() - manifest.created_at)} ago)")
    _field("duration", f"{manifest.duration:.3f}s")
    _field("format version", str(manifest.format_version))
    _field("final", "yes" if manifest.final else "no")
    _field("size", f"{format_size(item.info.size)} in {len(manifest.parts)} "
                  f"parts and {MANIFEST_NAME}")
    _field("state", item.state)
    for problem in item.problems:
        _field("problem", problem)
    for stage_id, entry in manifest.stages.items():
        click.echo("")
        _print_stage(manifest, stage_id, entry)


@checkpoint.command(name="show")
@click.argument("checkpoint_id", metavar="ID")
@_directory_options
@click.option("--json", "as_json", is_flag=True,
              help="Print the manifest as JSON, with a \"problems\" list "
                   "added.")
def show_command(checkpoint_id: str, directory_option: str | None,
                 pipeline_file: str | None, as_json: bool) -> None:
    """Show the manifest of checkpoint ID.

    ID may be written with or without leading zeros (12 is 000012).  Per
    stage: role, part name, stored and raw size, compression, SHA-256
    checksum (first 12 digits), whether the stage had finished, and what it
    reported about its state, such as a file source's path, offset and
    records or generate's next_seq.  A damaged checkpoint is shown with its
    problems.  The exit status is 1 only when ID is not found or has no
    manifest.

    \b
    Examples:
      flowctl checkpoint show 12
      flowctl checkpoint show 000012 --dir /var/lib/etl/checkpoints --json
    """
    _check_id(checkpoint_id)
    storage = _open_storage(_resolve_directory(None, directory_option,
                                               pipeline_file))
    item = _find(_inspect(storage), checkpoint_id, storage)
    if item.manifest is None:
        _fail(f"checkpoint {item.id} in {storage.location} is partial: "
              f"{MANIFEST_NAME} is missing or unreadable, so there is no "
              f"manifest to show")
    if as_json:
        click.echo(json.dumps({**asdict(item.manifest),
                               "problems": item.problems}, indent=2,
                              sort_keys=True))
        return
    _print_manifest(item, storage)


# verify


@checkpoint.command(name="verify")
@click.argument("checkpoint_id", metavar="[ID]", required=False)
@_directory_options
def verify_command(checkpoint_id: str | None, directory_option: str | None,
                   pipeline_file: str | None) -> None:
    """Check that checkpoints are whole, or only checkpoint ID.

    A checkpoint is whole when its manifest is readable and every part it
    lists is present, of the recorded size and SHA-256 checksum.  Prints
    one line per checkpoint: ok, damaged (naming the part and the problem)
    or partial (no readable manifest).

    \b
    Exit status:
      0  every checkpoint checked is whole
      1  a checkpoint is damaged; or, with ID, it is partial; or, without
         ID, a partial checkpoint is newer than the newest complete one

    A partial checkpoint older than a complete one is reported but does not
    fail: a resume never reads it and `flowctl checkpoint clean` removes
    it.  A checkpoint that a live run is still writing counts as partial.

    \b
    Examples:
      flowctl checkpoint verify
      flowctl checkpoint verify 12 --dir /var/lib/etl/checkpoints
      flowctl checkpoint verify --pipeline pipeline.yaml
    """
    _check_id(checkpoint_id)
    storage = _open_storage(_resolve_directory(None, directory_option,
                                               pipeline_file))
    checkpoints = _inspect(storage)
    if checkpoint_id is not None:
        item = _find(checkpoints, checkpoint_id, storage)
        line, failed = _verify_line(item, fails_when_partial=True)
        click.echo(line)
        sys.exit(EXIT_FAILED if failed else 0)
    if not checkpoints:
        click.echo(f"no checkpoints in {storage.location}")
        return
    newest_complete = _newest_complete_index(checkpoints)
    any_failed = False
    for index, item in enumerate(checkpoints):
        line, failed = _verify_line(item, index > newest_complete)
        click.echo(line)
        any_failed = any_failed or failed
    counts = {state: 0 for state in ("ok", "damaged", "partial")}
    for item in checkpoints:
        counts["ok" if item.valid else item.state] += 1
    click.echo(f"{len(checkpoints)} checkpoints in {storage.location}: "
               f"{counts['ok']} ok, {counts['damaged']} damaged, "
               f"{counts['partial']} partial")
    sys.exit(EXIT_FAILED if any_failed else 0)


def _verify_line(item: Checkpoint, fails_when_partial: bool
                 ) -> tuple[str, bool]:
    """Return the line `verify` prints for a checkpoint and whether it
    fails the command."""
    if item.state == "partial":
        line = f"{item.id} partial: {MANIFEST_NAME} is missing or unreadable"
        if fails_when_partial:
            line += (" (its writing was interrupted, or a live run is still "
                     "writing it)")
        else:
            line += "; ignored, because a newer checkpoint is complete"
        return line, fails_when_partial
    if item.state == "damaged":
        return f"{item.id} damaged: {'; '.join(item.problems)}", True
    return f"{item.id} ok", False


# clean


@dataclass
class Decision:
    """The action `clean` takes on one checkpoint, with its reason."""

    checkpoint: Checkpoint
    remove: bool
    reason: str


def plan_clean(checkpoints: list[Checkpoint], older_than: float | None,
               older_than_text: str, keep: int | None,
               now: float) -> list[Decision]:
    """Decide which checkpoints `clean` removes.

    A checkpoint with a manifest is removed when it is not among the newest
    `keep` ones, or when it is older than `older_than` seconds.  With both
    set, both conditions must be true.  `keep` counts every checkpoint with
    a manifest, damaged ones too.  A partial checkpoint is removed when a
    newer checkpoint has a manifest.  A newer partial one is kept, because
    a run may still be writing it.  The newest valid checkpoint of each
    pipeline is always kept.
    """
    newest_complete = _newest_complete_index(checkpoints)
    complete = [item.id for item in checkpoints if item.manifest is not None]
    newest_kept = set(complete[max(0, len(complete) - (keep or 0)):])
    protected: dict[str, str] = {}
    for item in reversed(checkpoints):
        if item.valid and item.manifest.pipeline not in protected.values():
            protected[item.id] = item.manifest.pipeline
    decisions = []
    for index, item in enumerate(checkpoints):
        if item.manifest is None:
            decisions.append(_partial_decision(checkpoints, index,
                                               newest_complete))
            continue
        # Each option given is a condition that must hold for removal.
        conditions = []
        if keep is not None:
            conditions.append((item.id not in newest_kept,
                               f"not among the newest {keep}"))
        if older_than is not None:
            conditions.append((item.created_at < now - older_than,
                               f"older than {older_than_text}"))
        if not all(holds for holds, _ in conditions):
            continue
        reason = " and ".join(text for _, text in conditions)
        if item.id in protected:
            decisions.append(Decision(
                item, False, f"the newest valid checkpoint of pipeline "
                             f"'{protected[item.id]}', though {reason}"))
        else:
            decisions.append(Decision(item, True, reason))
    return decisions


def _partial_decision(checkpoints: list[Checkpoint], index: int,
                      newest_complete: int) -> Decision:
    item = checkpoints[index]
    if index < newest_complete:
        return Decision(item, True,
                        f"partial, and checkpoint "
                        f"{checkpoints[newest_complete].id} is newer and "
                        f"complete")
    return Decision(item, False,
                    "partial, but newer than every complete checkpoint (a "
                    "run may still be writing it)")


@checkpoint.command(name="clean")
@_directory_argument
@_directory_options
@click.option("--older-than", "older_than", metavar="DURATION",
              help="Remove checkpoints taken longer ago than DURATION: a "
                   "number with a unit (s, m, h, d), as in 7d.")
@click.option("--keep", type=click.IntRange(min=0), metavar="N",
              help="Remove checkpoints that are not among the newest N with "
                   "a manifest (damaged ones count).")
@click.option("--dry-run", is_flag=True,
              help="Print what would be removed and remove nothing.")
def clean_command(directory_argument: str | None,
                  directory_option: str | None, pipeline_file: str | None,
                  older_than: str | None, keep: int | None,
                  dry_run: bool) -> None:
    """Remove old checkpoints.

    Give --older-than, --keep or both.  With both, a checkpoint is removed
    only when it is older than DURATION and not among the newest N.
    Partial checkpoints older than the newest complete one are removed as
    well.  A newer partial one is kept, because a run may still be writing
    it.  The newest valid checkpoint (complete and whole) of each pipeline
    is never removed, whatever its age.  Prints each checkpoint removed
    and each one kept in spite of the options.

    \b
    Examples:
      flowctl checkpoint clean --keep 3
      flowctl checkpoint clean /var/lib/etl/checkpoints --older-than 7d
      flowctl checkpoint clean --pipeline pipeline.yaml --older-than 12h --dry-run
    """
    if older_than is None and keep is None:
        raise click.UsageError("give --older-than DURATION, --keep N or "
                               "both")
    seconds = None
    if older_than is not None:
        try:
            seconds = units.parse_duration(older_than)
        except ValueError as error:
            raise click.BadParameter(f"{error}; {units.DURATION_HINT}",
                                     param_hint="'--older-than'") from None
    storage = _open_storage(_resolve_directory(
        directory_argument, directory_option, pipeline_file))
    checkpoints = _inspect(storage)
    decisions = plan_clean(checkpoints, seconds, older_than or "", keep,
                           time.time())
    removed = 0
    freed = 0
    errors = 0
    for decision in decisions:
        item = decision.checkpoint
        if not decision.remove:
            click.echo(f"kept {item.id}: {decision.reason}")
            continue
        if dry_run:
            click.echo(f"would remove {item.id}: {decision.reason}")
        else:
            try:
                storage.delete(item.id)
            except StorageError as error:
                click.echo(f"flowctl: {error}", err=True)
                errors += 1
                continue
            click.echo(f"removed {item.id}: {decision.reason}")
        removed += 1
        freed += item.info.size
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {removed} of {len(checkpoints)} checkpoints "
               f"({format_size(freed)}) in {storage.location}")
    if errors:
        sys.exit(EXIT_FAILED)
