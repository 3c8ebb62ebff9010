"""Run a shell script in private network, mount and pid namespaces.

For the programs' fixed defaults (the proxy's shared socket path, the ports tutorials print): the
script gets its own loopback and an empty ``/tmp``, so nothing outside can collide with it, and
every process it starts ends with it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

_UNSHARE = ["unshare", "-rn", "--mount", "--pid", "--fork"]
_PROLOGUE = "set -u\nmount -t tmpfs tmpfs /tmp\nip link set lo up\n"


@functools.cache
def namespaces_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(
        [*_UNSHARE, "sh", "-c", "mount -t tmpfs tmpfs /tmp"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not namespaces_available(), reason="needs unprivileged user namespaces"
)


def run_in_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` with bash; ``$PYTHON`` is this interpreter (the checkout is on its path)."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [*_UNSHARE, "bash", "-c", _PROLOGUE + script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
