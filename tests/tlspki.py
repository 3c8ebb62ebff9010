"""Throw-away certificate authorities for the TLS tests, written to PEM files as operators keep
them (trustme makes the keys and certificates; nothing here is trusted outside a test)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme

from distcache.tls import TLSFiles

#: Names a loopback server's certificate covers.
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass
class Identity:
    cert: str
    key: str


class PKI:
    """One CA, with the files of the certificates it issued, under ``directory``."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.directory = directory
        self.name = name
        self.authority = trustme.CA()
        self.ca = str(directory / f"{name}.pem")
        self.authority.cert_pem.write_to_path(self.ca)
        self.server = self.issue("server", *LOOPBACK_NAMES)
        self.client = self.issue("client", "client.example")

    def issue(self, label: str, *names: str, **validity: datetime.datetime) -> Identity:
        leaf = self.authority.issue_cert(*names, **validity)
        cert = self.directory / f"{self.name}-{label}.crt"
        key = self.directory / f"{self.name}-{label}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return Identity(str(cert), str(key))

    def expired(self, label: str, *names: str) -> Identity:
        now = datetime.datetime.now(datetime.UTC)
        return self.issue(
            label,
            *names,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )

    def server_files(self, mutual: bool = True) -> TLSFiles:
        return TLSFiles(self.server.cert, self.server.key, self.ca if mutual else None)

    def client_files(self, identity: Identity | None = None) -> TLSFiles:
        identity = identity or self.client
        return TLSFiles(identity.cert, identity.key, self.ca)

    def server_flags(self, mutual: bool = True) -> list[str]:
        flags = ["-tls-cert", self.server.cert, "-tls-key", self.server.key]
        return [*flags, "-tls-ca", self.ca] if mutual else flags

    def client_flags(self) -> list[str]:
        return ["-tls-cert", self.client.cert, "-tls-key", self.client.key, "-tls-ca", self.ca]
