"""``conformance-sample``: a sample ``distcache conformance`` run whose counts come from the suite.

The guide shows what a passing run prints; writing its numbers by hand made them wrong as soon as
cases were added. The directive counts the cases the default selection runs, per spec section, at
build time; only the duration is the author's::

    .. conformance-sample::
       :command: distcache conformance
       :target: reference server (in-process)
       :seconds: 4.9
"""

from __future__ import annotations

from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

#: The profiles a run without --profile selects (as ``distcache conformance`` does).
DEFAULT_PROFILES = frozenset({"core", "robustness"})


def sample_lines(
    command: str, target: str, seconds: float, target_kind: str = "server"
) -> list[str]:
    """The console lines of a run against a ``target_kind`` where every selected case passes."""
    from distcache.conformance.registry import all_cases
    from distcache.conformance.requirements import section_of, section_title

    by_section: dict[str, int] = {}
    for case in all_cases():
        if case.profile in DEFAULT_PROFILES and case.target == target_kind:
            slug = section_of(case.requirements[0])
            by_section[slug] = by_section.get(slug, 0) + 1
    lines = [f"$ {command}", f"distcache conformance: {target}"]
    for slug, count in by_section.items():
        lines += ["", f"{section_title(slug)} ({count} PASS)"]
    total = sum(by_section.values())
    lines += [
        "",
        f"summary: {total} PASS ({total} cases, {seconds:.1f} s)",
        "verdict: PASSED (exit status 0)",
    ]
    return lines


class ConformanceSample(SphinxDirective):
    option_spec: ClassVar = {
        "command": directives.unchanged_required,
        "target": directives.unchanged_required,
        "seconds": float,
    }

    def run(self) -> list[nodes.Node]:
        text = "\n".join(
            sample_lines(
                self.options["command"], self.options["target"], self.options.get("seconds", 5.0)
            )
        )
        block = nodes.literal_block(text, text)
        block["language"] = "console"
        return [block]


def setup(app) -> None:
    app.add_directive("conformance-sample", ConformanceSample)
