"""A real Matrix client, matrix-nio, against a real server process.

nio runs on its own asyncio loop (`asyncio.run` in a worker thread), so the test
does not depend on which reactor pytest-twisted installed in this process: under
the asyncio reactor a loop may already be running in the main thread.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from conftest import ServerProcess
from nio import (
    AsyncClient,
    LoginResponse,
    LogoutResponse,
    ProfileGetDisplayNameResponse,
    ProfileGetResponse,
    ProfileSetDisplayNameResponse,
    RegisterResponse,
    WhoamiError,
    WhoamiResponse,
)

T = TypeVar("T")
PASSWORD = "nio-" + secrets.token_urlsafe(12)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """asyncio.run(coro) on a fresh thread and loop; its exceptions are raised here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


async def client_session(server: ServerProcess) -> None:
    url = server.base_url
    first = AsyncClient(url)
    second: AsyncClient | None = None
    stranger = AsyncClient(url)
    revoked = AsyncClient(url)
    try:
        # Register: nio sends the m.login.dummy stage itself and takes the returned login.
        reg = await first.register("niouser", PASSWORD, device_name="nio first")
        assert isinstance(reg, RegisterResponse), reg
        user_id = f"@niouser:{server.server_name}"
        assert reg.user_id == user_id
        assert first.user_id == user_id and first.access_token == reg.access_token
        old_token = reg.access_token

        # A second device of the same user.
        second = AsyncClient(url, user="niouser")
        login = await second.login(PASSWORD, device_name="nio second")
        assert isinstance(login, LoginResponse), login
        assert login.user_id == user_id
        assert login.device_id != reg.device_id
        assert login.access_token != reg.access_token

        for client, device_id in ((first, reg.device_id), (second, login.device_id)):
            who = await client.whoami()
            assert isinstance(who, WhoamiResponse), who
            assert who.user_id == user_id
            assert who.device_id == device_id

        # Display name: set by one client, read back by it, seen by the other device and another user.
        name = "Nio Tester ✓"
        set_name = await first.set_displayname(name)
        assert isinstance(set_name, ProfileSetDisplayNameResponse), set_name
        got = await first.get_displayname()
        assert isinstance(got, ProfileGetDisplayNameResponse), got
        assert got.displayname == name
        profile = await second.get_profile(user_id)
        assert isinstance(profile, ProfileGetResponse), profile
        assert profile.displayname == name
        assert isinstance(await stranger.register("niostranger", PASSWORD), RegisterResponse)
        seen = await stranger.get_displayname(user_id)
        assert isinstance(seen, ProfileGetDisplayNameResponse), seen
        assert seen.displayname == name

        # Log the first device out: its token is dead, the second device's is not.
        out = await first.logout()
        assert isinstance(out, LogoutResponse), out
        assert first.access_token == ""
        revoked.restore_login(user_id, reg.device_id, old_token)
        rejected = await revoked.whoami()
        assert isinstance(rejected, WhoamiError), rejected
        assert rejected.status_code == "M_UNKNOWN_TOKEN"
        still = await second.whoami()
        assert isinstance(still, WhoamiResponse), still
        assert still.device_id == login.device_id
    finally:
        for client in (first, second, stranger, revoked):
            if client is not None:
                await client.close()


def test_nio_register_login_profile_logout(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    run(client_session(server))
    log = server.log_text()
    assert "Traceback" not in log
    assert PASSWORD not in log
