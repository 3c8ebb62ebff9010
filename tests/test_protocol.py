"""The sans-IO core: every recorded vector decodes and re-encodes byte for byte; decoding does not
depend on chunking; hostile bytes only ever yield events or typed errors, within the limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vectordata import load_vectors, vector_streams

from distcache.protocol import (
    NEED_DATA,
    Closed,
    LocalProtocolError,
    MessageDecoder,
    RemoteProtocolError,
    Request,
    RequestTracker,
    Response,
    add_payload,
    check_add,
    encode_message,
    encode_request,
    encode_response,
    frame_count,
    interpret_response,
)
from distcache.wire import Direction, Operation, Status, limits

VECTORS = load_vectors()
CLEAN = [v for v in VECTORS if not v["flags"] or v["flags"] == ["timing"]]


def decode_all(data: bytes, receives=None, chunks=None):
    """Events of a whole stream (end of stream included) and the error that stopped it, if any."""
    decoder = MessageDecoder(receives)
    events = []
    try:
        for piece in chunks if chunks is not None else [data]:
            events.extend(decoder.events(piece))
        decoder.receive_data(b"")
        events.extend(decoder.events())
    except RemoteProtocolError as error:
        return events, (error.reason, error.offset)
    return events, None


def reencode(event) -> bytes:
    return encode_message(event.direction, event.request_uid, event.operation, event.payload)


@pytest.mark.parametrize("vector", CLEAN, ids=lambda v: v["id"])
def test_clean_vectors_decode_and_reencode_byte_exact(vector):
    streams = vector_streams(vector)
    for sent, received in zip(streams.sent, streams.received, strict=True):
        for data, receives in ((sent, Direction.REQUEST), (received, Direction.RESPONSE)):
            events, error = decode_all(data, receives)
            if streams.closes and receives is Direction.REQUEST:
                continue  # the client's stream ends with the frame that made the target close
            if streams.waits and receives is Direction.REQUEST:
                assert error is None or error[0] == "truncated", error
                continue  # the client's stream ends with bytes the target is still waiting on
            assert error is None, error
            messages = [e for e in events if type(e) is not Closed]
            standard = [e for e in messages if e.proto_level == limits.PROTOCOL_LEVEL]
            if len(standard) == len(messages):
                assert b"".join(reencode(e) for e in messages) == data


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["id"])
def test_every_vector_decodes_in_any_chunking(vector):
    """Whole, byte by byte, and split at 7: same events, same error."""
    for data in vector_streams(vector).sent:
        whole = decode_all(data)
        assert decode_all(data, chunks=[bytes([b]) for b in data]) == whole
        assert decode_all(data, chunks=[data[i : i + 7] for i in range(0, len(data), 7)]) == whole


def test_vector_answers_match_their_requests():
    """Every recorded answer pairs with a request of the same uid and operation."""
    for vector in CLEAN:
        streams = vector_streams(vector)
        for sent, received in zip(streams.sent, streams.received, strict=True):
            requests, _ = decode_all(sent, Direction.REQUEST)
            responses, error = decode_all(received, Direction.RESPONSE)
            assert error is None
            pairs = zip(
                [r for r in requests if isinstance(r, Request)],
                [r for r in responses if isinstance(r, Response)],
                strict=False,
            )
            for request, response in pairs:
                assert (request.request_uid, request.operation) == (
                    response.request_uid,
                    response.operation,
                ), vector["id"]


def test_documented_example_bytes():
    add = bytes.fromhex("00110000000000000200000100 0b000003e8000000026b3176".replace(" ", ""))
    (event,) = [e for e in decode_all(add, Direction.REQUEST)[0] if isinstance(e, Request)]
    assert check_add(event.payload).session_id == b"k1"
    assert event.respond_status(Status.OK).hex() == "001100000100000002000001000100"


# -- chunking invariance and hostile bytes --------------------------------------------------------

messages = st.builds(
    lambda direction, uid, op, payload: encode_message(direction, uid, op, payload),
    st.sampled_from(list(Direction)),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(Operation)),
    st.one_of(st.binary(max_size=40), st.binary(min_size=2040, max_size=4200)),
)


@given(st.lists(messages, min_size=1, max_size=5), st.data())
@settings(max_examples=200, deadline=None)
def test_chunking_invariance(encoded, data):
    stream = b"".join(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole_events, whole_error = decode_all(stream)
    assert whole_error is None
    assert [reencode(e) for e in whole_events if type(e) is not Closed] == encoded
    assert decode_all(stream, chunks=chunks) == (whole_events, whole_error)


def mutate(stream: bytes, positions, values) -> bytes:
    data = bytearray(stream)
    for position, value in zip(positions, values, strict=False):
        if data:
            data[position % len(data)] = value
    return bytes(data)


@given(
    st.lists(messages, min_size=1, max_size=3),
    st.lists(st.integers(0, 10**6), max_size=4),
    st.lists(st.integers(0, 255), max_size=4),
    st.integers(1, 64),
)
@settings(max_examples=300, deadline=None)
def test_corrupted_streams_fail_the_same_way_in_any_chunking(encoded, positions, values, size):
    stream = mutate(b"".join(encoded), positions, values)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert decode_all(stream, chunks=chunks) == decode_all(stream)


BUFFER_BOUND = limits.MAX_PAYLOAD + limits.MAX_FRAME_SIZE


@given(
    st.lists(st.binary(min_size=1, max_size=3000), max_size=20), st.sampled_from([None, *Direction])
)
@settings(max_examples=300, deadline=None)
def test_hostile_bytes_yield_events_or_typed_errors_within_limits(chunks, receives):
    decoder = MessageDecoder(receives)
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            while (event := decoder.next_event()) is not NEED_DATA:
                assert isinstance(event, Request | Response)
                assert len(event.payload) <= limits.MAX_PAYLOAD
            assert decoder.buffered <= BUFFER_BOUND
    except RemoteProtocolError as error:
        assert error.reason and error.detail
        with pytest.raises(RemoteProtocolError):
            decoder.next_event()  # a dead decoder stays dead


def test_limit_is_enforced_on_the_header_before_data_arrives():
    full = encode_request(5, Operation.GET, b"x" * limits.MAX_PAYLOAD)  # 16 full frames
    last_header = full[-limits.MAX_FRAME_SIZE :][:14]
    stream = (
        full[: -limits.MAX_FRAME_SIZE]
        + last_header[:11]
        + b"\x00"
        + (limits.MAX_FRAME_DATA).to_bytes(2, "big")
    )
    # 15 full frames + the header of a 16th, non-final frame, then another header announcing data.
    decoder = MessageDecoder(Direction.REQUEST)
    decoder.receive_data(stream)
    assert decoder.next_event() is NEED_DATA
    extra = bytes.fromhex("00110000000000000500010100") + b"\x01"
    decoder.receive_data(b"y" * limits.MAX_FRAME_DATA + extra)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_event()
    assert info.value.reason == "message_too_large"


# -- boundaries ---------------------------------------------------------------------------------

SIZES = [0, 1, 2047, 2048, 2049, 4096, 30000, limits.MAX_PAYLOAD - 1, limits.MAX_PAYLOAD]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("direction", list(Direction))
def test_round_trip_at_every_boundary(size, direction):
    payload = bytes(i % 251 for i in range(size))
    encoded = encode_message(direction, 0xDEADBEEF, Operation.GET, payload)
    assert len(encoded) == size + 14 * frame_count(size)
    (event, closed) = decode_all(encoded, direction)[0]
    assert (event.payload, event.frames, event.request_uid) == (
        payload,
        frame_count(size),
        0xDEADBEEF,
    )
    assert type(closed) is Closed


def test_fragmentation_follows_the_legacy_sender():
    assert frame_count(0) == 1
    assert frame_count(2048) == 1
    assert frame_count(4096) == 2  # never a trailing empty frame
    assert frame_count(30000) == 15  # 14 x 2048 + 1328
    encoded = encode_response(1, Operation.GET, b"z" * 30000)
    last_header = encoded[14 * 2062 : 14 * 2062 + 14]
    assert last_header[11] == 1 and int.from_bytes(last_header[12:], "big") == 1328


def test_payload_over_the_limit_is_refused_locally():
    with pytest.raises(LocalProtocolError):
        encode_request(1, Operation.GET, b"x" * (limits.MAX_PAYLOAD + 1))
    with pytest.raises(LocalProtocolError):
        encode_request(2**32, Operation.GET, b"")


def test_seventeen_frames_with_an_empty_final_frame_are_legal():
    frames = encode_request(9, Operation.ADD, b"a" * limits.MAX_PAYLOAD)
    empty_final = bytes.fromhex("0011000000000000090000010000")
    not_final = bytearray(frames)
    not_final[-limits.MAX_FRAME_SIZE + 11] = 0  # the 16th frame is no longer the last
    (event, _), error = decode_all(bytes(not_final) + empty_final, Direction.REQUEST)
    assert error is None and event.frames == 17 and len(event.payload) == limits.MAX_PAYLOAD
    one_more = bytes.fromhex("001100000000000009000001000178")
    _, error = decode_all(bytes(not_final) + one_more, Direction.REQUEST)
    assert error[0] == "message_too_large"


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        ("0011000000000000030000010000", "uid_changed"),
        ("0011000000000000020001010000", "operation_changed"),
        ("0011000001000000020000010000", "direction_changed"),
    ],
)
def test_continuation_frames_must_match_their_message(second, reason):
    first = bytes.fromhex("0011000000000000020000000800") + b"d" * 2048
    _, error = decode_all(first + bytes.fromhex(second))
    assert error == (reason, 2062 + {"uid_changed": 5, "operation_changed": 10}.get(reason, 4))


def test_wrong_direction_is_refused_by_role():
    response = encode_response(1, Operation.HAVE, b"\x00")
    assert decode_all(response, Direction.REQUEST)[1] == ("wrong_direction", 4)
    request = encode_request(1, Operation.HAVE, b"id")
    assert decode_all(request, Direction.RESPONSE)[1] == ("wrong_direction", 4)


def test_truncated_stream_is_reported_at_end_of_stream():
    request = encode_request(1, Operation.HAVE, b"id")
    assert decode_all(request[:-1])[1] == ("truncated", 0)
    assert decode_all(request[:4])[1] == ("truncated", 0)


def test_frame_missing_its_last_bytes_is_not_delivered():
    request = encode_request(1, Operation.GET, b"abcd")
    for withheld in range(1, 6):
        decoder = MessageDecoder(Direction.REQUEST)
        decoder.receive_data(request[:-withheld])
        assert decoder.next_event() is NEED_DATA
        decoder.receive_data(request[-withheld:])
        assert decoder.next_event().payload == b"abcd"
        assert decoder.next_event() is NEED_DATA


# -- ADD checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "id_len", "rest", "expected"),
    [
        (1000, 2, b"k1v", "stored"),
        (limits.MAX_TIMEOUT_MS, 1, b"kv", "stored"),
        (0, 1, b"kv", "stored"),
        (limits.MAX_TIMEOUT_MS + 1, 1, b"kv", Status.ADD_TIMEOUT_RANGE),
        (limits.MAX_TIMEOUT_MS + 1, 100, b"kv", Status.ADD_TIMEOUT_RANGE),  # timeout first
        (1000, 2, b"k1", Status.ADD_CORRUPT),  # no session byte
        (1000, 0, b"", Status.ADD_CORRUPT),
        (1000, 100, b"x" * 20, Status.ADD_CORRUPT),
        (1000, 0, b"data", Status.ADD_ID_RANGE),
        (1000, 65, b"i" * 65 + b"d", Status.ADD_ID_RANGE),
        (1000, 65, b"i" * 65, Status.ADD_CORRUPT),  # corrupt before id range
        (1000, 64, b"i" * 64 + b"d", "stored"),
    ],
)
def test_add_checks_in_legacy_order(timeout, id_len, rest, expected):
    payload = timeout.to_bytes(4, "big") + id_len.to_bytes(4, "big") + rest
    verdict = check_add(payload)
    if expected == "stored":
        assert verdict.timeout_ms == timeout and len(verdict.session_id) == id_len
    else:
        assert verdict is expected


@pytest.mark.parametrize("size", [0, 4, 7])
def test_add_payload_too_short_is_a_protocol_error(size):
    with pytest.raises(RemoteProtocolError) as info:
        check_add(b"\x00" * size)
    assert info.value.reason == "add_payload_too_short"


def test_largest_session_on_the_wire():
    payload = add_payload(b"k", b"s" * limits.MAX_SESSION_ON_WIRE, 1000)
    assert len(payload) == limits.MAX_PAYLOAD
    assert len(check_add(payload).session) == limits.MAX_SESSION_ON_WIRE


# -- responses ---------------------------------------------------------------------------------


def test_interpret_response():
    assert interpret_response(Operation.GET, b"\x01").status is Status.NOTOK
    assert interpret_response(Operation.GET, b"\x01").ambiguous
    assert interpret_response(Operation.GET, b"\x02").status is Status.DISCONNECTED
    assert interpret_response(Operation.GET, b"v").session == b"v"
    assert interpret_response(Operation.GET, b"abcd").session == b"abcd"
    assert interpret_response(Operation.GET, b"").empty
    assert interpret_response(Operation.ADD, b"\x65").status is Status.ADD_MATCHING_SESSION
    assert interpret_response(Operation.ADD, b"\x50").status_name == "UNKNOWN_80"
    assert interpret_response(Operation.HAVE, b"\x00\x00").malformed


def test_request_tracker_matches_by_uid_and_operation():
    tracker = RequestTracker()
    uid = tracker.allocate_uid()
    tracker.add(uid, Operation.GET, "ctx")
    with pytest.raises(LocalProtocolError):
        tracker.add(uid, Operation.GET)
    wrong_op = Response(uid, Operation.HAVE, b"\x00")
    with pytest.raises(RemoteProtocolError) as info:
        tracker.match(wrong_op)
    assert info.value.reason == "operation_mismatch"
    assert tracker.match(Response(uid, Operation.GET, b"\x01")).context == "ctx"
    with pytest.raises(RemoteProtocolError) as info:
        tracker.match(Response(uid, Operation.GET, b"\x01"))
    assert info.value.reason == "unknown_uid"


def test_track_records_under_the_uid_allocate_uid_would_give():
    tracker, reference = RequestTracker(), RequestTracker()
    tracker._next_uid = reference._next_uid = 2**32 - 2
    for tracked in (tracker, reference):
        tracked.add(0, Operation.GET)  # in flight across the wrap
        tracked.add(1, Operation.GET)
    for n in range(4):
        expected = reference.allocate_uid()
        reference.add(expected, Operation.HAVE, n)
        uid = tracker.track(Operation.HAVE, n)
        assert uid == expected
        assert tracker.pending[uid] == (uid, Operation.HAVE, n)
    assert [u for u in tracker.pending] == [0, 1, 2**32 - 2, 2**32 - 1, 2, 3]
    assert len(tracker.pending) == len(tracker) == 6


def test_uid_allocation_wraps_and_skips_uids_in_flight():
    tracker = RequestTracker()
    tracker._next_uid = 2**32 - 1
    tracker.add(0, Operation.GET)
    assert tracker.allocate_uid() == 2**32 - 1
    assert tracker.allocate_uid() == 1
