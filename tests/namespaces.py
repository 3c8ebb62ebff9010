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
# The empty /tmp keeps what this interpreter and checkout need from the real one (a virtual
# environment or a clone may live there): each such top-level entry is bound back in, reached
# through a descriptor opened on the real /tmp before it was covered.
_PROLOGUE = """set -u
exec 3</tmp
mount -t tmpfs tmpfs /tmp
for keep in ${KEEP_TMP:-}; do
  mkdir -p "/tmp/$keep" && mount --no-canonicalize --bind "/proc/self/fd/3/$keep" "/tmp/$keep"
done
exec 3<&-
ip link set lo up
"""


def _kept_from_tmp() -> str:
    """The top-level entries of /tmp that this interpreter, its packages or the checkout use."""
    roots = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(__file__)), *sys.path}
    kept = set()
    for root in roots:
        parts = os.path.realpath(root or ".").split(os.sep)
        if len(parts) > 2 and parts[1] == "tmp":
            kept.add(parts[2])
    return " ".join(sorted(kept))


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
    env = {**os.environ, "PYTHON": sys.executable, "KEEP_TMP": _kept_from_tmp()}
    return subprocess.run(
        [*_UNSHARE, "bash", "-c", _PROLOGUE + script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
