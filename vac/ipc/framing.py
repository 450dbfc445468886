"""Length-prefixed msgpack frames: a 4-byte big-endian length, then the payload.

Encoding and decoding are pure; the decoder is fed bytes as they arrive and
never buffers more than one maximum-sized frame.
"""

import struct

import msgpack

MAX_FRAME_BYTES = 1024 * 1024
HEADER = struct.Struct("!I")


class IpcError(Exception):
    """Base of every error a channel or decoder raises.

    `decoded` holds the objects a feed completed before the error.
    """

    decoded = ()


class FrameTooLarge(IpcError):
    """A frame announced or built larger than the maximum frame size."""


class Unencodable(IpcError):
    """What was to be sent cannot go in a frame: not plain data, not valid Unicode,
    out of its message's bounds or too large. The sender's fault, not the peer's."""


class OversizeFrame(FrameTooLarge, Unencodable):
    """A frame that would be larger than the maximum frame size (refused before sending)."""

    def __init__(self, size, max_bytes):
        super().__init__(f"frame of {size} bytes exceeds the {max_bytes}-byte limit")
        self.size = size
        self.max_bytes = max_bytes


class PeerNotReading(IpcError):
    """The peer has left so much output unread that no more is queued for it."""


class MalformedFrame(IpcError):
    """A frame whose payload is not one complete msgpack object."""


class ChannelClosed(IpcError):
    """The peer closed the stream (EOF); `partial` tells if a frame was cut."""

    def __init__(self, message="peer closed the channel", partial=False):
        super().__init__(message)
        self.partial = partial


def encode_frame(obj, max_bytes=MAX_FRAME_BYTES):
    """Return the frame carrying `obj` (msgpack with binary types), or raise Unencodable."""
    try:
        payload = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        # A lone surrogate (UnicodeEncodeError is a ValueError), an integer beyond
        # 64 bits, an object msgpack does not know: refused here, in the sender.
        raise Unencodable(f"cannot encode a frame: {error}") from error
    if len(payload) > max_bytes:
        raise OversizeFrame(len(payload), max_bytes)
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload):
    """Return the one msgpack object in `payload` or raise MalformedFrame."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        # ExtraData, FormatError, StackError and truncated data all land here.
        raise MalformedFrame(f"undecodable frame payload: {error}") from error


class FrameDecoder:
    """Incremental decoder: feed() bytes, get the complete objects back."""

    def __init__(self, max_bytes=MAX_FRAME_BYTES):
        self.max_bytes = max_bytes
        self._buffer = bytearray()

    @property
    def buffered(self):
        """How many bytes of an incomplete frame are held."""
        return len(self._buffer)

    def feed(self, data):
        """Add bytes; return the objects they complete, or raise IpcError."""
        self._buffer += data
        objects = []
        try:
            self._decode_into(objects)
        except IpcError as error:
            # The frames before the bad one were good: the caller still gets them.
            error.decoded = objects
            raise
        return objects

    def _decode_into(self, objects):
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_bytes:
                # Refuse before buffering: a hostile length must not cost memory.
                self._buffer.clear()
                raise FrameTooLarge(f"peer announced a {length}-byte frame, limit {self.max_bytes}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[HEADER.size:end])
            del self._buffer[:end]
            objects.append(decode_payload(payload))

    def eof(self):
        """Signal end of stream: raise ChannelClosed, noting a cut frame."""
        partial = bool(self._buffer)
        self._buffer.clear()
        if partial:
            raise ChannelClosed("peer closed the channel in the middle of a frame", partial=True)
        raise ChannelClosed()
