from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest

from app.domain import addresses
from app.domain.addresses import IPNetwork


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("127.0.0.0/8", (IPv4Network("127.0.0.0/8"),)),
        (
            "127.0.0.0/8, ::1/128,10.1.2.3",
            (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"), IPv4Network("10.1.2.3/32")),
        ),
        ("fd00::/8,", (IPv6Network("fd00::/8"),)),
    ],
)
def test_parse_networks(text: str, expected: tuple[IPNetwork, ...]) -> None:
    assert addresses.parse_networks(text) == expected


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("127.0.0.0/8,localhost", "'localhost'"),
        ("127.0.0.1/8", "'127.0.0.1/8'"),  # host bits set: say 127.0.0.0/8
        ("10.0.0.0/33", "'10.0.0.0/33'"),
        ("10.0.0.0/8; 192.168.0.0/16", "'10.0.0.0/8; 192.168.0.0/16'"),
    ],
)
def test_parse_networks_names_the_bad_entry(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match=f"^{bad} is not a network"):
        addresses.parse_networks(text)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # IPv4
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.1.1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("168.63.129.16", "a cloud metadata address"),
        ("100.64.0.1", "a carrier-grade NAT address (100.64.0.0/10)"),
        ("100.127.255.254", "a carrier-grade NAT address (100.64.0.0/10)"),
        ("0.0.0.0", "the unspecified address"),
        ("0.1.2.3", "a private address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.10", "a private address"),  # documentation
        ("198.18.0.1", "a private address"),  # benchmarking
        # IPv6
        ("::1", "a loopback address"),
        ("::", "the unspecified address"),
        ("fc00::1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("fe80::1", "a link-local address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("ff02::1", "a multicast address"),
        ("fec0::1", "a site-local address"),
        ("2001:db8::1", "a private address"),
        ("64:ff9b:1::1", "a local-use NAT64 address (64:ff9b:1::/48)"),
        ("::127.0.0.1", "a reserved address"),  # deprecated IPv4-compatible form
        # IPv6 carrying a forbidden IPv4 address is judged by it
        ("::ffff:127.0.0.1", "an address embedding 127.0.0.1, a loopback address"),
        (
            "::ffff:169.254.169.254",
            "an address embedding 169.254.169.254, a cloud metadata address",
        ),
        ("::ffff:10.0.0.1", "an address embedding 10.0.0.1, a private address"),
        ("64:ff9b::127.0.0.1", "an address embedding 127.0.0.1, a loopback address"),
        ("64:ff9b::a9fe:a9fe", "an address embedding 169.254.169.254, a cloud metadata address"),
        ("2002:7f00:1::", "an address embedding 127.0.0.1, a loopback address"),
        ("2002:c0a8:0101::1", "an address embedding 192.168.1.1, a private address"),
    ],
)
def test_forbidden_addresses(address: str, reason: str) -> None:
    assert addresses.forbidden_reason(ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",  # just below CGNAT
        "100.128.0.0",  # just above
        "172.32.0.1",  # just past 172.16.0.0/12
        "2606:4700:4700::1111",
        "2a00:1450:4001:81c::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:0808:0808::1",
    ],
)
def test_public_addresses_are_permitted(address: str) -> None:
    assert addresses.forbidden_reason(ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "allowed", "permitted"),
    [
        ("127.0.0.1", "127.0.0.0/8", True),
        ("127.0.0.1", "10.0.0.0/8", False),
        ("::ffff:127.0.0.1", "127.0.0.0/8", True),
        ("::1", "127.0.0.0/8", False),
        ("::1", "::1/128", True),
        ("169.254.169.254", "169.254.0.0/16", True),  # the operator's explicit choice
        ("fd00::5", "fd00::/8", True),
        ("10.0.0.1", "127.0.0.0/8, 10.0.0.0/24", True),
        ("10.0.1.1", "127.0.0.0/8, 10.0.0.0/24", False),
    ],
)
def test_allowed_networks(address: str, allowed: str, permitted: bool) -> None:
    reason = addresses.forbidden_reason(ip_address(address), addresses.parse_networks(allowed))
    assert (reason is None) is permitted


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        (IPv4Address("127.0.0.1"), None),
        (IPv6Address("::ffff:1.2.3.4"), IPv4Address("1.2.3.4")),
        (IPv6Address("64:ff9b::1.2.3.4"), IPv4Address("1.2.3.4")),
        (IPv6Address("2002:0102:0304::"), IPv4Address("1.2.3.4")),
        (IPv6Address("2606:4700::1"), None),
    ],
)
def test_embedded_ipv4(address: addresses.IPAddress, embedded: IPv4Address | None) -> None:
    assert addresses.embedded_ipv4(address) == embedded
