"""distcache: the shared SSL/TLS session cache protocol, its reference implementations and its
conformance suite."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__version__ = "2.0.0.dev0"


def conformance_data_path() -> Path:
    """Directory holding the conformance data (vectors, requirement catalogue)."""
    return Path(str(resources.files("distcache.conformance_data")))


__all__ = ["__version__", "conformance_data_path"]
