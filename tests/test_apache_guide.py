"""The Apache guide, run: its unit command lines, its Apache configuration in a real Apache httpd,
and its way of verifying resumption with ``openssl s_client``.

No distribution ships ``mod_socache_dc`` (it links the legacy C client library), so the real
Apache cannot store its sessions through distcache here. Everything else of the guide runs as
written: the Apache configuration with only the ``SSLSessionCache`` line pointed at Apache's own
``shmcb`` cache (plus a port, a throw-away certificate and what an unprivileged Apache needs to
start), so that what the guide says about tickets and the session cache is checked against
Apache and OpenSSL; ``dc_server`` and ``dc_client`` with the units' exact flags; and the session
that ``s_client`` saved is stored through ``dc_client`` the way ``mod_socache_dc`` stores it
(its id, its DER bytes, ``SSLSessionCacheTimeout`` in milliseconds) and found with the guide's
``distcache have`` command.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capturing import distcache
from guides import GUIDE_DIR, code_blocks, exec_start, program, replace_arg, unit_files
from serverproc import START_TIMEOUT, free_port
from tlspki import PKI

from distcache.address import parse_address
from distcache.client import Client

APACHE = shutil.which("apache2", path="/usr/sbin:/usr/local/sbin:" + os.environ["PATH"])
MODULES = Path("/usr/lib/apache2/modules")  # Debian's layout (package apache2-bin)
NEEDED_MODULES = ("mod_ssl.so", "mod_socache_shmcb.so", "mod_mpm_prefork.so", "mod_authz_core.so")

UNITS = unit_files("apache")


def test_the_guide_has_both_units():
    assert set(UNITS) == {"dc_server.service", "dc_client.service"}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_every_unit_command_line_parses(unit):
    program, args = exec_start(UNITS[unit])
    module = importlib.import_module(f"distcache.cli.{Path(program).name}")
    options = module.COMMAND_LINE.parse(args)
    assert not options.get("daemon"), "under systemd the programs stay in the foreground"
    for listen in options["listen"] if isinstance(options["listen"], list) else [options["listen"]]:
        parse_address(listen).require_listen()
    if "server" in options:
        parse_address(options["server"]).require_connect()


def test_the_cache_path_apache_uses_is_the_one_dc_client_listens_on():
    config = code_blocks("apache", "apache")[0]
    cache = re.search(r"^SSLSessionCache\s+dc:(\S+)", config, re.MULTILINE).group(1)
    _, args = exec_start(UNITS["dc_client.service"])
    assert cache == args[args.index("-listen") + 1]
    assert re.search(r"^SSLSessionTickets\s+off$", config, re.MULTILINE)
    assert "apr_time_as_msec(expiry)" in (GUIDE_DIR / "apache.rst").read_text()


def units_on_this_host(tmp_path: Path, port: int) -> tuple[list[str], list[str], dict[str, str]]:
    """The two units' arguments with this host's port, socket and throw-away certificates (the
    guide's files by name: server.crt, web1.crt, ca.pem...); every flag else is the guide's."""
    pki = PKI(tmp_path)
    files = {"server.crt": pki.server.cert, "server.key": pki.server.key, "ca.pem": pki.ca,
             "web1.crt": pki.client.cert, "web1.key": pki.client.key}  # fmt: skip

    def for_this_host(args: list[str]) -> list[str]:
        for index, arg in enumerate(args):
            if arg.startswith("/etc/distcache/"):
                args = replace_arg(args, args[index - 1], files[Path(arg).name])
        return args

    _, server_args = exec_start(UNITS["dc_server.service"])
    _, client_args = exec_start(UNITS["dc_client.service"])
    for args in (server_args, client_args):
        assert {"-tls-cert", "-tls-key", "-tls-ca"} <= set(args), "the hosts speak mutual TLS"
    server_args = replace_arg(for_this_host(server_args), "-listen", f"TLS:127.0.0.1:{port}")
    client_args = replace_arg(for_this_host(client_args), "-server", f"TLS:localhost:{port}")
    client_args = replace_arg(client_args, "-listen", f"UNIX:{tmp_path / 'scache'}")
    # Our own group stands for www-data, which only root could give the socket to here.
    client_args = replace_arg(client_args, "-sockgroup", grp.getgrgid(os.getgid()).gr_name)
    return server_args, client_args, files


def test_the_units_speak_mutual_tls_between_the_hosts(tmp_path):
    """The two units, run: the web host's socket reaches the cache host's dc_server over TLS,
    and another host reaches it only with a certificate from the cache's CA."""
    port = free_port()
    server_args, client_args, files = units_on_this_host(tmp_path, port)
    local = f"UNIX:{tmp_path / 'scache'}"
    with (
        program("dc_server", server_args, f"IP:127.0.0.1:{port}"),
        program("dc_client", client_args, local),
    ):
        with Client(local) as httpd:
            for _ in range(100):  # until dc_client's connection to dc_server is up
                if httpd.add(b"web1-session", b"shared over TLS", 60_000):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("dc_client never stored the session")
        tls = f"TLS:localhost:{port}"
        result = distcache("get", "--server", tls, "--tls-cert", files["web1.crt"],
                           "--tls-key", files["web1.key"], "--tls-ca", files["ca.pem"],
                           "web1-session")  # fmt: skip
        assert result.returncode == 0 and result.stdout == b"shared over TLS"
        result = distcache("get", "--server", tls, "--tls-ca", files["ca.pem"], "web1-session")
        assert result.returncode == 2  # no client certificate: refused


def test_dc_client_unit_may_give_the_socket_to_the_group_it_names():
    """A process can chgrp a file only to one of its own groups: under ``User=`` the unit must
    add ``-sockgroup``'s group to the service's groups."""
    unit = UNITS["dc_client.service"]
    _, args = exec_start(unit)
    group = args[args.index("-sockgroup") + 1]
    user = re.search(r"^User=(\S+)$", unit, re.MULTILINE)
    if user is not None and user.group(1) != "root":
        supplementary = re.search(r"^SupplementaryGroups=(.*)$", unit, re.MULTILINE)
        groups = re.search(r"^Group=(\S+)$", unit, re.MULTILINE)
        given = (supplementary.group(1).split() if supplementary else []) + (
            [groups.group(1)] if groups else []
        )
        assert group in given


# --- the configuration in a real Apache ---------------------------------------------------------


@pytest.fixture(scope="module")
def tools():
    if APACHE is None or shutil.which("openssl") is None:
        pytest.skip("needs apache2 (Debian's apache2-bin) and openssl")
    missing = [name for name in NEEDED_MODULES if not (MODULES / name).exists()]
    if missing:
        pytest.skip(f"apache2 modules missing from {MODULES}: {', '.join(missing)}")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("cert")
    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    issued.private_key_pem.write_to_path(str(directory / "key.pem"))
    return directory / "cert.pem", directory / "key.pem"


def apache_config(directory: Path, port: int, certificate, *, tickets: str = "off") -> str:
    """The guide's configuration, changed only where this machine needs it (each change must
    apply, so a guide that drifts fails here)."""
    config = code_blocks("apache", "apache")[0]
    cert, key = certificate
    changes = [
        (r"^LoadModule socache_dc_module .*\n", ""),  # not shipped anywhere: see the docstring
        (r" modules/", f" {MODULES}/"),
        (r"dc:UNIX:/run/distcache/scache", f"shmcb:{directory}/shmcb(512000)"),
        (r"^Listen 443$", f"Listen 127.0.0.1:{port}"),
        (r"\*:443>", f"*:{port}>"),
        (r"/etc/ssl/certs/www\.example\.net\.pem", str(cert)),
        (r"/etc/ssl/private/www\.example\.net\.key", str(key)),
        (r"^SSLSessionTickets\s+off$", f"SSLSessionTickets {tickets}"),
    ]
    for pattern, replacement in changes:
        config, count = re.subn(pattern, replacement, config, flags=re.MULTILINE)
        assert count, f"the guide's Apache configuration has no {pattern!r}"
    # What a Debian apache2 started by hand needs; trace2 logs every session cache request.
    preamble = [
        f"ServerRoot {directory}",
        f"DefaultRuntimeDir {directory}",
        f"PidFile {directory}/httpd.pid",
        f"ErrorLog {directory}/error.log",
        "LogLevel warn ssl:trace2",
        f"DocumentRoot {directory}",
        "ServerName localhost",
        *(
            f"LoadModule {name}_module {MODULES}/mod_{name}.so"
            for name in ("mpm_prefork", "authz_core", "socache_shmcb")
        ),
    ]
    if os.geteuid() == 0:  # Apache refuses to serve as root
        preamble += ["User nobody", f"Group {grp.getgrgid(os.getgid() or 65534).gr_name}"]
    return "\n".join(preamble) + "\n" + config


@contextlib.contextmanager
def apache(directory: Path, certificate, **settings):
    directory.mkdir()
    port = free_port()
    (directory / "httpd.conf").write_text(apache_config(directory, port, certificate, **settings))
    log = directory / "error.log"
    process = subprocess.Popen(
        [APACHE, "-f", str(directory / "httpd.conf"), "-DFOREGROUND"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # at its stop Apache signals its whole process group
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                errors = process.stderr.read().decode(errors="replace")
                raise AssertionError(f"apache2 exited {process.returncode}: {errors}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, f"apache2 never listened: {log.read_text()}"
            time.sleep(0.05)
        yield port, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(START_TIMEOUT)
        process.stderr.close()


def verification_commands(port: int, *extra: str) -> list[str]:
    """The guide's two ``s_client`` commands, pointed at the test's Apache."""
    block = next(b for b in code_blocks("apache", "console") if "s_client" in b)
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2
    return [
        re.sub(r"web[12]\.example\.net:443", f"127.0.0.1:{port}", command).replace(
            "s_client", " ".join(["s_client", *extra])
        )
        for command in commands
    ]


def run_shell(command: str, cwd: Path) -> str:
    done = subprocess.run(
        ["sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def cache_requests(log: Path, request: str) -> list[str]:
    """The session ids of Apache's session cache requests of one kind (SET, GET FOUND...)."""
    return re.findall(
        rf"Inter-Process Session Cache: request={request} id=([0-9a-fA-F]+)", log.read_text()
    )


@pytest.mark.parametrize("protocol", [(), ("-tls1_2",)], ids=["default", "tls1_2"])
def test_the_guides_apache_resumes_through_its_session_cache(
    tools, certificate, tmp_path, protocol
):
    """As configured by the guide, Apache resumes TLS 1.3 (the default) and TLS 1.2 sessions,
    and each resumption is a lookup in SSLSessionCache, which distcache would answer."""
    with apache(tmp_path / "httpd", certificate) as (port, log):
        save, offer = verification_commands(port, *protocol)
        run_shell(save, tmp_path)
        shown = run_shell(offer, tmp_path).strip()
    expected = next(b for b in code_blocks("apache", "console") if "s_client" in b).splitlines()[-1]
    version = "TLSv1.2" if protocol else expected.split(", ")[1]
    assert shown.startswith(f"Reused, {version},"), shown
    assert cache_requests(log, "GET status=FOUND"), "resumed without asking the session cache"


def test_with_tickets_on_apache_resumes_without_asking_the_cache(tools, certificate, tmp_path):
    """What the guide says tickets do: both versions resume, and the cache is never read."""
    with apache(tmp_path / "httpd", certificate, tickets="on") as (port, log):
        for protocol in ("-tls1_2", "-tls1_3"):
            save, offer = verification_commands(port, protocol)
            run_shell(save, tmp_path)
            assert run_shell(offer, tmp_path).startswith("Reused,")
    assert not cache_requests(log, "GET status=FOUND")


def test_the_guides_units_carry_a_session_from_apache(tools, certificate, tmp_path):
    """dc_server and dc_client run with the units' flags; the TLS 1.2 session Apache stored
    (its id as Apache logged it) goes through dc_client as mod_socache_dc stores it, and the
    guide's ``distcache have`` lookup finds it."""
    port = free_port()
    local = f"UNIX:{tmp_path / 'scache'}"
    server_args, client_args, _ = units_on_this_host(tmp_path, port)
    config = code_blocks("apache", "apache")[0]
    timeout = int(re.search(r"^SSLSessionCacheTimeout\s+(\d+)$", config, re.M).group(1))

    with apache(tmp_path / "httpd", certificate) as (apache_port, log):
        save, _ = verification_commands(apache_port, "-tls1_2")
        run_shell(save, tmp_path)
    stored_by_apache = [found.lower() for found in cache_requests(log, "SET status=OK")]
    text = run_shell("openssl sess_id -in sess.pem -noout -text", tmp_path)
    session_id = re.search(r"Session-ID: ([0-9A-F]+)", text).group(1)
    assert session_id.lower() in stored_by_apache
    der = run_bytes(["openssl", "sess_id", "-in", "sess.pem", "-outform", "DER"], tmp_path)

    lookup = next(b for b in code_blocks("apache", "console") if "distcache have" in b)
    script = "\n".join(line[2:] for line in lookup.splitlines() if line.startswith("$ "))
    script = script.replace("UNIX:/run/distcache/scache", local)
    script = script.replace("distcache have", f"{sys.executable} -m distcache have")
    with (
        program("dc_server", server_args, f"IP:127.0.0.1:{port}"),
        program("dc_client", client_args, local),
    ):
        mode = os.stat(tmp_path / "scache")
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == os.getgid()
        with Client(local) as httpd:
            for _ in range(100):  # until dc_client's connection to dc_server is up
                if httpd.add(bytes.fromhex(session_id), der, timeout * 1000):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("dc_client never stored the session")
        found = subprocess.run(["sh", "-e", "-c", script], cwd=tmp_path, timeout=60)
        assert found.returncode == 0
        missing = subprocess.run(
            ["sh", "-e", "-c", script.replace("sess.pem", "other.pem")],
            cwd=tmp_path,
            timeout=60,
            capture_output=True,
        )
        assert missing.returncode != 0  # no such file: the lookup is not a constant 0


def run_bytes(argv: list[str], cwd: Path) -> bytes:
    return subprocess.run(argv, cwd=cwd, capture_output=True, check=True, timeout=60).stdout
