"""Which IP addresses the server's own outgoing requests may reach (server-side request
forgery): public unicast addresses only, unless an operator's list says otherwise. One
rule for URL previews, pushers and the push gateway.

An IPv4-mapped IPv6 address is judged as its IPv4 address; one carried inside IPv6 (6to4,
Teredo, NAT64) is judged as that IPv4 address too, so `::ffff:127.0.0.1` or
`64:ff9b::a00:1` cannot reach what `127.0.0.1` or `10.0.0.1` may not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_blocked(
    ip: IpAddress, blacklist: Sequence[IpNetwork] = (), whitelist: Sequence[IpNetwork] = ()
) -> bool:
    """Whether an outgoing request may not connect to `ip`: listed in `whitelist` never is;
    listed in `blacklist`, or not a public unicast address (itself or the IPv4 inside it), is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # only another spelling of that IPv4 address
    if any(ip.version == n.version and ip in n for n in whitelist):
        return False
    candidates: list[IpAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip.teredo is not None:
            candidates.append(ip.teredo[1])
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for c in candidates:
        if any(c.version == n.version and c in n for n in blacklist):
            return True
        if not c.is_global or c.is_multicast or c.is_reserved or c.is_unspecified or c.is_loopback:
            return True
    return False
