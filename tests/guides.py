"""Reading the guides' code blocks, so that tests run what an operator copies from the page."""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from serverproc import START_TIMEOUT, connect_to

GUIDE_DIR = Path(__file__).resolve().parents[1] / "docs" / "guide"

_BLOCK = re.compile(r"^\.\. code-block:: (\S+)\n((?:\n|   .*\n)+)", re.MULTILINE)


def code_blocks(page: str, language: str) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of ``docs/guide/<page>.rst``, dedented."""
    text = (GUIDE_DIR / f"{page}.rst").read_text()
    return [
        "\n".join(line[3:] for line in body.splitlines()).strip("\n") + "\n"
        for kind, body in _BLOCK.findall(text)
        if kind == language
    ]


def unit_files(page: str) -> dict[str, str]:
    """The systemd unit files of a guide page, by the file name their first comment gives."""
    units = {}
    for block in code_blocks(page, "ini"):
        first, _, rest = block.partition("\n")
        if first.startswith("# /etc/systemd/system/"):
            units[first.rsplit("/", 1)[1]] = rest
    return units


def exec_start(unit: str) -> tuple[str, list[str]]:
    """The program and arguments of a unit's ``ExecStart=`` (backslash continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", unit)
    line = re.search(r"^ExecStart=(.*)$", joined, re.MULTILINE).group(1)
    program, *args = shlex.split(line)
    return program, args


def replace_arg(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with the value of ``flag`` replaced (the flag must be there)."""
    index = args.index(flag)
    return [*args[: index + 1], value, *args[index + 2 :]]


@contextlib.contextmanager
def program(name: str, args: list[str], ready: str):
    """One of our programs with exactly ``args``, until a client can connect to ``ready``."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"distcache.cli.{name}", *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, process.stderr.read().decode(errors="replace")
            with contextlib.suppress(OSError), connect_to(ready, 1.0):
                break
            assert time.monotonic() < deadline, f"{name} never accepted"
            time.sleep(0.02)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(START_TIMEOUT)
        process.stderr.close()
