"""Where the spec describes a program's observable behaviour, the program does what it says.

One test per statement the spec and the programs once disagreed on (ADDR-6, SNOOP-1 output, the
dc_test report stream, dc_client's upstream log, the -h stream are tested beside their programs;
these are the rest).
"""

from __future__ import annotations

import time

from proxyproc import dc_client
from serverproc import dc_server, free_port

from distcache.client import Client, NoUpstream


def test_dc_client_logs_losing_and_regaining_its_upstream(tmp_path):
    port = free_port()
    upstream = f"IP:127.0.0.1:{port}"
    path = str(tmp_path / "proxy.sock")
    with dc_server(listen=upstream) as first, dc_client(path, upstream, "-retry", "200") as proxy:
        with Client(f"UNIX:{path}", timeout=5.0) as client:
            assert client.add(b"k", b"v" * 10, 60_000)
        first.stop()
        deadline = time.monotonic() + 10
        while "lost the server connection" not in proxy.stderr:
            assert time.monotonic() < deadline, proxy.stderr
            time.sleep(0.05)
        with dc_server(listen=upstream):
            while "connected to the server" not in proxy.stderr.partition("lost the server")[2]:
                assert time.monotonic() < deadline + 10, proxy.stderr
                time.sleep(0.05)
        assert "v" * 10 not in proxy.stderr  # SEC-4: no session data in logs


def test_dc_client_without_upstream_answers_an_empty_reply(tmp_path):
    path = str(tmp_path / "proxy.sock")
    with dc_client(path, f"IP:127.0.0.1:{free_port()}", "-retry", "60000") as proxy:
        with Client(f"UNIX:{path}", timeout=5.0) as client:
            try:
                client.have(b"k")
            except NoUpstream:
                pass
            else:
                raise AssertionError("a proxy with no upstream answered a HAVE")
        assert proxy.alive
