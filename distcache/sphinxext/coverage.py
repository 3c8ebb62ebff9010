"""``.. coverage-matrix::``: every requirement with the cases that test it and the faulty targets
that prove those cases can fail, built from the catalogue, the case registry and the mutation
table (:mod:`distcache.conformance.coverage`).

Options: ``:gaps:`` renders only the list of requirements without a case.
"""

from __future__ import annotations

from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

from distcache import conformance_data_path

from .requirements import _req_link, catalogue, catalogue_path
from .tables import build_table, code

_STATUS = {
    "tested": "tested",
    "gap": "GAP: no case",
    "elsewhere": "checked elsewhere",
    "program": "checked against the program",
    "not-wire": "not on the wire",
}


def _cases_cell(row) -> list[nodes.Node]:
    own = [c for c in row.cases if not c.startswith("vector/")]
    vectors = len(row.cases) - len(own)
    cell: list[nodes.Node] = []
    for case_id in own:
        if cell:
            cell.append(nodes.Text(", "))
        cell.append(code(case_id))
    if vectors:
        cell.append(nodes.Text(f"{', ' if own else ''}{vectors} vector case{'s' * (vectors > 1)}"))
    return cell or [nodes.Text("-")]


def _proved_cell(row) -> list[nodes.Node]:
    cell: list[nodes.Node] = []
    for case_id, faults in row.proved.items():
        if cell:
            cell.append(nodes.Text("; "))
        cell.append(code(case_id))
        cell.append(nodes.Text(" by "))
        for index, fault in enumerate(faults):
            if index:
                cell.append(nodes.Text(", "))
            cell.append(code(fault))
    if not cell and row.elsewhere:
        cell.append(nodes.Text(row.elsewhere))
    elif not cell and row.program_tests:
        for index, test in enumerate(row.program_tests):
            if index:
                cell.append(nodes.Text(", "))
            cell.append(code(test.removeprefix("tests/")))
    return cell or [nodes.Text("-")]


class CoverageMatrixDirective(SphinxDirective):
    has_content = False
    option_spec: ClassVar = {"gaps": directives.flag}

    def run(self) -> list[nodes.Node]:
        from distcache.conformance.coverage import COVERAGE_NAME, coverage_matrix

        self.env.note_dependency(str(catalogue_path(self.env)))
        self.env.note_dependency(str(conformance_data_path() / COVERAGE_NAME))
        rows = coverage_matrix()
        if "gaps" in self.options:
            return [self._gaps(rows)]
        sections, _ = catalogue(self.env)
        tested = [r for r in rows if r.status == "tested"]
        proved = sum(bool(r.proved) for r in tested)
        counts = {status: sum(r.status == status for r in rows) for status in _STATUS}
        summary = (
            f"{len(tested)} requirements are tested by conformance cases; for {proved} of them a "
            "faulty target proves that a case can fail on them. Without a case: "
            f"{counts['gap']} of the wire (gaps); {counts['elsewhere']} checked elsewhere; "
            f"{counts['program']} about a program, checked against it by the tests named; "
            f"{counts['not-wire']} not on the wire."
        )
        output: list[nodes.Node] = [nodes.paragraph(summary, summary)]
        for section in sections:
            chosen = [r for r in rows if r.requirement.section == section.slug]
            if not chosen:
                continue
            table_rows = [
                (
                    _req_link(r.requirement),
                    r.requirement.level,
                    _STATUS[r.status],
                    _cases_cell(r),
                    _proved_cell(r),
                )
                for r in chosen
            ]
            output.append(
                build_table(
                    ("Requirement", "Level", "Status", "Cases", "Proved to fail by"),
                    table_rows,
                    (12, 8, 12, 38, 38),
                    caption=section.title,
                )
            )
        return output

    def _gaps(self, rows) -> nodes.Node:
        gaps = [r for r in rows if r.status == "gap"]
        if not gaps:
            text = "None: every requirement of the wire has at least one case."
            return nodes.paragraph(text, text)
        items = nodes.bullet_list()
        for row in gaps:
            item = nodes.list_item()
            para = nodes.paragraph()
            para += _req_link(row.requirement)
            para += nodes.Text(f" ({row.requirement.level}): {row.requirement.title}")
            item += para
            items += item
        return items


def setup(app) -> None:
    app.add_directive("coverage-matrix", CoverageMatrixDirective)
