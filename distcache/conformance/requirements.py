"""Requirement texts and spec links for reports, from the requirement catalogue."""

from __future__ import annotations

from functools import cache

from ..spec.catalogue import CatalogueError, load_requirements, load_sections, spec_url

__all__ = ["requirement_info", "section_of", "section_title"]


@cache
def _by_id() -> dict:
    try:
        return {r.id: r for r in load_requirements()}
    except CatalogueError:
        return {}


@cache
def _sections() -> dict[str, str]:
    try:
        return {s.slug: s.title for s in load_sections()}
    except CatalogueError:
        return {}


def level_of(requirement_id: str, default: str = "MUST") -> str:
    found = _by_id().get(requirement_id)
    return found.level if found else default


def section_of(requirement_id: str) -> str:
    found = _by_id().get(requirement_id)
    return found.section if found else "other"


def section_title(slug: str) -> str:
    return _sections().get(slug, slug.replace("-", " ").capitalize())


def requirement_info(requirement_id: str, base: str) -> dict:
    """{id, level, title, text, url} for a report (text empty when the id is unknown)."""
    found = _by_id().get(requirement_id)
    if found is None:
        return {"id": requirement_id, "level": "", "title": "", "text": "", "url": ""}
    return {
        "id": found.id,
        "level": found.level,
        "title": found.title,
        "text": " ".join(found.text.split()),
        "url": spec_url(found.id, base),
    }
