"""Every numeric limit of the protocol, and the protocol level.

These names are the only place the package states a size, a bound or the protocol level; the
schemas, the codecs, the server, the client and the docs import them from here.
"""

from __future__ import annotations

#: Protocol version carried in the upper 16 bits of ``proto_level``. Receivers compare only these.
PROTOCOL_VERSION = 0x0011
#: Patch level carried in the lower 16 bits of ``proto_level``; senders write 0, receivers ignore it.
PROTOCOL_PATCH = 0x0000
#: ``proto_level`` as every sender writes it: version in the upper half, patch in the lower half.
PROTOCOL_LEVEL = (PROTOCOL_VERSION << 16) | PROTOCOL_PATCH
#: Mask selecting the version half of ``proto_level``.
PROTOCOL_VERSION_MASK = 0xFFFF0000

#: Size of the fixed frame header in bytes.
HEADER_SIZE = 14
#: A receiver examines nothing before this many bytes of a frame have arrived (the legacy gate):
#: four bytes of a foreign protocol level alone are still "incomplete".
MIN_BYTES_EXAMINED = 5
#: Largest ``data_len`` of one frame; every non-final frame carries exactly this many bytes.
MAX_FRAME_DATA = 2048
#: Nominal frames per message (16 × 2048 = 32768). Only the byte total is enforced, so a 17th,
#: empty, final frame after 16 full ones is legal.
MAX_FRAMES_NOMINAL = 16
#: Largest reassembled message payload in bytes.
MAX_PAYLOAD = MAX_FRAMES_NOMINAL * MAX_FRAME_DATA
#: Most frames a legal message can have: 16 full frames and an empty final one.
MAX_FRAMES = MAX_FRAMES_NOMINAL + 1
#: Largest frame on the wire (header plus a full data field).
MAX_FRAME_SIZE = HEADER_SIZE + MAX_FRAME_DATA

#: Bytes before the id in an ADD request: the timeout and id_len fields.
ADD_PREFIX_SIZE = 8
#: Longest session id an ADD may store (GET/REMOVE/HAVE ids are not length-checked).
MAX_SESSION_ID = 64
#: Longest session an ADD may store. Unreachable over the wire: the whole ADD payload is capped at
#: MAX_PAYLOAD, so a stored session is at most MAX_PAYLOAD - ADD_PREFIX_SIZE - 1 bytes.
MAX_SESSION_DATA = 32768
#: Longest session that fits in an ADD request (with a 1-byte id).
MAX_SESSION_ON_WIRE = MAX_PAYLOAD - ADD_PREFIX_SIZE - 1
#: Largest ADD timeout in milliseconds (7 days); 0 is legal and expires at once.
MAX_TIMEOUT_MS = 604_800_000
#: The legacy client library refuses ADD timeouts at or below this many milliseconds.
CLIENT_MIN_TIMEOUT_MS = 500
#: A GET reply shorter than this is taken for a miss by the legacy client library.
LEGACY_CLIENT_MIN_SESSION = 5

#: Cache capacity bounds and default of the reference server, in sessions.
MIN_CACHE_SESSIONS = 64
MAX_CACHE_SESSIONS = 60000
DEFAULT_CACHE_SESSIONS = 512
#: When the cache is full, this fraction of its capacity (at least one entry) is evicted at once.
EVICTION_DIVISOR = 30

#: Largest value a 32-bit request uid can take; uids are opaque and echoed verbatim.
MAX_REQUEST_UID = 0xFFFFFFFF
