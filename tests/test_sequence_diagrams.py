"""The sequence-diagram directive: text in, self-contained SVG out, bad text refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from distcache.sphinxext.sequence import SequenceError, parse_sequence, render_svg

SOURCE = """
participants: client, proxy, server
client -> proxy: GET uid 5
proxy -> server: GET uid 1001
-- the link drops --
server -x proxy: lost
"""

SVG = "{http://www.w3.org/2000/svg}"


def test_a_sequence_renders_as_self_contained_svg():
    participants, steps = parse_sequence(SOURCE)
    assert participants == ["client", "proxy", "server"]
    assert [(s.kind, s.src, s.dst) for s in steps] == [
        ("message", 0, 1),
        ("message", 1, 2),
        ("note", 0, 0),
        ("lost", 2, 1),
    ]
    svg = render_svg(participants, steps, "uids")
    root = ET.fromstring(svg)  # well-formed XML
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"client", "proxy", "server", "GET uid 5", "the link drops", "lost"} <= set(texts)
    arrows = [ln for ln in root.iter(f"{SVG}line") if ln.get("marker-end")]
    assert len(arrows) == 2  # the lost message has a cross, not an arrow head
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("participants: a, b\na -> c: x", "undeclared participant"),
        ("participants: a, b\na => b: x", "expected"),
        ("participants: a\n-- n --", "at least two"),
        ("participants: a, b", "no steps"),
    ],
)
def test_bad_sequences_are_refused_with_the_reason(text, reason):
    with pytest.raises(SequenceError, match=reason):
        parse_sequence(text)


def test_labels_are_escaped():
    participants, steps = parse_sequence("participants: a, b\na -> b: <id & data>")
    assert "&lt;id &amp; data&gt;" in render_svg(participants, steps)
