"""The Apache guide's unit files and command lines are accepted by the programs they start."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from distcache.address import parse_address

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "apache.rst"
EXEC_START = re.compile(r"^\s*ExecStart=(\S+)(.*)$", re.MULTILINE)


def exec_starts() -> list[tuple[str, list[str]]]:
    found = [(Path(p).name, shlex.split(rest)) for p, rest in EXEC_START.findall(GUIDE.read_text())]
    assert {name for name, _ in found} == {"dc_server", "dc_client"}
    return found


@pytest.mark.parametrize(("program", "args"), exec_starts())
def test_every_unit_command_line_parses(program, args):
    module = importlib.import_module(f"distcache.cli.{program}")
    options = module.COMMAND_LINE.parse(args)
    assert not options.get("daemon"), "under systemd the programs stay in the foreground"
    listens = options["listen"]  # dc_server takes several -listen
    for listen in listens if isinstance(listens, list) else [listens]:
        parse_address(listen).require_listen()
    if program == "dc_client":
        parse_address(options["server"]).require_connect()


def test_the_cache_path_apache_uses_is_the_one_dc_client_listens_on():
    text = GUIDE.read_text()
    cache = re.search(r"SSLSessionCache\s+dc:(\S+)", text).group(1)
    listen = dict(
        (args[i], args[i + 1]) for name, args in exec_starts() if name == "dc_client" for i in (0,)
    )["-listen"]
    assert cache == listen
    assert "SSLSessionTickets      off" in text
    assert "apr_time_as_msec(expiry)" in text
