"""The Apache guide's unit files and command lines are accepted by the programs they start."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capturing import distcache
from serverproc import free_port
from tlspki import PKI

from distcache.address import parse_address
from distcache.client import Client, DistcacheError, Mode

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "apache.rst"
EXEC_START = re.compile(r"^\s*ExecStart=(\S+)(.*)$", re.MULTILINE)


def exec_starts() -> list[tuple[str, list[str]]]:
    found = [(Path(p).name, shlex.split(rest)) for p, rest in EXEC_START.findall(GUIDE.read_text())]
    assert {name for name, _ in found} == {"dc_server", "dc_client"}
    return found


@pytest.mark.parametrize(("program", "args"), exec_starts())
def test_every_unit_command_line_parses(program, args):
    module = importlib.import_module(f"distcache.cli.{program}")
    options = module.COMMAND_LINE.parse(args)
    assert not options.get("daemon"), "under systemd the programs stay in the foreground"
    listens = options["listen"]  # dc_server takes several -listen
    for listen in listens if isinstance(listens, list) else [listens]:
        parse_address(listen).require_listen()
    if program == "dc_client":
        parse_address(options["server"]).require_connect()


def test_the_cache_path_apache_uses_is_the_one_dc_client_listens_on():
    text = GUIDE.read_text()
    cache = re.search(r"SSLSessionCache\s+dc:(\S+)", text).group(1)
    listen = dict(
        (args[i], args[i + 1]) for name, args in exec_starts() if name == "dc_client" for i in (0,)
    )["-listen"]
    assert cache == listen
    assert "SSLSessionTickets      off" in text
    assert "apr_time_as_msec(expiry)" in text


def test_the_units_speak_mutual_tls_between_the_hosts(tmp_path):
    """The two units' command lines, run with this host's files and port: Apache's socket on the
    web host reaches the cache host's dc_server over TLS, each side checking the other."""
    pki = PKI(tmp_path)
    files = {"server.crt": pki.server.cert, "server.key": pki.server.key, "ca.pem": pki.ca,
             "web1.crt": pki.client.cert, "web1.key": pki.client.key}  # fmt: skip
    port = free_port()

    def for_this_host(args: list[str]) -> list[str]:
        line = " ".join(args)
        for name, path in files.items():
            line = line.replace(f"/etc/distcache/{name}", path)
        line = line.replace("/run/distcache", str(tmp_path))
        line = line.replace("0.0.0.0:9001", f"127.0.0.1:{port}")
        return line.replace("cache.example.net:9001", f"localhost:{port}").split()

    units = dict(exec_starts())
    for program, args in units.items():
        assert {"-tls-cert", "-tls-key", "-tls-ca"} <= set(args), program
    processes = []
    try:
        for program in ("dc_server", "dc_client"):
            argv = [
                sys.executable,
                "-m",
                f"distcache.cli.{program}",
                *for_this_host(units[program]),
            ]
            processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))  # fmt: skip
        apache = f"UNIX:{tmp_path / 'scache'}"
        deadline = time.monotonic() + 15
        while not forwards(apache):  # until dc_client listens and its upstream is up
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.05)
        with Client(apache) as client:
            assert client.add(b"web1-session", b"shared over TLS", 60_000)
        # Another host's view: only with a certificate from the cache's CA.
        tls = f"TLS:localhost:{port}"
        result = distcache("get", "--server", tls, "--tls-cert", files["web1.crt"],
                           "--tls-key", files["web1.key"], "--tls-ca", files["ca.pem"],
                           "web1-session")  # fmt: skip
        assert result.returncode == 0 and result.stdout == b"shared over TLS"
        result = distcache("get", "--server", tls, "--tls-ca", files["ca.pem"], "web1-session")
        assert result.returncode == 2  # no client certificate: refused
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def forwards(address: str) -> bool:
    """Whether the proxy at ``address`` listens and has its upstream (HAVE gets a real answer)."""
    try:
        with Client(address, Mode.TEMPORARY, timeout=5) as client:
            return client.have(b"probe") is False
    except (OSError, DistcacheError):
        return False
