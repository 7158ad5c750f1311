"""`flowctl checkpoint list/show/verify/clean` on the checkpoint directories
of real runs, and the checkpoint line of `flowctl status`."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowctl.checkpoints.cli import format_age, format_size

from conftest import run_flowctl, write_pipeline

# Seconds after which a run or a command counts as hung.
HANG_GUARD = 60
INPUT_LINES = 300
GENERATED = 1200
# Two sources: `gen` emits GENERATED records at 1000 a second, so the run
# lasts about a second and takes a checkpoint every 0.2 s.  `lines` reads
# input.txt at once.  `copy` is stateless, so it has no part.
PIPELINE = f"""
    apiVersion: flowctl/v1
    kind: Pipeline
    metadata: {{name: ckdemo}}
    spec:
      checkpoint: {{interval: 0.2s, directory: ck, retain: 100,
                   compression: zstd}}
      sources:
        - {{id: gen, stage: generate,
           config: {{count: {GENERATED}, rate: 1000}}}}
        - {{id: lines, stage: read-lines, config: {{path: input.txt}}}}
      processors:
        - {{id: count, stage: count-by, config: {{key: seq}}, inputs: [gen]}}
        - {{id: copy, stage: map, config: {{expr: r}}, inputs: [lines]}}
      sinks:
        - id: out
          stage: write-jsonl
          config: {{path: out.jsonl}}
          inputs: [count, copy]
    """
STAGED = ("count", "gen", "lines", "out")
COUNT_PART = "count.state.zst"
LIST_HEADER = ["ID", "CREATED", "AGE", "SIZE", "STATE", "STAGES"]
TEN_DAYS = 10 * 86400
# `status` text: "  checkpoint  000006, 3s ago (6 stored, 0 failed) in DIR".
STATUS_LINE = re.compile(r"  checkpoint  (?P<last>\d{6}), (?P<age>\S+) ago "
                         r"\((?P<stored>\d+) stored, (?P<failed>\d+) "
                         r"failed\) in (?P<directory>\S+)")


@dataclass
class FinishedRun:
    """A run that took checkpoints, in its own directory and home."""

    base: Path
    checkpoints: Path
    env: dict[str, str]
    stderr: str


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> FinishedRun:
    base = tmp_path_factory.mktemp("checkpointed")
    home = base / "home"
    home.mkdir()
    environment = dict(os.environ)
    environment["FLOWCTL_HOME"] = str(home)
    (base / "input.txt").write_text(
        "".join(f"line {number}\n" for number in range(1, INPUT_LINES + 1)))
    pipeline = write_pipeline(base / "p.yaml", PIPELINE)
    result = run_flowctl(["run", str(pipeline), "--no-live"], environment,
                         cwd=base, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    return FinishedRun(base, base / "ck", environment, result.stderr)


@pytest.fixture
def directory(finished_run: FinishedRun, tmp_path: Path) -> Path:
    """A copy of the run's checkpoint directory, for this test to change."""
    copy = tmp_path / "ck"
    shutil.copytree(finished_run.checkpoints, copy)
    return copy


# Helpers


def checkpoint(args: list[str], env: dict, cwd: Path | None = None):
    return run_flowctl(["checkpoint", *args], env, cwd=cwd,
                       timeout=HANG_GUARD)


def checkpoint_ids(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir())


def read_manifest(path: Path, checkpoint_id: str) -> dict:
    return json.loads((path / checkpoint_id / "manifest.json").read_text())


def write_manifest(path: Path, checkpoint_id: str, manifest: dict) -> None:
    (path / checkpoint_id / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True))


def set_created_at(path: Path, checkpoint_id: str, stamp: float) -> None:
    """Change a checkpoint's time, which no checksum covers."""
    manifest = read_manifest(path, checkpoint_id)
    manifest["created_at"] = stamp
    write_manifest(path, checkpoint_id, manifest)


def total_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.iterdir())


def part_sizes(path: Path) -> dict[str, int]:
    """Return the size of each stage's part file in a checkpoint."""
    return {entry.name.split(".")[0]: entry.stat().st_size
            for entry in sorted(path.iterdir())
            if entry.name != "manifest.json"}


def make_partial(path: Path, checkpoint_id: str) -> None:
    (path / checkpoint_id / "manifest.json").unlink()


def add_newer_partial(path: Path) -> str:
    """Copy the newest checkpoint to the next id, without its manifest."""
    ids = checkpoint_ids(path)
    newer = f"{int(ids[-1]) + 1:06d}"
    shutil.copytree(path / ids[-1], path / newer)
    make_partial(path, newer)
    return newer


def truncate(part: Path) -> None:
    part.write_bytes(part.read_bytes()[:part.stat().st_size // 2])


def flip_bit(part: Path) -> None:
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))


def delete(part: Path) -> None:
    part.unlink()


def damage_message(damage: str, part: Path, size: int) -> str:
    name = part.name
    if damage == "truncate":
        return (f"part '{name}' is truncated or extended: {size // 2} bytes, "
                f"the manifest says {size}")
    if damage == "flip_bit":
        return (f"part '{name}' is corrupted: its SHA-256 checksum does not "
                f"match the manifest")
    return (f"part '{name}' cannot be read: cannot read part '{name}' of "
            f"checkpoint {part.parent.name} from {part}: No such file or "
            f"directory")


DAMAGE = {"truncate": truncate, "flip_bit": flip_bit, "delete": delete}


def list_rows(stdout: str) -> list[list[str]]:
    """Check the header of `checkpoint list` and return its rows split
    into columns, with the date and time joined into one column."""
    lines = stdout.splitlines()
    assert lines[0].split() == LIST_HEADER
    rows = []
    for line in lines[1:]:
        fields = line.split()
        rows.append([fields[0], f"{fields[1]} {fields[2]}", *fields[3:]])
    return rows


# the run itself


def test_run_stored_every_listed_checkpoint(finished_run):
    stored = re.findall(r"checkpoint (\d{6}) stored", finished_run.stderr)
    ids = checkpoint_ids(finished_run.checkpoints)
    assert stored == ids
    assert len(ids) >= 3
    finals = [checkpoint_id for checkpoint_id in ids
              if read_manifest(finished_run.checkpoints, checkpoint_id)
              ["final"]]
    assert finals == [ids[-1]]


# list


def test_list_matches_directory(directory, env):
    result = checkpoint(["list", str(directory)], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    ids = checkpoint_ids(directory)
    rows = list_rows(result.stdout)
    assert [row[0] for row in rows] == ids
    for row, checkpoint_id in zip(rows, ids):
        manifest = read_manifest(directory, checkpoint_id)
        stamp = time.localtime(manifest["created_at"])
        assert row[1] == time.strftime("%Y-%m-%d %H:%M:%S", stamp)
        assert row[3] == format_size(total_size(directory / checkpoint_id))
        assert row[4] == ("final" if manifest["final"] else "complete")
        sizes = part_sizes(directory / checkpoint_id)
        assert list(sizes) == list(STAGED)
        assert row[5:] == [f"{stage}={format_size(size)}"
                           for stage, size in sizes.items()]
    assert [row[4] for row in rows] == ["complete"] * (len(ids) - 1) + [
        "final"]


def test_list_json_matches_directory(directory, env):
    result = checkpoint(["list", "--dir", str(directory), "--json"], env)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    ids = checkpoint_ids(directory)
    assert [item["id"] for item in listed] == ids
    for item, checkpoint_id in zip(listed, ids):
        manifest = read_manifest(directory, checkpoint_id)
        assert item["state"] == ("final" if manifest["final"]
                                 else "complete")
        assert item["created_at"] == manifest["created_at"]
        assert item["size"] == total_size(directory / checkpoint_id)
        assert item["stages"] == part_sizes(directory / checkpoint_id)
        assert item["pipeline"] == "ckdemo"
        assert item["run_id"] == manifest["run_id"]
        assert item["final"] == manifest["final"]
        assert item["problems"] == []


def test_list_marks_partial_and_damaged(directory, env):
    ids = checkpoint_ids(directory)
    make_partial(directory, ids[0])
    flip_bit(directory / ids[1] / COUNT_PART)
    newer = add_newer_partial(directory)

    result = checkpoint(["list", str(directory)], env)
    assert result.returncode == 0, result.stderr
    rows = list_rows(result.stdout)
    states = {row[0]: row[4] for row in rows}
    expected = {checkpoint_id: "complete" for checkpoint_id in ids}
    expected.update({ids[0]: "partial", ids[1]: "damaged", ids[-1]: "final",
                     newer: "partial"})
    assert states == expected
    # A partial checkpoint lists the parts it has.
    partial_row = next(row for row in rows if row[0] == newer)
    assert partial_row[5:] == [
        f"{stage}={format_size(size)}"
        for stage, size in part_sizes(directory / newer).items()]
    assert result.stderr == (f"1 damaged; `flowctl checkpoint verify --dir "
                             f"{directory}` names the problems\n")

    listed = json.loads(checkpoint(["list", str(directory), "--json"],
                                   env).stdout)
    by_id = {item["id"]: item for item in listed}
    assert by_id[newer]["pipeline"] is None
    assert by_id[newer]["problems"] == [
        "manifest.json is missing or unreadable: the checkpoint is partial "
        "(its writing was interrupted)"]
    assert by_id[ids[1]]["problems"] == [damage_message(
        "flip_bit", directory / ids[1] / COUNT_PART, 0)]


def test_list_shows_age(directory, env):
    ids = checkpoint_ids(directory)
    set_created_at(directory, ids[0], time.time() - TEN_DAYS)
    set_created_at(directory, ids[1], time.time() - 3 * 3600 - 5)
    rows = list_rows(checkpoint(["list", str(directory)], env).stdout)
    assert rows[0][2] == "10d"
    assert rows[1][2] == "3h"


def test_list_reads_pipeline_file(directory, env, tmp_path):
    # The file names "ck", which resolves against the current directory.
    write_pipeline(tmp_path / "p.yaml", PIPELINE)
    by_file = checkpoint(["list", "--pipeline", "p.yaml", "--json"], env,
                         cwd=tmp_path)
    assert by_file.returncode == 0, by_file.stderr
    by_directory = checkpoint(["list", str(directory), "--json"], env)
    assert json.loads(by_file.stdout) == json.loads(by_directory.stdout)

    both = checkpoint(["list", str(directory), "--pipeline", "p.yaml"], env,
                      cwd=tmp_path)
    assert both.returncode == 2
    assert "give a checkpoint directory or --pipeline FILE, not both" in \
        both.stderr


def test_list_rejects_pipeline_without_checkpoints(env, tmp_path):
    write_pipeline(tmp_path / "plain.yaml", """
        apiVersion: flowctl/v1
        kind: Pipeline
        spec:
          sources:
            - {id: gen, stage: generate, config: {count: 3}}
          sinks:
            - {id: out, stage: discard, inputs: [gen]}
        """)
    result = checkpoint(["list", "--pipeline", "plain.yaml"], env,
                        cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "flowctl: plain.yaml does not turn checkpointing on (it has no "
        "spec.checkpoint section, or enabled: false), so it names no "
        "checkpoint directory; give the directory with --dir DIR\n")


def test_list_empty_directory(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = checkpoint(["list", str(empty)], env)
    assert text.returncode == 0, text.stderr
    assert text.stdout == f"no checkpoints in {empty}\n"
    as_json = checkpoint(["list", str(empty), "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == []


@pytest.mark.parametrize("args", [
    ["list", "{missing}"],
    ["show", "1", "--dir", "{missing}"],
    ["verify", "--dir", "{missing}"],
    ["clean", "{missing}", "--keep", "1"],
])
def test_missing_directory_fails(args, env, tmp_path):
    missing = tmp_path / "nowhere"
    result = checkpoint([arg.format(missing=missing) for arg in args], env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"flowctl: checkpoint directory {missing} does not exist; give the "
        f"directory as DIR, with --dir DIR, or with --pipeline FILE "
        f"(default: ./checkpoints)\n")


def test_default_directory_is_checkpoints(directory, env, tmp_path):
    directory.rename(tmp_path / "checkpoints")
    result = checkpoint(["list", "--json"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [item["id"] for item in json.loads(result.stdout)] == \
        checkpoint_ids(tmp_path / "checkpoints")


# show


def stage_blocks(stdout: str) -> dict[str, list[str]]:
    """Return the lines of each "stage ID (ROLE)" block of `show`."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("stage "):
            current = line
            blocks[current] = []
        elif current is not None and line:
            blocks[current].append(line)
    return blocks


def test_show_prints_manifest(finished_run, directory, env):
    newest = checkpoint_ids(directory)[-1]
    manifest = read_manifest(directory, newest)
    result = checkpoint(["show", newest.lstrip("0"), "--dir",
                         str(directory)], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S",
                          time.localtime(manifest["created_at"]))
    assert lines[0] == f"checkpoint {newest} in {directory}"
    assert lines[1] == "  pipeline        ckdemo"
    assert lines[2] == f"  run             {manifest['run_id']}"
    assert lines[3].startswith(f"  created         {stamp} (")
    assert lines[3].endswith(" ago)")
    assert lines[4] == f"  duration        {manifest['duration']:.3f}s"
    assert lines[5] == "  format version  1"
    assert lines[6] == "  final           yes"
    assert lines[7] == (f"  size            "
                        f"{format_size(total_size(directory / newest))} in "
                        f"4 parts and manifest.json")
    assert lines[8] == "  state           final"

    def part_line(stage: str) -> list[str]:
        part = manifest["parts"][f"{stage}.state.zst"]
        return [f"  part            {stage}.state.zst, "
                f"{format_size(part['size'])} stored, "
                f"{format_size(part['raw_size'])} raw, compression zstd",
                f"  sha256          {part['sha256'][:12]}",
                "  finished        yes"]

    offset = (finished_run.base / "input.txt").stat().st_size
    out_info = manifest["stages"]["out"]["info"]
    assert stage_blocks(result.stdout) == {
        "stage copy (processor)": [
            "  part            none (the stage saved no state)",
            "  finished        yes",
            f"  metrics         records_in={INPUT_LINES} "
            f"records_out={INPUT_LINES}"],
        "stage count (processor)": part_line("count") + [
            f"  info            keys={GENERATED} records={GENERATED}",
            f"  metrics         records_in={GENERATED} "
            f"records_out={GENERATED}"],
        "stage gen (source)": part_line("gen") + [
            f"  info            next_seq={GENERATED}",
            f"  metrics         records_in=0 records_out={GENERATED}"],
        "stage lines (source)": part_line("lines") + [
            f"  info            offset={offset} path=input.txt "
            f"records={INPUT_LINES}",
            f"  metrics         records_in=0 records_out={INPUT_LINES}"],
        "stage out (sink)": part_line("out") + [
            f"  info            path={finished_run.base / 'out.jsonl'} "
            f"pending_bytes={out_info['pending_bytes']}",
            f"  metrics         records_in={GENERATED + INPUT_LINES} "
            f"records_out=0"],
    }


def test_show_accepts_padded_and_bare_ids(directory, env):
    first = checkpoint_ids(directory)[0]
    outputs = []
    for given in (first, first.lstrip("0"), "0" + first):
        result = checkpoint(["show", given, "--dir", str(directory),
                             "--json"], env)
        assert result.returncode == 0, (given, result.stderr)
        outputs.append(json.loads(result.stdout))
    assert outputs[0]["id"] == first
    assert outputs[1] == outputs[0]
    assert outputs[2] == outputs[0]


def test_show_offsets_of_earlier_checkpoint(finished_run, directory, env):
    first = checkpoint_ids(directory)[0]
    manifest = read_manifest(directory, first)
    next_seq = manifest["stages"]["gen"]["info"]["next_seq"]
    assert 0 < next_seq < GENERATED
    result = checkpoint(["show", first, "--dir", str(directory)], env)
    assert result.returncode == 0, result.stderr
    gen = stage_blocks(result.stdout)["stage gen (source)"]
    assert f"  info            next_seq={next_seq}" in gen
    assert "  finished        no" in gen
    assert "  final           no" in result.stdout.splitlines()


def test_show_json_matches_manifest(directory, env):
    for checkpoint_id in checkpoint_ids(directory):
        result = checkpoint(["show", checkpoint_id, "--dir", str(directory),
                             "--json"], env)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown.pop("problems") == []
        assert shown == read_manifest(directory, checkpoint_id)


def test_show_damaged_lists_problems(directory, env):
    target = checkpoint_ids(directory)[1]
    part = directory / target / COUNT_PART
    flip_bit(part)
    message = damage_message("flip_bit", part, 0)

    as_json = checkpoint(["show", target, "--dir", str(directory), "--json"],
                         env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["problems"] == [message]

    text = checkpoint(["show", target, "--dir", str(directory)], env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "  state           damaged" in lines
    assert f"  problem         {message}" in lines


def test_show_unknown_id_fails(directory, env):
    result = checkpoint(["show", "999", "--dir", str(directory)], env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"flowctl: checkpoint 999 not found in {directory}; `flowctl "
        f"checkpoint list {directory}` shows the checkpoints there\n")


@pytest.mark.parametrize("command", ["show", "verify"])
def test_directory_as_id_rejected(command, directory, env):
    result = checkpoint([command, str(directory)], env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"Error: '{directory}' is a directory, not a checkpoint ID (give the "
        f"directory as --dir {directory})")


def test_show_partial_fails(directory, env):
    newer = add_newer_partial(directory)
    result = checkpoint(["show", newer, "--dir", str(directory)], env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"flowctl: checkpoint {newer} in {directory} is partial: "
        f"manifest.json is missing or unreadable, so there is no manifest "
        f"to show\n")


# verify


def test_verify_good_directory(directory, env):
    ids = checkpoint_ids(directory)
    result = checkpoint(["verify", "--dir", str(directory)], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{checkpoint_id} ok"
                                          for checkpoint_id in ids] + [
        f"{len(ids)} checkpoints in {directory}: {len(ids)} ok, 0 damaged, "
        f"0 partial"]

    one = checkpoint(["verify", ids[0].lstrip("0"), "--dir", str(directory)],
                     env)
    assert one.returncode == 0, one.stderr
    assert one.stdout == f"{ids[0]} ok\n"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_names_damaged_part(damage, directory, env):
    ids = checkpoint_ids(directory)
    target = ids[len(ids) // 2]
    part = directory / target / COUNT_PART
    size = part.stat().st_size
    DAMAGE[damage](part)
    line = f"{target} damaged: {damage_message(damage, part, size)}"

    every = checkpoint(["verify", "--dir", str(directory)], env)
    assert every.returncode == 1
    assert every.stderr == ""
    expected = [line if checkpoint_id == target else f"{checkpoint_id} ok"
                for checkpoint_id in ids]
    expected.append(f"{len(ids)} checkpoints in {directory}: "
                    f"{len(ids) - 1} ok, 1 damaged, 0 partial")
    assert every.stdout.splitlines() == expected

    one = checkpoint(["verify", target, "--dir", str(directory)], env)
    assert one.returncode == 1
    assert one.stdout == line + "\n"

    other = checkpoint(["verify", ids[0], "--dir", str(directory)], env)
    assert other.returncode == 0, other.stdout


def test_verify_partial_fails_only_when_newest(directory, env):
    ids = checkpoint_ids(directory)
    make_partial(directory, ids[0])
    older_line = (f"{ids[0]} partial: manifest.json is missing or "
                  f"unreadable; ignored, because a newer checkpoint is "
                  f"complete")

    older_only = checkpoint(["verify", "--dir", str(directory)], env)
    assert older_only.returncode == 0, older_only.stdout
    lines = older_only.stdout.splitlines()
    assert lines[0] == older_line
    assert lines[-1] == (f"{len(ids)} checkpoints in {directory}: "
                         f"{len(ids) - 1} ok, 0 damaged, 1 partial")

    newer = add_newer_partial(directory)
    with_newer = checkpoint(["verify", "--dir", str(directory)], env)
    assert with_newer.returncode == 1
    lines = with_newer.stdout.splitlines()
    assert lines[0] == older_line
    assert lines[-2] == (f"{newer} partial: manifest.json is missing or "
                         f"unreadable (its writing was interrupted, or a "
                         f"live run is still writing it)")

    # Asked about by id, a partial checkpoint always fails.
    one = checkpoint(["verify", ids[0], "--dir", str(directory)], env)
    assert one.returncode == 1
    assert one.stdout == (f"{ids[0]} partial: manifest.json is missing or "
                          f"unreadable (its writing was interrupted, or a "
                          f"live run is still writing it)\n")


def test_verify_reads_pipeline_file(directory, env, tmp_path):
    write_pipeline(tmp_path / "p.yaml", PIPELINE)
    flip_bit(directory / checkpoint_ids(directory)[0] / COUNT_PART)
    result = checkpoint(["verify", "--pipeline", "p.yaml"], env,
                        cwd=tmp_path)
    assert result.returncode == 1
    assert " damaged: part 'count.state.zst' is corrupted" in result.stdout


# clean


def summary(verb: str, removed: list[str], total: int, path: Path,
            sizes: dict[str, int]) -> str:
    freed = format_size(sum(sizes[checkpoint_id] for checkpoint_id in removed))
    return (f"{verb} {len(removed)} of {total} checkpoints ({freed}) in "
            f"{path}")


def sizes_of(path: Path) -> dict[str, int]:
    return {checkpoint_id: total_size(path / checkpoint_id)
            for checkpoint_id in checkpoint_ids(path)}


def test_clean_keep_leaves_newest_two(directory, env):
    ids = checkpoint_ids(directory)
    sizes = sizes_of(directory)
    result = checkpoint(["clean", str(directory), "--keep", "2"], env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_ids(directory) == ids[-2:]
    assert result.stdout.splitlines() == [
        f"removed {checkpoint_id}: not among the newest 2"
        for checkpoint_id in ids[:-2]] + [
        summary("removed", ids[:-2], len(ids), directory, sizes)]


def test_clean_dry_run_removes_nothing(directory, env):
    ids = checkpoint_ids(directory)
    sizes = sizes_of(directory)
    result = checkpoint(["clean", str(directory), "--keep", "1",
                         "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_ids(directory) == ids
    assert result.stdout.splitlines() == [
        f"would remove {checkpoint_id}: not among the newest 1"
        for checkpoint_id in ids[:-1]] + [
        summary("would remove", ids[:-1], len(ids), directory, sizes)]


def test_clean_older_than_removes_old(directory, env):
    ids = checkpoint_ids(directory)
    old = ids[:2]
    for checkpoint_id in old:
        set_created_at(directory, checkpoint_id, time.time() - TEN_DAYS)
    sizes = sizes_of(directory)
    result = checkpoint(["clean", str(directory), "--older-than", "7d"], env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_ids(directory) == ids[2:]
    assert result.stdout.splitlines() == [
        f"removed {checkpoint_id}: older than 7d" for checkpoint_id in old] + [
        summary("removed", old, len(ids), directory, sizes)]


def test_clean_keeps_newest_valid(directory, env):
    ids = checkpoint_ids(directory)
    for checkpoint_id in ids:
        set_created_at(directory, checkpoint_id, time.time() - TEN_DAYS)
    # The newest checkpoint is damaged, so the one before it is the newest
    # a resume could use.
    flip_bit(directory / ids[-1] / COUNT_PART)
    newest_valid = ids[-2]
    removed = ids[:-2] + ids[-1:]
    sizes = sizes_of(directory)

    dry = checkpoint(["clean", "--dir", str(directory), "--older-than",
                      "7d", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert checkpoint_ids(directory) == ids
    assert f"would remove {ids[-1]}: older than 7d" in dry.stdout

    result = checkpoint(["clean", "--dir", str(directory), "--older-than",
                         "7d"], env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_ids(directory) == [newest_valid]
    expected = []
    for checkpoint_id in ids:
        if checkpoint_id == newest_valid:
            expected.append(f"kept {checkpoint_id}: the newest valid "
                            f"checkpoint of pipeline 'ckdemo', though older "
                            f"than 7d")
        else:
            expected.append(f"removed {checkpoint_id}: older than 7d")
    expected.append(summary("removed", removed, len(ids), directory, sizes))
    assert result.stdout.splitlines() == expected


def test_clean_keep_and_older_than_both_apply(directory, env):
    ids = checkpoint_ids(directory)
    set_created_at(directory, ids[0], time.time() - TEN_DAYS)
    set_created_at(directory, ids[1], time.time() - TEN_DAYS)
    # Keeping the newest 2 alone would remove more; only the old ones
    # beyond the newest 2 go.
    result = checkpoint(["clean", str(directory), "--older-than", "7d",
                         "--keep", "2"], env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_ids(directory) == ids[2:]
    assert result.stdout.splitlines()[:2] == [
        f"removed {checkpoint_id}: not among the newest 2 and older than 7d"
        for checkpoint_id in ids[:2]]


def test_clean_removes_old_partials(directory, env):
    ids = checkpoint_ids(directory)
    make_partial(directory, ids[1])
    newer = add_newer_partial(directory)
    result = checkpoint(["clean", str(directory), "--keep", "100"], env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_ids(directory) == [ids[0], *ids[2:], newer]
    assert result.stdout.splitlines()[:2] == [
        f"removed {ids[1]}: partial, and checkpoint {ids[-1]} is newer and "
        f"complete",
        f"kept {newer}: partial, but newer than every complete checkpoint "
        f"(a run may still be writing it)"]


def test_clean_rejects_bad_options(directory, env):
    ids = checkpoint_ids(directory)
    neither = checkpoint(["clean", str(directory)], env)
    assert neither.returncode == 2
    assert "give --older-than DURATION, --keep N or both" in neither.stderr

    invalid = checkpoint(["clean", str(directory), "--older-than", "week"],
                         env)
    assert invalid.returncode == 2
    assert ("Invalid value for '--older-than': invalid duration 'week'; "
            "write a number with a unit: ms, s, m, h or d, as in 30s"
            in invalid.stderr)

    negative = checkpoint(["clean", str(directory), "--keep", "-1"], env)
    assert negative.returncode == 2
    assert "Invalid value for '--keep'" in negative.stderr
    assert checkpoint_ids(directory) == ids


# status


def test_status_shows_checkpoint(finished_run):
    env = finished_run.env
    ids = checkpoint_ids(finished_run.checkpoints)
    newest = read_manifest(finished_run.checkpoints, ids[-1])
    runs = json.loads(run_flowctl(["runs", "--json"], env,
                                  timeout=HANG_GUARD).stdout)
    assert len(runs) == 1
    run_id = runs[0]["id"]
    assert json.loads(runs[0]["checkpoint"])["last"] == ids[-1]

    as_json = run_flowctl(["status", run_id, "--json"], env,
                          timeout=HANG_GUARD)
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)[0]["checkpoint"]
    last_duration = status.pop("last_duration")
    assert isinstance(last_duration, float)
    assert last_duration > 0
    assert status == {"directory": str(finished_run.checkpoints),
                      "last": ids[-1], "last_at": newest["created_at"],
                      "completed": len(ids), "failed": 0, "last_error": "",
                      "in_flight": None, "interval": 0.2}

    text = run_flowctl(["status", run_id], env, timeout=HANG_GUARD)
    assert text.returncode == 0, text.stderr
    matches = [STATUS_LINE.fullmatch(line)
               for line in text.stdout.splitlines()]
    found = [match for match in matches if match]
    assert len(found) == 1, text.stdout
    line = found[0]
    assert line["last"] == ids[-1]
    assert re.fullmatch(r"\d+s|\d+m\d\ds", line["age"]), line["age"]
    assert line["stored"] == str(len(ids))
    assert line["failed"] == "0"
    assert line["directory"] == str(finished_run.checkpoints)


def test_status_without_checkpoints(env):
    result = run_flowctl(["run", "-e", "generate count=3 | discard"], env,
                         timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    run_id = json.loads(run_flowctl(["runs", "--json"], env,
                                    timeout=HANG_GUARD).stdout)[0]["id"]
    as_json = run_flowctl(["status", run_id, "--json"], env,
                          timeout=HANG_GUARD)
    assert json.loads(as_json.stdout)[0]["checkpoint"] is None
    text = run_flowctl(["status", run_id], env, timeout=HANG_GUARD)
    assert text.returncode == 0, text.stderr
    assert "checkpoint" not in text.stdout


# help and formatting


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["verify"],
                                     ["clean"]])
def test_help_has_examples(command, env):
    result = checkpoint([*command, "--help"], env)
    assert result.returncode == 0, result.stderr
    assert "Examples:" in result.stdout
    assert "flowctl checkpoint" in result.stdout


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (15, "15B"), (1023, "1023B"), (1024, "1.0KiB"),
    (1229, "1.2KiB"), (5 * 1024 ** 2, "5.0MiB"), (1024 ** 2 - 1, "1.0MiB"),
    (3 * 1024 ** 3, "3.0GiB"),
])
def test_format_size(size, text):
    assert format_size(size) == text


@pytest.mark.parametrize("seconds, text", [
    (-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"),
    (3600, "1h"), (86399, "23h"), (86400, "1d"), (TEN_DAYS, "10d"),
])
def test_format_age(seconds, text):
    assert format_age(seconds) == text
