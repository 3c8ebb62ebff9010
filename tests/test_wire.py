"""The generated hot-path header codec agrees with the construct schemas on arbitrary bytes."""

from __future__ import annotations

import struct

import pytest
from construct import StreamError
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distcache.wire import FrameHeader, fastcodec, limits
from distcache.wire.schema import FieldRuleError, fields_of

VALID = bytes.fromhex("0011000000000000020001010020")


def construct_verdict(data: bytes):
    """(values tuple, None) or (None, failing reason) according to construct."""
    try:
        parsed = FrameHeader.parse(data)
    except FieldRuleError as error:
        return None, error.reason
    return tuple(parsed[name] for name in fastcodec.HEADER_FIELDS), None


def header_bytes():
    """Headers that are mostly plausible, so every check gets exercised, plus pure noise."""
    plausible = st.builds(
        lambda level, is_response, uid, op_class, op, complete, data_len: struct.pack(
            ">LBLBBBH", level, is_response, uid, op_class, op, complete, data_len
        ),
        st.sampled_from([0x00110000, 0x0011FFFF, 0x00100000, 0x00120000, 0]),
        st.sampled_from([0, 1, 2, 255]),
        st.integers(0, 2**32 - 1),
        st.sampled_from([0, 0, 1, 255]),
        st.sampled_from([0, 1, 2, 3, 4, 255]),
        st.sampled_from([0, 1, 1, 2]),
        st.sampled_from([0, 1, 2047, 2048, 2049, 65535]),
    )
    return st.one_of(plausible, st.binary(min_size=14, max_size=14))


@given(header_bytes())
@example(VALID)
@settings(max_examples=1500)
def test_fast_decoder_agrees_with_construct(data):
    values, reason = construct_verdict(data)
    fast = fastcodec.decode_header(data, 0)
    assert fast == values
    failure = fastcodec.first_failure(data, 0)
    assert (failure.reason if failure else None) == reason


@given(header_bytes(), st.integers(0, 13))
@settings(max_examples=800)
def test_partial_header_verdict_is_a_prefix_of_the_full_one(data, available):
    """A verdict on a partial header uses only received bytes and never contradicts the full one."""
    partial = fastcodec.first_failure(data[:available] + b"\xee" * 20, 0, available)
    full = fastcodec.first_failure(data, 0)
    if available < limits.MIN_BYTES_EXAMINED:
        assert partial is None
    if partial is not None:
        assert partial == full
    # Garbage after the received bytes must not matter.
    assert fastcodec.first_failure(data[:available], 0, available) == partial


def test_nothing_is_examined_before_five_bytes():
    assert fastcodec.first_failure(b"GET ", 0) is None
    assert fastcodec.first_failure(b"GET /", 0).reason == "bad_version"


@pytest.mark.parametrize(
    ("hex_header", "reason", "offset"),
    [
        ("0010000000000000010001010000", "bad_version", 0),
        ("0011000002000000010001010000", "bad_is_response", 4),
        ("0011000000000000010101010000", "bad_op_class", 9),
        ("0011000000000000010004010000", "bad_operation", 10),
        ("0011000000000000010001020000", "bad_complete", 11),
        ("0011000000000000010001010801", "bad_data_len", 12),
        ("00110000000000000100010007ff", "short_non_final_frame", 12),
    ],
)
def test_each_field_check(hex_header, reason, offset):
    failure = fastcodec.first_failure(bytes.fromhex(hex_header), 0)
    assert (failure.reason, failure.offset) == (reason, offset)


@given(
    st.integers(0, 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 3),
    st.integers(0, limits.MAX_FRAME_DATA),
)
def test_encode_header_matches_construct_build(is_response, uid, op, data_len):
    values = dict(
        proto_level=limits.PROTOCOL_LEVEL,
        is_response=is_response,
        request_uid=uid,
        op_class=0,
        operation=op,
        complete=1,
        data_len=data_len,
    )
    built = FrameHeader.build(values)
    assert fastcodec.encode_header(**values) == built
    assert fastcodec.decode_header(built, 0) == tuple(values[n] for n in fastcodec.HEADER_FIELDS)


def test_construct_refuses_to_build_illegal_values():
    with pytest.raises(FieldRuleError):
        FrameHeader.build(
            dict(
                proto_level=limits.PROTOCOL_LEVEL,
                is_response=0,
                request_uid=1,
                op_class=0,
                operation=9,
                complete=1,
                data_len=0,
            )
        )


def test_short_input_is_a_stream_error_for_construct():
    with pytest.raises(StreamError):
        FrameHeader.parse(VALID[:10])


def test_every_schema_field_is_documented():
    from distcache.wire.schema import MESSAGES, Frame

    for struct_ in [FrameHeader, Frame, *(m.schema for m in MESSAGES)]:
        for field in fields_of(struct_):
            assert field.doc.strip(), f"{struct_} field {field.name} has no doc string"
