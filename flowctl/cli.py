"""The `flowctl` command line.

Exit codes: 0 done, 1 the run failed, 2 usage or pipeline-file error,
129, 130 and 143 stopped by SIGHUP, SIGINT and SIGTERM.
"""

from __future__ import annotations

import os
import dataclasses
import sys
from typing import Any

import click

from flowctl import __version__
from flowctl.__main__ import EXIT_INTERRUPTED
from flowctl.builtins import BUILTINS
from flowctl.display import JsonView, PlainView, View, guarded
from flowctl.document import Problem
from flowctl.home import new_run_id, resolve_home
from flowctl.inline import INLINE_FILENAME, parse_inline
from flowctl.pipeline import Pipeline
from flowctl.starter import STARTER_PIPELINE
from flowctl.supervisor import Run
from flowctl.validate import load_pipeline, validate

EXIT_USAGE = 2

HOME_HELP = ("State directory for run logs [default: $FLOWCTL_HOME or "
             "~/.flowctl].")
# Each standard descriptor, how it is opened on /dev/null when it is
# closed, and its stream in sys.
STANDARD_STREAMS = ((0, os.O_RDONLY, "r", "stdin"),
                    (1, os.O_WRONLY, "w", "stdout"),
                    (2, os.O_WRONLY, "w", "stderr"))


def _open_standard_streams() -> None:
    """Point each closed standard descriptor at /dev/null, and give sys a
    file object for each standard stream that is None.

    Otherwise the next descriptor flowctl opens (the selector's epoll, say)
    takes the free number 0, 1 or 2 and is handed to the stages as their
    stdin or stdout.  With this, a closed stdin reads as empty, and what
    is written to a closed stdout or stderr is discarded.
    """
    for fd, flags, mode, name in STANDARD_STREAMS:
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)
        # The interpreter sets a stream to None when its descriptor was
        # closed at start-up.
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def _format_problem(problem: Problem, filename: str) -> str:
    if filename == INLINE_FILENAME:
        text = f"-e segment {problem.line}: {problem.message}"
        return text + (f" ({problem.hint})" if problem.hint else "")
    return problem.format(filename)


def _report(problems: list[Problem], warnings: list[Problem],
            filename: str) -> None:
    for warning in warnings:
        click.echo(f"warning: {_format_problem(warning, filename)}", err=True)
    for problem in sorted(problems, key=lambda item: item.line):
        click.echo(_format_problem(problem, filename), err=True)
    if problems:
        count = len(problems)
        click.echo(f"{count} problem{'s' if count != 1 else ''} found in "
                   f"{filename}", err=True)


def _load(file: str | None, expression: str | None
          ) -> tuple[Pipeline | None, list[Problem], list[Problem], str]:
    if expression is not None:
        pipeline, problems, warnings = validate(parse_inline(expression))
        return pipeline, problems, warnings, INLINE_FILENAME
    pipeline, problems, warnings = load_pipeline(file)
    return pipeline, problems, warnings, file


class LazyGroup(click.Group):
    """Command group that imports the commands for watching runs and for
    checkpoints only when one of them is used, so `flowctl run` starts
    faster.

    Before any command runs, it opens the standard streams that are
    closed (see `_open_standard_streams`).  Ctrl-C ends a command with
    exit code 130 and no message, as it ends `tail -f`, where click would
    print "Aborted!" and exit with 1.
    """

    lazy_commands = ("status", "stop", "runs", "logs", "checkpoint")

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Importing flowctl's modules keeps no descriptor open, so this
        # still runs before anything else takes 0, 1 or 2.
        _open_standard_streams()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) |
                      set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str
                    ) -> click.Command | None:
        if name == "checkpoint":
            from flowctl.checkpoints.cli import checkpoint
            return checkpoint
        if name in self.lazy_commands:
            from flowctl import runs_cli
            return getattr(runs_cli, name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowctl")
def main() -> None:
    """Run data pipelines as supervised operating-system processes.

    Each stage of a pipeline is its own process, a built-in stage or any
    executable, wired to the others with pipes.

    \b
    Examples:
      flowctl init                      write a starter pipeline.yaml
      flowctl validate pipeline.yaml    check a pipeline file
      flowctl run pipeline.yaml         run it
      flowctl run -e 'generate count=5 | map expr="r[\\"seq\\"] * 2"'
    """


@main.command()
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option("-e", "--expr", "expression", metavar="PIPELINE",
              help="Run an inline pipeline instead of a file.")
@click.option("--home", type=click.Path(file_okay=False), help=HOME_HELP)
@click.option("--live/--no-live", default=None,
              help="Show the live per-stage table [default: when stdout is "
                   "a terminal and no stage writes to stdout].")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              default="text", show_default=True,
              help="Format of flowctl's own log lines on stderr; json "
                   "turns the live table off.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              metavar="PORT",
              help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False),
              metavar="DIR",
              help="Take checkpoints into DIR (turns checkpointing on, with "
                   "the defaults for what the file does not set).")
@click.option("--resume", is_flag=True,
              help="Resume from the newest valid checkpoint.")
@click.option("--from", "from_id", metavar="ID",
              help="Resume from checkpoint ID (see flowctl checkpoint list).")
def run(file: str | None, expression: str | None, home: str | None,
        live: bool | None, log_format: str, metrics_port: int | None,
        checkpoint_dir: str | None, resume: bool,
        from_id: str | None) -> None:
    """Run a pipeline until its sources end, or until Ctrl-C.

    Ctrl-C (or SIGTERM, or SIGHUP when the terminal closes) stops the
    sources and lets the records in flight drain; a second Ctrl-C stops
    every stage at once.  Each stage's stderr is shown prefixed with its
    id and kept in a log file per run.

    \b
    Examples:
      flowctl run examples/flights.yaml
      flowctl run -e 'read-lines path=/var/log/dpkg.log
                      | exec grep " install " | write-jsonl path=-'
      flowctl run -e 'generate count=1000000 | discard'
      flowctl run pipeline.yaml --checkpoint-dir ./checkpoints
      flowctl run pipeline.yaml --resume
    """
    if (file is None) == (expression is None):
        raise click.UsageError("give a pipeline FILE or -e PIPELINE, not "
                               "both and not neither")
    pipeline, problems, warnings, filename = _load(file, expression)
    _report(problems, warnings, filename)
    if pipeline is None:
        sys.exit(EXIT_USAGE)
    run_id = new_run_id()
    view = _make_view(pipeline, run_id, live, log_format)
    checkpoints = _checkpoints(pipeline, run_id, view, checkpoint_dir,
                               resume, from_id)
    try:
        runner = Run(pipeline, resolve_home(home), run_id, view,
                     checkpoints=checkpoints)
    except OSError as error:
        click.echo(f"flowctl: cannot use the state directory "
                   f"{resolve_home(home)}: {error.strerror}; set --home or "
                   f"FLOWCTL_HOME to a directory you can write", err=True)
        sys.exit(EXIT_USAGE)
    if metrics_port is not None:
        # Imported here: prometheus_client costs start-up time for every
        # run that does not serve metrics.
        from flowctl.metrics import serve_metrics
        try:
            bound = serve_metrics(runner, metrics_port)
            view.event(f"serving metrics on http://127.0.0.1:{bound}/metrics")
        except OSError as error:
            click.echo(f"flowctl: cannot serve metrics on 127.0.0.1:"
                       f"{metrics_port}: {error.strerror}", err=True)
            sys.exit(EXIT_USAGE)
    view.event(f"running pipeline '{pipeline.name}' with "
               f"{len(pipeline.stages)} stages; logs in {runner.directory}")
    outcome = runner.execute()
    if outcome.message:
        view.error(outcome.message)
    driver = runner.checkpoints
    if (driver is not None and outcome.exit_code not in (0, 1)
            and driver.coordinator.last is not None):
        view.event(f"stopped; run the same command with --resume to go on "
                   f"from checkpoint {driver.coordinator.last.id}")
    # Everything the run wrote is closed, so the interpreter's teardown of
    # every module (8 to 10 ms) can be skipped.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can reach the reader
    os._exit(outcome.exit_code)


def _checkpoints(pipeline: Pipeline, run_id: str, view: View,
                 directory: str | None, resume: bool, from_id: str | None):
    """Set up checkpointing for a run; exit 2 if it cannot resume."""
    config = pipeline.checkpoint
    if directory == "":
        raise click.UsageError("--checkpoint-dir needs a directory, not an "
                               "empty value")
    if from_id == "":
        raise click.UsageError("--from needs a checkpoint id, not an empty "
                               "value")
    if directory is not None:
        config.enabled = True
        config.directory = directory
    if not config.enabled:
        if resume or from_id:
            raise click.UsageError(
                "--resume and --from need checkpointing: add a checkpoint "
                "section to the pipeline file or give --checkpoint-dir DIR")
        return None
    if config.recovery.mode != "off":
        # Unless the file sets a restart policy, a failed stage is recovered
        # from the last checkpoint. In manual mode the run stops instead,
        # with a message on how to resume.
        for spec in pipeline.stages:
            if spec.restart.policy == "":
                spec.restart = dataclasses.replace(spec.restart,
                                                   policy="on-failure")
    from flowctl.checkpoints.coordinator import Coordinator
    from flowctl.checkpoints.local import LocalStorage
    from flowctl.checkpoints.recovery import (RecoveryError, RestorePlan,
                                              plan_resume)

    from flowctl.checkpoints.storage import StorageError

    storage = LocalStorage(config.directory)
    try:
        storage.lock()
    except StorageError as error:
        click.echo(f"flowctl: {error}", err=True)
        sys.exit(EXIT_USAGE)
    if resume or from_id:
        try:
            plan = plan_resume(storage, config, pipeline,
                               lambda message: view.event(message), from_id)
        except RecoveryError as error:
            click.echo(f"flowctl: cannot resume: {error}", err=True)
            sys.exit(EXIT_USAGE)
    else:
        plan = RestorePlan()
        _mention_earlier_checkpoints(storage, pipeline, view)
    return Coordinator(config, storage, pipeline, run_id,
                       last=plan.manifest), plan


def _mention_earlier_checkpoints(storage, pipeline: Pipeline,
                                 view: View) -> None:
    from flowctl.checkpoints.storage import StorageError

    try:
        found = [info for info in storage.list_checkpoints()
                 if info.manifest is not None
                 and info.manifest.pipeline == pipeline.name]
    except StorageError:
        return
    if found:
        view.event(f"starting from the beginning; {storage.location} holds "
                   f"checkpoint {found[-1].id} of an earlier run, which "
                   f"--resume would continue from")


def _make_view(pipeline: Pipeline, run_id: str, live: bool | None,
               log_format: str) -> View:
    if log_format == "json":
        return JsonView(run_id, sys.stderr)
    if live is None:
        live = sys.stdout.isatty() and not pipeline.writes_to_stdout()
    if live:
        from flowctl.liveview import LiveView

        # rich (15.0) exits with code 1 on a broken pipe and raises on a
        # hung-up terminal, so its output is guarded too.
        return LiveView(run_id, pipeline.name,
                        console_file=guarded(sys.stdout), stream=sys.stderr)
    return PlainView(run_id, sys.stderr)


@main.command(name="validate")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False))
def validate_command(files: tuple[str, ...]) -> None:
    """Check pipeline files and report every problem at once.

    Each problem is printed as FILE:LINE: message (hint).  Exits with 2 when
    any file has a problem, 0 when all are valid.

    \b
    Examples:
      flowctl validate pipeline.yaml
      flowctl validate examples/*.yaml
    """
    failed = False
    for file in files:
        pipeline, problems, warnings = load_pipeline(file)
        _report(problems, warnings, file)
        if pipeline is None:
            failed = True
            continue
        counts = {role: sum(1 for stage in pipeline.stages
                            if stage.role == role)
                  for role in ("source", "processor", "sink")}
        summary = ", ".join(f"{count} {role}{'s' if count != 1 else ''}"
                            for role, count in counts.items())
        click.echo(f"{file}: valid ({summary})")
    sys.exit(EXIT_USAGE if failed else 0)


@main.command()
@click.argument("file", default="pipeline.yaml",
                type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def init(file: str, force: bool) -> None:
    """Write a starter pipeline file that runs as written.

    \b
    Examples:
      flowctl init && flowctl run pipeline.yaml
      flowctl init etl.yaml
    """
    if os.path.exists(file) and not force:
        click.echo(f"flowctl: {file} already exists; use --force to "
                   f"overwrite it", err=True)
        sys.exit(EXIT_USAGE)
    with open(file, "w", encoding="utf-8") as out:
        out.write(STARTER_PIPELINE)
    click.echo(f"wrote {file}; run it with: flowctl run {file}")


@main.command()
def stages() -> None:
    """List the built-in stages and their config keys.

    \b
    Example:
      flowctl stages
    """
    for name, builtin in BUILTINS.items():
        click.echo(f"{name}  ({builtin.role}): {builtin.summary}")
        for key, param in builtin.params.items():
            required = " (required)" if param.required else ""
            click.echo(f"    {key}{required}: {param.help}")

