"""Which IP addresses an endpoint may reach: the SSRF rule (SPEC section 10).

Endpoint URLs that resolve to loopback, private, link-local, metadata or otherwise
non-public addresses are refused unless the operator allowed the network
(`TIDINGS_ALLOWED_NETWORKS`). IPv6 forms that carry an IPv4 address (IPv4-mapped,
NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they carry, so
`::ffff:127.0.0.1` is loopback.

The rule is applied twice: at registration, and by the sender at connect time against
the address actually connected to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_network,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
# Resolves (host, port) to the addresses it names; the SSRF rule is applied to its answers.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        IPv6Address("fd00:ec2::254"),  # AWS over IPv6
        IPv4Address("100.100.100.200"),  # Alibaba Cloud
        IPv4Address("168.63.129.16"),  # Azure wire server: public-looking, host-only
    }
)
CGNAT = IPv4Network("100.64.0.0/10")
NAT64 = IPv6Network("64:ff9b::/96")
NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")

_RULES: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda a: a in METADATA_ADDRESSES, "a cloud metadata address"),
    (lambda a: a.is_unspecified, "the unspecified address"),
    (lambda a: a.is_loopback, "a loopback address"),
    (lambda a: a.is_link_local, "a link-local address"),
    (lambda a: a.is_multicast, "a multicast address"),
    (lambda a: a in CGNAT, "a carrier-grade NAT address (100.64.0.0/10)"),
    (lambda a: a in NAT64_LOCAL, "a local-use NAT64 address (64:ff9b:1::/48)"),
    (lambda a: a.is_reserved, "a reserved address"),
    (lambda a: a.is_private, "a private address"),
    (lambda a: isinstance(a, IPv6Address) and a.is_site_local, "a site-local address"),
    (lambda a: not a.is_global, "not a globally routable address"),
)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse comma-separated CIDRs such as `127.0.0.0/8, ::1/128`.

    A bare address is a single-address network. Empty entries are skipped, so an empty
    string means no networks.

    Raises:
        ValueError: naming the first entry that is not a network, e.g. one with host
            bits set (`127.0.0.1/8`).
    """
    networks: list[IPNetwork] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ip_network(entry))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a network in CIDR notation: {exc}") from None
    return tuple(networks)


def forbidden_reason(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Say why Tidings must not connect to `address`, or None when it may.

    The reason is a noun phrase ("a loopback address") to follow the address in a message.

    An address inside an `allowed` network is always permitted; an IPv6 address that
    embeds an IPv4 address is permitted when either of them is inside one.
    """
    judged = embedded_ipv4(address) or address
    if _inside(address, allowed) or _inside(judged, allowed):
        return None
    reason = _reason(judged)
    if reason is not None and judged != address:
        return f"an address embedding {judged}, {reason}"
    return reason


def embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 IPv6 address carries, if any."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _inside(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def _reason(address: IPAddress) -> str | None:
    for applies, reason in _RULES:
        if applies(address):
            return reason
    return None
