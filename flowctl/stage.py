"""The stage library: write a flowctl stage in a few lines of Python.

A source is a generator, a processor a function of one record, a sink a
function of one record; each can also be a class when it needs set-up,
state or a final step.  The library batches records into frames, flushes
whenever the stage would otherwise wait, and reports counters to flowctl.

Example, a processor that keeps long lines and upper-cases them::

    import flowctl

    def shout(record):
        if len(record["line"]) > 40:
            return {"line": record["line"].upper()}

    if __name__ == "__main__":
        flowctl.run_processor(shout)

Returning None drops the record; a generator function may yield any
number of records for each one it receives.
"""

from __future__ import annotations

import os
import signal
import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator

from flowctl import faults, protocol
from flowctl.runtime import (EXIT_BAD_INPUT, EXIT_UPSTREAM_FAILED, BadInput,
                             Context, OutputsClosed, UpstreamFailed)

RECORD_PREVIEW_CHARS = 200
CO_GENERATOR = 0x20  # code flag of a generator function, as in inspect

IDLE = object()
"""Yielded by a source that has no record right now (see `Source`)."""
# A sink that never waits for input still flushes (commits) this often.
SINK_FLUSH_INTERVAL = 1.0


class Source:
    """A stage that produces records.  Implement `records()`.

    A source that sets `batched = True` yields lists of records instead of
    single records, which saves a Python step per record.

    `open(config)` runs first with the stage's `config` mapping from the
    pipeline file; `close()` runs after the last record, also when the run
    is stopped early.  Yielding `flowctl.IDLE` emits nothing but lets the
    library flush the current batch and handle control messages.  A source
    that waits for data (polling a file that grows, say) should yield IDLE
    while it waits.  Any other value, None included, is a record.
    """

    batched = False

    def open(self, config: dict[str, Any]) -> None:
        """Prepare to produce records; `config` is the stage's config."""

    def records(self) -> Iterator[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `open` acquired."""


class Processor:
    """A stage that turns each input record into zero or more records.

    `process(record)` either returns one record (None for none) or, when
    written as a generator, yields any number.  `finish()` runs after the
    last input record and may return or yield final records.

    A processor may also define `process_batch(records) -> list`, which
    the library then calls once per input frame instead of `process` once
    per record. `process` is still needed, because it names the record at
    fault when `process_batch` raises.
    """

    process_batch: Callable[[list[Any]], list[Any]] | None = None

    def open(self, config: dict[str, Any]) -> None:
        """Prepare to process; `config` is the stage's config."""

    def process(self, record: Any) -> Any:
        raise NotImplementedError

    def finish(self) -> Iterable[Any] | None:
        return None

    def close(self) -> None:
        """Release what `open` acquired."""


class Sink:
    """A stage that stores records.

    Implement `write(record)`, or `write_batch(records)` for a faster path.
    `flush()` runs whenever the input is idle, at least once a second while
    records keep coming, and at the end of the stream. After it returns,
    everything written so far should be stored.
    """

    def open(self, config: dict[str, Any]) -> None:
        """Prepare to store records; `config` is the stage's config."""

    def write(self, record: Any) -> None:
        raise NotImplementedError

    def write_batch(self, records: list[Any]) -> None:
        for record in records:
            self.write(record)

    def flush(self) -> None:
        """Make everything written so far durable or visible."""

    def close(self) -> None:
        """Release what `open` acquired."""


class Checkpointable:
    """A stage with state that checkpoints save and a resumed run restores.

    Mix it into a Source, Processor or Sink.  A stage without it is
    stateless: after a recovery it starts as it did the first time.

    For a source, the state is its position: the records produced so far
    must be exactly those before that position.  For a processor, it is
    what it keeps between records.  A sink uses it for two-phase commit:

    - `save_checkpoint()` prepares: everything written so far becomes
      durable but stays invisible, and the bytes returned describe how to
      commit it;
    - `commit_checkpoint(data)` runs once the checkpoint is complete,
      with the bytes `save_checkpoint()` returned for it, and makes that
      data visible;
    - `restore_checkpoint(data)` runs when a run resumes from the
      checkpoint: it must commit what `data` describes if that has not
      happened yet, and drop whatever was written after it.

    Commits may be skipped (a checkpoint that could not be stored is never
    committed); the next commit's data must then cover the earlier data
    too.  With checkpointing off, sinks are never asked to save.
    """

    def save_checkpoint(self) -> bytes:
        """Return this stage's state as bytes (never pickle)."""
        return b""

    def restore_checkpoint(self, data: bytes) -> None:
        """Take up the state `save_checkpoint` returned."""

    def checkpoint_info(self) -> dict[str, Any]:
        """Describe the saved state for `flowctl checkpoint show`."""
        return {}

    def commit_checkpoint(self, data: bytes) -> None:
        """Sinks: make visible what the save that returned `data` prepared."""


def _save(ctx: Context, stage: Any, checkpoint_id: int | None,
          final: bool = False) -> bytes | None:
    """Save a stage's state and report it to the orchestrator."""
    state = info = None
    if isinstance(stage, Checkpointable):
        state = stage.save_checkpoint()
        info = stage.checkpoint_info()
    faults.hit("save", ctx.stage_id)
    ctx.report_checkpoint(checkpoint_id, state, info or {}, final)
    return state


def _restore(ctx: Context, stage: Any) -> None:
    restore = ctx.restore
    if (restore is not None and restore.get("state") is not None
            and isinstance(stage, Checkpointable)):
        stage.restore_checkpoint(restore["state"])


class StageError(Exception):
    """A failure whose message is complete, such as a changed input file.

    The stage library reports it without a traceback.
    """


_NOTHING = object()


class _FunctionSource(Source):
    def __init__(self, function: Callable[[dict[str, Any]], Iterable[Any]]):
        self.function = function

    def open(self, config: dict[str, Any]) -> None:
        # A generator runs no code until its first record is asked for, so
        # that is taken here: a source that cannot open its file fails in
        # open(), before it counts as started.
        self.iterator = iter(self.function(config))
        self.first = next(self.iterator, _NOTHING)

    def records(self) -> Iterator[Any]:
        if self.first is not _NOTHING:
            yield self.first
        yield from self.iterator

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


class _FunctionProcessor(Processor):
    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.process = function  # type: ignore[method-assign]


class _FunctionSink(Sink):
    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.write = function  # type: ignore[method-assign]


def config() -> dict[str, Any]:
    """Return this stage's `config` mapping from the pipeline file."""
    return _the_context().config


_context: Context | None = None


def _the_context() -> Context:
    """Return the process's one Context, creating it on first use.

    A second Context would take over the output pipes again, and the
    frames of the first would go to the stage's log instead.
    """
    global _context
    if _context is None:
        _context = Context()
    return _context


def _preview(record: Any) -> str:
    text = repr(record)
    if len(text) > RECORD_PREVIEW_CHARS:
        text = text[:RECORD_PREVIEW_CHARS - 3] + "..."
    return text


def _guard(ctx: Context, body: Callable[[], None]) -> None:
    """Run a stage body, turning every failure into a report and exit code."""
    try:
        body()
    except UpstreamFailed as error:
        ctx.fail(str(error), EXIT_UPSTREAM_FAILED, upstream=error.stage)
    except BadInput as error:
        ctx.fail(str(error), EXIT_BAD_INPUT, upstream=error.stage)
    except _RecordFailed as error:
        _print_stage_traceback(error.cause)
        ctx.fail(f"{type(error.cause).__name__}: {error.cause} "
                 f"(record {_preview(error.record)})")
    except (OutputsClosed, BrokenPipeError):
        # Every reader is gone, or a sink's own output (flowctl's stdout
        # piped into head, say) was closed: the stage is done, as a
        # program in a shell pipeline ends quietly on SIGPIPE.
        ctx.done()
        os._exit(0)
    except StageError as error:
        ctx.fail(str(error))
    except OSError as error:
        # A missing or unwritable file needs no traceback: the message
        # names the file and the cause.
        ctx.fail(f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - every failure is reported
        import traceback

        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        ctx.fail(f"{type(error).__name__}: {error}")
    sys.exit(0)


def _print_stage_traceback(error: BaseException) -> None:
    """Print the traceback of an error in the stage's own code, without
    the frames of this module or the error it was handling."""
    import traceback

    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if frame.filename != __file__]
    sys.stderr.write("".join(
        ["Traceback (most recent call last):\n"]
        + traceback.format_list(frames)
        + traceback.format_exception_only(type(error), error)))
    sys.stderr.flush()


class _RecordFailed(Exception):
    def __init__(self, cause: BaseException, record: Any) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.record = record


def _start(role: str) -> Context:
    ctx = _the_context()
    ctx.start(role)
    return ctx


def run_source(source: Source | Callable[[dict[str, Any]], Iterable[Any]],
               batched: bool = False) -> None:
    """Run a source: a `Source` instance or a generator function of config.

    With `batched=True`, the generator yields lists of records.
    """
    if not isinstance(source, Source):
        source = _FunctionSource(source)
        source.batched = batched
    ctx = _start("source")
    _guard(ctx, lambda: _source_loop(ctx, source))


class _Interrupted(BaseException):
    """The exception that ends a source stopped while its code blocked."""


class _StopSignal:
    """The source loop's SIGINT handler, which turns the signal into a stop.

    flowctl sends SIGINT to a built-in source that is still running a
    second after the stop message, because its code may be blocked in a
    read (of standard input, say) where no message reaches it.  While the
    source's own code runs, the signal raises _Interrupted there.
    Elsewhere it only marks the stop, so a frame is never cut in half.
    """

    def __init__(self, control: Any) -> None:
        self.control = control
        self.in_source = False
        self.previous: Any = None

    def handle(self, signum: int, frame: Any) -> None:
        self.control.stop_requested = True
        if self.in_source:
            self.in_source = False
            raise _Interrupted()

    def install(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        except ValueError:
            pass  # not the main thread: only the stop message works

    def uninstall(self) -> None:
        self.in_source = False
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _source_loop(ctx: Context, source: Source) -> None:
    stop_signal = _StopSignal(ctx.control)
    stop_signal.install()
    try:
        stop_signal.in_source = True
        source.open(ctx.config)
        stop_signal.in_source = False
    except _Interrupted:
        ctx.ready()
        ctx.finish()
        return
    try:
        _restore(ctx, source)
        ctx.ready()
        _emit_records(ctx, source, stop_signal)
    finally:
        stop_signal.uninstall()
    if ctx.checkpointing and not ctx.control.stop_requested:
        # The end of the data: this state is the source's final one.
        _save(ctx, source, None, final=True)
    source.close()
    ctx.finish()


def _emit_records(ctx: Context, source: Source,
                  stop_signal: _StopSignal) -> None:
    outputs = ctx.outputs
    control = ctx.control
    batch_size = outputs.limit
    interval = ctx.flush_interval
    monotonic = time.monotonic
    generator = iter(()) if ctx.restored_finished else source.records()
    buffer = outputs.buffer
    last_flush = monotonic()
    add = list.extend if source.batched else list.append
    try:
        stop_signal.in_source = True
        for record in generator:
            if record is not IDLE:
                add(buffer, record)
                if (len(buffer) < batch_size
                        and monotonic() - last_flush < interval):
                    continue
            stop_signal.in_source = False
            outputs.flush()
            buffer = outputs.buffer
            batch_size = outputs.limit
            last_flush = monotonic()
            control.poll()
            while control.barriers:
                _pass_barrier(ctx, source, control.barriers.popleft())
            ctx.report_stats()
            if control.stop_requested:
                break
            stop_signal.in_source = True
    except _Interrupted:
        pass
    finally:
        stop_signal.in_source = False
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    outputs.flush()


def _pass_barrier(ctx: Context, stage: Any, checkpoint_id: int) -> None:
    """Save at a barrier and send it on: the outputs hold, before the
    barrier, exactly the records this state has produced."""
    ctx.outputs.flush()
    _save(ctx, stage, checkpoint_id)
    ctx.outputs.write_frame(protocol.barrier_frame(checkpoint_id))


def run_processor(processor: Processor | Callable[[Any], Any]) -> None:
    """Run a processor: a `Processor` instance or a function of one record."""
    if not isinstance(processor, Processor):
        processor = _FunctionProcessor(processor)
    ctx = _start("processor")
    _guard(ctx, lambda: _processor_loop(ctx, processor))


def _is_generator_function(function: Callable[..., Any]) -> bool:
    code = getattr(function, "__code__", None) or getattr(
        getattr(function, "__func__", None), "__code__", None)
    return bool(code is not None and code.co_flags & CO_GENERATOR)


def _find_failing_record(function: Callable[[Any], Any], records: list[Any],
                         error: Exception) -> _RecordFailed:
    for record in records:
        try:
            result = function(record)
            if _is_generator_function(function):
                list(result)
        except Exception as cause:  # noqa: BLE001 - reported with record
            return _RecordFailed(cause, record)
    return _RecordFailed(error, None)


def _processor_loop(ctx: Context, processor: Processor) -> None:
    processor.open(ctx.config)
    _restore(ctx, processor)
    ctx.ready()
    outputs = ctx.outputs
    interval = ctx.flush_interval
    function = processor.process
    batch_function = processor.process_batch
    emits_many = _is_generator_function(function)

    def on_idle() -> None:
        outputs.flush()
        ctx.report_stats()

    while True:
        item = ctx.inputs.next_frame(on_idle)
        if item is None:
            break
        frame = item[1]
        if frame[0] == protocol.BARRIER:
            _pass_barrier(ctx, processor, frame[1]["id"])
            continue
        buffer = outputs.buffer
        record = None
        try:
            if batch_function is not None:
                try:
                    result = batch_function(frame[1])
                except Exception as error:
                    raise _find_failing_record(function, frame[1],
                                               error) from error
                if buffer or type(result) is not list:
                    buffer.extend(result)
                else:
                    # Nothing is waiting: the new list becomes the batch.
                    outputs.buffer = buffer = result
            elif emits_many:
                for record in frame[1]:
                    buffer.extend(function(record))
            else:
                append = buffer.append
                for record in frame[1]:
                    result = function(record)
                    if result is not None:
                        append(result)
        except _RecordFailed:
            raise
        except Exception as error:
            raise _RecordFailed(error, record) from error
        if (len(buffer) >= outputs.limit
                or time.monotonic() - outputs.last_flush >= interval):
            outputs.flush()
        ctx.report_stats()
    # A processor resumed from its final state has emitted its final
    # records already.
    final = None if ctx.restored_finished else processor.finish()
    if final is not None:
        outputs.buffer.extend(final)
    if ctx.checkpointing:
        outputs.flush()
        _save(ctx, processor, None, final=True)
    processor.close()
    ctx.finish()


def run_sink(sink: Sink | Callable[[Any], Any]) -> None:
    """Run a sink: a `Sink` instance or a function of one record."""
    if not isinstance(sink, Sink):
        sink = _FunctionSink(sink)
    ctx = _start("sink")
    _guard(ctx, lambda: _sink_loop(ctx, sink))


def _sink_loop(ctx: Context, sink: Sink) -> None:
    sink.open(ctx.config)
    _restore(ctx, sink)
    ctx.ready()
    last_flush = time.monotonic()
    # What save_checkpoint returned, by checkpoint id, until committed.
    prepared: dict[Any, bytes | None] = {}

    def on_commit(message: dict[str, Any]) -> None:
        key = "final" if message.get("final") else message.get("id")
        data = prepared.pop(key, None)
        if not isinstance(key, int):
            prepared.clear()
        else:
            for older in [k for k in prepared
                          if isinstance(k, int) and k < key]:
                del prepared[older]
        faults.hit("prepared", ctx.stage_id)
        if isinstance(sink, Checkpointable) and data is not None:
            sink.commit_checkpoint(data)
        ctx.control.send({"type": "committed", "id": message.get("id")})

    ctx.control.on_commit = on_commit

    def on_idle() -> None:
        nonlocal last_flush
        sink.flush()
        last_flush = time.monotonic()
        ctx.report_stats()

    while True:
        item = ctx.inputs.next_frame(on_idle)
        if item is None:
            break
        frame = item[1]
        if frame[0] == protocol.BATCH:
            sink.write_batch(frame[1])
            if time.monotonic() - last_flush >= SINK_FLUSH_INTERVAL:
                on_idle()
            else:
                ctx.report_stats()
        elif frame[0] == protocol.BARRIER:
            sink.flush()
            checkpoint_id = frame[1]["id"]
            prepared[checkpoint_id] = _save(ctx, sink, checkpoint_id)
    sink.flush()
    if ctx.checkpointing:
        # Only a checkpoint commits: the final one, once it is stored, or
        # none when the run is stopping (a resumed run goes on from the
        # last checkpoint).
        prepared["final"] = _save(ctx, sink, None, final=True)
        control = ctx.control
        while prepared.get("final", _NOTHING) is not _NOTHING \
                and not control.released and control.fd is not None:
            control.poll(1.0)
    sink.close()
    ctx.finish()


def run(stage: Source | Processor | Sink) -> None:
    """Run a stage object, choosing the loop by its base class."""
    if isinstance(stage, Source):
        run_source(stage)
    elif isinstance(stage, Processor):
        run_processor(stage)
    elif isinstance(stage, Sink):
        run_sink(stage)
    else:
        raise TypeError(f"{stage!r} is not a Source, Processor or Sink; "
                        f"use run_source, run_processor or run_sink for "
                        f"functions")


def context() -> Context:
    """Return the running stage's context (ids, config, flowctl's stdout)."""
    if _context is None:
        raise RuntimeError("no stage is running in this process")
    return _context
