"""Which addresses a pusher's URL may reach: refusing loopback, private, link-local and
other non-public ranges unless `pushers.allow_private_addresses` says otherwise, so a
pusher cannot make the server probe its own network (server-side request forgery).

Checked twice: when a pusher is set, on a literal address in its URL (core/pushers.py),
and at every delivery, on each address its host name resolves to (the push plugin), so a
name that resolves to a public address at set time and a private one later (DNS
rebinding) is still refused.
"""

from __future__ import annotations

import ipaddress


def is_public_address(address: str) -> bool:
    """Whether `address` (an IPv4 or IPv6 literal) is a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone: link-local anyway
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 is judged as that IPv4 address (and, tunnelled, as both).
        if ip.ipv4_mapped is not None:
            return is_public_address(str(ip.ipv4_mapped))
        inner = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and not is_public_address(str(inner)):
            return False
    return bool(
        ip.is_global
        and not (ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private)
        and not (ip.is_reserved or ip.is_unspecified)
    )


def literal_address(host: str) -> str | None:
    """The address if `host` (a URL's host, IPv6 without brackets) is a literal one, else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
