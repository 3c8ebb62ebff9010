"""The requirement catalogue of the specification: loading, validation and links into the spec."""

from .catalogue import (
    KINDS,
    LEVELS,
    CatalogueError,
    Requirement,
    Section,
    anchor,
    load_requirements,
    load_sections,
    requirement,
    spec_url,
)

__all__ = [
    "KINDS",
    "LEVELS",
    "CatalogueError",
    "Requirement",
    "Section",
    "anchor",
    "load_requirements",
    "load_sections",
    "requirement",
    "spec_url",
]
