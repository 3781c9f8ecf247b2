"""Password hashing with argon2id (libsodium through PyNaCl), off the reactor thread."""

from __future__ import annotations

import nacl.exceptions
import nacl.pwhash

from homeserver.threads import WorkerThreads

# (opslimit, memlimit) per config level. "fast" exists for test suites only.
_COSTS = {
    "interactive": (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    "fast": (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN),
}


class PasswordHasher:
    def __init__(self, level: str, threads: WorkerThreads) -> None:
        self.opslimit, self.memlimit = _COSTS[level]
        self._run = threads.run

    def hash_sync(self, password: str) -> str:
        return nacl.pwhash.argon2id.str(
            password.encode("utf-8"), opslimit=self.opslimit, memlimit=self.memlimit
        ).decode("ascii")

    async def hash(self, password: str) -> str:
        result: str = await self._run(self.hash_sync, password)
        return result

    @staticmethod
    def _verify_sync(password_hash: str, password: str) -> bool:
        try:
            # libsodium compares in constant time.
            return bool(nacl.pwhash.verify(password_hash.encode("ascii"), password.encode("utf-8")))
        except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
            return False

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True iff `password` matches; a missing hash never matches (but costs the same time)."""
        if password_hash is None:
            await self._run(self.hash_sync, password)
            return False
        result: bool = await self._run(self._verify_sync, password_hash, password)
        return result
