"""``distcache add|get|remove|have`` as real processes against a real dc_server: exit status
0 hit / 1 miss / 2 error, one-line messages on stderr, raw or hex output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from serverproc import dc_server, free_port


@pytest.fixture(scope="module")
def server():
    with dc_server() as running:
        yield running


def distcache(*args: str, stdin: bytes = b"", env_server: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "DISTCACHE_SERVER"}
    if env_server is not None:
        env["DISTCACHE_SERVER"] = env_server
    done = subprocess.run(
        [sys.executable, "-m", "distcache", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done.returncode, done.stdout, done.stderr.decode()


def test_add_get_have_remove_cycle(server):
    at = ("--server", server.listen)
    assert distcache("add", *at, "cli-key", "hello") == (0, b"", "stored\n")
    assert distcache("add", *at, "cli-key", "hello") == (1, b"", "already present (101)\n")
    assert distcache("get", *at, "cli-key") == (0, b"hello", "")
    assert distcache("have", *at, "cli-key") == (0, b"", "present\n")
    assert distcache("remove", *at, "cli-key") == (0, b"", "removed\n")
    assert distcache("remove", *at, "cli-key") == (1, b"", "not found\n")
    assert distcache("have", *at, "cli-key") == (1, b"", "not found\n")
    assert distcache("get", *at, "cli-key") == (1, b"", "not found\n")


def test_hex_ids_sessions_and_output(server, tmp_path):
    at = ("--server", server.listen)
    assert distcache("add", *at, "--hex", "00ff", "0001feff")[0] == 0
    assert distcache("get", *at, "--hex", "00ff") == (0, b"0001feff\n", "")
    out = tmp_path / "session.bin"
    assert distcache("get", *at, "--hex", "00ff", "--output", str(out))[0] == 0
    assert out.read_bytes() == b"0001feff\n"
    assert distcache("get", *at, "--output", str(out), "--hex", "00ff")[0] == 0
    code, _, err = distcache("add", *at, "--hex", "zz", "00")
    assert code == 2 and err.count("\n") == 1 and "hexadecimal" in err


def test_sessions_from_stdin_and_files(server, tmp_path):
    data = bytes(range(256)) * 40  # binary, multi-frame
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    assert distcache("add", "--server", server.listen, "--file", str(source), "f")[0] == 0
    assert distcache("get", "--server", server.listen, "f")[1] == data
    assert distcache("add", "--server", server.listen, "--file", "-", "s", stdin=b"piped")[0] == 0
    assert distcache("get", "--server", server.listen, "s")[1] == b"piped"


def test_server_from_the_environment(server):
    assert distcache("have", "nothing-here", env_server=server.listen) == (1, b"", "not found\n")
    code, _, err = distcache("have", "x")
    assert code == 2 and "--server" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("get", "--server", "IP:9001", "k"), "listen-only"),
        (("get", "--server", "nonsense", "k"), "bad address"),
        (("add", "--server", "IP:127.0.0.1:9", "--timeout-ms", "500", "k", "v"), "501"),
        (("add", "--server", "IP:127.0.0.1:9", "k"), "SESSION"),
        (("add", "--server", "IP:127.0.0.1:9", "--file", "/nonexistent/s", "k"), "cannot read"),
        (("get", "--server", "IP:127.0.0.1:9", "--wait", "0", "k"), "--wait"),
        (("get", "--server", "IP:127.0.0.1:9", "--output", "/", "k"), "refused"),
    ],
)
def test_errors_are_one_line_with_status_2(args, message):
    code, out, err = distcache(*args)
    assert (code, out) == (2, b"")
    assert err.count("\n") == 1 and message in err, err


def test_connection_refused_is_an_error():
    code, _, err = distcache("have", "--server", f"IP:127.0.0.1:{free_port()}", "k")
    assert code == 2 and "refused" in err and err.count("\n") == 1


def test_refused_add_and_short_timeouts_with_any_timeout(server):
    at = ("--server", server.listen)
    assert distcache("add", *at, "x" * 65, "v") == (
        1,
        b"",
        "refused: id empty or longer than 64 bytes (103)\n",
    )
    assert distcache("add", *at, "--any-timeout", "--timeout-ms", "1", "brief", "v")[0] == 0


def test_refused_arguments_name_the_flags_not_the_library_keywords(server):
    at = ("--server", server.listen)
    code, _, short = distcache("add", *at, "--timeout-ms", "1", "brief", "v")
    assert code == 2 and "--any-timeout" in short, short
    code, _, ambiguous = distcache("add", *at, "--hex", "6b", "01")
    assert code == 2 and "--allow-ambiguous" in ambiguous, ambiguous
    for message in (short, ambiguous):
        assert "allow_ambiguous" not in message and "strict_timeouts" not in message
    assert distcache("add", *at, "--hex", "--allow-ambiguous", "6b", "01")[0] == 0


def test_the_library_error_names_its_own_keyword():
    from distcache.client import InvalidRequest
    from distcache.client.calls import add_call

    with pytest.raises(InvalidRequest) as refused:
        add_call(b"k", b"\x02", 60_000)
    assert refused.value.override == "allow_ambiguous=True"
    assert "allow_ambiguous=True" in str(refused.value)
