"""``-pidfile``: complete before the first listener accepts, removed on a clean exit; for
dc_server and dc_client, as one process, with ``-workers`` and as daemons.

Two checks per program and mode. From outside, a client connects in a tight loop from before
the program starts and reads the pid file the moment a connection is accepted (what a
supervisor or a script does). From inside, the real program runs with its ``write_pidfile``
wrapped so that it records, as it writes the file, whether any socket of the process is already
listening: a program that listens before its pid file is written fails every time, not only
when the outside reader happens to hit the window.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from serverproc import free_port

TIMEOUT = 20.0

#: Runs a program with ``write_pidfile`` wrapped: first it notes every listening socket of the
#: process (SO_ACCEPTCONN) in the file named by argv[1], then the real function writes the file.
INSTRUMENTED = textwrap.dedent(
    """
    import json, os, runpy, socket, sys
    import distcache.cli.service as service

    report, program = sys.argv[1], sys.argv[2]
    write_pidfile = service.write_pidfile

    def listening() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    continue
                with socket.socket(fileno=os.dup(int(fd))) as sock:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        found.append(repr(sock.getsockname()))
            except OSError:
                continue
        return found

    def checked_write_pidfile(path: str) -> None:
        with open(report, "w") as out:
            json.dump({"pid": os.getpid(), "listening": listening()}, out)
        write_pidfile(path)

    service.write_pidfile = checked_write_pidfile
    sys.argv = [program, *sys.argv[3:]]
    runpy.run_module(f"distcache.cli.{program}", run_name="__main__")
    """
)

MODES = {
    "alone": [],
    "workers": ["-workers", "2"],
    "daemon": ["-daemon"],
    "daemon-workers": ["-daemon", "-workers", "2"],
}


def _connect(address) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class FirstAccept(threading.Thread):
    """Connects in a tight loop until a connection is accepted, then reads the pid file at once."""

    def __init__(self, address, pidfile: Path) -> None:
        super().__init__(daemon=True)
        self.address, self.pidfile = address, pidfile
        self.read: str | None = None
        self.done = threading.Event()
        self.give_up = threading.Event()

    def run(self) -> None:
        while not self.give_up.is_set():
            try:
                sock = _connect(self.address)
            except OSError:
                continue  # not bound yet, or bound and not listening: refused
            try:
                self.read = self.pidfile.read_text() if self.pidfile.exists() else ""
            finally:
                sock.close()
                self.done.set()
            return


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("program", ["dc_server", "dc_client"])
def test_the_pidfile_is_complete_before_the_first_accept_and_removed_at_exit(program, mode):
    directory = Path(tempfile.mkdtemp(prefix="dcpid"))  # short: a UNIX socket path lives here
    try:
        pidfile, report = directory / "run" / "dc.pid", directory / "report.json"
        pidfile.parent.mkdir()
        if program == "dc_server":
            port = free_port()
            address, args = ("127.0.0.1", port), ["-listen", f"IP:127.0.0.1:{port}"]
        else:
            address = str(directory / "scache")
            args = ["-listen", f"UNIX:{address}", "-server", f"IP:127.0.0.1:{free_port()}"]
        args += ["-pidfile", str(pidfile), *MODES[mode]]
        reader = FirstAccept(address, pidfile)
        reader.start()
        launcher = subprocess.Popen(
            [sys.executable, "-c", INSTRUMENTED, str(report), program, *args],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.done.wait(TIMEOUT), "no connection was ever accepted"
        finally:
            reader.give_up.set()
        if "daemon" in mode:
            _, stderr = launcher.communicate(timeout=TIMEOUT)
            assert launcher.returncode == 0, stderr  # the launcher; the daemon goes on
        checked = json.loads(report.read_text())
        pid = checked["pid"]
        try:
            assert checked["listening"] == [], "a socket listened before the pid file was written"
            assert reader.read == str(pid), "the pid file, read as soon as a client got in"
            assert pidfile.read_text() == str(pid)
            if "daemon" not in mode:
                assert pid == launcher.pid
        finally:
            os.kill(pid, signal.SIGTERM)
            if "daemon" in mode:
                _wait(lambda: _gone(pid), "the daemon to stop")
            else:
                assert launcher.wait(TIMEOUT) == 0, launcher.stderr.read()
        assert not pidfile.exists(), "a clean exit removes the pid file"
        assert list(pidfile.parent.iterdir()) == [], "no temporary file is left beside it"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("program", ["dc_server", "dc_client"])
def test_a_stop_signal_as_soon_as_the_pidfile_appears_is_a_clean_stop(program, mode):
    """A supervisor may signal the pid as soon as it reads it, before the program serves: the
    program still stops cleanly (exit 0, pid file removed, dc_client's socket file too), not by
    the signal's default action. Three rounds: the window before a program's handlers are in
    place is short."""
    for _ in range(3):
        directory = Path(tempfile.mkdtemp(prefix="dcpid"))
        try:
            pidfile, socket_file = directory / "dc.pid", directory / "scache"
            if program == "dc_server":
                args = ["-listen", f"UNIX:{socket_file}"]
            else:
                args = ["-listen", f"UNIX:{socket_file}", "-server", f"IP:127.0.0.1:{free_port()}"]
            launcher = subprocess.Popen(
                [sys.executable, "-m", f"distcache.cli.{program}", *args, "-pidfile", str(pidfile)]
                + MODES[mode],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + TIMEOUT
            while not pidfile.exists():  # no sleep: signal the moment the file is there
                assert launcher.poll() is None or "daemon" in mode, launcher.stderr.read()
                assert time.monotonic() < deadline, "no pid file"
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            if "daemon" in mode:
                _wait(lambda pid=pid: _gone(pid), "the daemon to stop")
                launcher.wait(TIMEOUT)
            else:
                assert launcher.wait(TIMEOUT) == 0, launcher.stderr.read()
            assert not pidfile.exists(), "a clean exit removes the pid file"
            if program == "dc_client":  # dc_server leaves it, as the legacy did
                assert not socket_file.exists(), "and the socket file"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
