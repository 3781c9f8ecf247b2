"""The client's address behind a load balancer (`listen.trusted_proxies`).

Per-address limits (login, registration, key requests) and the audit log need the address
of whoever sent the request; behind HAProxy or nginx every request comes from the
balancer. A balancer we trust appends the address it got the request from to
`X-Forwarded-For`, after whatever the client itself wrote there. So the list is read from
the right, past every trusted proxy, and the first address that is not one is the client:
anything left of it came from the client and proves nothing. A request that does not come
from a trusted proxy is taken at its TCP address, whatever its headers say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """CIDR ranges (a bare address is a range of one); ValueError for anything else."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in proxies)


def is_trusted(peer: str, proxies: tuple[Network, ...]) -> bool:
    """Whether the connection's address `peer` is one of the trusted proxies."""
    if not proxies:
        return False
    try:
        return _trusted(ipaddress.ip_address(peer), proxies)
    except ValueError:
        return False  # a UNIX socket or similar: no address to trust


def client_address(peer: str, forwarded_for: bytes | None, proxies: tuple[Network, ...]) -> str:
    """The client's address for a request from `peer` carrying `forwarded_for` (all
    X-Forwarded-For headers, joined by commas in order)."""
    if forwarded_for is None or not is_trusted(peer, proxies):
        return peer
    client = peer
    for part in reversed(forwarded_for.decode("latin-1").split(",")):
        try:
            address = ipaddress.ip_address(part.strip())
        except ValueError:
            # Garbage (or `unknown`) where an address should be: the proxy vouches for
            # nothing further left, so the last address it did vouch for stands.
            return client
        client = str(address)
        if not _trusted(address, proxies):
            return client
    return client
