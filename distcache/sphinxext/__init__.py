"""Sphinx extension rendering the distcache specification from its sources of truth.

Requirements come from the catalogue (``requirements.toml``); field tables, byte layouts, value
tables, limits, the message catalogue and the header checks come from :mod:`distcache.wire`.
The spec's prose places them with directives and never restates them.

Directives: ``requirement``, ``requirement-index``, ``coverage-matrix``, ``wire-fields``,
``wire-layout``, ``wire-enum``, ``wire-limits``, ``wire-messages``, ``wire-checks``,
``conformance-sample``; ``sequence-diagram`` draws message-sequence charts from text
(:mod:`.sequence`). Role: ``req``.

The user guide and reference add ``wire-example``, ``protocol-reasons`` (worked examples decoded at build time,
:mod:`.examples`) and ``cli-reference``, ``legacy-command-line``, ``enum-states`` (generated from
the programs' parsers and the code's enums, :mod:`.cliref`).
"""

from __future__ import annotations

from typing import Any

from distcache import __version__


def setup(app) -> dict[str, Any]:
    # Imported here so that importing one of its modules (layout, constants) does not pull in all of Sphinx.
    from . import (
        cliref,
        conformance_counts,
        coverage,
        examples,
        requirements,
        sequence,
        wire_directives,
    )

    requirements.setup(app)
    wire_directives.setup(app)
    examples.setup(app)
    cliref.setup(app)
    coverage.setup(app)
    sequence.setup(app)
    conformance_counts.setup(app)
    return {"version": __version__, "parallel_read_safe": True, "parallel_write_safe": True}
