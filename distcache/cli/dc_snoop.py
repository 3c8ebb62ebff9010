"""``dc_snoop``: a transparent relay between distcache clients and a server that logs every
message it sees, with the legacy command line (``-listen``, ``-server``/``-connect``, both
required).

Differences from the legacy program, which exited at its first client (B12): any number of clients,
each with its own server connection; one line per complete *message* (not per frame), decoded;
protocol errors are reported and the bytes still relayed unchanged. The log goes to **stdout**
(the legacy wrote to stderr), or to ``-log FILE`` (appended). Extensions: ``-format json``
(JSON lines with the ``distcache decode --format json`` keys plus ``time``, ``connection`` and
``latency_ms`` on replies), ``-pcap FILE`` (what was relayed, as a capture) and ``-errlog DEST``
(where its own diagnostics go, as ``-log`` of dc_server: stderr by default, syslog or a file;
``-log`` already names the destination of the decoded messages here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from .. import __version__
from ..address import AddressError, parse_address
from ..monitoring.logs import call_on_sighup
from ..netio import ListenError
from ..server import bind_listeners, new_event_loop
from ..server.run import STOP_SIGNALS, describe_socket
from ..snoop import FORMATS, PcapRecorder, Snooper
from .legacy_flags import TLS_FLAGS, CommandLine, Flag, run_parser
from .monitoring import LOG_FLAG, start_logging, with_log_reopening
from .service import StartupError
from .tls_options import (
    TLSSetupError,
    check_used,
    client_tls,
    files_from,
    reload_on_sighup,
    server_tls,
)

log = logging.getLogger("distcache.snoop")

__all__ = ["COMMAND_LINE", "main"]


def _format(text: str) -> str:
    if text not in FORMATS:
        raise ValueError(f"one of {', '.join(FORMATS)}")
    return text


COMMAND_LINE = CommandLine(
    program="dc_snoop",
    summary="Relay distcache traffic unchanged and log every message (decoded).",
    flags=[
        Flag(("-listen",), "listen", "where clients connect (required)", "address"),
        Flag(("-server", "-connect"), "server", "the server to relay to (required)", "address"),
        Flag(
            ("-log",),
            "log",
            "extension: append the log to this file, reopened on SIGHUP (default stdout)",
            "file",
        ),
        Flag(("-format",), "format", "extension: text or json", "format", _format, "text"),
        Flag(("-pcap",), "pcap", "extension: also write the relayed traffic as pcap", "file"),
        Flag(
            ("-errlog",),
            "errlog",
            "extension: where diagnostics go: stderr, syslog, syslog:<socket> or a file",
            "dest",
            str,
            LOG_FLAG.default,
        ),
        *TLS_FLAGS,
    ],
    notes=(
        "Addresses: IP:<host>:<port>, UNIX:<path>, IP:[<ipv6>]:<port>, TLS:<host>:<port>.\n"
        "TLS on either side: the log and the pcap hold the decrypted distcache stream. The same\n"
        "-tls-cert/-tls-key serve a TLS: -listen and are presented to a TLS: -server.\n"
        "SIGHUP re-reads the TLS files and reopens the -log file."
    ),
)


def main(argv: list[str] | None = None) -> int:
    options = run_parser(COMMAND_LINE, argv)
    if isinstance(options, int):
        return options
    with contextlib.ExitStack() as files:
        try:
            start_logging("dc_snoop", options["errlog"], None)
            if options["listen"] is None or options["server"] is None:
                raise StartupError("Error, must provide -listen and -server")
            try:
                listen = parse_address(options["listen"]).require_listen()
                server = parse_address(options["server"]).require_connect()
                tls_files = files_from(options)
                check_used(tls_files, [listen, server])
                tls = client_tls(tls_files, [server])
                listen_tls = server_tls(tls_files, [listen])
                sockets = bind_listeners(listen, tls=listen_tls)
            except (AddressError, ListenError, TLSSetupError) as error:
                raise StartupError(f"Error, {error}") from None
            try:
                out = (
                    files.enter_context(_ReopenedOnSighup(options["log"]))
                    if options["log"]
                    else sys.stdout
                )
                pcap_file = (
                    files.enter_context(open(options["pcap"], "wb")) if options["pcap"] else None
                )
            except OSError as error:
                raise StartupError(
                    f"Error, cannot open '{error.filename}': {error.strerror}"
                ) from None
        except StartupError as error:
            print(error, file=sys.stderr)
            return 1
        format_line = FORMATS[options["format"]]

        def emit(record: dict) -> None:
            out.write(format_line(record) + "\n")
            out.flush()

        pcap = None
        if pcap_file is not None:
            pcap = PcapRecorder(pcap_file, server.port if server.kind == "tcp" else None)
        snooper = Snooper(server, emit, pcap, tls=tls)
        startup = (
            f"dc_snoop {__version__} relaying {', '.join(map(describe_socket, sockets))} to "
            f"{server}; messages to {options['log'] or 'stdout'} as {options['format']}"
        )
        # SIGHUP re-reads the TLS files (and reopens the log files) without dropping relays.
        reload = with_log_reopening(reload_on_sighup([tls, listen_tls]))
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_serve(snooper, sockets, startup, reload))


class _ReopenedOnSighup:
    """The ``-log`` file of decoded messages, appended to and reopened on SIGHUP (logrotate)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed by __exit__ or a reopen
        self._reopen = False
        call_on_sighup(self._request_reopen)

    def _request_reopen(self) -> None:
        self._reopen = True  # from the signal handler: the next write reopens

    def write(self, text: str) -> None:
        if self._reopen:
            self._reopen = False
            try:
                reopened = open(self.path, "a")  # noqa: SIM115
            except OSError as error:  # e.g. its directory moved away: keep the file we have
                log.warning(
                    "cannot reopen the message log %s (%s): still writing to the file already open",
                    self.path,
                    error.strerror or error,
                )
            else:
                self._file.close()
                self._file = reopened
        self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._file.close()


async def _serve(snooper: Snooper, sockets, startup: str = "", on_reload=None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    await snooper.start(sockets)
    log.info("%s", startup)
    try:
        await stop.wait()
    finally:
        await snooper.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
