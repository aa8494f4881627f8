"""Name resolution: the one place Tidings turns host names into addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from ipaddress import IPv4Address, IPv6Address


async def resolve(host: str, port: int) -> list[IPv4Address | IPv6Address]:
    """Every address `host` resolves to (an IP literal resolves to itself); OSError if none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not found:
        raise OSError(f"{host} has no addresses")
    return sorted(found, key=lambda address: (address.version, int(address)))
