"""Measure flowctl's record throughput against two baseline pipelines.

Every contender moves N small records {"seq": i} through a source, two
pass-through processors and a sink, each step its own Python process:

- flowctl: `generate | map expr=r | map expr=r | discard`, run as the real
  CLI (`python -m flowctl run -e ... --no-live`);
- bare msgpack: the scripts in scripts/baselines/msgpack_*.py joined with
  `|` by /bin/sh, speaking flowctl's framing with batches of 1024 records
  and nothing else (no handshake, control channel or supervisor);
- JSON lines: the scripts in scripts/baselines/jsonl_*.py joined with `|`
  by /bin/sh, one JSON document a line.

Each run is timed wall-clock around the whole command, interpreter
start-up included, and counts only if its sink saw exactly N records.
Runs are interleaved (round 1 of every contender, then round 2, ...) so
that a slow spell on the machine hits all contenders alike, and each round
starts with the next contender.  Throughput
is N divided by the best (shortest) run, and the ratios compare best
runs, with the medians shown beside them.  Other processes that use the
CPU during the runs make the numbers worse and noisier, so the script
measures how much CPU time they took and warns above 5% of capacity.
flowctl runs with a temporary --home, so the caller's run registry is
left alone.

Usage::

    python scripts/bench.py
    python scripts/bench.py --records 500000 --repeat 3 --json

Exit codes: 0 every run was valid, 1 a run failed or its sink count was
wrong, 2 usage error, 3 a target was missed and --check was given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_RECORDS = 2_000_000
DEFAULT_REPEAT = 5
DEFAULT_TIMEOUT_SECONDS = 900.0

# The project's throughput targets: flowctl at this share of the bare
# msgpack pipeline or more, and at this multiple of JSON lines or more.
TARGET_VS_BARE_MSGPACK = 0.8
TARGET_VS_JSON_LINES = 5.0

# Warn when processes outside the benchmark used more than this share of
# the machine's CPU capacity while the runs were timed.
OTHER_LOAD_WARNING_SHARE = 0.05

EXIT_OK = 0
EXIT_BROKEN_RUN = 1
EXIT_TARGET_MISSED = 3

SCRIPT_DIR = Path(__file__).resolve().parent
BASELINE_DIR = SCRIPT_DIR / "baselines"
SHELL = "/bin/sh"
PROC_STAT = "/proc/stat"
PROC_CPUINFO = "/proc/cpuinfo"
# Fields of the "cpu" line of /proc/stat that count busy time: user, nice,
# system, irq, softirq and steal (idle and iowait are left out).
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)

FLOWCTL_PIPELINE = ("generate count={records} | map expr=r | map expr=r "
                    "| discard")
# The plain view's line for a stage that exited 0, e.g.
# "12:00:00 run=ab12 stage=discard finished in=2,000,000 out=0".
FLOWCTL_SINK_PATTERN = re.compile(r"stage=discard finished in=([\d,]+)")
STDERR_TAIL_CHARS = 2000

FLOWCTL = "flowctl"
BARE_MSGPACK = "bare-msgpack"
JSON_LINES = "json-lines"
CONTENDER_NAMES = (FLOWCTL, BARE_MSGPACK, JSON_LINES)


class BrokenRun(Exception):
    """A contender exited with an error or its sink count was not N."""


@dataclass
class RunResult:
    """The measurements of one run of one contender."""

    seconds: float
    cpu_seconds: float
    other_cpu_seconds: float | None


@dataclass
class Contender:
    """One pipeline under test: how to start it and how to read its count."""

    name: str
    label: str
    argv: list[str]
    read_count: Callable[[str, str], int | None]
    runs: list[RunResult] = field(default_factory=list)

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def seconds(self) -> list[float]:
        return [run.seconds for run in self.runs]

    @property
    def cpu_seconds(self) -> list[float]:
        return [run.cpu_seconds for run in self.runs]

    def summary(self, records: int) -> dict[str, Any]:
        best = min(self.seconds)
        median = statistics.median(self.seconds)
        return {
            "label": self.label,
            "command": self.command,
            "seconds": [round(value, 4) for value in self.seconds],
            "cpu_seconds": [round(value, 4) for value in self.cpu_seconds],
            "best_seconds": round(best, 4),
            "median_seconds": round(median, 4),
            "best_records_per_second": round(records / best),
            "median_records_per_second": round(records / median),
            "median_cpu_seconds": round(
                statistics.median(self.cpu_seconds), 4),
        }


def _count_from_stdout(stdout: str, stderr: str) -> int | None:
    lines = stdout.strip().splitlines()
    if not lines or not lines[-1].strip().isdigit():
        return None
    return int(lines[-1])


def _count_from_flowctl(stdout: str, stderr: str) -> int | None:
    match = FLOWCTL_SINK_PATTERN.search(stderr)
    if match is None:
        return None
    return int(match.group(1).replace(",", ""))


def _shell_pipeline(python: str, scripts: list[str], records: int
                    ) -> list[str]:
    steps = []
    for index, script in enumerate(scripts):
        argv = [python, str(BASELINE_DIR / script)]
        if index == 0:
            argv.append(str(records))
        steps.append(shlex.join(argv))
    return [SHELL, "-c", " | ".join(steps)]


def build_contenders(names: list[str], python: str, records: int,
                     home: str) -> list[Contender]:
    """Build the contenders to run, in the order given by `names`."""
    flowctl_argv = [python, "-m", "flowctl", "run",
                    "-e", FLOWCTL_PIPELINE.format(records=records),
                    "--no-live", "--home", home]
    msgpack_argv = _shell_pipeline(
        python, ["msgpack_source.py", "msgpack_pass.py", "msgpack_pass.py",
                 "msgpack_sink.py"], records)
    jsonl_argv = _shell_pipeline(
        python, ["jsonl_source.py", "jsonl_pass.py", "jsonl_pass.py",
                 "jsonl_sink.py"], records)
    available = {
        FLOWCTL: Contender(FLOWCTL, "flowctl", flowctl_argv,
                           _count_from_flowctl),
        BARE_MSGPACK: Contender(BARE_MSGPACK, "bare msgpack (limit)",
                                msgpack_argv, _count_from_stdout),
        JSON_LINES: Contender(JSON_LINES, "JSON lines via sh",
                              jsonl_argv, _count_from_stdout),
    }
    return [available[name] for name in names]


def _tail(text: str) -> str:
    text = text.strip()
    if len(text) > STDERR_TAIL_CHARS:
        text = "..." + text[-STDERR_TAIL_CHARS:]
    return text


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_seconds() -> float | None:
    """Return the CPU seconds every process on the machine used since boot.

    Returns None where /proc/stat is missing (outside Linux).
    """
    try:
        with open(PROC_STAT, encoding="ascii") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    ticks = sum(int(fields[index]) for index in BUSY_FIELDS
                if index < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK")


def run_once(contender: Contender, records: int, timeout: float
             ) -> RunResult:
    """Run a contender once and measure it.

    CPU seconds are user plus system time of every process in the run,
    which the kernel adds to ours once the shell or flowctl has reaped its
    children and we have reaped it.  Other CPU seconds are what the rest
    of the machine used meanwhile.

    Raises BrokenRun when the command fails, times out, or its sink did not
    count exactly `records` records.
    """
    busy_before = _machine_busy_seconds()
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    # A session of its own lets a timed-out run be killed with every
    # process of its pipeline, not just the shell or flowctl at its head.
    process = subprocess.Popen(
        contender.argv, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise BrokenRun(f"{contender.name} timed out after {timeout:g} s. "
                        f"Raise --timeout or lower --records.") from None
    elapsed = time.perf_counter() - started
    cpu_seconds = _children_cpu_seconds() - cpu_before
    busy_after = _machine_busy_seconds()

    if process.returncode != 0:
        raise BrokenRun(f"{contender.name} exited with code "
                        f"{process.returncode}: {_tail(stderr)}")
    count = contender.read_count(stdout, stderr)
    if count != records:
        raise BrokenRun(f"{contender.name}'s sink counted {count} records, "
                        f"expected {records}: {_tail(stderr)}")

    other = None
    if busy_before is not None and busy_after is not None:
        # Clock ticks are coarse, so a quiet machine can come out slightly
        # below zero.
        other = max(0.0, busy_after - busy_before - cpu_seconds)
    return RunResult(elapsed, cpu_seconds, other)


def _cpu_model() -> str:
    try:
        with open(PROC_CPUINFO, encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _interpreter_versions(python: str) -> dict[str, str]:
    probe = ("import json, platform, msgpack, flowctl; print(json.dumps({"
             "'python': platform.python_version(), "
             "'msgpack': '.'.join(map(str, msgpack.version)), "
             "'flowctl_package': flowctl.__file__}))")
    result = subprocess.run([python, "-c", probe], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise BrokenRun(f"{python} cannot import flowctl and msgpack, so "
                        f"no contender can run: {_tail(result.stderr)}")
    return json.loads(result.stdout)


def _git_commit(path: str) -> str | None:
    """Return the commit of the work tree holding `path`, if there is one.

    A "+dirty" suffix means flowctl/ or stages/ there has uncommitted
    changes, so the numbers are for code that no commit contains.
    """
    directory = os.path.dirname(os.path.dirname(path))
    try:
        commit = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "--",
             "flowctl", "stages"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if changes else "")


def describe_machine(python: str) -> dict[str, Any]:
    """Collect the facts a reader needs to compare results across machines."""
    info: dict[str, Any] = {
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python_executable": python,
    }
    info.update(_interpreter_versions(python))
    info["flowctl_commit"] = _git_commit(info["flowctl_package"])
    # Without bytecode caching every process compiles flowctl's modules
    # from source at each start, which lengthens flowctl's start-up.
    info["python_dont_write_bytecode"] = bool(
        os.environ.get("PYTHONDONTWRITEBYTECODE"))
    return info


def measure_other_load(contenders: list[Contender], cpus: int
                       ) -> float | None:
    """Return the share of CPU capacity other processes used during runs."""
    runs = [run for contender in contenders for run in contender.runs]
    if any(run.other_cpu_seconds is None for run in runs):
        return None
    capacity = sum(run.seconds for run in runs) * cpus
    other = sum(run.other_cpu_seconds or 0.0 for run in runs)
    return other / capacity if capacity else None


def _ratio(numerator: Contender | None, denominator: Contender | None,
           pick: Callable[[list[float]], float]) -> float | None:
    if numerator is None or denominator is None:
        return None
    # Throughput ratio: the same N records, so it is the inverse time ratio.
    return pick(denominator.seconds) / pick(numerator.seconds)


def compute_ratios(contenders: list[Contender]) -> dict[str, Any]:
    """Compare flowctl with each baseline, by best and by median run."""
    by_name = {contender.name: contender for contender in contenders}
    flowctl = by_name.get(FLOWCTL)
    ratios: dict[str, Any] = {}
    for baseline, target in ((BARE_MSGPACK, TARGET_VS_BARE_MSGPACK),
                             (JSON_LINES, TARGET_VS_JSON_LINES)):
        best = _ratio(flowctl, by_name.get(baseline), min)
        median = _ratio(flowctl, by_name.get(baseline), statistics.median)
        if best is None or median is None:
            continue
        ratios[f"flowctl/{baseline}"] = {
            "best": round(best, 3),
            "median": round(median, 3),
            "target_min": target,
            "met": best >= target,
        }
    return ratios


def format_table(records: int, repeat: int, contenders: list[Contender],
                 ratios: dict[str, Any]) -> str:
    """Render the results as a plain-text table."""
    lines = [f"{records:,} records through source -> map -> map -> sink; "
             f"best and median of {repeat} runs",
             "",
             f"{'contender':<22} {'best s':>8} {'median s':>9} "
             f"{'best rec/s':>12} {'median rec/s':>13} {'CPU s':>6}"]
    for contender in contenders:
        best = min(contender.seconds)
        median = statistics.median(contender.seconds)
        cpu = statistics.median(contender.cpu_seconds)
        lines.append(f"{contender.label:<22} {best:>8.3f} {median:>9.3f} "
                     f"{records / best:>12,.0f} {records / median:>13,.0f} "
                     f"{cpu:>6.2f}")
    lines.append("(CPU s: median CPU time of all processes of one run)")
    if ratios:
        lines += ["",
                  f"{'ratio (records/s)':<26} {'best':>6} {'median':>7} "
                  f"{'target':>8}  met"]
        for name, ratio in ratios.items():
            target = f">= {ratio['target_min']:g}"
            lines.append(f"{name:<26} {ratio['best']:>6.2f} "
                         f"{ratio['median']:>7.2f} {target:>8}  "
                         f"{'yes' if ratio['met'] else 'no'}")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure records/s of flowctl against a bare msgpack "
                    "pipeline and a JSON-lines shell pipeline.")
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                        metavar="N",
                        help="records each pipeline moves "
                             f"(default {DEFAULT_RECORDS:,})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        metavar="K",
                        help="runs per contender; throughput uses the best "
                             f"run (default {DEFAULT_REPEAT})")
    parser.add_argument("--contenders", default=",".join(CONTENDER_NAMES),
                        metavar="NAMES",
                        help="comma-separated subset of "
                             f"{', '.join(CONTENDER_NAMES)} (default all)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter every contender runs under, with "
                             "flowctl and msgpack installed (default: the "
                             "one running this script)")
    parser.add_argument("--timeout", type=float,
                        default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="limit for one run in seconds (default "
                             f"{DEFAULT_TIMEOUT_SECONDS:g})")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON document")
    parser.add_argument("--check", action="store_true",
                        help=f"exit with code {EXIT_TARGET_MISSED} when "
                             "flowctl misses a target")
    arguments = parser.parse_args(argv)
    if arguments.records < 1:
        parser.error(f"--records must be at least 1, got {arguments.records}")
    if arguments.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {arguments.repeat}")
    names = [name.strip() for name in arguments.contenders.split(",")
             if name.strip()]
    unknown = [name for name in names if name not in CONTENDER_NAMES]
    if unknown or not names:
        parser.error(f"invalid --contenders {arguments.contenders!r}; use "
                     f"a comma-separated subset of "
                     f"{', '.join(CONTENDER_NAMES)}")
    arguments.contender_names = list(dict.fromkeys(names))
    return arguments


def run_rounds(contenders: list[Contender], arguments: argparse.Namespace
               ) -> None:
    """Run every contender `repeat` times, interleaved.

    Each round starts one contender further along the list, so that the
    order within a round favours none of them.  Otherwise the same
    contender would always run right after the long JSON-lines run.

    Raises BrokenRun at the first run that fails.
    """
    for round_number in range(1, arguments.repeat + 1):
        shift = (round_number - 1) % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            try:
                result = run_once(contender, arguments.records,
                                  arguments.timeout)
            except BrokenRun as error:
                raise BrokenRun(f"run {round_number}: {error}") from None
            contender.runs.append(result)
            if not arguments.json:
                print(f"run {round_number}/{arguments.repeat} "
                      f"{contender.name}: {result.seconds:.3f} s, "
                      f"{result.cpu_seconds:.3f} CPU s", file=sys.stderr)


def build_report(contenders: list[Contender], arguments: argparse.Namespace,
                 machine: dict[str, Any]) -> dict[str, Any]:
    """Gather the results, ratios and machine facts into one document."""
    ratios = compute_ratios(contenders)
    other_load = measure_other_load(contenders, machine["cpus_available"])
    return {
        "records": arguments.records,
        "repeat": arguments.repeat,
        "statistic": "best run (shortest wall-clock time); "
                     "median also given",
        "machine": machine,
        "other_load_share": (None if other_load is None
                             else round(other_load, 3)),
        "contenders": {contender.name: contender.summary(arguments.records)
                       for contender in contenders},
        "ratios": ratios,
        "targets_met": all(ratio["met"] for ratio in ratios.values()),
    }


def print_text_report(report: dict[str, Any], contenders: list[Contender]
                      ) -> None:
    machine = report["machine"]
    commit = machine["flowctl_commit"] or "unknown commit"
    print(f"machine: {machine['cpus_available']} CPUs, "
          f"{machine['cpu_model']}, Python {machine['python']}, "
          f"msgpack {machine['msgpack']}")
    print(f"flowctl: {machine['flowctl_package']} ({commit})")
    print(format_table(report["records"], report["repeat"], contenders,
                       report["ratios"]))


def compile_flowctl(python: str) -> None:
    """Compile flowctl's modules to bytecode, as `pip install .` does.

    An editable install leaves them as source, and with
    PYTHONDONTWRITEBYTECODE set (as on some CI machines) every stage
    process would compile them again at each start, which no installed
    flowctl does.
    """
    subprocess.run(
        [python, "-c", "import compileall, os, flowctl, flowctl.stages; "
         "[compileall.compile_dir(os.path.dirname(m.__file__), quiet=1) "
         "for m in (flowctl, flowctl.stages)]"],
        check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    compile_flowctl(arguments.python)
    try:
        machine = describe_machine(arguments.python)
    except BrokenRun as error:
        print(f"bench: {error}", file=sys.stderr)
        return EXIT_BROKEN_RUN
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as home:
        contenders = build_contenders(arguments.contender_names,
                                      arguments.python, arguments.records,
                                      home)
        try:
            run_rounds(contenders, arguments)
        except BrokenRun as error:
            print(f"bench: {error}", file=sys.stderr)
            return EXIT_BROKEN_RUN

    report = build_report(contenders, arguments, machine)
    if arguments.json:
        print(json.dumps(report, indent=2))
    else:
        print_text_report(report, contenders)
    other_load = report["other_load_share"]
    if other_load is not None and other_load > OTHER_LOAD_WARNING_SHARE:
        print(f"bench: warning: other processes used {other_load:.0%} of "
              f"the CPU capacity during the runs; the results are slower "
              f"and noisier than on an idle machine", file=sys.stderr)

    if arguments.check and not report["targets_met"]:
        return EXIT_TARGET_MISSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
