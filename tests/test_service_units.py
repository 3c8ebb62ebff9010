"""The systemd units the guides print: accepted by systemd, and their command lines run.

Not under systemd (a test cannot install units): ``systemd-analyze verify`` checks every
directive where it is installed, and each ``ExecStart`` runs with its own flags, changed only
where this machine differs (paths under a temporary directory, free ports, the test's own user
and group for ``distcache`` and ``www-data``; ``-user`` only when the test runs as root, since
changing user needs it).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from guides import exec_start, program, replace_arg, unit_files
from serverproc import free_port
from tlspki import PKI

from distcache.client import Client

PAGES = ("apache", "dc_server", "dc_client")
UNITS = [(page, name) for page in PAGES for name in unit_files(page)]


def test_every_page_has_its_units():
    assert {page for page, _ in UNITS} == set(PAGES)


@pytest.mark.parametrize(("page", "name"), UNITS)
def test_systemd_accepts_the_unit(tmp_path, page, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = unit_files(page)[name]
    binary, _ = exec_start(unit)
    installed = Path(sys.executable).parent / Path(binary).name
    assert installed.exists(), f"{installed} is not installed"
    path = tmp_path / name
    path.write_text(unit.replace(binary, str(installed)))
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=120
    )
    about_the_unit = [line for line in result.stderr.splitlines() if name in line]
    assert result.returncode == 0 and not about_the_unit, result.stderr


def _as_here(args: list[str], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's flags for this machine, and where its listeners ended up."""
    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    where = {}
    for flag, value in (("-sockowner", me), ("-sockgroup", group), ("-user", me)):
        if flag in args:
            args = replace_arg(args, flag, value)
    if "-user" in args and os.geteuid() != 0:
        index = args.index("-user")
        args = args[:index] + args[index + 2 :]
    listen = args[args.index("-listen") + 1]
    if listen.startswith("UNIX:"):
        where["listen"] = f"UNIX:{tmp_path / Path(listen[5:]).name}"
        args = replace_arg(args, "-listen", where["listen"])
    if "-metrics" in args:
        where["metrics"] = f"127.0.0.1:{free_port()}"
        args = replace_arg(args, "-metrics", where["metrics"])
    return args, where


def _check_socket_file(args: list[str], address: str) -> None:
    mode = os.stat(address.removeprefix("UNIX:"))
    if "-sockperms" in args:
        assert stat.S_IMODE(mode.st_mode) == int(args[args.index("-sockperms") + 1], 8)
    if "-sockgroup" in args:
        assert mode.st_gid == os.getgid()


def _scrape(address: str, family: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert f"{family}" in text
    return text


def test_the_dc_server_guide_unit_runs(tmp_path):
    _, args = exec_start(unit_files("dc_server")["distcache.service"])
    args, where = _as_here(args, tmp_path)
    with program("dc_server", args, where["listen"]):
        _check_socket_file(args, where["listen"])
        with Client(where["listen"]) as client:
            assert client.add(b"id", b"session", 60_000)
            assert client.get(b"id") == b"session"
        _scrape(where["metrics"], "distcache_current_sessions")


def test_the_dc_client_guide_unit_runs(tmp_path):
    """The proxy forwards over mutual TLS, to a server of the same throw-away CA."""
    _, args = exec_start(unit_files("dc_client")["distcache-proxy.service"])
    args, where = _as_here(args, tmp_path)
    pki = PKI(tmp_path)
    port = free_port()
    args = replace_arg(args, "-server", f"TLS:localhost:{port}")
    for flag, path in (("-tls-cert", pki.client.cert), ("-tls-key", pki.client.key),
                       ("-tls-ca", pki.ca)):  # fmt: skip
        args = replace_arg(args, flag, path)
    server = ["-listen", f"TLS:127.0.0.1:{port}", "-tls-cert", pki.server.cert,
              "-tls-key", pki.server.key, "-tls-ca", pki.ca]  # fmt: skip
    with (
        program("dc_server", server, f"IP:127.0.0.1:{port}"),
        program("dc_client", args, where["listen"]),
    ):
        _check_socket_file(args, where["listen"])
        with Client(where["listen"]) as client:
            for _ in range(100):  # until the proxy's connection to the server is up
                if client.add(b"id", b"session", 60_000):
                    break
                time.sleep(0.05)
            assert client.get(b"id") == b"session"
        _scrape(where["metrics"], "distcache_upstream")
