"""Throw-away certificates for the TLS profile: a CA the runner makes for a target it starts, and
a stranger CA whose certificates no target may accept.

Made with trustme (keys and certificates of a test CA, never trusted outside the run) and written
to a private temporary directory, because the programs under test read their certificates from
files, as operators give them.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..tls import TLSFiles

__all__ = ["LOOPBACK_NAMES", "RunPKI"]

#: Names a loopback target's certificate covers.
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Identity:
    cert: str
    key: str


class RunPKI:
    """The CA of one run (``ca``), a server and a client certificate from it, and a certificate
    from a stranger CA. :meth:`close` deletes the files."""

    def __init__(self) -> None:
        import trustme

        self.directory = Path(tempfile.mkdtemp(prefix="distcache-conformance-tls-"))
        self._authority = trustme.CA()
        self.ca = self._write_ca(self._authority, "ca")
        self.server = self._issue(self._authority, "server", LOOPBACK_NAMES)
        self.client = self._issue(self._authority, "client", ("conformance-client",))
        stranger = trustme.CA()
        self._write_ca(stranger, "stranger-ca")
        self.stranger = self._issue(stranger, "stranger", ("conformance-client",))
        now = datetime.datetime.now(datetime.UTC)
        self.expired = self._issue(
            self._authority,
            "expired",
            ("conformance-client",),
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )

    def _write_ca(self, authority, name: str) -> str:
        path = str(self.directory / f"{name}.pem")
        authority.cert_pem.write_to_path(path)
        return path

    def _issue(self, authority, name: str, names: tuple[str, ...], **validity) -> Identity:
        leaf = authority.issue_cert(*names, **validity)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return Identity(str(cert), str(key))

    @property
    def server_files(self) -> TLSFiles:
        """A target's files: its certificate, and the CA its clients must chain to."""
        return TLSFiles(self.server.cert, self.server.key, self.ca)

    @property
    def client_files(self) -> TLSFiles:
        return TLSFiles(self.client.cert, self.client.key, self.ca)

    def placeholders(self) -> dict[str, str]:
        """``{tls_cert}``, ``{tls_key}``, ``{tls_ca}`` of ``--server-cmd``."""
        return {"tls_cert": self.server.cert, "tls_key": self.server.key, "tls_ca": self.ca}

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
