"""``distcache health``: is a server (or proxy) answering? For monitors and systemd.

Exit status: 0 healthy, 1 unhealthy (no connection, no answer in time, a broken answer, a proxy
without its upstream server), 2 usage (bad arguments or address).
"""

from __future__ import annotations

from ..address import AddressError
from ..monitoring.health import DEFAULT_HEALTH_TIMEOUT, check_health
from . import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check that a server or proxy answers",
        description="Send one HAVE of a random id and wait for the answer. Exit status: "
        "0 healthy, 1 unhealthy, 2 usage.",
    )
    parser.add_argument("address", metavar="ADDRESS", help="e.g. IP:127.0.0.1:9001 or UNIX:/path")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_HEALTH_TIMEOUT,
        help=f"give up after this long, connecting included (default {DEFAULT_HEALTH_TIMEOUT:g})",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    parser.set_defaults(handler=_run)


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _run(args) -> int:
    try:
        result = check_health(args.address, args.timeout)
    except AddressError as error:
        raise UsageError(str(error)) from None
    if not args.quiet:
        print(result.detail)
    return 0 if result.healthy else 1
