"""Where the sender may connect: the SSRF guard at connect time (SPEC section 10).

The guard sits where names become addresses, so the address judged is the address
connected to and there is no window for DNS rebinding:

- `permitted_addresses` is what the sender's HTTP client (`http1.Http1Client`) asks for
  the addresses of a host when it opens a connection. It looks the name up and returns
  only the addresses `addresses.forbidden_reason` allows; the client connects to one of
  those (with the original name kept for the `Host` header, SNI and certificate checks).
  Nothing is cached: every new connection is judged on a fresh answer.
- A URL host that only looks like an IP literal (`2130706433`, `127.1`) would be read by
  the socket layer as some address; `check_literal_host` refuses it before the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

from app.domain import addresses
from app.domain.addresses import IPAddress, IPNetwork, Resolver


class RefusedAddressError(OSError):
    """The endpoint's host is, or resolves only to, addresses Tidings must not connect to."""


class UnresolvedHostError(OSError):
    """The endpoint's host name does not resolve."""


async def permitted_addresses(
    resolve: Resolver, host: str, port: int, allowed: Sequence[IPNetwork]
) -> list[IPAddress]:
    """The addresses of `host` that the SSRF rule permits, in the resolver's order.

    Raises:
        UnresolvedHostError: when the name does not resolve.
        RefusedAddressError: when it resolves only to refused addresses.
    """
    try:
        found = list(await resolve(host, port))
    except OSError as error:  # socket.gaierror included
        raise UnresolvedHostError(f"{host} does not resolve: {error}") from error
    if not found:
        raise UnresolvedHostError(f"{host} has no address")
    permitted = [a for a in found if addresses.forbidden_reason(a, allowed) is None]
    if not permitted:
        reason = addresses.forbidden_reason(found[0], allowed)
        raise RefusedAddressError(f"{host} resolves to {found[0]}, {reason}")
    return permitted


def check_literal_host(host: str, allowed: Sequence[IPNetwork]) -> None:
    """Refuse a URL host that is a forbidden IP literal; names are left to the resolver.

    A host is taken for an IP literal when it contains a colon or only digits and dots;
    such a host that is not a canonical address (`2130706433`, `127.1`) is refused
    outright, as the socket layer would read it as some address. Names are judged by
    `permitted_addresses`.

    Raises:
        RefusedAddressError: when the literal is forbidden or not canonical.
    """
    if ":" not in host and not host.replace(".", "").isdigit():
        return
    try:
        address = ip_address(host)
    except ValueError:
        raise RefusedAddressError(f"{host} is not a canonical IP address") from None
    reason = addresses.forbidden_reason(address, allowed)
    if reason is not None:
        raise RefusedAddressError(f"{address} is {reason}")
