"""Rough edges of the command lines: each message names what the user typed and each exit status
means what it says."""

from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys

import pytest
from namespaces import needs_namespaces, run_in_namespace
from serverproc import free_port, run_program

from distcache.cli.legacy_flags import FlagExit
from distcache.protocol import get_request


def distcache(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distcache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **options,
    )


def test_an_unknown_option_is_named():
    result = distcache("--bogus")
    assert result.returncode == 2
    assert "--bogus" in result.stderr, result.stderr


def test_a_missing_command_is_said_plainly():
    result = distcache()
    assert result.returncode == 2 and "COMMAND" in result.stderr


def test_decoding_a_file_that_is_no_stream_gives_a_hint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are notes, not a capture\n")
    result = distcache("decode", str(path))
    assert result.returncode == 1
    assert "bad_version" in result.stdout
    assert "hint:" in result.stderr and "pcap" in result.stderr


def _pcap_header() -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def test_a_pcap_cut_right_after_a_record_header_is_an_error(tmp_path):
    path = tmp_path / "cut.pcap"
    path.write_bytes(_pcap_header() + struct.pack("<IIII", 1, 0, 60, 60))
    result = distcache("decode", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "truncated" in result.stderr


def test_a_pcap_ending_on_a_record_boundary_is_fine(tmp_path):
    path = tmp_path / "empty.pcap"
    path.write_bytes(_pcap_header())
    assert distcache("decode", str(path)).returncode == 0


def test_decode_into_a_closed_pipe_exits_quietly(tmp_path):
    path = tmp_path / "many.bin"
    path.write_bytes(b"".join(get_request(uid, b"k%d" % uid) for uid in range(20_000)))
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` that has read all it wanted
    try:
        result = subprocess.run(
            [sys.executable, "-m", "distcache", "decode", str(path)],
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert result.returncode == 0
    assert result.stderr == b""


def test_wait_zero_is_refused_as_the_flag():
    result = distcache("have", "--server", "IP:127.0.0.1:9", "--wait", "0", "k")
    assert result.returncode == 2
    assert "--wait" in result.stderr and "timed out" not in result.stderr


def test_dc_test_against_a_closed_port_says_connection_refused():
    result = run_program("dc_test", "-connect", f"IP:127.0.0.1:{free_port()}", "-ops", "3")
    assert result.returncode == 1
    assert "Connection refused" in result.stderr, result.stderr
    assert "Connect call failed" not in result.stderr


def test_usage_asked_for_goes_to_stdout():
    for program in ("dc_server", "dc_client", "dc_test", "dc_snoop"):
        result = run_program(program, "-h")
        assert result.returncode == 0, program
        assert result.stdout.startswith(f"Usage: {program}"), program
        assert result.stderr == "", program


@needs_namespaces
def test_dc_client_on_the_shared_default_refuses_what_is_there_and_says_why():
    # A private /tmp: the default socket path is shared by the whole host.
    script = r"""
        echo data > /tmp/scache
        "$PYTHON" -m distcache.cli.dc_client -server IP:127.0.0.1:9; echo "status $?"
        cat /tmp/scache
        rm /tmp/scache
        "$PYTHON" -m distcache.cli.dc_client -server IP:127.0.0.1:9 2>/dev/null &
        for _ in $(seq 100); do [ -S /tmp/scache ] && break; sleep 0.1; done
        "$PYTHON" -m distcache.cli.dc_client -server IP:127.0.0.1:9; echo "status $?"
    """
    result = run_in_namespace(script)
    assert result.stdout.splitlines() == ["status 1", "data", "status 1"], result
    assert "is not a socket; refusing to replace it" in result.stderr
    assert "is in use by a running server" in result.stderr
    assert result.stderr.count("no -listen was given") == 2


EXTENSION_WORDS = [
    (program, word)
    for program in ("dc_server", "dc_test", "dc_client", "dc_snoop")
    for flag in importlib.import_module(f"distcache.cli.{program}").COMMAND_LINE.flags
    if flag.metavar is not None
    for word in flag.names
    if flag.extension or word != flag.names[0]
]


@pytest.mark.parametrize(("program", "word"), EXTENSION_WORDS)
def test_an_extension_flag_is_named_as_typed(program, word):
    """The legacy's extra dash (``Error, --sessions ...``) belongs to its own flags; an
    extension or an alias is named with the one dash the user typed."""
    command_line = importlib.import_module(f"distcache.cli.{program}").COMMAND_LINE
    with pytest.raises(FlagExit) as exit:
        command_line.parse([word])
    assert exit.value.lines[0] == f"Error, {word} requires an argument"


def test_an_invalid_extension_argument_names_the_flag_as_typed():
    result = run_program("dc_server", "-listen", "IP:127.0.0.1:1", "-min-timeout", "soon")
    assert result.returncode == 1
    assert result.stderr.startswith("Error, -min-timeout given an invalid argument\n")
    result = run_program("dc_server", "-listen", "IP:127.0.0.1:1", "-sessions", "1")
    assert result.stderr.startswith("Error, --sessions given an invalid argument\n")
