"""Run an external executable as a stage, speaking a text codec.

flowctl starts this adapter as the stage process for a `command` stage
whose codec is `lines`, `jsonl` or `csv`.  The adapter starts the
executable as its child in the same process group.  One thread feeds it
the input records as text on its stdin.  The main thread turns its stdout
back into records and also talks to the orchestrator.  The executable's
stderr goes straight to the stage's log.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from typing import Any

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
        self.codec = codecs.make_codec(codec_name)
        self.failure: BaseException | None = None
        self.stdin_closed_early = False
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
            if frame[0] != protocol.BATCH:
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


def _run(ctx: Context, argv: list[str], codec_name: str, role: str,
         success_codes: list[int]) -> None:
    has_inputs = role != "source"
    has_outputs = role != "sink"
    stdout: Any = subprocess.PIPE
    if not has_outputs:
        stdout = int(os.environ.get(ENV_STDOUT_FD, "1"))
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE if has_inputs else subprocess.DEVNULL,
        stdout=stdout, preexec_fn=child_setup(new_process_group=False),
        pass_fds=() if has_outputs else (stdout,))
    ctx.ready()
    feeder = None
    if has_inputs:
        feeder = Feeder(ctx, process.stdin, codec_name)
        feeder.start()
    try:
        if has_outputs:
            _read_output(ctx, process, codecs.make_codec(codec_name))
        else:
            _wait_for(ctx, process)
    except OutputsClosed:
        # No stage reads this one any more: end the executable quietly.
        process.kill()
        process.wait()
        ctx.done()
        return
    # The exit status is judged as soon as the executable has exited, not
    # after the input ends: a program that died in mid-stream fails the
    # stage now.
    code = process.wait()
    if feeder is not None and feeder.failure is not None:
        raise feeder.failure
    stopped = ctx.control.stop_requested and role == "source"
    if code not in success_codes and not stopped:
        hint = ""
        if code == 1 and os.path.basename(argv[0]) == "grep":
            hint = ("; grep exits with 1 when no line matched, so add "
                    "success_exit_codes: [0, 1] to the stage (inline: exec "
                    "--success-exit-codes 0,1 grep ...) if that is fine")
        ctx.fail(f"command {argv[0]!r} {_exit_description(code)}{hint}",
                 EXIT_FAILED, command_exit_code=code)
    ctx.finish()


def _read_output(ctx: Context, process: subprocess.Popen, codec: Any) -> None:
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
            break
        outputs.buffer.extend(codec.decode(data))
        if len(outputs.buffer) >= outputs.limit:
            outputs.flush()
        ctx.report_stats()
    outputs.buffer.extend(codec.decode_end())


def _wait_for(ctx: Context, process: subprocess.Popen) -> None:
    while process.poll() is None:
        ctx.control.poll(HEARTBEAT_INTERVAL)
        ctx.report_stats()


if __name__ == "__main__":
    main()
