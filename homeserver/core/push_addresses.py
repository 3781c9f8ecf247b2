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

from homeserver.core.addresses import address_blocked


def is_public_address(address: str) -> bool:
    """Whether `address` (an IPv4 or IPv6 literal) is a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone: link-local anyway
    except ValueError:
        return False
    return not address_blocked(ip)


def literal_address(host: str) -> str | None:
    """The address if `host` (a URL's host, IPv6 without brackets) is a literal one, else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
