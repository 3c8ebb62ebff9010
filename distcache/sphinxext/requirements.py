"""Requirements in the spec: the ``requirement`` directive, the ``req`` role and the index.

Each requirement becomes a target with the anchor ``req-<id lowercased>`` in the chapter named by
its catalogue section, so a conformance report can link to ``spec/<section>.html#req-frame-1``.
A small domain records where each requirement was placed, resolves ``:req:`` references and
checks at the end of reading that every catalogue entry is placed exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.domains import Domain, ObjType
from sphinx.errors import ExtensionError
from sphinx.roles import XRefRole
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode

from distcache.spec.catalogue import (
    CatalogueError,
    Requirement,
    Section,
    anchor,
    default_catalogue_path,
    load_requirements,
    load_sections,
)

from .tables import build_table

logger = logging.getLogger(__name__)

DOMAIN = "dcspec"
#: furo colours admonitions by these classes: the strongest level stands out most.
_LEVEL_STYLE = {"MUST": "important", "SHOULD": "note", "MAY": "seealso"}


def catalogue_path(env) -> Path:
    """The catalogue this build renders: ``distcache_requirements`` (relative to the conf
    directory) or, by default, the one shipped with the package."""
    configured = env.config.distcache_requirements
    if not configured:
        return default_catalogue_path()
    return (Path(env.app.confdir) / configured).resolve()


def catalogue(env) -> tuple[tuple[Section, ...], dict[str, Requirement]]:
    """Sections and requirements by id; a broken catalogue stops the build with its message."""
    path = catalogue_path(env)
    try:
        sections, reqs = load_sections(path), load_requirements(path)
    except CatalogueError as error:
        raise ExtensionError(f"distcache requirement catalogue: {error}") from error
    return sections, {req.id: req for req in reqs}


class RequirementRole(XRefRole):
    """``:req:`FRAME-1``` links to a requirement wherever the spec places it."""

    def __init__(self) -> None:
        super().__init__(warn_dangling=True, innernodeclass=nodes.inline)

    def run(self):
        # Registered under the short name ``req``; the reference belongs to our domain.
        self.name = f"{DOMAIN}:req"
        req_id = self.target if self.has_explicit_title else self.text
        if req_id.strip() not in catalogue(self.env)[1]:
            logger.warning(
                "unknown requirement %r in :req: role", req_id, location=self.get_location()
            )
        return super().run()


class RequirementDomain(Domain):
    """Where each requirement is placed: ``requirements[id] = (docname, anchor)``."""

    name = DOMAIN
    label = "distcache specification"
    object_types: ClassVar = {"requirement": ObjType("requirement", "req")}
    roles: ClassVar = {"req": RequirementRole()}
    initial_data: ClassVar[dict[str, Any]] = {"requirements": {}}
    dangling_warnings: ClassVar = {
        "req": "requirement %(target)s is not placed in the specification"
    }

    @property
    def placed(self) -> dict[str, tuple[str, str]]:
        return self.data["requirements"]

    def note_requirement(self, req_id: str, location: Any) -> str:
        if req_id in self.placed:
            other = self.env.doc2path(self.placed[req_id][0])
            logger.warning(
                "requirement %s placed twice (also in %s)", req_id, other, location=location
            )
        self.placed[req_id] = (self.env.docname, anchor(req_id))
        return anchor(req_id)

    def clear_doc(self, docname: str) -> None:
        for req_id, (placed_in, _) in list(self.placed.items()):
            if placed_in == docname:
                del self.placed[req_id]

    def merge_domaindata(self, docnames: Iterable[str], otherdata: dict[str, Any]) -> None:
        for req_id, (docname, target) in otherdata["requirements"].items():
            if docname in docnames:
                self.placed[req_id] = (docname, target)

    def resolve_xref(self, env, fromdocname, builder, typ, target, node, contnode):
        found = self.placed.get(target)
        if found is None:
            return None
        docname, target_anchor = found
        title = catalogue(env)[1][target].title
        return make_refnode(builder, fromdocname, docname, target_anchor, contnode, title)

    def resolve_any_xref(self, env, fromdocname, builder, target, node, contnode):
        found = self.resolve_xref(env, fromdocname, builder, "req", target, node, contnode)
        return [(f"{DOMAIN}:req", found)] if found is not None else []

    def get_objects(self) -> Iterator[tuple[str, str, str, str, str, int]]:
        for req_id, (docname, target) in self.placed.items():
            yield req_id, req_id, "requirement", docname, target, 1


def requirement_node(req: Requirement, target: str) -> nodes.Element:
    """The rendered requirement: id, level, title and text, all from the catalogue."""
    box = nodes.admonition(
        classes=["requirement", f"requirement-{req.level.lower()}", _LEVEL_STYLE[req.level]],
        ids=[target],
    )
    title = nodes.title()
    title += nodes.strong(req.id, req.id)
    title += nodes.Text(f" ({req.level}, {req.kind}): {req.title} ")
    title += nodes.reference(
        "", "¶", refuri=f"#{target}", classes=["headerlink"], reftitle="Link to this requirement"
    )
    box += title
    box += nodes.paragraph(req.text, req.text)
    if req.legacy:
        label = "Legacy 1.5.1: "
        box += nodes.paragraph("", "", nodes.emphasis(label, label), nodes.Text(req.legacy))
    if req.notes:
        label = "Note: "
        box += nodes.paragraph("", "", nodes.emphasis(label, label), nodes.Text(req.notes))
    return box


class RequirementDirective(SphinxDirective):
    """``.. requirement:: FRAME-1`` renders that requirement from the catalogue."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        req_id = self.arguments[0].strip()
        self.env.note_dependency(str(catalogue_path(self.env)))
        req = catalogue(self.env)[1].get(req_id)
        if req is None:
            logger.warning("unknown requirement %s", req_id, location=self.get_location())
            return []
        chapter = PurePosixPath(self.env.docname).name
        if chapter != req.section:
            logger.warning(
                "requirement %s belongs to section %r but is placed in %r",
                req_id,
                req.section,
                chapter,
                location=self.get_location(),
            )
        domain: RequirementDomain = self.env.get_domain(DOMAIN)
        target = domain.note_requirement(req_id, self.get_location())
        return [requirement_node(req, target)]


def _req_link(req: Requirement) -> nodes.Node:
    ref = addnodes.pending_xref(
        "", refdomain=DOMAIN, reftype="req", reftarget=req.id, refexplicit=False, refwarn=True
    )
    ref += nodes.inline(req.id, req.id)
    return ref


class RequirementIndexDirective(SphinxDirective):
    """``.. requirement-index::`` lists every requirement by section, with its level.

    ``:legacy:`` lists only the requirements legacy 1.5.1 does not meet, with how it deviates.
    """

    has_content = False
    option_spec: ClassVar = {"legacy": directives.flag}

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(catalogue_path(self.env)))
        sections, reqs = catalogue(self.env)
        legacy_only = "legacy" in self.options
        output: list[nodes.Node] = []
        for section in sections:
            chosen = [r for r in reqs.values() if r.section == section.slug]
            if legacy_only:
                chosen = [r for r in chosen if r.legacy]
            if not chosen:
                continue
            if legacy_only:
                headers, widths = ("Requirement", "Level", "Legacy 1.5.1 instead"), (14, 9, 60)
                rows = [(_req_link(r), r.level, r.legacy) for r in chosen]
            else:
                headers, widths = ("Requirement", "Level", "Kind", "Title"), (14, 9, 11, 50)
                rows = [(_req_link(r), r.level, r.kind, r.title) for r in chosen]
            output.append(build_table(headers, rows, widths, caption=section.title))
        return output


def check_placement(app, env) -> None:
    """Every catalogue requirement must be placed once (duplicates are reported when read)."""
    domain: RequirementDomain = env.get_domain(DOMAIN)
    if not domain.placed:
        return  # a project that renders no requirements at all
    for req_id in catalogue(env)[1]:
        if req_id not in domain.placed:
            logger.warning("requirement %s is in the catalogue but not placed in the spec", req_id)


def setup(app) -> None:
    app.add_config_value("distcache_requirements", "", "env", types=frozenset({str}))
    app.add_domain(RequirementDomain)
    app.add_directive("requirement", RequirementDirective)
    app.add_directive("requirement-index", RequirementIndexDirective)
    app.add_role("req", RequirementRole())
    app.connect("env-check-consistency", check_placement)
