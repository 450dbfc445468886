"""A blocking client of the control socket, for the `vac` command and tests."""

import itertools
import socket

from vac.control import protocol
from vac.ipc.framing import FrameDecoder, IpcError


class ControlError(Exception):
    """The daemon answered with an error; `code` is the protocol's error code."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


class NotRunning(ControlError):
    """Nothing answers on the socket: vacd is not running (or the path is wrong)."""

    def __init__(self, path, error):
        super().__init__("not_running", f"vacd is not running ({path}: {error.strerror or error})")


class ControlClient:
    """One connection to vacd's control socket."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            self.sock.close()
            raise NotRunning(path, error) from None
        except PermissionError as error:
            self.sock.close()
            raise ControlError(protocol.DENIED, f"permission denied: cannot connect to {path} "
                                                f"({error.strerror})") from None
        self.decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
        self.pending = []
        self.ids = itertools.count(1)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, command, **args):
        """Send one command; return its result or raise ControlError."""
        request_id = next(self.ids)
        self._send(protocol.request_frame(request_id, command, args))
        reply = self._next()
        return _result(reply)

    def watch(self):
        """Yield the daemon's events until the connection ends."""
        request_id = next(self.ids)
        self._send(protocol.request_frame(request_id, "watch"))
        _result(self._next())
        self.sock.settimeout(None)
        while True:
            try:
                frame = self._next()
            except ControlError as error:
                if error.code == "closed":
                    return
                raise
            if "event" in frame:
                yield frame["event"]
            elif isinstance(frame, dict) and frame.get("ok") is False:
                # The daemon's last line before it drops the watch (it fell behind).
                _result(frame)

    def _send(self, frame):
        try:
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            # vacd refused the connection before reading from it (permission
            # denied, too many clients): its reason waits to be read.
            _result(self._next())
            raise ControlError("closed", "vacd closed the connection") from None

    def _next(self):
        while not self.pending:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                raise ControlError("closed", "vacd closed the connection")
            try:
                self.pending.extend(self.decoder.feed(data))
            except IpcError as error:
                raise ControlError("bad_reply", f"unreadable reply from vacd: {error}") from None
        return self.pending.pop(0)


def _result(reply):
    if not isinstance(reply, dict):
        raise ControlError("bad_reply", "reply is not a map")
    if reply.get("ok"):
        return reply.get("result")
    raise ControlError(reply.get("code", "failed"), reply.get("error", "unknown error"))
