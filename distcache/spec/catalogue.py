"""Read and validate ``requirements.toml``, the catalogue of normative requirements.

The catalogue is data shared by the Sphinx spec (which renders each requirement where the text
places it) and the conformance runner (which links its results to the same ids). Validation is
strict so that a typo fails loudly instead of silently dropping a requirement from a report.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from distcache import conformance_data_path

#: File name of the catalogue inside the conformance data.
CATALOGUE_NAME = "requirements.toml"
#: The ``format`` value this module understands.
CATALOGUE_FORMAT = "distcache-requirements/1"
#: RFC 2119 levels, strongest first.
LEVELS: tuple[str, ...] = ("MUST", "SHOULD", "MAY")
#: How a requirement can be tested (see the comment at the top of the catalogue).
KINDS: tuple[str, ...] = ("wire", "wire-proxy", "cli", "api", "internal")
#: Default base of :func:`spec_url`: the spec's directory relative to the root of the built docs.
DEFAULT_SPEC_BASE = "spec"

_ID = re.compile(r"[A-Z]+-[1-9][0-9]*")
_SLUG = re.compile(r"[a-z][a-z0-9-]*")
_REQUIRED = ("id", "level", "section", "title", "text", "kind")
_OPTIONAL = ("legacy", "notes")


class CatalogueError(ValueError):
    """The catalogue file is malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class Section:
    """A chapter of the specification; ``slug`` is its file name under ``spec/``."""

    slug: str
    title: str


@dataclass(frozen=True, slots=True)
class Requirement:
    """One normative requirement of the specification."""

    id: str
    level: str
    section: str
    title: str
    text: str
    kind: str
    legacy: str | None = None
    notes: str | None = None

    @property
    def anchor(self) -> str:
        """HTML anchor of this requirement in its spec chapter."""
        return anchor(self.id)


def default_catalogue_path() -> Path:
    """Where the installed package finds the catalogue."""
    return conformance_data_path() / CATALOGUE_NAME


def anchor(requirement_id: str) -> str:
    """The HTML anchor name of a requirement: ``FRAME-1`` -> ``req-frame-1``."""
    return "req-" + requirement_id.lower()


def spec_url(requirement_id: str, base: str = DEFAULT_SPEC_BASE) -> str:
    """Link to a requirement in the built spec: ``<base>/<section>.html#req-<id>``.

    ``base`` is the URL of the spec's directory (absolute, or relative to the page linking).
    """
    found = requirement(requirement_id)
    return f"{base.rstrip('/')}/{found.section}.html#{anchor(found.id)}"


def _read(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise CatalogueError(f"{path}: cannot read the catalogue: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise CatalogueError(f"{path}: not valid TOML: {error}") from error


def _parse_sections(path: Path, raw: dict) -> tuple[Section, ...]:
    sections = []
    for index, table in enumerate(raw.get("section", [])):
        where = f"{path}: section #{index + 1}"
        if set(table) != {"slug", "title"}:
            raise CatalogueError(f"{where}: needs exactly the keys slug and title")
        if not _SLUG.fullmatch(str(table["slug"])):
            raise CatalogueError(f"{where}: slug {table['slug']!r} is not a lower-case file name")
        sections.append(Section(table["slug"], table["title"]))
    slugs = [s.slug for s in sections]
    if not sections:
        raise CatalogueError(f"{path}: no [[section]] tables")
    if len(set(slugs)) != len(slugs):
        raise CatalogueError(f"{path}: duplicate section slugs")
    return tuple(sections)


def _parse_requirement(where: str, table: dict, slugs: set[str]) -> Requirement:
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise CatalogueError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CatalogueError(f"{where}: unknown keys {', '.join(unknown)}")
    if not all(isinstance(value, str) and value.strip() for value in table.values()):
        raise CatalogueError(f"{where}: every value must be a non-empty string")
    req = Requirement(**table)
    where = f"{where} ({req.id})"
    if not _ID.fullmatch(req.id):
        raise CatalogueError(f"{where}: id must look like GROUP-1")
    if req.level not in LEVELS:
        raise CatalogueError(f"{where}: unknown level {req.level!r}, expected one of {LEVELS}")
    if req.kind not in KINDS:
        raise CatalogueError(f"{where}: unknown kind {req.kind!r}, expected one of {KINDS}")
    if req.section not in slugs:
        raise CatalogueError(f"{where}: unknown section {req.section!r}")
    # The level is the strongest keyword of the text, so the text must actually use it.
    if not re.search(rf"\b{req.level}\b", req.text):
        raise CatalogueError(f"{where}: level {req.level} does not appear in the text")
    return req


def _parse(path: Path) -> tuple[tuple[Section, ...], tuple[Requirement, ...]]:
    raw = _read(path)
    if raw.get("format") != CATALOGUE_FORMAT:
        raise CatalogueError(f"{path}: format must be {CATALOGUE_FORMAT!r}")
    sections = _parse_sections(path, raw)
    slugs = {s.slug for s in sections}
    requirements: list[Requirement] = []
    seen: set[str] = set()
    for index, table in enumerate(raw.get("requirement", [])):
        req = _parse_requirement(f"{path}: requirement #{index + 1}", table, slugs)
        if req.id in seen:
            raise CatalogueError(f"{path}: duplicate requirement id {req.id}")
        seen.add(req.id)
        requirements.append(req)
    return sections, tuple(requirements)


@cache
def _parse_cached(path: Path, mtime_ns: int) -> tuple[tuple[Section, ...], tuple[Requirement, ...]]:
    return _parse(path)


def _load(path: Path) -> tuple[tuple[Section, ...], tuple[Requirement, ...]]:
    # Keyed by modification time so a long-lived process (a docs server) sees edits.
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as error:
        raise CatalogueError(f"{path}: cannot read the catalogue: {error}") from error
    return _parse_cached(path, mtime_ns)


def load_requirements(path: Path | str | None = None) -> tuple[Requirement, ...]:
    """Every requirement of the catalogue, in file order. Raises :class:`CatalogueError`."""
    return _load(Path(path) if path else default_catalogue_path())[1]


def load_sections(path: Path | str | None = None) -> tuple[Section, ...]:
    """The spec's chapters, in reading order, as the catalogue declares them."""
    return _load(Path(path) if path else default_catalogue_path())[0]


def requirement(requirement_id: str, path: Path | str | None = None) -> Requirement:
    """Look a requirement up by id (``KeyError`` if the catalogue has no such id)."""
    for req in load_requirements(path):
        if req.id == requirement_id:
            return req
    raise KeyError(f"no requirement {requirement_id!r} in the catalogue")
