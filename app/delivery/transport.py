"""Where the sender may connect: the SSRF guard at connect time (SPEC section 10).

The guard sits where names become addresses, so the address judged is the address
connected to and there is no window for DNS rebinding:

- `GuardedResolver` is the aiohttp connector's resolver. It looks the name up, drops
  every address `addresses.forbidden_reason` refuses, and hands aiohttp only the rest;
  aiohttp then connects to one of those (with the original name kept for the `Host`
  header, SNI and certificate checks). aiohttp caches what the resolver returned, so
  cached answers were checked too.
- aiohttp skips the resolver for IP literals, so `check_literal_host` judges those
  before the request starts.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import ip_address

from aiohttp.abc import AbstractResolver, ResolveResult

from app.domain import addresses
from app.domain.addresses import IPAddress, IPNetwork, Resolver


class RefusedAddressError(OSError):
    """The endpoint's host is, or resolves only to, addresses Tidings must not connect to."""


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that only ever returns addresses the SSRF rule permits."""

    def __init__(self, resolve: Resolver, allowed: Sequence[IPNetwork]) -> None:
        self._resolve = resolve
        self._allowed = tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host`, keeping only permitted addresses of the wanted family.

        Raises:
            RefusedAddressError: when the name resolves only to refused addresses.
            OSError: when the name does not resolve.
        """
        found = [a for a in await self._resolve(host, port) if _family_matches(a, family)]
        if not found:
            raise OSError(f"{host} has no address")
        permitted = [a for a in found if addresses.forbidden_reason(a, self._allowed) is None]
        if not permitted:
            reason = addresses.forbidden_reason(found[0], self._allowed)
            raise RefusedAddressError(f"{host} resolves to {found[0]}, {reason}")
        return [_resolve_result(host, address, port) for address in permitted]

    async def close(self) -> None:
        """Nothing to release: resolving holds no resources."""


def check_literal_host(host: str, allowed: Sequence[IPNetwork]) -> None:
    """Refuse a URL host that is a forbidden IP literal; names are left to the resolver.

    aiohttp takes a host for an IP literal when it contains a colon or only digits and
    dots; such a host that is not a canonical address (`2130706433`, `127.1`) is
    refused outright, as the socket layer would read it as some address.

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


def _family_matches(address: IPAddress, family: int) -> bool:
    if family == socket.AF_INET:
        return address.version == 4
    if family == socket.AF_INET6:
        return address.version == 6
    return True


def _resolve_result(host: str, address: IPAddress, port: int) -> ResolveResult:
    return {
        "hostname": host,
        "host": str(address),
        "port": port,
        "family": socket.AF_INET if address.version == 4 else socket.AF_INET6,
        "proto": 0,
        "flags": socket.AI_NUMERICHOST,
    }
