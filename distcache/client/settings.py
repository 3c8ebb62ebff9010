"""What both clients are configured with, validated once, and how their calls are built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..address import Address, parse_address
from ..tls import ClientTLSSetting, check_client_setting
from .calls import Call, add_call, get_call, have_call, remove_call
from .modes import Mode, check_mode

#: Seconds an operation (connecting included) may take unless the client is told otherwise.
DEFAULT_TIMEOUT = 5.0


def connect_target(address: Address | str) -> Address:
    """Parse a legacy address string (``IP:host:port``, ``UNIX:path``) or take an Address, and
    insist that it can be connected to (a listen-only ``IP:port`` raises AddressError)."""
    if isinstance(address, str):
        address = parse_address(address)
    elif not isinstance(address, Address):
        raise TypeError(f"address must be a str or an Address, not {type(address).__name__}")
    return address.require_connect()


def check_timeout(timeout: float | None) -> float | None:
    """A positive finite number of seconds, or None (wait forever, as the legacy did)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    return float(timeout)


@dataclass(frozen=True, slots=True)
class Settings:
    """A client's validated configuration. See :class:`distcache.client.Client` for the fields."""

    address: Address
    mode: Mode
    timeout: float | None
    strict_timeouts: bool
    allow_ambiguous: bool
    legacy_get_semantics: bool
    tls: ClientTLSSetting = None

    @classmethod
    def build(
        cls,
        address: Address | str,
        mode: Mode | int,
        timeout: float | None,
        strict_timeouts: bool,
        allow_ambiguous: bool,
        legacy_get_semantics: bool,
        tls: object = None,
    ) -> Settings:
        return cls(
            connect_target(address),
            check_mode(mode),
            check_timeout(timeout),
            bool(strict_timeouts),
            bool(allow_ambiguous),
            bool(legacy_get_semantics),
            check_client_setting(tls),
        )

    def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> Call:
        return add_call(
            session_id,
            session,
            timeout_ms,
            strict_timeouts=self.strict_timeouts,
            allow_ambiguous=self.allow_ambiguous,
        )

    def get(self, session_id: bytes) -> Call:
        return get_call(session_id, legacy_get_semantics=self.legacy_get_semantics)

    def remove(self, session_id: bytes) -> Call:
        return remove_call(session_id)

    def have(self, session_id: bytes) -> Call:
        return have_call(session_id)


class SettingsView:
    """What both clients expose of their :class:`Settings` (read-only)."""

    __slots__ = ()
    _settings: Settings

    @property
    def address(self) -> Address:
        return self._settings.address

    @property
    def mode(self) -> Mode:
        return self._settings.mode

    @property
    def timeout(self) -> float | None:
        return self._settings.timeout
