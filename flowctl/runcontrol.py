"""The control socket of a run, for `flowctl status` and `flowctl stop`.

Each run listens on a Unix socket in its run directory, created with mode
0600 so only its owner can connect.  A client sends one request frame
({"type": "status"} or {"type": "stop", "kill": bool}) and reads one reply
frame; the framing is the same as everywhere else in flowctl.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from flowctl import protocol

SOCKET_NAME = "control.sock"
# sun_path has room for 108 bytes on Linux; longer paths move to a private
# directory under the temporary directory.
MAX_SOCKET_PATH = 100
CLIENT_TIMEOUT_SECONDS = 5.0
MAX_REQUEST_SIZE = 64 * 1024


class ControlServer:
    """The listening socket, served from the orchestrator's loop."""

    def __init__(self, directory: str, run_id: str,
                 handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = socket_path(directory, run_id)
        self.handler = handler
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask makes the socket file private from the moment it
        # exists, before chmod could.
        previous = os.umask(0o177)
        try:
            self.socket.bind(self.path)
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)
        self.socket.listen(8)
        self.socket.setblocking(False)

    def accept(self) -> None:
        """Serve one waiting client; a slow or broken client is dropped."""
        try:
            connection, _ = self.socket.accept()
        except BlockingIOError:
            return
        with connection:
            connection.settimeout(CLIENT_TIMEOUT_SECONDS)
            try:
                request = _read_frame(connection)
                reply = self.handler(request if isinstance(request, dict)
                                     else {})
                connection.sendall(protocol.pack(reply))
            except (OSError, protocol.ProtocolError):
                pass

    def close(self) -> None:
        self.socket.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def socket_path(directory: str, run_id: str) -> str:
    path = os.path.join(directory, SOCKET_NAME)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    import tempfile  # about 2 ms, which a run that has a short path skips

    private = os.path.join(tempfile.gettempdir(), f"flowctl-{os.getuid()}")
    os.makedirs(private, mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    return os.path.join(private, f"{run_id}.sock")


def _read_frame(connection: socket.socket) -> Any:
    reader = protocol.FrameReader(connection.fileno(), "the client",
                                  MAX_REQUEST_SIZE * 1024)
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            raise protocol.ProtocolError("the connection closed early")
        frames = reader.feed(chunk)
        if frames:
            return frames[0]


def request(path: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a run's control socket and return the reply.

    Raise OSError when the run is not listening.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(CLIENT_TIMEOUT_SECONDS)
        client.connect(path)
        client.sendall(protocol.pack(message))
        reply = _read_frame(client)
    if not isinstance(reply, dict):
        raise OSError(f"invalid reply from {path}")
    return reply
