"""The TLS guide, run as an operator would: its throw-away CA pasted into a shell, then every
command block of the guide, with only the host's names, paths and port replaced: install the
files, dc_server with a TLS and a UNIX listener, dc_client forwarding httpd's UNIX socket over
TLS, the checks (the conformance TLS profile included), SIGHUP renewal and the clean stop."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from capturing import distcache
from serverproc import free_port

GUIDE = Path(__file__).parent.parent / "docs" / "guide" / "tls.rst"
#: The blocks an operator types, in the guide's order.
BLOCKS = ("tls-install-cache-host", "tls-cache-host", "tls-install-web-host", "tls-web-host",
          "tls-checking", "tls-renewing")  # fmt: skip


def guide_block(name: str) -> str:
    """The shell lines of the code block named ``name`` in the guide."""
    text = GUIDE.read_text()
    block = text.split(f":name: {name}\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines).strip() + "\n"


def test_the_guide_blocks_are_found():
    assert guide_block("tls-throw-away-ca").startswith("CACHE_HOST=")
    for name in BLOCKS:
        assert guide_block(name).strip(), name


def test_the_guides_commands_stay_within_the_programs_limits():
    from distcache.wire.limits import MAX_CACHE_SESSIONS, MIN_CACHE_SESSIONS

    sessions = re.findall(r"-sessions (\d+)", GUIDE.read_text())
    assert sessions and all(MIN_CACHE_SESSIONS <= int(n) <= MAX_CACHE_SESSIONS for n in sessions)


class Syslog:
    """A datagram socket standing in for /dev/log: what the daemons log with ``-log syslog``."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # the daemons write to it after changing user
        self.sock.setblocking(False)
        self.lines: list[str] = []

    def text(self) -> str:
        while True:
            try:
                self.lines.append(self.sock.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return "\n".join(self.lines)

    def wait_for(self, needle: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            assert time.monotonic() < deadline, f"{needle!r} never logged:\n{self.text()}"
            time.sleep(0.05)


def for_this_host(script: str, root: Path, port: int, syslog: str) -> str:
    """The guide's lines with this test's host: its directories, port, log socket and users."""
    script = script.replace("/etc/distcache", str(root / "etc"))
    script = script.replace("/run/distcache", str(root / "run"))
    script = script.replace("TLS:0.0.0.0:9001", f"TLS:127.0.0.1:{port}")
    script = script.replace("cache.example.net:9001", f"localhost:{port}")
    script = script.replace("-log syslog", f"-log syslog:{syslog}")
    python = sys.executable
    script = re.sub(
        r"^(dc_server|dc_client) ", rf"{python} -m distcache.cli.\1 ", script, flags=re.M
    )
    script = re.sub(r"^distcache ", rf"{python} -m distcache ", script, flags=re.M)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
        script = script.replace("-o distcache -g distcache", f"-o nobody -g {group}")
        script = script.replace("-user distcache", "-user nobody")
        script = script.replace("www-data", "nobody")
    else:  # no other user to become: the same commands, as ourselves
        script = script.replace("-o distcache -g distcache ", "")
        script = script.replace("-user distcache ", "")
        script = script.replace("-sockowner www-data ", "")
    return script


def run_block(name: str, root: Path, port: int, syslog: str, cwd: Path, **expect) -> str:
    script = for_this_host(guide_block(name), root, port, syslog)
    done = subprocess.run(["sh", "-e", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == expect.get("status", 0), (script, done.stdout, done.stderr)
    return done.stdout


def stop(pidfile: Path) -> None:
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"{pidfile.name} did not stop"


def test_the_guides_commands_run_the_guides_topology():
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    if shutil.which("install") is None:
        pytest.skip("install(1) is not available")
    # Not pytest's tmp_path: its directories are private to root, and the daemons change user.
    root = Path(tempfile.mkdtemp(prefix="tls-guide-"))
    os.chmod(root, 0o755)
    try:
        run_the_guide(root)
    finally:
        for pidfile in (root / "run" / "dc_client.pid", root / "run" / "dc_server.pid"):
            with contextlib.suppress(OSError, ValueError):  # already stopped, or never started
                stop(pidfile)
        shutil.rmtree(root, ignore_errors=True)


def run_the_guide(root: Path) -> None:
    script = re.sub(r"^CACHE_HOST=.*$", "CACHE_HOST=localhost", guide_block("tls-throw-away-ca"),
                    flags=re.M)  # fmt: skip
    made = subprocess.run(["sh", "-e", "-c", script], cwd=root, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "web2.crt: OK" in made.stdout
    pki, run = root / "distcache-pki", root / "run"
    port = free_port()
    syslog = Syslog(str(root / "log.sock"))
    try:
        here = {"root": root, "port": port, "syslog": str(root / "log.sock"), "cwd": pki}
        run_block("tls-install-cache-host", **here)
        run_block("tls-cache-host", **here)
        syslog.wait_for("dc_server[")
        assert f"serving on TLS:127.0.0.1:{port}, UNIX:{run / 'local'};" in syslog.text()
        run_block("tls-install-web-host", **here)
        run_block("tls-web-host", **here)
        syslog.wait_for("dc_client[")
        assert f"forwarding to TLS:localhost:{port}" in syslog.text()

        checked = run_block("tls-checking", **here, status=3)  # incomplete: not its own server
        assert checked.startswith("hello"), checked  # what add stored, read through dc_client
        assert "verdict: INCOMPLETE (exit status 3)" in checked
        assert " FAIL " not in checked and "ERROR" not in checked

        # The refusals the guide promises: no certificate, and no -tls-ca (the system's store).
        tls = f"TLS:localhost:{port}"
        etc = root / "etc"
        result = distcache("have", "--server", tls, "--tls-ca", str(etc / "ca.pem"), "probe-1")
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
        result = distcache("have", "--server", tls, "--tls-cert", str(etc / "web1.crt"),
                           "--tls-key", str(etc / "web1.key"), "probe-1")  # fmt: skip
        assert result.returncode == 2 and b"certificate verify failed" in result.stderr

        run_block("tls-renewing", **here)
        syslog.wait_for("TLS certificates reloaded", count=2)
        assert "reload failed" not in syslog.text()

        for name in ("dc_client", "dc_server"):
            stop(run / f"{name}.pid")
        # The user the daemons became removed their pid files: the run directory is theirs.
        assert not (run / "dc_server.pid").exists() and not (run / "dc_client.pid").exists()
    finally:
        syslog.sock.close()
