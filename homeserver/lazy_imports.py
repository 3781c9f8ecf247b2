"""Modules that Twisted imports with the reactor but the server needs only later, loaded at
their first use instead (start-up time, issue 16).

Importing `twisted.internet.tcp` pulls in TLS support (pyOpenSSL, cryptography's X.509,
service_identity: ~60 ms of a ~0.4 s start) only so that every TCP connection can offer
`startTLS`. The server listens on plain TCP (HTTPS is for a proxy in front); TLS is needed by
outbound HTTPS (pushes, URL previews), which starts later, if at all.

`defer()` runs before the reactor is imported and puts in `sys.modules`:

- for the modules `twisted.internet.posixbase` only binds to a name (`twisted.protocols.tls`,
  `twisted.internet.ssl`), a stand-in that imports the real module at the first attribute
  read and forwards to it;
- for `twisted.internet._newtls`, whose three mixins `tcp` subclasses at import, the mixins
  without methods, so a plain connection writes through `FileDescriptor` directly (what
  Twisted's mixin does while TLS is off). The first `startTLS` imports the real module and
  copies its methods onto the mixin: that connection and all others then behave exactly as
  with Twisted's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

# Bound to a name by the reactor's import; read only when TLS is used.
STAND_INS = ("twisted.protocols.tls", "twisted.internet.ssl")
NEWTLS = "twisted.internet._newtls"

_lock = threading.RLock()


def _import_real(name: str) -> types.ModuleType:
    """Replace the stand-in for `name` in sys.modules by the real module (once)."""
    with _lock:
        current = sys.modules.get(name)
        if isinstance(current, _StandIn) or current is _newtls_stand_in:
            del sys.modules[name]
        try:
            return importlib.import_module(name)
        except BaseException:
            if current is not None and name not in sys.modules:
                sys.modules[name] = current  # a failed import leaves things as they were
            raise


class _StandIn(types.ModuleType):
    """Takes the real module's place until something reads from it, then forwards to it."""

    def __getattr__(self, attr: str) -> Any:  # called only for what the stand-in lacks
        real = self.__dict__.get("_real_module")
        if real is None:
            real = self.__dict__["_real_module"] = _import_real(self.__name__)
        return getattr(real, attr)


class ConnectionMixin:
    """`tcp.Connection`'s TLS mixin until TLS is first started on a connection."""

    TLS = False

    def startTLS(self, ctx: Any, normal: bool = True) -> None:  # noqa: N802 - twisted's name
        _install_real_mixin()
        ConnectionMixin.startTLS(self, ctx, normal)


class ClientMixin:
    _tlsClientDefault = True


class ServerMixin:
    _tlsClientDefault = False


def _install_real_mixin() -> None:
    real = _import_real(NEWTLS)
    for name, value in vars(real.ConnectionMixin).items():
        if not name.startswith("__"):
            setattr(ConnectionMixin, name, value)


_newtls_stand_in = types.ModuleType(
    NEWTLS, "Twisted's startTLS mixins until first used (homeserver.lazy_imports)"
)
_newtls_stand_in.ConnectionMixin = ConnectionMixin  # type: ignore[attr-defined]
_newtls_stand_in.ClientMixin = ClientMixin  # type: ignore[attr-defined]
_newtls_stand_in.ServerMixin = ServerMixin  # type: ignore[attr-defined]


def defer() -> None:
    """Put the stand-ins in place; a module already imported is left as it is."""
    with _lock:
        for name in STAND_INS:
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            if spec is None:
                continue  # not installed: its importers handle the ImportError themselves
            stand_in = _StandIn(name)
            stand_in.__spec__ = spec
            stand_in.__file__ = spec.origin
            _put(name, stand_in)
        if "twisted.internet.tcp" not in sys.modules and NEWTLS not in sys.modules:
            _put(NEWTLS, _newtls_stand_in)


def _put(name: str, module: types.ModuleType) -> None:
    """In sys.modules and as its package's attribute, as an import would (`import a.b; a.b.x`)."""
    sys.modules[name] = module
    package, _, child = name.rpartition(".")
    setattr(importlib.import_module(package), child, module)
