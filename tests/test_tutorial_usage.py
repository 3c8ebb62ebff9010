"""The usage that tutorials print runs exactly as written.

The four lines use a fixed port and the proxy's shared default socket path, so they run in
private namespaces (their own loopback, their own empty ``/tmp``): nothing outside the test can
collide with them, and the test leaves nothing behind.
"""

from __future__ import annotations

from namespaces import needs_namespaces, run_in_namespace

TUTORIAL_LINES = [
    "dc_server -listen 127.0.0.1:12533",
    "dc_client -connect 127.0.0.1:12533",
    "dc_test -server 127.0.0.1:12533 -requests 2000",
    "dc_snoop -listen 127.0.0.1:11200 -connect 127.0.0.1:12533",
]

# The programs are shell functions running this checkout, so each line is typed as printed.
SCRIPT = r"""
set -e
for name in dc_server dc_client dc_test dc_snoop; do
    eval "$name() { \"\$PYTHON\" -m distcache.cli.$name \"\$@\"; }"
done
wait_for() { for _ in $(seq 100); do eval "$1" && return 0; sleep 0.1; done; return 1; }
tcp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

@SERVER@ &
wait_for "tcp_up 12533"
@CLIENT@ &
wait_for "test -S /tmp/scache"
@TEST@
@SNOOP@ 2>/dev/null &
wait_for "tcp_up 11200"
dc_test -connect IP:127.0.0.1:11200 -ops 100
dc_test -connect UNIX:/tmp/scache -ops 100
echo TUTORIAL-DONE
"""


@needs_namespaces
def test_the_four_tutorial_lines_run_as_written():
    script = SCRIPT
    for name, line in zip(
        ("@SERVER@", "@CLIENT@", "@TEST@", "@SNOOP@"), TUTORIAL_LINES, strict=True
    ):
        script = script.replace(name, line)
    result = run_in_namespace(script)
    assert result.returncode == 0, result.stderr
    assert "TUTORIAL-DONE" in result.stdout
    # Three dc_test runs (direct, through dc_snoop, through dc_client), each complete.
    assert result.stderr.count("Info, all tests complete") == 3, result.stderr
    assert "will run 2000 random tests" in result.stderr
