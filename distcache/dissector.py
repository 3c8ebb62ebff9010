"""A Wireshark dissector for distcache, generated in Lua from the wire schemas.

Design
------
Hand-written dissectors restate a protocol and drift from it. This one is *generated*: every
number, name, layout and legality rule in the Lua text comes from :mod:`distcache.wire`, so a
change to a schema changes the dissector with no Lua edit. The generator reads:

* **The frame header** -- ``fields_of(FrameHeader)``: each field's name, offset, size and struct
  format become a ``ProtoField`` (``distcache.<field>``, uint8/16/32 from the format) and one
  dissection line; its doc string becomes the field's description.
* **The enums** -- each IntEnum a field refers to (``Legal.enum``) becomes a ``value_string``
  table (``{[0] = "ADD", ...}``), so Wireshark shows ``GET (1)``.
* **The legality tests** -- each ``Legal.test`` and ``Rule.test`` is a Python expression; it is
  parsed with :mod:`ast` and translated to Lua (comparisons, ``and``/``or``/``not``, ``in`` over a
  literal list, ``&``, ``|``, ``>>``, ``<<`` via a bit helper). A value failing its test gets
  expert info ``distcache.malformed`` naming the schema's ``reason`` and ``legal`` text. An
  expression outside that subset is a :class:`GeneratorError` at generation time, never a silently
  weaker dissector.
* **The limits** -- header size and largest frame data (for TCP desegmentation and for refusing
  to wait for an impossible length), largest message payload.
* **The message catalogue** -- ``MESSAGES`` gives, per operation and direction, the payload
  schema(s) of a reassembled message. Each becomes a Lua function that adds its fields:
  fixed-size integers, ``Bytes(this.<field>)`` (length from an earlier field), ``GreedyBytes``
  (the rest). A payload field used by one message only is named ``distcache.<op>.<field>``
  (``distcache.add.timeout_ms``); one shared by several messages is ``distcache.<field>``
  (``distcache.session_id``, ``distcache.status``, ``distcache.session``), so a display filter
  finds it in every message. Where a direction has several layouts (GET hit or miss, a proxy's
  DISCONNECTED), the first whose fixed size and tests fit the payload wins, then a variable-length
  one; if none fits, the fixed layout of the right size is shown with its illegal value flagged.
  That is the rule :func:`distcache.protocol.interpret_response` applies too.

Reassembly has two levels. TCP segments to frames: the dissector asks TCP for more bytes with
``pinfo.desegment_offset``/``desegment_len`` until a whole 14-byte header and its data are there.
Frames to messages: frames of one message are never interleaved with another's on a connection,
so per conversation and direction the data of non-final frames is collected until the frame with
``complete = 1``; the payload is then dissected from a new data source ("distcache message") on
that final frame. Wireshark dissects packets again in any order (GUI clicks, two-pass tshark), so
the first pass stores each frame's outcome keyed by packet number and position, and later passes
only read it.

Registration: the TCP ports come from a range preference (default: the ``--port`` options), the
protocol is offered in "Decode As" (``tcp.port``), and a heuristic claims other TCP conversations
whose first bytes pass every generated header test.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from enum import IntEnum

from construct import Bytes, GreedyBytes

from . import __version__
from .protocol.errors import STREAM_REASONS
from .wire.enums import Direction, Operation
from .wire.fastcodec import FIELD_OFFSET, FIELD_SIZE
from .wire.limits import HEADER_SIZE, MAX_FRAME_DATA, MAX_PAYLOAD
from .wire.schema import MESSAGES, FieldInfo, FrameHeader, MessageSchema, fields_of

#: Port the dissector listens on when none is given (the legacy examples' port).
DEFAULT_PORTS = (9001,)

# ProtoField constructor for each struct format letter.
_UINT_TYPES = {"B": "uint8", "H": "uint16", "I": "uint32", "L": "uint32"}
# How some header fields read best (presentation only, not protocol).
_DISPLAY = {"proto_level": "base.HEX", "request_uid": "base.HEX_DEC"}


class GeneratorError(Exception):
    """The schemas hold something the generator cannot express in Lua."""


# -- Python test expressions to Lua --------------------------------------------------------

_COMPARE = {ast.Eq: "==", ast.NotEq: "~=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_BITS = {ast.BitAnd: "band", ast.BitOr: "bor", ast.RShift: "rshift", ast.LShift: "lshift"}


def lua_expression(test: str, names: dict[str, str]) -> str:
    """Translate a schema test (a Python expression) to Lua; ``names`` maps its variables."""
    try:
        tree = ast.parse(test, mode="eval").body
    except SyntaxError as error:
        raise GeneratorError(f"cannot parse test {test!r}: {error}") from None
    return _lua(tree, names, test)


def _lua(node: ast.AST, names: dict[str, str], test: str) -> str:
    if isinstance(node, ast.BoolOp):
        word = " and " if isinstance(node.op, ast.And) else " or "
        return "(" + word.join(_lua(v, names, test) for v in node.values) + ")"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return f"(not {_lua(node.operand, names, test)})"
    if isinstance(node, ast.Compare):
        parts, left = [], node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            parts.append(_comparison(left, op, right, names, test))
            left = right
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"
    if isinstance(node, ast.BinOp) and type(node.op) in _BITS:
        left, right = _lua(node.left, names, test), _lua(node.right, names, test)
        return f"{_BITS[type(node.op)]}({left}, {right})"
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        left, right = _lua(node.left, names, test), _lua(node.right, names, test)
        return f"({left} {_ARITH[type(node.op)]} {right})"
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return hex(node.value) if node.value > 9 else str(node.value)
    raise GeneratorError(f"test {test!r}: {ast.dump(node)} has no Lua translation")


def _comparison(left, op, right, names, test) -> str:
    if isinstance(op, ast.In | ast.NotIn):
        if not isinstance(right, ast.List | ast.Tuple | ast.Set) or not right.elts:
            raise GeneratorError(f"test {test!r}: 'in' needs a non-empty literal list")
        subject = _lua(left, names, test)
        choices = " or ".join(f"{subject} == {_lua(e, names, test)}" for e in right.elts)
        return f"(not ({choices}))" if isinstance(op, ast.NotIn) else f"({choices})"
    if type(op) not in _COMPARE:
        raise GeneratorError(f"test {test!r}: comparison {type(op).__name__} has no Lua form")
    return f"({_lua(left, names, test)} {_COMPARE[type(op)]} {_lua(right, names, test)})"


# -- pieces of Lua -------------------------------------------------------------------------


def _lua_string(text: str) -> str:
    """A Lua string literal (double-quoted, escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{escaped}"'


def _value_string(enum: type[IntEnum]) -> str:
    entries = ", ".join(f"[{int(member)}] = {_lua_string(member.name)}" for member in enum)
    return f"local vs_{enum.__name__} = {{ {entries} }}"


def _uint_type(info: FieldInfo) -> str:
    try:
        return _UINT_TYPES[info.fmtstr.lstrip("<>=!")]
    except (AttributeError, KeyError):
        raise GeneratorError(f"field {info.name}: no ProtoField for format {info.fmtstr}") from None


def _enum_of(info: FieldInfo) -> type[IntEnum] | None:
    return info.legal.enum if info.legal is not None else None


def _proto_field(variable: str, abbrev: str, label: str, info: FieldInfo) -> str:
    doc = _lua_string(info.doc)
    if info.size is None:
        return f"local {variable} = ProtoField.bytes({_lua_string(abbrev)}, {_lua_string(label)}, base.NONE, {doc})"
    enum = _enum_of(info)
    table = f"vs_{enum.__name__}" if enum is not None else "nil"
    display = _DISPLAY.get(info.name, "base.DEC")
    return (
        f"local {variable} = ProtoField.{_uint_type(info)}({_lua_string(abbrev)}, "
        f"{_lua_string(label)}, {display}, {table}, nil, {doc})"
    )


def _check(
    test: str, names: dict[str, str], item: str, reason: str, legal: str, shown: str
) -> list[str]:
    """Lua lines flagging ``item`` as malformed when ``test`` fails."""
    return [
        f"    if not {lua_expression(test, names)} then",
        f"        {item}:add_proto_expert_info(ef_malformed, {_lua_string(reason + ': ')} .. "
        f"{shown} .. {_lua_string('; legal: ' + legal)})",
        "    end",
    ]


# -- the header ----------------------------------------------------------------------------


def _header_lua() -> list[str]:
    """ProtoFields, the header dissector and the header test used by the heuristic."""
    infos = fields_of(FrameHeader)
    values = [f for f in infos if f.rule is None]
    names = {f.name: f"h_{f.name}" for f in values}
    lines = [_proto_field(f"hf_{f.name}", f"distcache.{f.name}", f.name, f) for f in values]
    lines += ["", "-- Adds the header at tvb(offset) to tree; returns its values (a table)."]
    lines += ["local function dissect_header(tvb, offset, tree)", "    local h = {}"]
    for f in values:
        lines += [
            f"    local {names[f.name]} = tvb(offset + {f.offset}, {f.size}):uint()",
            f"    h.{f.name} = {names[f.name]}",
            f"    local item_{f.name} = tree:add(hf_{f.name}, tvb(offset + {f.offset}, {f.size}))",
        ]
        if f.legal is not None:
            shown = f'string.format("%d", {names[f.name]})'
            legal = f.legal
            lines += _check(
                legal.test, {"v": names[f.name]}, f"item_{f.name}", legal.reason, legal.legal, shown
            )
    for f in infos:
        if f.rule is not None:
            rule = f.rule
            shown = ' .. ", " .. '.join(
                f'"{n} = " .. string.format("%d", {names[n]})' for n in rule.needs
            )
            lines += _check(rule.test, names, f"item_{rule.field}", rule.reason, rule.legal, shown)
    lines += ["    return h", "end", ""]
    # The heuristic: every header test, on raw bytes, with no tree.
    lines += ["local function header_is_legal(tvb, offset)"]
    for f in values:
        lines.append(f"    local {names[f.name]} = tvb(offset + {f.offset}, {f.size}):uint()")
    tests = [lua_expression(f.legal.test, {"v": names[f.name]}) for f in values if f.legal]
    tests += [lua_expression(f.rule.test, names) for f in infos if f.rule is not None]
    lines += ["    return " + "\n        and ".join(tests), "end", ""]
    return lines


# -- message payloads ----------------------------------------------------------------------


def _slug(message: MessageSchema) -> str:
    return re.sub(r"[^a-z0-9]+", "_", message.name.lower()).strip("_")


def _payload_names() -> dict[tuple[str, str], str]:
    """``(message name, field) -> ProtoField abbreviation`` for every payload field."""
    users: dict[str, set[int]] = {}
    for message in MESSAGES:
        for info in fields_of(message.schema):
            users.setdefault(info.name, set()).add(id(message.schema))
    names = {}
    for message in MESSAGES:
        prefix = message.operation.name.lower() if message.operation is not None else "proxy"
        for info in fields_of(message.schema):
            shared = len(users[info.name]) > 1
            names[message.name, info.name] = (
                f"distcache.{info.name}" if shared else f"distcache.{prefix}.{info.name}"
            )
    return names


def _length_source(info: FieldInfo) -> str | None:
    """For ``Bytes(this.<field>)``: the field giving the length."""
    match = re.fullmatch(r"this\['(\w+)'\]", str(getattr(info.construct, "length", "")))
    return match.group(1) if match else None


def _payload_lua() -> list[str]:
    """ProtoFields, one dissection function and one fit test per payload layout, and the
    per-operation selection of layouts."""
    abbrevs = _payload_names()
    variables: dict[str, str] = {}
    lines: list[str] = []
    for message in MESSAGES:
        for info in fields_of(message.schema):
            abbrev = abbrevs[message.name, info.name]
            if abbrev not in variables:
                variables[abbrev] = "pf_" + abbrev.removeprefix("distcache.").replace(".", "_")
                lines.append(_proto_field(variables[abbrev], abbrev, info.name, info))
    lines.append("")
    for message in MESSAGES:
        lines += _layout_lua(message, abbrevs, variables)
    lines += _selection_lua()
    return lines


def _fixed_size(message: MessageSchema) -> str:
    """The payload size of a fixed-size layout, as Lua (``nil`` for a variable one)."""
    sizes = [info.size for info in fields_of(message.schema)]
    return "nil" if None in sizes else str(sum(sizes))


def _layout_lua(message: MessageSchema, abbrevs, variables) -> list[str]:
    slug = _slug(message)
    infos = fields_of(message.schema)
    fixed = _fixed_size(message) != "nil"
    size = _fixed_size(message)
    lines = [f"-- {message.name}: {' '.join(message.schema.__doc__.split())}"]
    # fits(ptvb, len): the payload has this layout's fixed size and passes its tests.
    lines.append(f"local function fits_{slug}(ptvb, len)")
    if not fixed:
        lines += ["    return false", "end"]
    else:
        lines.append(f"    if len ~= {size} then return false end")
        for info in infos:
            if info.legal is not None:
                value = f"ptvb({info.offset}, {info.size}):uint()"
                lines.append(
                    f"    if not {lua_expression(info.legal.test, {'v': value})} then return false end"
                )
        lines += ["    return true", "end"]
    lines.append(f"local function dissect_{slug}(ptvb, len, tree)")
    lines.append("    local offset = 0")
    for info in infos:
        var = variables[abbrevs[message.name, info.name]]
        if info.size is not None:
            lines += [
                f"    if len - offset < {info.size} then",
                f"        tree:add_proto_expert_info(ef_malformed, {_lua_string(f'{message.name}: payload too short for {info.name}')})",
                "        return",
                "    end",
                f"    local v_{info.name} = ptvb(offset, {info.size}):uint()",
                f"    local item_{info.name} = tree:add({var}, ptvb(offset, {info.size}))",
            ]
            if info.legal is not None:
                legal, value = info.legal, f"v_{info.name}"
                shown = f'string.format("%d", {value})'
                lines += _check(
                    legal.test, {"v": value}, f"item_{info.name}", legal.reason, legal.legal, shown
                )
            lines.append(f"    offset = offset + {info.size}")
        elif isinstance(info.construct, Bytes) and _length_source(info):
            source = _length_source(info)
            lines += [
                f"    if v_{source} > len - offset then",
                f"        item_{source}:add_proto_expert_info(ef_malformed, {_lua_string(f'{source} runs past the payload')})",
                "        return",
                "    end",
                f"    if v_{source} > 0 then tree:add({var}, ptvb(offset, v_{source})) end",
                f"    offset = offset + v_{source}",
            ]
        elif isinstance(info.construct, type(GreedyBytes)):
            lines.append(
                f"    if len > offset then tree:add({var}, ptvb(offset, len - offset)) end"
            )
            lines.append("    offset = len")
        else:
            raise GeneratorError(f"{message.name}: no Lua form for field {info.name}")
    lines += ["end", ""]
    return lines


def _selection_lua() -> list[str]:
    """``layouts[is_response][operation]``: the candidate layouts, fixed-size ones first."""
    lines = ["local layouts = {"]
    for direction in Direction:
        lines.append(f"    [{int(direction)}] = {{")
        for operation in Operation:
            candidates = [
                m for m in MESSAGES if m.direction is direction and m.operation in (operation, None)
            ]
            entries = ", ".join(
                f"{{ name = {_lua_string(m.name)}, size = {_fixed_size(m)}, "
                f"fits = fits_{_slug(m)}, dissect = dissect_{_slug(m)} }}"
                for m in candidates
            )
            lines.append(f"        [{int(operation)}] = {{ {entries} }},")
        lines.append("    },")
    lines += ["}", ""]
    return lines


# -- the whole script ----------------------------------------------------------------------

_PROLOGUE = """\
-- distcache dissector for Wireshark, GENERATED by `distcache dissector` from the protocol
-- schemas of distcache {version}. Do not edit: regenerate it.
--
-- Load it with `wireshark -X lua_script:distcache.lua` (or copy it to the personal Lua plugins
-- folder). Preference "distcache.ports" sets the TCP ports; "Decode As..." offers distcache too.

local distcache = Proto("distcache", "distcache session cache protocol")

local HEADER_SIZE = {header_size}
local MAX_FRAME_DATA = {max_frame_data}
local MAX_PAYLOAD = {max_payload}
local DATA_LEN_OFFSET = {data_len_offset}
local DATA_LEN_SIZE = {data_len_size}
local DEFAULT_PORTS = "{ports}"

-- Bit operations across Lua versions (bit32 in 5.2, operators from 5.3, LuaBitOp in some builds).
local bits = bit32 or bit or load([[return {{
    band = function(a, b) return a & b end, bor = function(a, b) return a | b end,
    rshift = function(a, n) return a >> n end, lshift = function(a, n) return (a << n) & 0xffffffff end,
}}]])()
local band, bor, rshift, lshift = bits.band, bits.bor, bits.rshift, bits.lshift

local ef_malformed = ProtoExpert.new("distcache.malformed", "Malformed distcache data",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_reassembly = ProtoExpert.new("distcache.reassembly", "distcache message reassembly",
    expert.group.REASSEMBLE, expert.severity.NOTE)
"""

_MESSAGES_LUA = """\
local pf_message = ProtoField.string("distcache.message", "message",
    base.ASCII, "Which payload layout of the message catalogue the reassembled message has")
local pf_frames = ProtoField.uint32("distcache.frames", "frames", base.DEC, nil, nil,
    "Number of frames the message arrived in")
local pf_payload_len = ProtoField.uint32("distcache.payload_len", "payload length", base.DEC, nil,
    nil, "Bytes of the reassembled message payload")
local pf_reassembled_in = ProtoField.framenum("distcache.reassembled_in", "reassembled in",
    base.NONE, frametype.NONE, 0, "Packet holding the message's final frame")

distcache.fields = {{ {fields} }}
distcache.experts = {{ ef_malformed, ef_reassembly }}

-- Reassembly state: built on the first pass, read on every later one.
local partial = {{}}  -- per conversation direction: the message whose frames are being collected
local outcome = {{}}  -- per frame (packet number, position): what the first pass made of it

function distcache.init()
    partial = {{}}
    outcome = {{}}
end

local function direction_key(pinfo)
    return tostring(pinfo.src) .. ":" .. pinfo.src_port .. ">" .. tostring(pinfo.dst) .. ":" .. pinfo.dst_port
end

local REASON_TEXT = {{ {reasons} }}

-- The first pass: feed one frame into its direction's message; returns the frame's outcome.
local function reassemble(pinfo, key, h, data)
    local dir = direction_key(pinfo)
    local msg = partial[dir]
    local result = {{ problems = {{}} }}
    if msg ~= nil then
        local function differs(reason, ok)
            if not ok then table.insert(result.problems, reason) end
            return not ok
        end
        if differs("direction_changed", h.is_response == msg.is_response)
            or differs("uid_changed", h.request_uid == msg.uid)
            or differs("operation_changed", h.operation == msg.operation)
            or differs("message_too_large", msg.size + h.data_len <= MAX_PAYLOAD) then
            partial[dir] = nil  -- the stream is broken from here on: start afresh
            msg = nil
        end
    end
    if msg == nil then
        msg = {{ is_response = h.is_response, uid = h.request_uid, operation = h.operation,
                parts = {{}}, size = 0, keys = {{}} }}
    end
    table.insert(msg.parts, data)
    table.insert(msg.keys, key)
    msg.size = msg.size + h.data_len
    if h.complete == 1 then
        partial[dir] = nil
        result.payload = table.concat(msg.parts)
        result.frames = #msg.parts
        for i = 1, #msg.keys - 1 do
            outcome[msg.keys[i]].reassembled_in = pinfo.number
        end
    else
        partial[dir] = msg
        result.frame_index = #msg.parts
    end
    return result
end

local function dissect_payload(payload, frames, h, tvb, offset, pinfo, tree, subtree)
    local len = #payload
    local ptvb = nil
    if frames == 1 then
        if len > 0 then ptvb = tvb(offset + HEADER_SIZE, len):tvb() end
    else
        ptvb = ByteArray.new(payload, true):tvb("distcache message")
    end
    local candidates = layouts[h.is_response][h.operation] or {{}}
    local chosen = nil
    -- The rule interpret_response applies: a fixed layout that fits, else a variable one, else
    -- the fixed layout of this size with its illegal values flagged.
    for _, layout in ipairs(candidates) do
        if layout.size == len and layout.fits(ptvb, len) then chosen = layout break end
    end
    for _, layout in ipairs(candidates) do
        if chosen == nil and layout.size == nil then chosen = layout end
    end
    for _, layout in ipairs(candidates) do
        if chosen == nil and layout.size == len then chosen = layout end
    end
    local mtree = subtree:add(distcache, ptvb and ptvb() or tvb(offset, HEADER_SIZE), "Message")
    mtree:add(pf_frames, frames):set_generated()
    mtree:add(pf_payload_len, len):set_generated()
    if chosen == nil then
        mtree:add_proto_expert_info(ef_malformed, "no payload layout fits " .. len .. " bytes")
        return
    end
    mtree:add(pf_message, chosen.name):set_generated()
    mtree:set_text("Message: " .. chosen.name .. " (" .. len .. " bytes in " .. frames .. " frames)")
    pinfo.cols.info:append(string.format(" %s uid=0x%08x,", chosen.name, h.request_uid))
    if ptvb ~= nil then chosen.dissect(ptvb, len, mtree) end
end

-- One frame at tvb(offset, size).
local function dissect_frame(tvb, offset, size, pinfo, tree)
    local subtree = tree:add(distcache, tvb(offset, size))
    local h = dissect_header(tvb, offset, subtree)
    local op_name = vs_Operation[h.operation] or ("operation " .. h.operation)
    local dir_name = h.is_response == 1 and "response" or "request"
    subtree:set_text(string.format("distcache %s %s, uid 0x%08x, %d data bytes%s", op_name, dir_name,
        h.request_uid, h.data_len, h.complete == 1 and "" or " (more frames follow)"))
    if size < HEADER_SIZE + h.data_len then return end  -- an impossible data_len: flagged already
    local key = pinfo.number .. ":" .. tvb:reported_len() .. ":" .. offset
    local result = outcome[key]
    if result == nil then
        result = reassemble(pinfo, key, h, tvb:raw(offset + HEADER_SIZE, h.data_len))
        outcome[key] = result
    end
    for _, reason in ipairs(result.problems) do
        subtree:add_proto_expert_info(ef_malformed, reason .. ": " .. REASON_TEXT[reason])
    end
    if result.payload ~= nil then
        dissect_payload(result.payload, result.frames, h, tvb, offset, pinfo, tree, subtree)
    else
        subtree:add_proto_expert_info(ef_reassembly,
            "frame " .. result.frame_index .. " of a multi-frame message")
        if result.reassembled_in ~= nil then
            subtree:add(pf_reassembled_in, result.reassembled_in):set_generated()
        end
    end
end

local info_packet = nil  -- the packet whose Info column holds our messages

function distcache.dissector(tvb, pinfo, tree)
    local length = tvb:len()
    local offset = 0
    pinfo.cols.protocol = "distcache"
    if info_packet ~= pinfo.number then
        info_packet = pinfo.number
        pinfo.cols.info:set("distcache")
    end
    while offset < length do
        local available = length - offset
        if available < HEADER_SIZE then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            return length
        end
        local data_len = tvb(offset + DATA_LEN_OFFSET, DATA_LEN_SIZE):uint()
        local size = HEADER_SIZE + data_len
        if data_len > MAX_FRAME_DATA then
            size = HEADER_SIZE  -- never wait for an impossible length; the stream is lost here
        elseif available < size then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = size - available
            return length
        end
        dissect_frame(tvb, offset, size, pinfo, tree)
        offset = offset + size
        if data_len > MAX_FRAME_DATA then return length end
    end
    return offset
end

-- Registration: a port preference, "Decode As", and a heuristic for other ports.
distcache.prefs.ports = Pref.range("TCP ports", DEFAULT_PORTS,
    "TCP ports carrying distcache (a range such as 9001,9100-9102)", 65535)
local tcp_ports = DissectorTable.get("tcp.port")
local registered = DEFAULT_PORTS
tcp_ports:add(registered, distcache)
tcp_ports:add_for_decode_as(distcache)

function distcache.prefs_changed()
    local wanted = tostring(distcache.prefs.ports)
    if wanted ~= registered then
        if registered ~= "" then tcp_ports:remove(registered, distcache) end
        if wanted ~= "" then tcp_ports:add(wanted, distcache) end
        registered = wanted
    end
end

local function heuristic(tvb, pinfo, tree)
    if tvb:len() < HEADER_SIZE or not header_is_legal(tvb, 0) then return false end
    pinfo.conversation = distcache
    distcache.dissector(tvb, pinfo, tree)
    return true
end
distcache:register_heuristic("tcp", heuristic)
"""


def generate(ports: Sequence[int] = DEFAULT_PORTS) -> str:
    """The Lua dissector, listening on ``ports`` by default."""
    enums: list[type[IntEnum]] = []
    for info in fields_of(FrameHeader) + [f for m in MESSAGES for f in fields_of(m.schema)]:
        enum = _enum_of(info)
        if enum is not None and enum not in enums:
            enums.append(enum)
    if Operation not in enums:  # the Lua names frames by vs_Operation
        raise GeneratorError("the header names no Operation enum")
    header = _header_lua()
    payload = _payload_lua()
    # Every ProtoField variable declared above, for distcache.fields.
    field_vars = [
        line.split()[1]
        for line in header + payload
        if line.startswith("local hf_") or line.startswith("local pf_")
    ]
    field_vars += ["pf_message", "pf_frames", "pf_payload_len", "pf_reassembled_in"]
    parts = [
        _PROLOGUE.format(
            version=__version__,
            header_size=HEADER_SIZE,
            max_frame_data=MAX_FRAME_DATA,
            max_payload=MAX_PAYLOAD,
            data_len_offset=FIELD_OFFSET["data_len"],
            data_len_size=FIELD_SIZE["data_len"],
            ports=_port_range(ports),
        ),
        "-- Value tables, from the wire enums.",
        *(_value_string(enum) for enum in enums),
        "",
        "-- The frame header, from fields_of(FrameHeader).",
        *header,
        "-- Message payloads, from the MESSAGES catalogue.",
        *payload,
        _MESSAGES_LUA.format(
            fields=", ".join(dict.fromkeys(field_vars)),
            reasons=", ".join(f"{k} = {_lua_string(v)}" for k, v in STREAM_REASONS.items()),
        ),
    ]
    return "\n".join(parts)


def _port_range(ports: Iterable[int]) -> str:
    return ",".join(str(port) for port in sorted(set(ports)))
