"""The requirement catalogue, its placement in the spec, and the docs build."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from distcache.spec import (
    CatalogueError,
    anchor,
    load_requirements,
    load_sections,
    requirement,
    spec_url,
)
from distcache.sphinxext.constants import documented_constants
from distcache.sphinxext.layout import layout_lines
from distcache.wire import limits
from distcache.wire.schema import AddRequest, FrameHeader

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec"
CATALOGUE = ROOT / "conformance" / "requirements.toml"

PLACED = re.compile(r"^\.\. requirement::\s*(\S+)\s*$", re.MULTILINE)
REFERENCED = re.compile(r":req:`(?:[^`<]*<)?([^`>]+)>?`")

# The ids the legacy behaviour notes proposed; they must never be renumbered or dropped.
ORIGINAL_IDS = (
    [f"FRAME-{n}" for n in range(1, 10)]
    + [f"FRAG-{n}" for n in range(1, 5)]
    + [f"ADD-{n}" for n in range(1, 6)]
    + ["GET-1", "REM-1", "HAVE-1", "RESP-1", "RESP-2"]
    + [f"CONN-{n}" for n in range(1, 6)]
    + [f"CACHE-{n}" for n in range(1, 7)]
    + [f"SRV-{n}" for n in range(1, 8)]
    + [f"ADDR-{n}" for n in range(1, 5)]
    + [f"PROXY-{n}" for n in range(1, 13)]
    + [f"CTX-{n}" for n in range(1, 9)]
    + ["TEST-1", "TEST-2", "SNOOP-1", "ROBUST-1", "ROBUST-2"]
)


def spec_sources() -> dict[str, str]:
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(SPEC.glob("*.rst"))}


def placements() -> list[tuple[str, str]]:
    """(chapter, id) for every ``.. requirement::`` in the spec."""
    return [
        (chapter, rid) for chapter, text in spec_sources().items() for rid in PLACED.findall(text)
    ]


# ------------------------------------------------------------------------------------------------
# The shipped catalogue


def test_catalogue_loads_from_the_package_and_matches_the_checkout():
    assert load_requirements() == load_requirements(CATALOGUE)


def test_original_ids_are_all_present():
    ids = {req.id for req in load_requirements(CATALOGUE)}
    assert not [rid for rid in ORIGINAL_IDS if rid not in ids]


def test_every_placed_or_referenced_id_exists():
    ids = {req.id for req in load_requirements(CATALOGUE)}
    used = {rid for _, rid in placements()}
    for text in spec_sources().values():
        used.update(REFERENCED.findall(text))
    assert sorted(used - ids) == []


def test_every_requirement_is_placed_exactly_once_in_its_own_chapter():
    counts = Counter(rid for _, rid in placements())
    reqs = load_requirements(CATALOGUE)
    assert [req.id for req in reqs if counts[req.id] != 1] == []
    chapter_of = dict((rid, chapter) for chapter, rid in placements())
    assert [req.id for req in reqs if chapter_of[req.id] != req.section] == []


def test_every_section_has_a_chapter_in_the_toctree():
    index = (SPEC / "index.rst").read_text(encoding="utf-8")
    for section in load_sections(CATALOGUE):
        assert (SPEC / f"{section.slug}.rst").is_file(), section.slug
        assert re.search(rf"^\s+{re.escape(section.slug)}$", index, re.MULTILINE), section.slug


def test_lookup_anchor_and_url():
    req = requirement("FRAME-1")
    assert (req.level, req.section) == ("MUST", "framing")
    assert anchor("FRAME-1") == req.anchor == "req-frame-1"
    assert spec_url("CACHE-2") == "spec/cache.html#req-cache-2"
    assert spec_url("FRAME-4", base="https://example.org/spec/") == (
        "https://example.org/spec/framing.html#req-frame-4"
    )
    with pytest.raises(KeyError):
        requirement("NOPE-1")


# ------------------------------------------------------------------------------------------------
# Validation, on small catalogues written for each case

HEADER = """\
format = "distcache-requirements/1"

[[section]]
slug = "framing"
title = "Framing"
"""


def entry(rid="FRAME-1", level="MUST", section="framing", kind="wire", text=None, extra=""):
    text = text or f"A frame {level} be fine."
    return textwrap.dedent(f"""
        [[requirement]]
        id = "{rid}"
        level = "{level}"
        section = "{section}"
        title = "t"
        text = "{text}"
        kind = "{kind}"
        {extra}
        """)


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "requirements.toml"
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_minimal_catalogue_is_accepted(tmp_path):
    path = write(tmp_path, entry() + entry("FRAME-2", "SHOULD", extra='legacy = "crashes"'))
    reqs = load_requirements(path)
    assert [r.id for r in reqs] == ["FRAME-1", "FRAME-2"]
    assert reqs[1].legacy == "crashes"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (entry() + entry(), "duplicate requirement id FRAME-1"),
        (entry(level="MUSTN'T", text="A frame MUST be."), "unknown level"),
        (entry(kind="telepathy"), "unknown kind"),
        (entry(section="nowhere"), "unknown section"),
        (entry(rid="frame-1"), "id must look like"),
        (entry(level="SHOULD", text="A frame MUST be fine."), "does not appear in the text"),
        (entry(extra='colour = "red"'), "unknown keys colour"),
        (entry().replace('title = "t"\n', ""), "missing title"),
    ],
)
def test_validation_rejects(tmp_path, body, message):
    with pytest.raises(CatalogueError, match=re.escape(message)):
        load_requirements(write(tmp_path, body))


def test_validation_rejects_unknown_format_and_bad_toml(tmp_path):
    path = tmp_path / "requirements.toml"
    path.write_text(HEADER.replace("/1", "/9") + entry(), encoding="utf-8")
    with pytest.raises(CatalogueError, match="format"):
        load_requirements(path)
    path.write_text("this is = = not toml", encoding="utf-8")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        load_requirements(path)


# ------------------------------------------------------------------------------------------------
# Generators behind the directives


def test_every_limit_is_documented_by_a_comment():
    constants = documented_constants(limits)
    assert {c.name for c in constants} == {n for n in dir(limits) if n.isupper()}
    assert [c.name for c in constants if not c.comment] == []
    by_name = {c.name: c for c in constants}
    assert by_name["MAX_PAYLOAD"].definition == "MAX_FRAMES_NOMINAL * MAX_FRAME_DATA"
    assert by_name["MAX_CACHE_SESSIONS"].comment == by_name["MIN_CACHE_SESSIONS"].comment


def test_layout_places_every_header_field():
    diagram = "\n".join(layout_lines(FrameHeader))
    for name in ("proto_level", "is_response", "request_uid", "op_class", "data_len"):
        assert name in diagram
    assert "session_id (id_len bytes)" in "\n".join(layout_lines(AddRequest))


# ------------------------------------------------------------------------------------------------
# The docs build (a few seconds): zero warnings, and the extension's own checks fire


def sphinx_build(srcdir: Path, outdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(outdir / ".doctrees"), str(srcdir), str(outdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def test_docs_build_without_warnings(tmp_path):
    result = sphinx_build(ROOT / "docs", tmp_path / "html")
    assert result.returncode == 0, result.stderr
    framing = (tmp_path / "html" / "spec" / "framing.html").read_text(encoding="utf-8")
    assert 'id="req-frame-1"' in framing
    index = (tmp_path / "html" / "spec" / "requirement-index.html").read_text(encoding="utf-8")
    assert 'href="cache.html#req-cache-2"' in index
    matrix = (tmp_path / "html" / "guide" / "coverage.html").read_text(encoding="utf-8")
    assert "get_refreshes_expiry" in matrix and "../spec/cache.html#req-cache-2" in matrix


def test_extension_warns_on_unknown_unplaced_and_misplaced_requirements(tmp_path):
    catalogue = write(tmp_path, entry() + entry("FRAME-2") + entry("FRAME-3"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        f'extensions = ["distcache.sphinxext"]\ndistcache_requirements = {str(catalogue)!r}\n'
    )
    (src / "index.rst").write_text(
        ".. toctree::\n\n   framing\n   other\n\nIndex\n=====\n\nSee :req:`FRAME-9`.\n"
    )
    (src / "framing.rst").write_text(
        "Framing\n=======\n\n.. requirement:: FRAME-1\n\n.. requirement:: FRAME-1\n"
    )
    (src / "other.rst").write_text(
        "Other\n=====\n\n.. requirement:: FRAME-2\n\n.. requirement:: FRAME-7\n"
    )
    result = sphinx_build(src, tmp_path / "html")
    assert result.returncode != 0
    assert "unknown requirement 'FRAME-9'" in result.stderr
    assert "unknown requirement FRAME-7" in result.stderr
    assert "FRAME-2 belongs to section 'framing' but is placed in 'other'" in result.stderr
    assert "FRAME-3 is in the catalogue but not placed" in result.stderr
    assert "requirement FRAME-1 placed twice" in result.stderr
