"""Errors an engine on an external store raises, and which the server turns into wire answers."""

from __future__ import annotations

__all__ = ["StoreUnavailableError"]


class StoreUnavailableError(ConnectionError):
    """The store did not answer in time, refused the command, or could not be reached.

    The operation may or may not have taken effect (a reply can be lost after the store acted).
    The server answers the request with the protocol's failure answer instead of closing the
    connection; the engine logs the outage.
    """
