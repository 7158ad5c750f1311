"""The pipes between stages, as the orchestrator keeps them.

Each edge of the graph is one pipe from a writer stage to a reader stage.
The orchestrator keeps a copy of both ends of every pipe for the whole
run.  So a reader does not see end-of-file just because its writer died,
and when a stage restarts, its neighbours can be handed fresh pipes (see
`Graph.replace`) while the old ones are drained and closed.
"""

from __future__ import annotations

import fcntl
import os
import termios
import array
from dataclasses import dataclass, field

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def new_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    # A bigger pipe buffer means fewer context switches per record; the
    # default 64 KiB holds only a few batches.  /proc/sys/fs/pipe-max-size
    # may cap unprivileged users lower, which only costs speed.
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    return read_end, write_end


def queued_bytes(read_end: int) -> int:
    """Bytes written to a pipe and not read yet."""
    count = array.array("i", [0])
    fcntl.ioctl(read_end, termios.FIONREAD, count, True)
    return count[0]


def pipe_capacity(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, F_GETPIPE_SZ)
    except OSError:
        return 65536


@dataclass
class Edge:
    """One pipe: `writer` writes to it as its output number
    `writer_index`, `reader` reads it as its input number `reader_index`."""

    writer: str
    reader: str
    writer_index: int
    reader_index: int
    read_fd: int
    write_fd: int

    def is_full(self) -> bool:
        """Return whether the reader is behind, so the writer may be blocked
        on it."""
        try:
            return queued_bytes(self.read_fd) * 2 >= pipe_capacity(
                self.read_fd)
        except OSError:
            return False


@dataclass
class Graph:
    """Every edge of a run, in a fixed order per writer and per reader."""

    edges: list[Edge] = field(default_factory=list)

    @classmethod
    def build(cls, stages: list) -> Graph:
        graph = cls()
        output_counts: dict[str, int] = {}
        for stage in stages:
            for reader_index, writer in enumerate(stage.inputs):
                read_fd, write_fd = new_pipe()
                writer_index = output_counts.get(writer, 0)
                output_counts[writer] = writer_index + 1
                graph.edges.append(Edge(writer, stage.id, writer_index,
                                        reader_index, read_fd, write_fd))
        return graph

    def inputs_of(self, stage_id: str) -> list[Edge]:
        edges = [edge for edge in self.edges if edge.reader == stage_id]
        return sorted(edges, key=lambda edge: edge.reader_index)

    def outputs_of(self, stage_id: str) -> list[Edge]:
        edges = [edge for edge in self.edges if edge.writer == stage_id]
        return sorted(edges, key=lambda edge: edge.writer_index)

    def replace(self, edge: Edge) -> tuple[int, int]:
        """Give an edge a fresh pipe; return the old (read, write) ends."""
        old = (edge.read_fd, edge.write_fd)
        edge.read_fd, edge.write_fd = new_pipe()
        return old

    def close(self) -> None:
        for edge in self.edges:
            for fd in (edge.read_fd, edge.write_fd):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            edge.read_fd = edge.write_fd = -1
