"""The distcache conformance suite: recorded vectors, scenario cases, a runner and its reports.

It talks to a target only over the wire, so it works against any implementation in any language,
and it survives a target that crashes, hangs or lies.
"""

from .replay import DEFAULT_STEP_TIMEOUT, Mismatch, ReplayResult, replay, replay_sync
from .vectors import (
    Vector,
    VectorFile,
    VectorFormatError,
    legacy_vector_files,
    load_vector_file,
    load_vector_files,
    reference_vector_files,
)

__all__ = [
    "DEFAULT_STEP_TIMEOUT",
    "Mismatch",
    "ReplayResult",
    "Vector",
    "VectorFile",
    "VectorFormatError",
    "legacy_vector_files",
    "load_vector_file",
    "load_vector_files",
    "reference_vector_files",
    "replay",
    "replay_sync",
]
