"""The compiled decoder: generated from the schema, and equal to the pure-Python decoder.

Both decoders run in this one process (``MessageDecoder(accelerated=False)`` is the pure one) on
the same bytes: valid streams, corrupted ones and arbitrary bytes, split at every point, for each
receiving role. They must hand out the same events and fail with the same error at the same
offset. The C header is regenerated from the schema and compared with the checked-in one.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distcache.protocol import (
    NEED_DATA,
    MessageDecoder,
    RemoteProtocolError,
    _accelerator,
    decoder,
    encode_message,
)
from distcache.wire import Direction, Operation, cheader, limits

HEADER = pathlib.Path(decoder.__file__).with_name("_cdecoder_schema.h")
REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def _can_build() -> bool:
    """A C compiler and this Python's headers: what pip needs to build the extension."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    compiler = any(
        os.access(os.path.join(d, cc), os.X_OK) for d in os.environ.get("PATH", "").split(":")
    )
    return compiler and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))


# Where a C compiler and the Python headers exist the install builds the extension; a missing
# one is a failure, not a skip. DISTCACHE_NO_EXTENSIONS=1 (the pure run of the CI) skips the comparisons.
needs_compiled = pytest.mark.skipif(
    _accelerator.NO_EXTENSIONS, reason="DISTCACHE_NO_EXTENSIONS is set: pure Python only"
)


def test_generated_header_matches_the_schema():
    assert HEADER.read_text() == cheader.render(), (
        "regenerate it: python -m distcache.wire.cheader > distcache/protocol/_cdecoder_schema.h"
    )


def test_translator_refuses_what_it_does_not_know():
    assert cheader.c_expression("v in [1, 2]", {"v": "x"}) == "(x == 0x1UL || x == 0x2UL)"
    assert cheader.c_expression("a == 1 or b <= 3", {"a": "a", "b": "b"}) == (
        "((a == 0x1UL) || (b <= 0x3UL))"
    )
    for test in ("v * 2 == 4", "f(v)", "v == -1", "1 < v < 3", "w == 1"):
        with pytest.raises(ValueError):
            cheader.c_expression(test, {"v": "v"})


@needs_compiled
def test_the_compiled_decoder_is_built_and_used():
    if not _can_build():
        pytest.skip("no C compiler or Python headers: the pure-Python decoder does all the work")
    assert decoder.ACCELERATED, "the C accelerator is not built: run pip install -e ."
    assert MessageDecoder()._fast is not None
    assert MessageDecoder(accelerated=False)._fast is None


@pytest.mark.parametrize(("value", "expected"), [("1", "False"), ("", "True")])
def test_the_environment_forces_pure_python(value, expected):
    if expected == "True" and not decoder.ACCELERATED:
        pytest.skip("the C accelerator is not built here")
    env = dict(os.environ, DISTCACHE_NO_EXTENSIONS=value, PYTHONPATH=str(REPOSITORY))
    code = "from distcache.protocol.decoder import ACCELERATED; print(ACCELERATED)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


@needs_compiled
def test_a_build_from_another_schema_is_not_used(monkeypatch):
    if not decoder.ACCELERATED:
        pytest.skip("the C accelerator is not built here")
    monkeypatch.setattr(cheader, "digest", lambda: "0" * 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _accelerator.load() is None
    assert "another schema" in str(caught[0].message)


# -- both decoders on the same bytes --------------------------------------------------------------


def run(stream: bytes, cut: int, receives, accelerated: bool):
    """Everything a decoder hands out for ``stream`` arriving in two pieces, then its end."""
    dec = MessageDecoder(receives, accelerated=accelerated)
    out = []
    try:
        for piece in (stream[:cut], stream[cut:], b""):
            if piece or not dec._eof:
                dec.receive_data(piece)
            while (event := dec.next_event()) is not NEED_DATA:
                out.append(
                    (type(event).__name__, tuple(event) if isinstance(event, tuple) else event)
                )
                if not isinstance(event, tuple):
                    return out
    except RemoteProtocolError as error:
        out.append(("error", error.reason, error.offset, error.field, error.detail))
    return out


def assert_agree(stream: bytes, receives) -> None:
    for cut in range(len(stream) + 1):
        pure = run(stream, cut, receives, accelerated=False)
        compiled = run(stream, cut, receives, accelerated=True)
        assert compiled == pure, f"cut at {cut}"


messages = st.builds(
    encode_message,
    st.sampled_from(list(Direction)),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(Operation)),
    st.one_of(st.binary(max_size=30), st.binary(min_size=2045, max_size=2100)),
)
roles = st.sampled_from([None, *Direction])


@needs_compiled
@given(st.lists(messages, min_size=1, max_size=3), roles)
@settings(max_examples=60, deadline=None)
def test_both_decoders_agree_on_valid_streams(encoded, receives):
    assert_agree(b"".join(encoded), receives)


@needs_compiled
@given(
    st.lists(messages, min_size=1, max_size=2),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
    roles,
)
@settings(max_examples=150, deadline=None)
def test_both_decoders_agree_on_corrupted_streams(encoded, changes, receives):
    data = bytearray(b"".join(encoded))
    for position, value in changes:
        data[position % len(data)] = value
    assert_agree(bytes(data), receives)


@needs_compiled
@given(st.binary(max_size=80), roles)
@settings(max_examples=300, deadline=None)
def test_both_decoders_agree_on_arbitrary_bytes(stream, receives):
    assert_agree(stream, receives)


@needs_compiled
@given(st.binary(min_size=1, max_size=40), roles)
@settings(max_examples=150, deadline=None)
def test_both_decoders_agree_on_a_legal_header_before_arbitrary_bytes(tail, receives):
    head = encode_message(Direction.REQUEST, 7, Operation.GET, tail[:5])
    # An all-legal header whose frame's bytes are arbitrary: every split of header and data.
    assert_agree(head + tail, receives)
    assert len(head) <= limits.HEADER_SIZE + 5
