"""The control socket served from the root's own loop: no threads, never blocking.

Every connection is authenticated with SO_PEERCRED: root and members of the
admin group may change things, members of the read-only group may read,
everyone else is refused. Each request must arrive whole within the read
deadline of its first byte; frames, output, requests sent ahead of their
replies and connections are all bounded (in total, per uid, and with places
only root and admins may take), and each pass of the loop answers at most a
few requests in turn, so a slow or hostile client costs the loop nothing but
a few non-blocking calls. A reply too large for a frame is answered with an
error; a watcher that falls behind is dropped with a last line saying why.
"""

import collections
import errno
import logging
import os
import socket
import stat
import struct
import time

from vac.control import protocol
from vac.control.admission import (ADMIN, MAX_CLIENTS, MAX_CLIENTS_PER_UID, RESERVED_FOR_ADMIN,
                                   access_level, group_id, peer_groups, refusal)
from vac.ipc.framing import FrameDecoder, IpcError, OversizeFrame, Unencodable
from vac.supervisor.barrier import FaultBarrier

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")
# A client may send this many requests ahead of their replies; more is a flood.
MAX_QUEUED_REQUESTS = 256
# Requests answered per pass of the loop, taken from the clients in turn: a
# client that sends thousands at once cannot hold the loop (or the others).
ANSWERS_PER_PASS = 16
# A watcher with this much output unread has stopped reading: it is dropped
# with a last line saying why. Events are small; this holds thousands.
MAX_WATCH_BACKLOG_BYTES = 1024 * 1024
# An event frame larger than this goes to watchers as its name, child and size.
MAX_EVENT_BYTES = 64 * 1024
# How long a dropped watcher has to read its last line before it is closed.
LAST_WORDS_SECONDS = 5.0


class Client:
    """One connection: who it is, what it sent so far, what waits to be written."""

    def __init__(self, sock, pid, uid, access, now, read_timeout):
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.uid = uid
        self.access = access
        self.decoder = FrameDecoder(protocol.MAX_REQUEST_BYTES)
        self.output = collections.deque()     # frames to write; the first perhaps partly written
        self.output_bytes = 0                 # bytes of them not written yet
        self.head_sent = 0                    # bytes of the first frame already written
        self.writing = False                  # the loop watches the socket for writability
        self.read_timeout = read_timeout
        self.deadline = now + read_timeout
        self.requests = collections.deque()   # decoded, waiting for their turn
        self.bad_frame = None                 # closes the connection once those are answered
        self.watch_id = None
        self.closing = False                  # told why it is dropped: only that line is written
        self.closed = False

    def describe(self):
        return f"uid {self.uid} pid {self.pid}"


class ControlServer:
    """Accepts, authenticates and answers control connections inside the root's loop.

    Each client is served behind the fault barrier: an exception while
    reading, answering or writing for one client drops that client only.
    """

    def __init__(self, root, path, commands, context, *, admin_group=None, readonly_group=None,
                 max_clients=MAX_CLIENTS, max_clients_per_uid=MAX_CLIENTS_PER_UID,
                 reserved_for_admin=RESERVED_FOR_ADMIN, read_timeout=10.0,
                 max_output_bytes=8 * 1024 * 1024, max_watch_backlog=MAX_WATCH_BACKLOG_BYTES,
                 clock=time.monotonic):
        self.root = root
        self.path = path
        self.commands = commands
        self.context = context
        self.admin_gid = group_id(admin_group)
        self.readonly_gid = group_id(readonly_group)
        self.max_clients = max_clients
        self.limits = (max_clients, max_clients_per_uid, reserved_for_admin)
        self.read_timeout = read_timeout
        self.max_output_bytes = max_output_bytes
        self.max_watch_backlog = max_watch_backlog
        self.clock = clock
        self.clients = {}
        self.per_uid = collections.Counter()   # uid -> its open connections
        self.waiting = collections.deque()   # clients with requests to answer, in turn
        self.listener = None
        self._observing = False

    # Setting up.

    def open(self):
        """Create the directory and the socket safely, and join the root's loop."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Everyone may connect; SO_PEERCRED decides what each may do.
        old_umask = os.umask(0o111)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(self.max_clients)
        listener.setblocking(False)
        self.listener = listener
        self.root.add_reader(listener.fileno(), self._accept)
        self.root.add_service(self)
        log.info("control socket listening on %s", self.path)

    def _remove_stale(self):
        """Remove a socket left by a dead daemon; refuse when a live one answers."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RuntimeError(f"{self.path} exists and is not a socket; not touching it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)
            log.info("removed the stale control socket %s", self.path)
            return
        except OSError as error:
            raise RuntimeError(f"cannot tell whether {self.path} is in use: {error}") from error
        finally:
            probe.close()
        raise RuntimeError(f"another daemon answers on {self.path}")

    def close(self):
        for client in list(self.clients.values()):
            self._drop(client, None)
        if self.listener is not None:
            self.root.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    # The loop's calls.

    def next_deadline(self):
        if self.waiting:
            return self.clock()   # requests wait: the next pass answers them at once
        deadlines = [c.deadline for c in self.clients.values() if c.watch_id is None or c.closing]
        return min(deadlines) if deadlines else None

    def on_pass(self, now):
        for client in list(self.clients.values()):
            if now < client.deadline:
                continue
            if client.closing:
                self._drop(client, None)   # its last line had its time to be read
            elif client.watch_id is None:
                self._drop(client, "read deadline passed")
        self._answer_waiting()

    def _serve(self, client, what, action, *args):
        """action(*args) for `client` behind the fault barrier; a fault drops the client."""
        with FaultBarrier("control server", "%s for %s", what, client.describe()) as barrier:
            action(*args)
        if barrier.fault is not None:
            self._drop(client, f"internal error while serving it: {type(barrier.fault).__name__}")

    def _accept(self):
        for _ in range(self.max_clients):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("control socket: cannot accept: %s", error)
                    return
                raise
            with FaultBarrier("control server", "a new connection on fd %d", sock.fileno()) as barrier:
                self._welcome(sock)
            if barrier.fault is not None and sock.fileno() not in self.clients:
                sock.close()

    def _welcome(self, sock):
        sock.setblocking(False)
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       _UCRED.size))
        access = access_level(uid, peer_groups(sock, pid, uid, gid), self.admin_gid,
                              self.readonly_gid)
        client = Client(sock, pid, uid, access, self.clock(), self.read_timeout)
        refused = refusal(access, uid, len(self.clients), self.per_uid[uid], self.limits)
        if refused is not None:
            # Told to the client, not logged: a client looping on connect must not flood the log.
            self._refuse(client, protocol.DENIED, refused)
            return
        self.clients[client.fd] = client
        self.per_uid[uid] += 1
        self.root.add_reader(client.fd, lambda: self._serve(client, "a read", self._readable, client))

    def _refuse(self, client, code, text):
        try:
            client.sock.send(protocol.error_frame(0, code, text))
        except OSError:
            pass
        client.sock.close()

    # Reading and answering.

    def _readable(self, client):
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client, None)
            return
        if client.bad_frame is not None or client.closing:
            return  # it is closed once what it is owed is written
        # The deadline runs from a request's first byte: trickling buys no time.
        starts_request = client.decoder.buffered == 0
        try:
            requests = client.decoder.feed(data)
        except IpcError as error:
            requests = error.decoded
            client.bad_frame = error
        if starts_request or requests:
            client.deadline = self.clock() + client.read_timeout
        if len(client.requests) + len(requests) > MAX_QUEUED_REQUESTS:
            self._send(client, protocol.error_frame(
                0, protocol.BAD_REQUEST,
                f"more than {MAX_QUEUED_REQUESTS} requests sent ahead of their replies"))
            self._drop(client, "flooding requests", flush=True)
            return
        client.requests.extend(requests)
        if client.requests:
            if len(client.requests) == len(requests):
                self.waiting.append(client)
        elif client.bad_frame is not None:
            self._close_bad_frame(client)

    def _answer_waiting(self):
        for _ in range(ANSWERS_PER_PASS):
            if not self.waiting:
                return
            client = self.waiting.popleft()
            if client.closed or client.closing:
                continue
            self._serve(client, "a request", self._answer, client, client.requests.popleft())
            if client.closed or client.closing:
                continue
            if client.requests:
                self.waiting.append(client)
            elif client.bad_frame is not None:
                self._close_bad_frame(client)

    def _close_bad_frame(self, client):
        error = client.bad_frame
        self._send(client, protocol.error_frame(0, protocol.BAD_REQUEST, str(error)))
        self._drop(client, f"bad frame: {error}", flush=True)

    def _answer(self, client, obj):
        try:
            request_id, name, args = protocol.check_request(obj)
        except protocol.BadRequest as error:
            self._send(client, protocol.error_frame(_id_of(obj), protocol.BAD_REQUEST, str(error)))
            return
        command = self.commands.get(name)
        if command is None:
            self._send(client, protocol.error_frame(request_id, protocol.UNKNOWN_COMMAND,
                                                    f"unknown command {name!r}"))
            return
        if command.mutating and client.access != ADMIN:
            self._send(client, protocol.error_frame(
                request_id, protocol.DENIED,
                f"permission denied: {name} changes the factory; uid {client.uid} may only read"))
            return
        try:
            args = protocol.check_args(command.schema, args)
        except protocol.BadRequest as error:
            self._send(client, protocol.error_frame(request_id, protocol.BAD_REQUEST, str(error)))
            return
        if command.mutating:
            log.info("control: %s %s by %s", name, args, client.describe())
        if command.streams:
            client.watch_id = request_id
            self._observe()
        try:
            result = command.handler(self.context, args)
        except command.errors as error:
            self._send(client, protocol.error_frame(request_id, protocol.FAILED, str(error)))
            return
        self._send(client, self._reply_frame(client, name, request_id, result))
        if command.mutating:
            # Watchers see operators' changes (drain, pause, reload ...) and who made them.
            self.root.emit("command", command=name, args=args, uid=client.uid, pid=client.pid)

    def _reply_frame(self, client, name, request_id, result):
        """The reply carrying `result`, or an error reply saying why it cannot be sent."""
        try:
            return protocol.reply_frame(request_id, result)
        except OversizeFrame as error:
            log.warning("control: the %s reply to %s is %d bytes, more than %d: answered with an "
                        "error", name, client.describe(), error.size, error.max_bytes)
            return protocol.error_frame(
                request_id, protocol.TOO_LARGE,
                f"reply too large: {error.size} bytes (at most {error.max_bytes}); use a narrower "
                "command (vac help lists them) or vacd's log")
        except Unencodable as error:
            log.error("control: the %s reply to %s cannot be encoded: %s", name,
                      client.describe(), error)
            return protocol.error_frame(request_id, protocol.FAILED,
                                        f"reply cannot be encoded ({error}); see vacd's log")

    def _send(self, client, frame):
        if client.closed or client.closing:
            return
        self._queue(client, frame)
        if client.output_bytes > self.max_output_bytes:
            self._drop(client, "not reading its replies")
            return
        self._flush(client)

    def _queue(self, client, frame):
        client.output.append(frame)
        client.output_bytes += len(frame)

    def _flush(self, client):
        while client.output:
            head = client.output[0]
            try:
                sent = client.sock.send(memoryview(head)[client.head_sent:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client, None)
                return
            client.head_sent += sent
            client.output_bytes -= sent
            if client.head_sent < len(head):
                break   # the socket took what it could
            client.output.popleft()
            client.head_sent = 0
        if client.closing and not client.output:
            self._drop(client, None)   # its last line is written
            return
        # Ask the loop for writability only while something waits.
        wanted = bool(client.output)
        if wanted != client.writing:
            client.writing = wanted
            self.root.want_write(client.fd, (lambda: self._serve(client, "a write", self._flush, client))
                                 if wanted else None)

    def _last_line(self, client, code, text, reason):
        """Drop `client` after telling it why: what waits unwritten goes (but a frame
        already begun), one error line is queued, and the connection closes once that
        is written or after LAST_WORDS_SECONDS."""
        log.warning("control: closing the connection of %s: %s", client.describe(), reason)
        begun = client.output[0] if client.output and client.head_sent else None
        client.output = collections.deque([begun] if begun is not None else [])
        client.output_bytes = len(begun) - client.head_sent if begun is not None else 0
        client.requests.clear()
        client.closing = True
        client.deadline = self.clock() + LAST_WORDS_SECONDS
        self._queue(client, protocol.error_frame(client.watch_id or 0, code, text))
        self._flush(client)

    def _drop(self, client, reason, flush=False):
        if client.closed:
            return
        if flush and client.output:
            try:
                client.sock.send(b"".join(client.output)[client.head_sent:])
            except OSError:
                pass
        client.closed = True
        if reason:
            log.warning("control: closing the connection of %s: %s", client.describe(), reason)
        if self.clients.pop(client.fd, None) is not None:
            self.per_uid[client.uid] -= 1
            if not self.per_uid[client.uid]:
                del self.per_uid[client.uid]
            self.root.remove_reader(client.fd)
        client.sock.close()

    # Watching.

    def _observe(self):
        if not self._observing:
            self.root.add_observer(self._on_event)
            self._observing = True

    def _on_event(self, event):
        frames = {}    # watch id -> the frame (nearly always one id for all watchers)
        for client in list(self.clients.values()):
            if client.watch_id is None or client.closing:
                continue
            if client.watch_id not in frames:
                frames[client.watch_id] = event_frame(client.watch_id, event)
            self._serve(client, "an event", self._send_event, client, frames[client.watch_id])

    def _send_event(self, client, frame):
        """Queue an event; a watcher that leaves too many unread is dropped, told why."""
        if client.output_bytes + len(frame) > self.max_watch_backlog:
            self._last_line(
                client, protocol.FELL_BEHIND,
                f"watch dropped: {client.output_bytes} bytes of events were left unread "
                f"(at most {self.max_watch_backlog}); reconnect to watch again",
                "a watcher fell behind")
            return
        self._send(client, frame)


def event_frame(watch_id, event):
    """The frame of `event`; one too large or not encodable goes as its name, child and why."""
    try:
        frame = protocol.event_frame(watch_id, event)
    except Unencodable as error:
        omitted = f"not encodable: {error}"
    else:
        if len(frame) <= MAX_EVENT_BYTES:
            return frame
        omitted = f"{len(frame)} bytes, more than the {MAX_EVENT_BYTES} an event may have"
    brief = {key: event[key] for key in ("event", "child", "pid", "t") if key in event}
    return protocol.event_frame(watch_id, dict(brief, omitted=omitted))


def _id_of(obj):
    request_id = obj.get("id") if isinstance(obj, dict) else None
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else 0
