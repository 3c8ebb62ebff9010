"""The address grammar: every row of the legacy form table, our extensions, and round trips."""

from __future__ import annotations

import socket
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distcache.address import (
    MAX_ADDRESS_LENGTH,
    MAX_FD,
    MAX_PORT,
    MAX_UNIX_PATH_BYTES,
    Address,
    AddressError,
    parse_address,
    port_argument,
)

INET, INET6 = socket.AF_INET, socket.AF_INET6

# (text, host, port, family, can_connect) for accepted TCP forms.
ACCEPTED_TCP = [
    ("IP:9001", None, 9001, INET, False),
    ("IPv4:9001", None, 9001, INET, False),
    ("IP::9001", None, 9001, INET, False),
    ("IP:127.0.0.1:9001", "127.0.0.1", 9001, INET, True),
    ("IPv4:127.0.0.1:9001", "127.0.0.1", 9001, INET, True),
    ("IP:localhost:9001", "localhost", 9001, None, True),
    ("IPv4:localhost:9001", "localhost", 9001, INET, True),
    # Not resolved while parsing (the legacy resolved here and failed).
    ("IP:nosuch.invalid:9001", "nosuch.invalid", 9001, None, True),
    ("IP:010.0.0.1:80", "8.0.0.1", 80, INET, True),
    ("IP:0", None, 0, INET, False),
    ("IP:65535", None, 65535, INET, False),
    ("IP:+80", None, 80, INET, False),
    ("IP: 80", None, 80, INET, False),
    ("IP:127.0.0.1:+80", "127.0.0.1", 80, INET, True),
    # inet_aton forms.
    ("IP:127.1:80", "127.0.0.1", 80, INET, True),
    ("IP:0x7f.0.0.1:80", "127.0.0.1", 80, INET, True),
    ("IP:2130706433:80", "127.0.0.1", 80, INET, True),
    # IPv6 extension.
    ("IP:[::1]:9001", "::1", 9001, INET6, True),
    ("IPv6:[::1]:9001", "::1", 9001, INET6, True),
    ("IPv6:[0:0::0001]:9001", "::1", 9001, INET6, True),
    ("IPv6:[fe80::1%eth0]:9001", "fe80::1%eth0", 9001, INET6, True),
    ("IPv6:9001", None, 9001, INET6, False),
    ("IPv6::9001", None, 9001, INET6, False),
    ("IPv6:localhost:9001", "localhost", 9001, INET6, True),
]


@pytest.mark.parametrize(("text", "host", "port", "family", "can_connect"), ACCEPTED_TCP)
def test_accepted_tcp_forms(text, host, port, family, can_connect):
    address = parse_address(text)
    assert (address.kind, address.host, address.port, address.family) == (
        "tcp",
        host,
        port,
        family,
    )
    assert address.can_listen
    assert address.can_connect is can_connect
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("IPv4:9001", "IP:9001"),
        ("IP::9001", "IP:9001"),
        ("IP:+80", "IP:80"),
        ("IP:010.0.0.1:80", "IP:8.0.0.1:80"),
        ("IPv4:127.0.0.1:1", "IP:127.0.0.1:1"),
        ("IPv6:[::1]:1", "IP:[::1]:1"),
        ("IPv6::1", "IPv6:1"),
        ("IPv4:example.org:1", "IPv4:example.org:1"),
        ("FD:3:3", "FD:3"),
    ],
)
def test_canonical_form(text, canonical):
    assert str(parse_address(text)) == canonical


@pytest.mark.parametrize(
    ("text", "path"), [("UNIX:/run/scache", "/run/scache"), ("UNIX:relative", "relative")]
)
def test_unix_forms(text, path):
    address = parse_address(text)
    assert (address.kind, address.path, address.family) == ("unix", path, None)
    assert address.can_listen and address.can_connect
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "read_fd", "write_fd"),
    [("FD:0", 0, 0), ("FD:0:1", 0, 1), ("FD:-1:1", -1, 1), ("FD:5:-1", 5, -1)],
)
def test_fd_forms(text, read_fd, write_fd):
    address = parse_address(text)
    assert (address.kind, address.read_fd, address.write_fd) == ("fd", read_fd, write_fd)
    assert address.can_listen and address.can_connect
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("IP:65536", "port must be decimal 0..65535"),
        ("IP:-1", "port must be decimal 0..65535"),
        ("IP:80x", "port must be decimal 0..65535"),
        ("IP:0x50", "port must be decimal 0..65535"),
        ("IP:", "port must be decimal 0..65535"),
        ("IP::", "port must be decimal 0..65535"),
        ("IP:127.0.0.1:", "port must be decimal 0..65535"),
        ("IP:127.0.0.1:80:1", "too many ':'"),
        ("IP:9001 ", "port must be decimal 0..65535"),
        ("IP:٣", "port must be decimal 0..65535"),  # a non-ASCII digit
        ("IP:::1:80", "too many ':'"),
        ("IP:[::1", "without a closing ']'"),
        ("IP:[::1]80", "expected ':port'"),
        ("IP:[127.0.0.1]:80", "not an IPv6 address"),
        ("IPv4:[::1]:80", "cannot hold a bracketed IPv6"),
        ("IPv6:127.0.0.1:80", "cannot hold the IPv4 address"),
        ("IP:09.0.0.1:80", "not a valid IPv4 address"),
        ("IP:256.0.0.1:80", "not a valid IPv4 address"),
        ("IP:1.2.3.4.5:80", "not a valid IPv4 address"),
        ("IP:127.0.0.1.:80", "not a valid IPv4 address"),
        ("IP:host name:80", "neither an IPv4 address nor a valid host name"),
        ("IP:[fe80::1%a]b]:80", "expected ':port'"),
        ("UNIX:", "path is empty"),
        ("UNIX:/a\0b", "NUL"),
        ("FD:-1", "at most one of the descriptors may be -1"),
        ("FD:-1:-1", "at most one of the descriptors may be -1"),
        ("FD:65536", "a descriptor must be decimal -1..65535"),
        ("FD:3:", "a descriptor must be decimal -1..65535"),
        ("FD:x", "a descriptor must be decimal -1..65535"),
        ("FD:1:2:3", "expected FD:n or FD:read:write"),
        ("ip:80", "unknown prefix 'ip:' (prefixes are case-sensitive"),
        ("Ip:80", "unknown prefix 'Ip:'"),
        ("IPV4:80", "unknown prefix 'IPV4:'"),
        ("unix:/tmp/x", "unknown prefix 'unix:'"),
        ("TCP:80", "unknown prefix 'TCP:'"),
        ("9001", "no prefix"),
        ("I", "length 1 is outside 2..255"),
        ("", "length 0 is outside 2..255"),
    ],
)
def test_rejected_forms(text, reason):
    with pytest.raises(AddressError) as caught:
        parse_address(text)
    message = str(caught.value)
    assert reason in message
    assert repr(text) in message
    assert "\n" not in message


def test_whole_string_length_bounds():
    longest = "IP:" + ".".join(["a" * 61] * 4) + ":8000"
    assert len(longest) == MAX_ADDRESS_LENGTH
    assert parse_address(longest).port == 8000
    with pytest.raises(AddressError, match=r"length 256 is outside 2\.\.255"):
        parse_address(longest + "0")
    assert parse_address("FD:1").read_fd == 1


def test_unix_path_longer_than_the_socket_limit_is_rejected():
    assert parse_address("UNIX:" + "p" * MAX_UNIX_PATH_BYTES)
    with pytest.raises(AddressError, match=f"the limit is {MAX_UNIX_PATH_BYTES}"):
        parse_address("UNIX:" + "p" * (MAX_UNIX_PATH_BYTES + 1))


def test_non_string_is_a_typed_error():
    with pytest.raises(AddressError, match="must be a string"):
        parse_address(9001)  # type: ignore[arg-type]


def test_require_connect_refuses_listen_only_addresses():
    with pytest.raises(AddressError, match="'IP:9001' is listen-only; a connect address needs"):
        parse_address("IP::9001").require_connect()
    with pytest.raises(AddressError, match="listen-only"):
        parse_address("IPv6:9001").require_connect()
    for text in ("IP:127.0.0.1:1", "UNIX:/x", "FD:0:1"):
        address = parse_address(text)
        assert address.require_connect() is address


def test_require_listen_accepts_every_form():
    for text in ("IP:1", "IP:127.0.0.1:1", "IPv6:1", "UNIX:/x", "FD:3"):
        address = parse_address(text)
        assert address.require_listen() is address


def test_direct_construction_is_validated():
    assert Address("tcp", host="127.0.0.1", port=1, family=INET) == parse_address("IP:127.0.0.1:1")
    assert Address("unix", path="/x") == parse_address("UNIX:/x")
    with pytest.raises(AddressError):
        Address("tcp", host="127.0.0.1", port=70000, family=INET)
    with pytest.raises(AddressError, match="inconsistent"):
        Address("tcp", host="127.0.0.1", port=1, family=INET6)
    with pytest.raises(AddressError):
        Address("unix", path="")
    with pytest.raises(AddressError):
        Address("fd", read_fd=-1, write_fd=-1)


def test_address_is_frozen_and_hashable():
    address = parse_address("IP:127.0.0.1:1")
    with pytest.raises(AttributeError):
        address.port = 2  # type: ignore[misc]
    assert len({address, parse_address("IPv4:127.0.0.1:1")}) == 1


# --- properties --------------------------------------------------------------------------------

ports = st.integers(0, MAX_PORT)
label = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
host_names = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)

tcp_addresses = st.one_of(
    st.builds(
        lambda port, fam: Address("tcp", port=port, family=fam),
        ports,
        st.sampled_from([INET, INET6]),
    ),
    st.builds(lambda h, p: Address("tcp", host=h, port=p, family=INET), ipv4, ports),
    st.builds(lambda h, p: Address("tcp", host=h, port=p, family=INET6), ipv6, ports),
    st.builds(
        lambda h, p, fam: Address("tcp", host=h, port=p, family=fam),
        host_names,
        ports,
        st.sampled_from([None, INET, INET6]),
    ),
)
tls_addresses = st.one_of(
    st.builds(lambda p: Address("tcp", port=p, family=INET, tls=True), ports),
    st.builds(lambda h, p: Address("tcp", host=h, port=p, family=INET, tls=True), ipv4, ports),
    st.builds(lambda h, p: Address("tcp", host=h, port=p, family=INET6, tls=True), ipv6, ports),
    st.builds(lambda h, p: Address("tcp", host=h, port=p, tls=True), host_names, ports),
)
unix_addresses = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    min_size=1,
    max_size=MAX_UNIX_PATH_BYTES // 4,
).map(lambda path: Address("unix", path=path))
fd_numbers = st.integers(-1, MAX_FD)
fd_addresses = (
    st.tuples(fd_numbers, fd_numbers)
    .filter(lambda fds: fds != (-1, -1))
    .map(lambda fds: Address("fd", read_fd=fds[0], write_fd=fds[1]))
)


@given(st.one_of(tcp_addresses, tls_addresses, unix_addresses, fd_addresses))
def test_format_then_parse_round_trips(address):
    assert parse_address(str(address)) == address


@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            "".join,
            st.lists(
                st.sampled_from(
                    ["IP", "IPv4", "IPv6", "UNIX", "FD", "TLS", ":", "[", "]", "::1", "0x"]
                )
                | st.text(string.digits + ".:+- abc%", max_size=6),
                max_size=8,
            ),
        ),
    )
)
def test_any_text_parses_canonically_or_fails_with_address_error(text):
    try:
        address = parse_address(text)
    except AddressError as error:
        assert "\n" not in str(error)
        return
    assert parse_address(str(address)) == address
    assert str(parse_address(str(address))) == str(address)


@pytest.mark.parametrize("text", ["0", "65536", "-1", "http", ""])
def test_port_argument_refuses_what_is_not_a_tcp_port(text):
    with pytest.raises(ValueError):
        port_argument(text)


def test_port_argument_takes_the_whole_range():
    assert [port_argument(text) for text in ("1", "9001", "65535")] == [1, 9001, MAX_PORT]
