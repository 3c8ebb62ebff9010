"""The health probe: one real protocol round trip, as a monitor or systemd would run it.

A HAVE of a random id (which changes nothing on the server) must be answered within the timeout;
"present" and "absent" both mean healthy. A proxy without its upstream server answers that it has
none, which counts as unhealthy: the TLS servers behind it get no cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..client import Client, DistcacheError, Mode

__all__ = ["DEFAULT_HEALTH_TIMEOUT", "HealthResult", "check_health"]

#: Seconds the round trip may take, connecting included.
DEFAULT_HEALTH_TIMEOUT = 2.0


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    #: One line for a person: the answer and its time, or what failed.
    detail: str
    seconds: float


def check_health(address: str, timeout: float = DEFAULT_HEALTH_TIMEOUT) -> HealthResult:
    """Probe ``address`` (a legacy address string). Raises AddressError for a bad address."""
    probe_id = b"distcache-health-" + os.urandom(8).hex().encode()
    started = time.monotonic()
    with Client(address, Mode.TEMPORARY, timeout=timeout) as client:
        try:
            client.have(probe_id)
        except DistcacheError as error:
            seconds = time.monotonic() - started
            return HealthResult(False, f"unhealthy: {error}", seconds)
    seconds = time.monotonic() - started
    return HealthResult(True, f"healthy: answered in {seconds * 1000:.1f} ms", seconds)
