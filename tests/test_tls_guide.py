"""The TLS guide's throw-away CA, pasted into a shell as an operator would, and the topology the
guide builds from it: httpd's UNIX socket -> dc_client -> TLS -> dc_server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from capturing import distcache
from proxyproc import dc_client
from serverproc import dc_server, free_port

from distcache.client import Client

GUIDE = Path(__file__).parent.parent / "docs" / "guide" / "tls.rst"


def guide_script() -> str:
    text = GUIDE.read_text()
    block = text.split(":name: tls-throw-away-ca\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines)


def test_the_guide_script_is_found():
    script = guide_script()
    assert script.startswith("CACHE_HOST=") and "openssl verify" in script


def test_the_guides_ca_runs_the_guides_topology(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    script = re.sub(r"^CACHE_HOST=.*$", "CACHE_HOST=localhost", guide_script(), flags=re.M)
    made = subprocess.run(["sh", "-e", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "web2.crt: OK" in made.stdout
    pki = tmp_path / "distcache-pki"
    f = {name: str(pki / name) for name in ("ca.pem", "server.crt", "server.key",
                                            "web1.crt", "web1.key")}  # fmt: skip
    port = free_port()
    local = tmp_path / "local"
    server_flags = ["-tls-cert", f["server.crt"], "-tls-key", f["server.key"],
                    "-tls-ca", f["ca.pem"], "-listen", f"UNIX:{local}"]  # fmt: skip
    with dc_server(*server_flags, listen=f"TLS:127.0.0.1:{port}"):
        upstream = f"TLS:localhost:{port}"
        client_flags = ["-tls-cert", f["web1.crt"], "-tls-key", f["web1.key"],
                        "-tls-ca", f["ca.pem"]]  # fmt: skip
        with dc_client(str(tmp_path / "scache"), upstream, *client_flags):
            with Client(f"UNIX:{tmp_path / 'scache'}") as httpd:
                for _ in range(100):  # until dc_client's first connection is up
                    if httpd.have(b"probe") is False:
                        break
                assert httpd.add(b"probe-1", b"hello", 60_000)
            with Client(f"UNIX:{local}") as local_httpd:
                assert local_httpd.get(b"probe-1") == b"hello"
        result = distcache("have", "--server", upstream, "--tls-ca", f["ca.pem"], "probe-1")
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
        result = distcache("get", "--server", upstream, "--tls-cert", f["web1.crt"],
                           "--tls-key", f["web1.key"], "--tls-ca", f["ca.pem"], "probe-1")  # fmt: skip
        assert result.returncode == 0 and result.stdout == b"hello"
