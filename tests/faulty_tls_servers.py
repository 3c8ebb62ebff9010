"""Deliberately faulty TLS servers, to prove the TLS conformance cases can fail.

The faulty server of faulty_servers.py (with no server fault: a correct server) behind a TLS
front that terminates TLS itself (ssl.SSLObject over memory buffers), so that each switch can
break one TLS requirement the way a real server gets it wrong: a wrong setting of its TLS
context, bytes added inside TLS, a plain client served, a failed handshake taking others down.
The mutation table (conformance/coverage.toml, target "tls-server") names the requirement each
switch breaks and the cases that must fail on it. Run it like dc_server::

    python tests/faulty_tls_servers.py -listen TLS:127.0.0.1:9001 -tls-cert server.crt \
        -tls-key server.key -tls-ca ca.pem -fault client_cert_optional
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from pathlib import Path

from faulty_servers import Connection, FaultyServer

from distcache.address import parse_address
from distcache.conformance.coverage import load_coverage
from distcache.tls import TLSFiles, server_context

#: Every fault, with what it does (from the mutation table).
FAULTS = {f.name: f.does for f in load_coverage().faults if f.target == "tls-server"}
#: What tls_banner writes inside TLS before the first frame.
BANNER = b"distcache ready\r\n"
#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not named by Python's ssl.VerifyFlags).
NO_CHECK_TIME = 0x200000
TLS_HANDSHAKE = 0x16


def tls_context(files: TLSFiles, faults: set[str]) -> ssl.SSLContext:
    """The reference server's context, with the faults of the context switched in."""
    context = server_context(files)
    if "tls_1_1_accepted" in faults:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if "client_cert_optional" in faults:
        context.verify_mode = ssl.CERT_OPTIONAL
    if "trusts_stray_cas" in faults:  # every CA file beside the configured one
        for stray in Path(files.ca).parent.glob("*.pem"):
            context.load_verify_locations(str(stray))
    if "expiry_unchecked" in faults:
        context.verify_flags |= NO_CHECK_TIME
    return context


class InnerTransport(asyncio.Transport):
    """What the faulty server's Connection writes to: plain bytes, encrypted by the front."""

    def __init__(self, front: TLSFront):
        super().__init__()
        self.front = front

    def write(self, data):
        self.front.send(data)

    def close(self):
        self.front.close()

    def abort(self):
        self.front.raw.abort()

    def is_closing(self):
        return self.front.raw.is_closing()

    def pause_reading(self):
        self.front.raw.pause_reading()

    def resume_reading(self):
        self.front.raw.resume_reading()

    def get_extra_info(self, name, default=None):
        return self.front.raw.get_extra_info(name, default)


class TLSFront(asyncio.Protocol):
    """One accepted connection: the TLS handshake, then a Connection of the faulty server."""

    def __init__(self, server: FaultyServer, context: ssl.SSLContext):
        self.server = server
        self.faults = server.tls_faults
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.raw = None
        self.inner: Connection | None = None  # after the handshake (or a plain fallback)
        self.plain = False
        self.started = False  # a first byte has arrived

    def connection_made(self, transport):
        self.raw = transport

    def data_received(self, data):
        if self.plain:
            self.inner.data_received(data)
            return
        first, self.started = not self.started, True
        if first and "plain_fallback" in self.faults and data[0] != TLS_HANDSHAKE:
            self.plain = True  # served as if the listener were plain TCP
            self.inner = Connection(self.server)
            self.inner.connection_made(self.raw)
            self.inner.data_received(data)
            return
        self.incoming.write(data)
        if self.inner is None and not self._handshake():
            return
        chunks = []
        while True:
            try:
                chunk = self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLError, ssl.SSLZeroReturnError):
                self.close()
                return
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        if chunks:
            self.inner.data_received(b"".join(chunks))

    def _handshake(self) -> bool:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError):
            self._flush()  # the alert
            self.raw.close()
            if "failed_handshake_closes_all" in self.faults:
                for connection in list(self.server.open):
                    connection.transport.close()
            return False
        self._flush()
        self.inner = Connection(self.server)
        self.inner.connection_made(InnerTransport(self))
        if "tls_banner" in self.faults:
            self.send(BANNER)
        return True

    def send(self, data: bytes) -> None:
        if self.raw.is_closing():
            return
        self.tls.write(data)
        self._flush()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending and not self.raw.is_closing():
            self.raw.write(pending)

    def close(self) -> None:
        self.raw.close()

    def eof_received(self):
        if self.inner is not None:
            self.inner.eof_received()
        return False

    def pause_writing(self):
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self):
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc):
        if self.inner is not None:
            self.inner.connection_lost(exc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="faulty_tls_servers")
    parser.add_argument("-listen", required=True, help="a TLS:host:port address")
    parser.add_argument("-sessions", type=int, default=512)
    parser.add_argument("-tls-cert", required=True)
    parser.add_argument("-tls-key", required=True)
    parser.add_argument("-tls-ca")
    parser.add_argument("-fault", action="append", default=[], choices=sorted(FAULTS))
    args = parser.parse_args(argv)
    address = parse_address(args.listen)
    files = TLSFiles(args.tls_cert, args.tls_key, args.tls_ca)
    context = tls_context(files, set(args.fault))

    async def run():
        server = FaultyServer((), args.sessions)
        server.tls_faults = set(args.fault)
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: TLSFront(server, context), address.host, address.port
        )
        await listener.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
