"""The reference proxy (dc_client) with one fault switched in, to prove the proxy cases can fail.

Each switch patches the smallest piece of the reference proxy that breaks one requirement (the
mutation table, conformance/coverage.toml, says which); with no switch it is dc_client itself.
Run it like dc_client, with the switch first::

    python tests/faulty_proxy.py -fault idle_ignored -listen IP:127.0.0.1:9002 -server ...
"""

from __future__ import annotations

import os
import sys

from distcache.cli import dc_client
from distcache.conformance.coverage import load_coverage
from distcache.link.upstream import DISCONNECTED_REPLY, EMPTY_REPLY, LinkState, UpstreamLink
from distcache.protocol import Outstanding, RemoteProtocolError, RequestTracker
from distcache.proxy import local
from distcache.proxy.local import LocalConnection
from distcache.proxy.proxy import Proxy

#: Every fault, with what it does (from the mutation table).
FAULTS = {f.name: f.does for f in load_coverage().faults if f.target == "proxy"}

_answer = LocalConnection.answer


def _answer_mapped(mapping):
    def answer(self, payload):
        _answer(self, mapping.get(payload, payload))

    return answer


def _upstream_uid_kept() -> None:
    track = RequestTracker.track

    def tracked(self, operation, context=None):
        request_uid = track(self, operation, context)
        context._upstream_uid = request_uid  # what the reply would carry without rewriting
        return request_uid

    def answer(self, payload):
        uid = getattr(self, "_upstream_uid", None)
        if self.request is not None and uid is not None:
            self.request = self.request._replace(request_uid=uid)
        _answer(self, payload)

    RequestTracker.track = tracked
    LocalConnection.answer = answer


def _never_reconnect() -> None:
    connect = UpstreamLink._connect_now

    def once(self):
        if not getattr(self, "_tried", False):
            self._tried = True
            connect(self)

    UpstreamLink._connect_now = once


def _client_error_drops_upstream(foreign_version: bool):
    """A client's protocol error (a foreign version, or any other) also drops the upstream link."""

    def patch():
        proxies: list[Proxy] = []
        admit = Proxy.admit

        def admitted(self, connection):
            if self not in proxies:
                proxies.append(self)
            return admit(self, connection)

        class Log:
            def __getattr__(self, name):
                return getattr(_log, name)

            def warning(self, message, *args):
                _log.warning(message, *args)
                error = args[-1] if args else None
                if (getattr(error, "reason", None) == "bad_version") == foreign_version:
                    for proxy in proxies:
                        proxy.link._lost("a client broke the protocol")

        _log = local.log
        Proxy.admit = admitted
        local.log = Log()

    return patch


def _unknown_uid_ignored() -> None:
    match = RequestTracker.match

    class Nobody:
        def answer(self, payload):
            pass

    def lenient(self, response):
        try:
            return match(self, response)
        except RemoteProtocolError as error:
            if error.reason != "unknown_uid":
                raise
            return Outstanding(response.request_uid, response.operation, Nobody())

    RequestTracker.match = lenient


def _large_reply_closes() -> None:
    def answer(self, payload):
        pipelined = self._decoder.buffered
        _answer(self, payload)
        if len(payload) > 6116 and pipelined:
            self.close()  # what legacy 1.5.1 does behind a large reply (B4)

    LocalConnection.answer = answer


def _late_reply_crashes() -> None:
    def answer(self, payload):
        if self._closing or self._eof:  # the client has left (or is leaving)
            os._exit(70)
        _answer(self, payload)

    LocalConnection.answer = answer


def _unbounded_in_flight() -> None:
    init = UpstreamLink.__init__

    def unbounded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.max_in_flight = 1 << 30  # -maxinflight accepted and ignored

    UpstreamLink.__init__ = unbounded


def _excess_answered_empty() -> None:
    submit = UpstreamLink.submit

    def impatient(self, requester):
        if self.state is LinkState.UP and self.in_flight >= self.max_in_flight:
            requester.answer(EMPTY_REPLY)  # as if there were no upstream
        else:
            submit(self, requester)

    UpstreamLink.submit = impatient


def _late_reply_to_another() -> None:
    undelivered: list[bytes] = []

    def answer(self, payload):
        if self._closing or self._eof:  # the client has left: kept instead of discarded
            undelivered.append(payload)
            return
        _answer(self, undelivered.pop(0) if undelivered else payload)

    LocalConnection.answer = answer


def _short_add_forwarded() -> None:
    # What the legacy proxy did: the server then drops the link that every client shares.
    local.check_forwardable = lambda request: None


PATCHES = {
    "short_add_forwarded": _short_add_forwarded,
    "uid_not_restored": _upstream_uid_kept,
    "empty_as_disconnected": lambda: setattr(
        LocalConnection, "answer", _answer_mapped({EMPTY_REPLY: DISCONNECTED_REPLY})
    ),
    "disconnected_as_empty": lambda: setattr(
        LocalConnection, "answer", _answer_mapped({DISCONNECTED_REPLY: EMPTY_REPLY})
    ),
    "never_reconnect": _never_reconnect,
    "idle_ignored": lambda: setattr(LocalConnection, "_idle_check", lambda self: None),
    "client_error_drops_upstream": _client_error_drops_upstream(foreign_version=False),
    "foreign_version_drops_upstream": _client_error_drops_upstream(foreign_version=True),
    "unknown_uid_ignored": _unknown_uid_ignored,
    "large_reply_closes": _large_reply_closes,
    "late_reply_crashes": _late_reply_crashes,
    "late_reply_to_another": _late_reply_to_another,
    "unbounded_in_flight": _unbounded_in_flight,
    "excess_answered_empty": _excess_answered_empty,
    "long_replies_cut": lambda: setattr(
        LocalConnection, "answer", lambda self, payload: _answer(self, payload[:16384])
    ),
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["-fault"]:
        fault, argv = argv[1], argv[2:]
        if fault not in PATCHES:
            print(f"faulty_proxy: unknown fault {fault!r}", file=sys.stderr)
            return 2
        PATCHES[fault]()
    return dc_client.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
