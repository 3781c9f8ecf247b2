"""Outbound federation reaches only allowed addresses (core/addresses.py's rule with
`federation.ip_range_blacklist` / `ip_range_whitelist`).

A reactor wrapper whose name resolver drops blocked addresses: every connection the
federation client makes (to a server, to a .well-known host) resolves through it, so a
name that resolves to a blocked address, at any time, is never connected to."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from homeserver.config import FederationConfig
from homeserver.core.addresses import address_blocked

log = Logger()


class AddressRule:
    def __init__(self, config: FederationConfig) -> None:
        self.blacklist = config.networks("blacklist")
        self.whitelist = config.networks("whitelist")

    def allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return not address_blocked(ip, self.blacklist, self.whitelist)


def filtering_reactor(reactor: Any, rule: AddressRule) -> Any:
    """`reactor`, except that its name resolver leaves out the addresses `rule` blocks."""
    from twisted.internet.interfaces import (
        IHostnameResolver,
        IReactorPluggableNameResolver,
        IReactorTCP,
        IReactorTime,
        IResolutionReceiver,
    )

    @implementer(IResolutionReceiver)
    class Filter:
        def __init__(self, receiver: Any, host: str) -> None:
            self.receiver = receiver
            self.host = host

        def resolutionBegan(self, resolution: Any) -> None:  # noqa: N802 - twisted's name
            self.receiver.resolutionBegan(resolution)

        def addressResolved(self, address: Any) -> None:  # noqa: N802 - twisted's name
            if rule.allowed(address.host):
                self.receiver.addressResolved(address)
            else:
                log.warn(
                    "federation: not connecting to {host} at {address} (a blocked address range;"
                    " see federation.ip_range_whitelist)",
                    host=self.host,
                    address=address.host,
                )

        def resolutionComplete(self) -> None:  # noqa: N802 - twisted's name
            self.receiver.resolutionComplete()

    @implementer(IHostnameResolver)
    class Resolver:
        def resolveHostName(self, receiver: Any, hostName: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802, N803
            return reactor.nameResolver.resolveHostName(Filter(receiver, hostName), hostName, *args, **kwargs)

    @implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
    class Wrapped:
        nameResolver = Resolver()  # noqa: N815 - twisted's name

        def installNameResolver(self, resolver: Any) -> Any:  # noqa: N802 - twisted's name
            raise NotImplementedError

        def __getattr__(self, name: str) -> Any:
            return getattr(reactor, name)

    return Wrapped()
