"""The incremental decoder: bytes in, reassembled messages out (sans-IO, like h11).

Feed bytes with :meth:`MessageDecoder.receive_data` in any chunking, then call
:meth:`MessageDecoder.next_event` until it returns :data:`NEED_DATA`. Validation uses only bytes
that have arrived, in the order of :data:`~distcache.wire.fastcodec.HEADER_CHECKS` (the legacy
order, with correct offsets), then the direction, then the reassembly rules. Every limit is checked
on the header, before the frame's data is waited for or stored.
"""

from __future__ import annotations

from ..wire.enums import Direction, Operation
from ..wire.fastcodec import FIELD_OFFSET, FIELD_SIZE, decode_header, first_failure
from ..wire.limits import HEADER_SIZE, MAX_PAYLOAD, MIN_BYTES_EXAMINED
from . import _accelerator
from .errors import RemoteProtocolError
from .events import NEED_DATA, Closed, Message, Request, Response

_EVENT_CLASS = {Direction.REQUEST: Request, Direction.RESPONSE: Response}
_OPERATIONS = tuple(Operation)
# Events are named tuples; building them with tuple.__new__ skips the generated __new__'s frame.
_new_event = tuple.__new__

# The compiled fast path (whole single-frame messages), None where it is not built or disabled.
_compiled = _accelerator.load()
if _compiled is not None:
    _compiled.configure(Request, Response, _OPERATIONS, NEED_DATA)
#: True when decoders use the compiled fast path by default.
ACCELERATED = _compiled is not None
_decode_single = _compiled.decode_single if _compiled is not None else None


class MessageDecoder:
    """Decodes one direction of one connection.

    ``receives`` is the direction this side accepts: :attr:`Direction.REQUEST` for a server,
    :attr:`Direction.RESPONSE` for a client, ``None`` for an observer (decoders, snoopers) that
    takes each message's direction from its first frame.

    After a :class:`RemoteProtocolError` the decoder is dead: every later call raises it again.

    ``accelerated=False`` keeps the compiled fast path (see :data:`ACCELERATED`) out of this
    decoder: the pure-Python code then does all the work (the tests compare the two).
    """

    __slots__ = (
        "_base",
        "_buf",
        "_eof",
        "_error",
        "_fast",
        "_frames",
        "_msg_direction",
        "_msg_level",
        "_msg_offset",
        "_msg_op",
        "_msg_uid",
        "_parts",
        "_pos",
        "_size",
        "receives",
    )

    def __init__(
        self, receives: Direction | None = Direction.REQUEST, *, accelerated: bool = True
    ) -> None:
        self.receives = receives
        self._fast = _decode_single if accelerated else None
        # Immutable bytes: a chunk that starts on a message boundary becomes the buffer without a
        # copy, and slicing it yields payload bytes in one copy. Only an incomplete frame (less
        # than one frame) is ever carried over into the next chunk.
        self._buf = b""
        self._pos = 0  # next unparsed byte in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._parts: list[bytes] = []  # data of the frames of the message being reassembled
        self._frames = 0
        self._size = 0
        self._msg_uid = self._msg_op = self._msg_direction = self._msg_level = None
        self._msg_offset = 0

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the peer; ``b""`` means the peer closed its sending side."""
        if data:
            if self._eof:
                raise RuntimeError("data received after end of stream")
            pos, buf = self._pos, self._buf
            if pos < len(buf):
                self._buf = buf[pos:] + data
            else:
                self._buf = bytes(data)
            self._base += pos
            self._pos = 0
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Received bytes not yet handed out as events (whole frames included)."""
        return len(self._buf) - self._pos + self._size

    @property
    def in_message(self) -> bool:
        """True while a message has started (bytes of it arrived) but is not complete."""
        return self._frames > 0 or len(self._buf) > self._pos

    @property
    def offset(self) -> int:
        """Stream offset of the next unparsed byte."""
        return self._base + self._pos

    # -- output -----------------------------------------------------------------------------

    def next_event(self) -> Message | Closed | object:
        """The next whole message, :class:`Closed` at a clean end of stream, or :data:`NEED_DATA`.

        Raises :class:`RemoteProtocolError` when the peer broke the protocol.
        """
        # The compiled path takes a whole single-frame message between messages, and says
        # NEED_DATA for a few bytes; everything else (errors included) is decoded below.
        fast = self._fast
        if fast is not None and not self._frames and self._error is None:
            pos = self._pos
            event = fast(self._buf, pos, self.receives, self._base, self._eof)
            if event is not None:
                if event is not NEED_DATA:
                    self._pos = pos + HEADER_SIZE + len(event[2])
                return event
        # One function for the whole hot path: servers call this twice per request.
        if self._error is not None:
            raise self._error
        try:
            buf = self._buf
            while True:
                pos = self._pos
                available = len(buf) - pos
                if available < HEADER_SIZE:
                    if available >= MIN_BYTES_EXAMINED:
                        self._reject_partial_header(available)
                    if not self._eof:
                        if self._frames:
                            self._release_consumed()
                        return NEED_DATA  # the usual end of a read
                    return self._at_end_of_input(available)
                header = decode_header(buf, pos)
                if header is None:
                    self._reject_partial_header(HEADER_SIZE)
                level, is_response, uid, _, operation, complete, data_len = header
                if is_response != self.receives and self.receives is not None:
                    self._reject_direction(pos, is_response)
                if self._frames:
                    self._check_continuation(pos, is_response, uid, operation)
                if self._size + data_len > MAX_PAYLOAD:
                    self._reject_size(pos, data_len)
                end = pos + HEADER_SIZE + data_len
                if len(buf) < end:
                    if self._frames:
                        self._release_consumed()
                    return self._at_end_of_input(available)
                data = buf[pos + HEADER_SIZE : end]
                self._pos = end
                if not self._frames:
                    if complete:  # the common case: a single-frame message
                        return _new_event(
                            _EVENT_CLASS[is_response],
                            (uid, _OPERATIONS[operation], data, 1, self._base + pos, level),
                        )
                    self._start_message(pos, is_response, uid, operation, level)
                self._parts.append(data)
                self._frames += 1
                self._size += data_len
                if complete:
                    return self._finish_message()
        except RemoteProtocolError as error:
            self._error = error
            raise

    def events(self, data: bytes = b""):
        """Feed ``data`` (if any) and yield every event it completes (stops at NEED_DATA)."""
        if data:
            self.receive_data(data)
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event
            if type(event) is Closed:
                return

    def _reject_direction(self, pos: int, is_response: int):
        raise RemoteProtocolError(
            "wrong_direction",
            f"expected a {self.receives.name.lower()}, got a "
            f"{Direction(is_response).name.lower()} frame",
            offset=self._base + pos + FIELD_OFFSET["is_response"],
            field="is_response",
        )

    def _reject_size(self, pos: int, data_len: int):
        raise RemoteProtocolError(
            "message_too_large",
            f"{self._size} bytes reassembled plus {data_len} exceeds {MAX_PAYLOAD}",
            offset=self._base + pos + FIELD_OFFSET["data_len"],
            field="data_len",
        )

    def _release_consumed(self) -> None:
        """Drop the frames already copied into ``_parts`` from the buffer: a message waiting for
        its next frames must not hold its bytes twice (ROBUST-8)."""
        pos = self._pos
        if pos:
            self._buf = self._buf[pos:]
            self._base += pos
            self._pos = 0

    def _start_message(self, pos, is_response, uid, operation, level):
        self._msg_offset = self._base + pos
        self._msg_direction = is_response
        self._msg_uid = uid
        self._msg_op = operation
        self._msg_level = level

    def _finish_message(self):
        event = _new_event(
            _EVENT_CLASS[self._msg_direction],
            (
                self._msg_uid,
                _OPERATIONS[self._msg_op],
                b"".join(self._parts),
                self._frames,
                self._msg_offset,
                self._msg_level,
            ),
        )
        self._parts = []
        self._frames = 0
        self._size = 0
        return event

    def _check_continuation(self, pos, is_response, uid, operation):
        base = self._base + pos
        if is_response != self._msg_direction:
            raise RemoteProtocolError(
                "direction_changed",
                "continuation frame switches direction",
                offset=base + FIELD_OFFSET["is_response"],
                field="is_response",
            )
        if uid != self._msg_uid:
            raise RemoteProtocolError(
                "uid_changed",
                f"continuation frame has request_uid {uid:#010x}, its message {self._msg_uid:#010x}",
                offset=base + FIELD_OFFSET["request_uid"],
                field="request_uid",
            )
        if operation != self._msg_op:
            raise RemoteProtocolError(
                "operation_changed",
                f"continuation frame has operation {_OPERATIONS[operation].name}, its message "
                f"{_OPERATIONS[self._msg_op].name}",
                offset=base + FIELD_OFFSET["operation"],
                field="operation",
            )

    def _reject_partial_header(self, available: int) -> None:
        check = first_failure(self._buf, self._pos, available)
        if check is None:
            return
        start = self._pos + check.offset
        raw = bytes(self._buf[start : start + FIELD_SIZE[check.field]])
        raise RemoteProtocolError(
            check.reason,
            f"{check.field} = {int.from_bytes(raw, 'big'):#x}; legal: {check.legal}",
            offset=self._base + start,
            field=check.field,
        )

    def _at_end_of_input(self, available: int):
        if not self._eof:
            return NEED_DATA
        if available or self._frames:
            where = "inside a frame" if available else "inside a multi-frame message"
            raise RemoteProtocolError(
                "truncated",
                f"stream ended {where} ({available} bytes of an incomplete frame)",
                offset=self._base + self._pos,
            )
        return Closed(self._base + self._pos)
