"""Target processes: started in their own process group, tracked, and always stopped.

Every program the runner starts (servers, proxies, and whatever wrapper a command template
names) leads a process group of its own, so stopping it stops the whole group, shell wrappers
and their children included. Every such process is tracked here until it has been stopped, and every file
the runner writes for its targets (logs, UNIX socket directories) lives in one temporary
directory: :func:`stop_all` ends them all and removes it, whatever path the run took (a case
deadline cancelling a start, a failed start, an exception of the runner, a signal).

On Linux each target also asks the kernel to kill it if the runner dies without cleaning up
(``PR_SET_PDEATHSIG``), and :func:`die_with_parent` lets the runner itself be told when its own
parent goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import sys
import tempfile

__all__ = [
    "die_with_parent",
    "scratch_directory",
    "socket_path",
    "spawn",
    "stop",
    "stop_all",
    "stop_all_now",
]

#: Seconds a target gets to exit after SIGTERM before its group is killed.
STOP_GRACE = 2.0
_PR_SET_PDEATHSIG = 1

_live: set[asyncio.subprocess.Process] = set()
_scratch: str | None = None
_short: str | None = None  # for UNIX sockets when the scratch directory's path is too long
#: Longest UNIX socket path most systems take (sun_path holds 108 bytes with its NUL on Linux).
_SOCKET_PATH_MAX = 100


def scratch_directory() -> str:
    """The run's temporary directory (created on first use, removed by :func:`stop_all`)."""
    global _scratch
    if _scratch is None or not os.path.isdir(_scratch):
        _scratch = tempfile.mkdtemp(prefix="distcache-conformance-")
    return _scratch


def socket_path() -> str:
    """A new path for a target's UNIX socket, short enough for ``sun_path``."""
    global _short
    name = f"s-{os.urandom(4).hex()}.sock"
    path = os.path.join(scratch_directory(), name)
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX:
        return path
    if _short is None or not os.path.isdir(_short):
        _short = tempfile.mkdtemp(prefix="dc-", dir="/tmp" if os.path.isdir("/tmp") else None)
    return os.path.join(_short, name)


@functools.cache
def _prctl():
    """libc's prctl, loaded in this process (never in a forked child: loading may fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent exits (Linux only)."""
    prctl = _prctl()
    return bool(prctl) and prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def _in_child(prctl) -> None:
    # Runs in the forked child before exec: killed with the runner if it dies uncleanly.
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


async def spawn(argv: list[str], stderr_path: str) -> asyncio.subprocess.Process:
    """Start ``argv`` in a process group of its own, stderr into ``stderr_path``; tracked until
    stopped. (A group, not a new session: the target stays in the runner's session, as it would
    when started by hand.)"""
    prctl = _prctl()
    with open(stderr_path, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            process_group=0,
            preexec_fn=functools.partial(_in_child, prctl) if prctl else None,
        )
    _live.add(process)
    return process


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    # The process leads its own group (process_group=0): the group id is its pid. It is also
    # signalled itself, in case it left that group (a target that daemonizes).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the target's group, SIGKILL after a grace period; then forget it."""
    try:
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                _signal_group(process, signal.SIGKILL)
                await process.wait()
        # The leader has exited; anything it left in its group goes too.
        _signal_group(process, signal.SIGKILL)
    except asyncio.CancelledError:
        stop_now(process)
        raise
    finally:
        _live.discard(process)


def stop_now(process: asyncio.subprocess.Process) -> None:
    """Kill the target's group at once, without waiting (for paths that cannot await)."""
    _signal_group(process, signal.SIGKILL)
    _live.discard(process)


async def stop_all() -> None:
    """Stop every target still running and remove the run's temporary directory."""
    for process in list(_live):
        await stop(process)
    _remove_scratch()


def stop_all_now() -> None:
    """:func:`stop_all` for an interpreter that is exiting: kill, don't wait."""
    for process in list(_live):
        stop_now(process)
    _remove_scratch()


def _remove_scratch() -> None:
    global _scratch, _short
    for directory in (_scratch, _short):
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    _scratch = _short = None
