"""Reports: a terminal summary grouped by spec section, JSON (one object) and JUnit XML."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

from .grading import GRADE_ORDER, Grade
from .requirements import requirement_info, section_of, section_title
from .runner import CaseResult, RunReport

__all__ = ["render_json", "render_junit", "render_text"]

_NOT_OK = {Grade.FAIL, Grade.NON_STRICT, Grade.ERROR, Grade.XPASS}


def _section(result: CaseResult) -> str:
    return section_of(result.case.requirements[0])


def _blamed(result: CaseResult) -> str:
    return result.requirement or result.case.requirements[0]


def result_record(result: CaseResult, spec_base: str) -> dict:
    case = result.case
    record = {
        "id": case.id,
        "title": case.title,
        "requirements": list(case.requirements),
        "level": case.level,
        "profile": case.profile,
        "section": _section(result),
        "grade": result.grade.value,
        "detail": result.detail,
        "duration_ms": round(result.duration_ms, 1),
        "wire": result.wire.as_json(),
    }
    if result.grade in _NOT_OK or result.grade is Grade.XFAIL:
        record["requirement"] = requirement_info(_blamed(result), spec_base)
    if result.expected_failure:
        record["expected_failure"] = result.expected_failure
    if case.outcomes:
        record["acceptable_outcomes"] = list(case.outcomes)
        record["outcome"] = result.outcome
    return record


def render_json(report: RunReport, spec_base: str) -> str:
    document = {
        "format": "distcache-conformance-report/1",
        "target": report.target,
        "implementation_profile": report.profile_name,
        "strict": report.strict,
        "duration_ms": round(report.duration_ms, 1),
        "stopped": report.stopped,
        "verdict": report.verdict,
        "complete": not report.not_run,
        "not_run": report.not_run,
        "exit_status": report.exit_status,
        "summary": report.summary(),
        "results": [result_record(r, spec_base) for r in report.results],
    }
    return json.dumps(document, indent=2) + "\n"


def _properties(parent: ET.Element, values: dict[str, object]) -> None:
    """A JUnit ``<properties>`` block (CI tools show them per suite and per test case)."""
    block = ET.SubElement(parent, "properties")
    for name, value in values.items():
        if value is not None and value != "":
            ET.SubElement(block, "property", name=name, value=str(value))


def _run_properties(report: RunReport) -> dict[str, object]:
    return {
        "verdict": report.verdict,
        "exit_status": report.exit_status,
        "complete": str(not report.not_run).lower(),
        "not_run": report.not_run,
        "stopped": report.stopped,
        "target": report.target,
        "implementation_profile": report.profile_name,
        "summary": ", ".join(f"{n} {g}" for g, n in report.summary().items() if n),
        "verdict_line": "\n".join(verdict_lines(report)),
    }


def _case_properties(result: CaseResult) -> dict[str, object]:
    return {
        "grade": result.grade.value,
        "requirements": ",".join(result.case.requirements),
        "blamed": _blamed(result) if result.grade not in (Grade.PASS, Grade.UNSUPPORTED) else "",
        "outcome": result.outcome,
        "acceptable_outcomes": " | ".join(result.case.outcomes),
        "expected_failure": result.expected_failure,
    }


def render_junit(report: RunReport, spec_base: str) -> str:
    """JUnit XML: one suite per spec section, one test case per case. The run's verdict (as the
    text report's last line says it) is on the root element and in every suite's properties;
    each test case carries its grade and, where the spec allows several, the outcome seen."""
    summary = report.summary()
    failing = {Grade.FAIL, Grade.XPASS} | ({Grade.NON_STRICT} if report.strict else set())
    suites = ET.Element("testsuites", name="distcache conformance")
    by_section: dict[str, list[CaseResult]] = {}
    for result in report.results:
        by_section.setdefault(_section(result), []).append(result)
    for slug, results in by_section.items():
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=section_title(slug),
            tests=str(len(results)),
            failures=str(sum(r.grade in failing for r in results)),
            errors=str(sum(r.grade is Grade.ERROR for r in results)),
            skipped=str(sum(r.grade in (Grade.UNSUPPORTED, Grade.XFAIL) for r in results)),
        )
        _properties(suite, _run_properties(report))
        for result in results:
            element = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.{slug}",
                name=result.case.id,
                time=f"{result.duration_ms / 1000:.3f}",
            )
            _properties(element, _case_properties(result))
            info = requirement_info(_blamed(result), spec_base)
            message = f"{result.grade.value} {info['id']}: {result.detail}"
            if result.grade in failing:
                node = ET.SubElement(element, "failure", message=message, type=result.grade.value)
                node.text = f"{info['text']}\n{info['url']}\n\n{result.wire.render()}"
            elif result.grade is Grade.ERROR:
                node = ET.SubElement(element, "error", message=message, type="ERROR")
                node.text = result.wire.render()
            elif result.grade in (Grade.UNSUPPORTED, Grade.XFAIL):
                ET.SubElement(element, "skipped", message=message)
            elif result.grade is Grade.NON_STRICT:
                ET.SubElement(element, "system-out").text = message
    suites.set("tests", str(len(report.results)))
    suites.set("failures", str(sum(summary[g.value] for g in failing)))
    suites.set("errors", str(summary[Grade.ERROR.value]))
    suites.set("time", f"{report.duration_ms / 1000:.3f}")
    suites.set("verdict", report.verdict)
    suites.set("exit_status", str(report.exit_status))
    if not report.results:  # still say the verdict where every suite would have said it
        empty = ET.SubElement(suites, "testsuite", name="run", tests="0")
        _properties(empty, _run_properties(report))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def render_text(report: RunReport, spec_base: str, *, verbose: bool = False) -> str:
    lines = [f"distcache conformance: {report.target}"]
    if report.profile_name:
        lines.append(f"implementation profile: {report.profile_name}")
    by_section: dict[str, list[CaseResult]] = {}
    for result in report.results:
        by_section.setdefault(_section(result), []).append(result)
    for slug, results in by_section.items():
        counts = {g: sum(r.grade is g for r in results) for g in GRADE_ORDER}
        tally = ", ".join(f"{n} {g.value}" for g, n in counts.items() if n)
        lines.append("")
        lines.append(f"{section_title(slug)} ({tally})")
        for result in results:
            if result.grade is Grade.PASS and not verbose:
                continue
            lines.append(f"  {result.grade.value:<11} {result.case.id}  {result.case.title}")
            if result.outcome:
                lines.append(" " * 14 + f"outcome: {result.outcome}")
            if result.detail:
                lines.extend(
                    textwrap.wrap(
                        result.detail, 96, initial_indent=" " * 14, subsequent_indent=" " * 14
                    )
                )
            if result.grade in _NOT_OK:
                info = requirement_info(_blamed(result), spec_base)
                if info["text"]:
                    # A requirement with both keywords: NON-STRICT means its SHOULD was missed.
                    level = "SHOULD" if result.grade is Grade.NON_STRICT else info["level"]
                    quote = f"{info['id']} ({level}): {info['text']}"
                    lines.extend(
                        textwrap.wrap(
                            quote,
                            96,
                            initial_indent=" " * 14,
                            subsequent_indent=" " * 16,
                            max_lines=4,
                        )
                    )
                    lines.append(" " * 14 + info["url"])
    summary = report.summary()
    lines.append("")
    lines.append(
        "summary: "
        + ", ".join(f"{n} {g}" for g, n in summary.items() if n)
        + f" ({len(report.results)} cases, {report.duration_ms / 1000:.1f} s)"
    )
    lines.extend(verdict_lines(report))
    return "\n".join(lines) + "\n"


def verdict_lines(report: RunReport) -> list[str]:
    """The lines that end a text report: why a run stopped or is incomplete, and its verdict."""
    lines = []
    if report.stopped:
        lines.append(f"run stopped early: {report.stopped}")
    if report.not_run:
        lines.append(
            f"INCOMPLETE: {report.not_run} of {len(report.results)} cases did not run "
            "(UNSUPPORTED on this target setup); the verdict covers only the cases that ran"
        )
    lines.append(f"verdict: {report.verdict.upper()} (exit status {report.exit_status})")
    return lines
