"""Message channels over stream sockets.

RootChannel is the root's non-blocking side for its selector loop;
WorkerChannel is the simple blocking side a child uses.
"""

import errno
import select
import socket

from vac.ipc import framing, messages

READ_CHUNK = 65536
MAX_READS_PER_RECEIVE = 16
# A child that does not read must not make the root hold unbounded output.
MAX_PENDING_OUTPUT = 4 * framing.MAX_FRAME_BYTES


class RootChannel:
    """Non-blocking, buffered message channel for the root's selector loop."""

    def __init__(self, sock, max_frame_bytes=framing.MAX_FRAME_BYTES):
        sock.setblocking(False)
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self._decoder = framing.FrameDecoder(max_frame_bytes)
        self._output = bytearray()
        self.failure = None       # the IpcError (or EOF) that ended reading

    def fileno(self):
        return self.sock.fileno()

    def receive(self):
        """Read what is available and return the messages decoded from it.

        A protocol error or EOF ends the read and is left in `failure`; the
        good messages that came before it are still returned.
        """
        received = []
        # A bounded number of reads per call: a child that writes without
        # pause must not hold the root's loop; the selector calls us again.
        for _ in range(MAX_READS_PER_RECEIVE):
            if self.failure is not None:
                break
            try:
                data = self.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                data = b""
            try:
                if not data:
                    self._decoder.eof()
                objects = self._decoder.feed(data)
            except framing.IpcError as error:
                objects = error.decoded
                self.failure = error
            for obj in objects:
                try:
                    received.append(messages.decode(obj))
                except messages.MalformedMessage as error:
                    self.failure = error
                    break
        return received

    def send(self, msg):
        """Queue `msg` and write as much as the socket takes now.

        Unencodable: `msg` cannot be sent (nothing is queued); PeerNotReading:
        the peer has left too much unread; ChannelClosed: it closed. What stays
        queued is written by flush() once the socket is writable (wants_write).
        """
        if len(self._output) > MAX_PENDING_OUTPUT:
            raise framing.PeerNotReading(
                f"peer is not reading: {len(self._output)} bytes of output wait for it")
        self._output += framing.encode_frame(messages.encode(msg), self.max_frame_bytes)
        self.flush()

    def flush(self):
        """Write queued output without blocking; True when nothing remains."""
        while self._output:
            try:
                sent = self.sock.send(self._output)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as error:
                if error.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise framing.ChannelClosed("peer closed the channel while we wrote") from error
                raise
            del self._output[:sent]
        return True

    @property
    def wants_write(self):
        """True while output waits: the loop should call flush() when the socket is writable."""
        return bool(self._output)

    def discard_output(self):
        """Forget queued output (the peer is gone; nothing will read it)."""
        self._output.clear()

    def close(self):
        self.sock.close()


class WorkerChannel:
    """Blocking message channel used inside a child process."""

    def __init__(self, sock, max_frame_bytes=framing.MAX_FRAME_BYTES, send_timeout=10.0):
        sock.setblocking(True)
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self.send_timeout = send_timeout
        self._decoder = framing.FrameDecoder(max_frame_bytes)
        self._pending = []

    def fileno(self):
        return self.sock.fileno()

    def send(self, msg):
        """Send one message; a root that does not read for send_timeout is an error."""
        frame = framing.encode_frame(messages.encode(msg), self.max_frame_bytes)
        try:
            # Almost always the socket takes the whole frame at once: one system call.
            sent = self.sock.send(frame, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except BrokenPipeError as error:
            raise framing.ChannelClosed("root closed the channel") from error
        if sent == len(frame):
            return
        # The root is behind: the rest, waiting at most send_timeout for it to read.
        self.sock.settimeout(self.send_timeout)
        try:
            self.sock.sendall(frame[sent:])
        except BrokenPipeError as error:
            raise framing.ChannelClosed("root closed the channel") from error
        finally:
            self.sock.settimeout(None)

    @property
    def has_pending(self):
        """True when messages already read from the socket wait to be received."""
        return bool(self._pending)

    def receive(self, timeout):
        """Return the next message, or None when `timeout` seconds pass first."""
        if self._pending:
            return self._pending.pop(0)
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            return None
        try:
            data = self.sock.recv(READ_CHUNK)
        except ConnectionResetError:
            # A root that closed with our output unread: the same end as EOF.
            data = b""
        if not data:
            self._decoder.eof()
        self._pending.extend(messages.decode(obj) for obj in self._decoder.feed(data))
        return self._pending.pop(0) if self._pending else None

    def close(self):
        self.sock.close()


def channel_pair():
    """Return (root_socket, worker_socket): a connected AF_UNIX stream pair."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
