"""The tests' own way of reading a running program's standard error must not damage it: the
file is shared with the program (one file offset), and a test that seeks to read it made the
program's next line overwrite the start of the log, so that a start-up line a test waited for
vanished and the test timed out."""

from __future__ import annotations

import subprocess
import sys
import tempfile

from serverproc import read_shared_file

LINES = 3000


def test_reading_while_the_program_writes_loses_no_line() -> None:
    writer = f"import sys\nfor n in range({LINES}):\n    print(n, file=sys.stderr, flush=True)\n"
    with tempfile.TemporaryFile() as log:
        program = subprocess.Popen([sys.executable, "-c", writer], stderr=log)
        while program.poll() is None:
            read_shared_file(log)  # as a test polls for a line
        program.wait()
        assert read_shared_file(log).split() == [str(n) for n in range(LINES)]
