"""``distcache health``: exit 0 healthy, 1 unhealthy, 2 usage, against real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from proxyproc import dc_client
from serverproc import dc_server, free_port


def health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distcache", "health", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_a_running_server_is_healthy():
    with dc_server() as server:
        result = health(server.listen)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy: answered in ")


def test_a_closed_port_is_unhealthy():
    result = health(f"IP:127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: ")
    assert "Traceback" not in result.stderr


def test_a_server_that_does_not_answer_is_unhealthy_within_the_timeout():
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = health(f"IP:127.0.0.1:{port}", "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: ")
    assert elapsed < 10  # the timeout, plus the interpreter's start-up


def test_a_proxy_without_its_server_is_unhealthy(tmp_path):
    path = tmp_path / "proxy.sock"
    with dc_client(str(path), f"IP:127.0.0.1:{free_port()}"):
        result = health(f"UNIX:{path}")
    assert result.returncode == 1
    assert "unhealthy" in result.stdout


def test_a_proxy_with_its_server_is_healthy(tmp_path):
    path = tmp_path / "proxy.sock"
    with dc_server() as server, dc_client(str(path), server.listen):
        result = health(f"UNIX:{path}", "--quiet")
    assert (result.returncode, result.stdout) == (0, "")


def test_usage_errors_exit_2():
    assert health().returncode == 2
    assert health("IP:127.0.0.1:9001", "--timeout", "0").returncode == 2
    bad = health("IP:nonsense")
    assert bad.returncode == 2
    assert bad.stderr.startswith("distcache health: error: ")
