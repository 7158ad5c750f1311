"""Run an external executable as a stage, speaking a text codec.

flowctl starts this adapter as the stage process for a `command` stage
whose codec is `lines`, `jsonl` or `csv`.  The adapter starts the
executable as its child in the same process group.  One thread feeds it
the input records as text on its stdin.  The main thread turns its stdout
back into records and also talks to the orchestrator.  The executable's
stderr goes straight to the stage's log.

Checkpoints: the state of a program such as grep or awk cannot be saved.
So at a barrier the adapter closes the program's stdin, reads its stdout
to the end and checks its exit status. Then it passes the barrier on and
starts the program again for the records after the barrier.  Every output line of
the records before the barrier thus precedes it, and the program holds
no state across a checkpoint.  A program whose output depends on the
whole stream (sort, uniq -c, an awk END block) therefore works on each
checkpoint interval separately.  An executable source cannot be rewound:
after a recovery it runs from its beginning again.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from typing import Any, Callable

from flowctl import codecs
from flowctl.lifetime import child_setup
from flowctl.runtime import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_UPSTREAM_FAILED,
                             HEARTBEAT_INTERVAL, BadInput, Context, Control,
                             OutputsClosed, UpstreamFailed, ENV_STDOUT_FD)
from flowctl import protocol

ENV_COMMAND = "FLOWCTL_COMMAND"
ENV_CODEC = "FLOWCTL_CODEC"
ENV_ROLE = "FLOWCTL_ROLE"
ENV_SUCCESS_EXIT_CODES = "FLOWCTL_SUCCESS_EXIT_CODES"

STOP_GRACE_SECONDS = 5.0


class Feeder(threading.Thread):
    """Writes the stage's input records to the executable's stdin."""

    def __init__(self, ctx: Context, stdin: Any, codec_name: str) -> None:
        super().__init__(name="feeder", daemon=True)
        self.ctx = ctx
        self.stdin = stdin
        self.codec_name = codec_name
        self.codec = codecs.make_codec(codec_name)
        self.failure: BaseException | None = None
        self.stdin_closed_early = False
        # Set at a barrier, when the feeder has closed the program's stdin;
        # the main thread then starts a new program and sets `resumed`.
        self.barrier: int | None = None
        self.resumed = threading.Event()
        # Only the main thread reads the control channel.
        ctx.inputs.control = Control(None, ctx.stage_id)

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as error:  # noqa: BLE001 - reported by main
            self.failure = error
        finally:
            try:
                self.stdin.close()
            except OSError:
                pass

    def _feed(self) -> None:
        fd = self.stdin.fileno()
        while True:
            item = self.ctx.inputs.next_frame(lambda: None)
            if item is None:
                return
            frame = item[1]
            if frame[0] == protocol.BARRIER:
                self.resumed.clear()
                self.barrier = frame[1]["id"]
                self.stdin.close()
                self.resumed.wait()
                fd = self.stdin.fileno()
                # The new program gets a header again, for csv.
                self.codec = codecs.make_codec(self.codec_name)
                continue
            try:
                protocol.write_all(fd, self.codec.encode(frame[1]))
            except BrokenPipeError:
                # The executable stopped reading (head, say).  The stage
                # ends with what it wrote; when flowctl lets go of this
                # stage's input pipes, the upstream stages end as well.
                self.stdin_closed_early = True
                return


def _exit_description(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def main() -> None:
    argv = json.loads(os.environ[ENV_COMMAND])
    codec_name = os.environ.get(ENV_CODEC, "lines")
    role = os.environ.get(ENV_ROLE, "processor")
    success_codes = json.loads(os.environ.get(ENV_SUCCESS_EXIT_CODES, "[0]"))
    ctx = Context()
    ctx.start(role)
    try:
        _run(ctx, argv, codec_name, role, success_codes)
    except UpstreamFailed as error:
        ctx.fail(str(error), EXIT_UPSTREAM_FAILED, upstream=error.stage)
    except BadInput as error:
        ctx.fail(str(error), EXIT_BAD_INPUT, upstream=error.stage)
    except codecs.CodecError as error:
        ctx.fail(f"command {argv[0]!r}: {error}")
    except FileNotFoundError:
        ctx.fail(f"command not found: {argv[0]!r}")
    except PermissionError:
        ctx.fail(f"command is not executable: {argv[0]!r}")
    # The feeder thread may still wait for input that no longer matters.
    os._exit(0)


class Program:
    """The executable, started again after every checkpoint."""

    def __init__(self, argv: list[str], role: str) -> None:
        self.argv = argv
        self.has_inputs = role != "source"
        self.has_outputs = role != "sink"
        # A sink's program writes straight to flowctl's standard output.
        self.stdout_fd = int(os.environ.get(ENV_STDOUT_FD, "1"))
        self.process: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        stdout: Any = subprocess.PIPE
        if not self.has_outputs:
            stdout = self.stdout_fd
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.has_inputs else subprocess.DEVNULL,
            stdout=stdout, preexec_fn=child_setup(new_process_group=False),
            pass_fds=() if self.has_outputs else (stdout,))
        return self.process

    def stdout_reader_gone(self) -> bool:
        """Check whether the program writes to flowctl's standard output
        and every reader of that pipe has exited (`flowctl run ... | head`
        once head has read enough).

        Linux poll() reports POLLERR on the write end of a pipe without
        readers.  The pipe is checked, not the exit status alone, because
        SIGPIPE or an EPIPE error may also come from a pipe that the
        program made itself.
        """
        if self.has_outputs:
            return False
        poller = select.poll()
        poller.register(self.stdout_fd, select.POLLOUT)
        return any(events & select.POLLERR
                   for _, events in poller.poll(0))


def _run(ctx: Context, argv: list[str], codec_name: str, role: str,
         success_codes: list[int]) -> None:
    if ctx.restored_finished:
        # Resumed from a checkpoint taken after this stage's end: running
        # the program again would repeat its output.
        ctx.ready()
        while ctx.inputs.next_frame(ctx.report_stats) is not None:
            pass
        _report_final(ctx, role)
        ctx.finish()
        return
    program = Program(argv, role)
    process = program.start()
    ctx.ready()
    feeder = None
    if program.has_inputs:
        feeder = Feeder(ctx, process.stdin, codec_name)
        feeder.start()

    def check_exit(code: int) -> None:
        stopped = ctx.control.stop_requested and role == "source"
        if code not in success_codes and not stopped:
            if program.stdout_reader_gone():
                _end_with_stdout_closed(ctx)
            hint = ""
            if code == 1 and os.path.basename(argv[0]) == "grep":
                hint = ("; grep exits with 1 when no line matched, so add "
                        "success_exit_codes: [0, 1] to the stage (inline: "
                        "exec --success-exit-codes 0,1 grep ...) if that is "
                        "fine")
            ctx.fail(f"command {argv[0]!r} {_exit_description(code)}{hint}",
                     EXIT_FAILED, command_exit_code=code)

    def restart_at_barrier() -> bool:
        """At a barrier the feeder closed stdin and the program ended:
        check it, pass the barrier on, start the next program."""
        if feeder is None or feeder.barrier is None:
            return False
        check_exit(program.process.wait())
        ctx.outputs.flush()
        ctx.report_checkpoint(feeder.barrier, None, {})
        ctx.outputs.write_frame(protocol.barrier_frame(feeder.barrier))
        feeder.barrier = None
        feeder.stdin = program.start().stdin
        feeder.resumed.set()
        return True

    try:
        if program.has_outputs:
            _read_output(ctx, program, codec_name, restart_at_barrier)
        else:
            _wait_for(ctx, program, restart_at_barrier)
    except codecs.CodecError:
        # A program killed in the middle of a line leaves a cut-off last
        # line: its exit status is the real failure.
        check_exit(program.process.wait())
        raise
    except OutputsClosed:
        # No stage reads this one any more: end the executable quietly.
        program.process.kill()
        program.process.wait()
        ctx.done()
        return
    # The exit status is judged as soon as the executable has exited, not
    # after the input ends: a program that died in mid-stream fails the
    # stage now.
    code = program.process.wait()
    if feeder is not None and feeder.failure is not None:
        raise feeder.failure
    check_exit(code)
    if ctx.checkpointing and not ctx.control.stop_requested:
        _report_final(ctx, role)
    ctx.finish()


def _end_with_stdout_closed(ctx: Context) -> None:
    """End a sink quietly with exit code 0 when its program failed after
    the reader of flowctl's standard output had exited.

    A built-in sink ends the same way when a write to that output fails
    with EPIPE.  Once the stage process exits, flowctl lets go of its input
    pipes and the stages before it end as well.

    NOTE: a program that fails for another reason after the reader has
    gone also ends quietly, because its exit code does not say whether an
    EPIPE error made it fail.  What it would have written is lost in
    either case.
    """
    ctx.done()
    os._exit(0)


def _report_final(ctx: Context, role: str) -> None:
    """Report the end of the stream; a sink waits for the final commit,
    which has nothing to do for a program, or for its release."""
    ctx.outputs.flush()
    committed = threading.Event()
    ctx.control.on_commit = lambda message: committed.set()
    ctx.report_checkpoint(None, None, {}, final=True)
    if role != "sink":
        return
    control = ctx.control
    while not (committed.is_set() or control.released
               or control.fd is None):
        control.poll(1.0)


def _read_output(ctx: Context, program: Program, codec_name: str,
                 restart_at_barrier: Callable[[], bool]) -> None:
    codec = codecs.make_codec(codec_name)
    process = program.process
    fd = process.stdout.fileno()
    outputs = ctx.outputs
    control = ctx.control
    watched = [fd] + ([control.fd] if control.fd is not None else [])
    stop_sent = False
    while True:
        ready, _, _ = select.select(watched, [], [], 0)
        if not ready:
            outputs.flush()
            ctx.report_stats()
            ready, _, _ = select.select(watched, [], [], HEARTBEAT_INTERVAL)
        if control.fd in ready:
            control.read_pending()
            if control.fd is None:
                watched = [fd]
        while control.barriers:
            # A source's barrier: what it printed so far goes before it.
            checkpoint_id = control.barriers.popleft()
            outputs.flush()
            ctx.report_checkpoint(checkpoint_id, None, {})
            outputs.write_frame(protocol.barrier_frame(checkpoint_id))
        if control.stop_requested and not stop_sent:
            # Only a source is asked to stop; its executable ends the
            # stream by exiting, and what it wrote so far is still read.
            process.terminate()
            stop_sent = True
        if fd not in ready:
            ctx.report_stats()
            if process.poll() is not None:
                # The executable exited, but a child it left behind may
                # hold its stdout open: what was written is read by now.
                break
            continue
        data = os.read(fd, protocol.READ_CHUNK_SIZE)
        if not data:
            outputs.buffer.extend(codec.decode_end())
            if not restart_at_barrier():
                return
            process = program.process
            codec = codecs.make_codec(codec_name)
            fd = process.stdout.fileno()
            watched = [fd] + ([control.fd] if control.fd is not None else [])
            continue
        outputs.buffer.extend(codec.decode(data))
        if len(outputs.buffer) >= outputs.limit:
            outputs.flush()
        ctx.report_stats()
    outputs.buffer.extend(codec.decode_end())


def _wait_for(ctx: Context, program: Program,
              restart_at_barrier: Callable[[], bool]) -> None:
    while True:
        while program.process.poll() is None:
            ctx.control.poll(HEARTBEAT_INTERVAL)
            ctx.report_stats()
        if not restart_at_barrier():
            return


if __name__ == "__main__":
    main()
