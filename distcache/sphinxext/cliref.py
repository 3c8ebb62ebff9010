"""Command-line references generated from the programs' own parsers.

``.. cli-reference:: distcache.cli.main:build_parser``
    Walks an :mod:`argparse` parser: the umbrella usage, then one section per subcommand with its
    usage line, description and a table of its arguments (names, value, default, meaning).

``.. legacy-command-line:: dc_client``
    A legacy-style program (single-dash flags, :mod:`distcache.cli.legacy_flags`). If its module
    ``distcache.cli.<program>`` exposes ``COMMAND_LINE`` (a ``CommandLine``), the flags are
    rendered as a table from it; otherwise, if it exposes a ``USAGE`` text, that text is shown as
    the program prints it. A module with neither is a build warning.

``.. enum-states:: distcache.link.upstream.LinkState``
    A table of an enum's members. The content gives one ``NAME: description`` line per member;
    a member missing from the content, or a name that is not a member, is a build warning, so a
    state added to the code cannot be left out of the docs.
"""

from __future__ import annotations

import argparse
import enum
import functools
import importlib

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from .tables import build_table, code

logger = logging.getLogger(__name__)

#: Width the usage lines are wrapped at, whatever terminal the build runs in.
_USAGE_WIDTH = 88


def _load(target: str):
    """``module:attribute`` (or a plain module) to the object."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _usage(parser: argparse.ArgumentParser) -> str:
    saved = parser.formatter_class
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=_USAGE_WIDTH)
    try:
        return parser.format_usage().strip()
    finally:
        parser.formatter_class = saved


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name) or "", sub))
    return found


def _expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def _argument_rows(parser: argparse.ArgumentParser) -> list[tuple]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            takes_value = action.nargs != 0
            value = ""
            if takes_value:
                value = action.metavar or (
                    "{" + ",".join(map(str, action.choices)) + "}"
                    if action.choices
                    else action.dest.upper()
                )
        else:
            names = action.metavar or action.dest
            value = "optional" if action.nargs in ("?", "*") else ""
        if isinstance(action, argparse._VersionAction):
            default = ""
        elif action.required:
            default = "required"
        elif action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            default = ""
        else:
            default = str(action.default)
        rows.append(
            (code(names), code(value) if value else "", default, _expand_help(parser, action))
        )
    return rows


class CliReference(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        target = self.arguments[0]
        try:
            parser = _load(target)()
        except Exception as error:
            logger.warning(
                "cli-reference: cannot build %s: %s", target, error, location=self.get_location()
            )
            return []
        output: list[nodes.Node] = []
        if parser.description:
            output.append(nodes.paragraph(parser.description, parser.description))
        usage = _usage(parser)
        output.append(nodes.literal_block(usage, usage))
        output.append(
            build_table(
                ("Argument", "Value", "Default", "Meaning"),
                _argument_rows(parser),
                (22, 14, 12, 52),
            )
        )
        for name, summary, sub in _subparsers(parser):
            section = nodes.section(
                ids=[f"cli-{parser.prog}-{name}"], names=[f"{parser.prog} {name}"]
            )
            section += nodes.title(
                "", "", nodes.literal(f"{parser.prog} {name}", f"{parser.prog} {name}")
            )
            text = sub.description or summary
            if text:
                section += nodes.paragraph(text, text)
            sub_usage = _usage(sub)
            section += nodes.literal_block(sub_usage, sub_usage)
            section += build_table(
                ("Argument", "Value", "Default", "Meaning"), _argument_rows(sub), (22, 14, 12, 52)
            )
            output.append(section)
        return output


class LegacyCommandLine(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        program = self.arguments[0]
        try:
            module = importlib.import_module(f"distcache.cli.{program}")
        except ImportError as error:
            logger.warning("legacy-command-line: %s", error, location=self.get_location())
            return []
        command_line = getattr(module, "COMMAND_LINE", None)
        if command_line is not None:
            return self._from_flags(command_line)
        usage = getattr(module, "USAGE", None)
        if usage is not None:
            block = nodes.literal_block(usage, usage.rstrip())
            block["language"] = "text"
            return [nodes.paragraph("", f"Usage text printed by {program} -h:"), block]
        logger.warning(
            "legacy-command-line: distcache.cli.%s exposes neither COMMAND_LINE nor USAGE",
            program,
            location=self.get_location(),
        )
        return []

    def _from_flags(self, command_line) -> list[nodes.Node]:
        from distcache.cli.legacy_flags import HELP_WORDS

        rows = []
        for flag in command_line.flags:
            default = "" if flag.default in (None, False) else str(flag.default)
            rows.append(
                (
                    code(", ".join(flag.names)),
                    code(f"<{flag.metavar}>") if flag.metavar else "(switch)",
                    default,
                    flag.help,
                )
            )
        rows.append(
            (code(", ".join(HELP_WORDS)), "(switch)", "", "print the usage and exit with status 0")
        )
        output: list[nodes.Node] = [
            nodes.paragraph(command_line.summary, command_line.summary),
            build_table(("Flag", "Argument", "Default", "Meaning"), rows, (20, 14, 16, 50)),
        ]
        if command_line.notes:
            block = nodes.literal_block(command_line.notes, command_line.notes.rstrip())
            block["language"] = "text"
            output += [nodes.paragraph("", "Notes printed after the flags:"), block]
        return output


class EnumStates(SphinxDirective):
    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        target = self.arguments[0]
        module_name, _, name = target.rpartition(".")
        try:
            enum_class = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as error:
            logger.warning("enum-states: %s", error, location=self.get_location())
            return []
        if not (isinstance(enum_class, type) and issubclass(enum_class, enum.Enum)):
            logger.warning("enum-states: %s is not an enum", target, location=self.get_location())
            return []
        described: dict[str, str] = {}
        for line in self.content:
            if line.strip():
                state, _, text = line.partition(":")
                described[state.strip()] = text.strip()
        members = [member.name for member in enum_class]
        for missing in (m for m in members if m not in described):
            logger.warning(
                "enum-states: %s.%s is not described", target, missing, location=self.get_location()
            )
        for extra in (s for s in described if s not in members):
            logger.warning(
                "enum-states: %s has no member %s", target, extra, location=self.get_location()
            )
        rows = []
        for member in enum_class:
            cell = nodes.paragraph()
            parsed = StringList([described.get(member.name, "")], source=self.get_source_info()[0])
            container = nodes.container()
            nested_parse_with_titles(self.state, parsed, container)
            cell_nodes = container.children[0].children if container.children else []
            rows.append((code(member.name), code(repr(member.value)), list(cell_nodes) or cell))
        return [
            build_table(
                ("State", "Value", "Meaning"), rows, (16, 16, 68), caption=f"{name} members"
            )
        ]


class StateTransitions(SphinxDirective):
    """``.. state-transitions:: module.TABLE``: a ``{(state, event): state}`` table as a diagram
    (one arrow per transition) and a table with each event's meaning (the event's value)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        target = self.arguments[0]
        module_name, _, name = target.rpartition(".")
        try:
            table = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as error:
            logger.warning("state-transitions: %s", error, location=self.get_location())
            return []
        if not isinstance(table, dict) or not table:
            logger.warning(
                "state-transitions: %s is not a table", target, location=self.get_location()
            )
            return []
        width = max(len(state.name) for state, _ in table)
        arrows = "\n".join(
            f"{state.name:>{width}} --{event.name}--> {after.name}"
            for (state, event), after in table.items()
        )
        diagram = nodes.literal_block(arrows, arrows)
        diagram["language"] = "text"
        rows = [
            (code(state.name), code(event.name), code(after.name), nodes.paragraph("", event.value))
            for (state, event), after in table.items()
        ]
        return [
            diagram,
            build_table(("From", "Event", "To", "When"), rows, (16, 16, 16, 52), caption=f"{name}"),
        ]


def setup(app) -> None:
    app.add_directive("state-transitions", StateTransitions)
    app.add_directive("cli-reference", CliReference)
    app.add_directive("legacy-command-line", LegacyCommandLine)
    app.add_directive("enum-states", EnumStates)
