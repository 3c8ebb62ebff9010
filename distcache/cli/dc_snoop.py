"""``dc_snoop``: a transparent relay between distcache clients and a server that logs every
message it sees, with the legacy command line (``-listen``, ``-server``/``-connect``, both
required).

Differences from the legacy program, which exited at its first client (B12): any number of clients,
each with its own server connection; one line per complete *message* (not per frame), decoded;
protocol errors are reported and the bytes still relayed unchanged. The log goes to **stdout**
(the legacy wrote to stderr), or to ``-log FILE`` (appended). Extensions: ``-format json``
(JSON lines with the ``distcache decode --format json`` keys plus ``time``, ``connection`` and
``latency_ms`` on replies) and ``-pcap FILE`` (what was relayed, as a capture).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from ..address import AddressError, parse_address
from ..netio import ListenError
from ..server import bind_listeners, new_event_loop
from ..server.run import STOP_SIGNALS
from ..snoop import FORMATS, PcapRecorder, Snooper
from .legacy_flags import TLS_FLAGS, CommandLine, Flag, run_parser
from .tls_options import TLSSetupError, check_used, client_tls, files_from, server_tls

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
        Flag(("-log",), "log", "extension: append the log to this file (default stdout)", "file"),
        Flag(("-format",), "format", "extension: text or json", "format", _format, "text"),
        Flag(("-pcap",), "pcap", "extension: also write the relayed traffic as pcap", "file"),
        *TLS_FLAGS,
    ],
    notes=(
        "Addresses: IP:<host>:<port>, UNIX:<path>, IP:[<ipv6>]:<port>, TLS:<host>:<port>.\n"
        "TLS on either side: the log and the pcap hold the decrypted distcache stream. The same\n"
        "-tls-cert/-tls-key serve a TLS: -listen and are presented to a TLS: -server."
    ),
)


class StartupError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    options = run_parser(COMMAND_LINE, argv)
    if isinstance(options, int):
        return options
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s dc_snoop %(levelname)s: %(message)s")
    with contextlib.ExitStack() as files:
        try:
            if options["listen"] is None or options["server"] is None:
                raise StartupError("Error, must provide -listen and -server")
            try:
                listen = parse_address(options["listen"]).require_listen()
                server = parse_address(options["server"]).require_connect()
                tls_files = files_from(options)
                check_used(tls_files, [listen, server])
                tls = client_tls(tls_files, [server])
                sockets = bind_listeners(listen, tls=server_tls(tls_files, [listen]))
            except (AddressError, ListenError, TLSSetupError) as error:
                raise StartupError(f"Error, {error}") from None
            try:
                out = (
                    files.enter_context(open(options["log"], "a")) if options["log"] else sys.stdout
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
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_serve(snooper, sockets))


async def _serve(snooper: Snooper, sockets) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    await snooper.start(sockets)
    try:
        await stop.wait()
    finally:
        await snooper.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
