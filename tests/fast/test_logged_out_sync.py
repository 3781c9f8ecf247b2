"""A device logged out from elsewhere learns it at once: its open long-poll /sync answers
401 M_UNKNOWN_TOKEN without waiting for its timeout (core/sync.py `devices_deleted`), so a
client such as the web client lands on its login page straight away. In-process on a clock
the test moves: "at once" means without the clock moving at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import Client, TestClock, make_server, until

from homeserver.server import HomeServer

PASSWORD = "correct horse battery"
POLL_MS = 60_000


def password_auth(user_id: str, session: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "session": session,
    }


async def delete_device(client: Client, hs: HomeServer, me: dict[str, str], other: dict[str, str]) -> None:
    """DELETE /devices/{id} as a client does it: learn the UIA session, then prove the password."""
    path = f"/_matrix/client/v3/devices/{other['device_id']}"
    status, challenge = await client.start("DELETE", path, me["access_token"], {})
    assert status == 401, challenge
    body = {"auth": password_auth(me["user_id"], challenge["session"])}
    status, answer = await client.start("DELETE", path, me["access_token"], body)
    assert status == 200, answer


async def change_password(client: Client, hs: HomeServer, me: dict[str, str], other: dict[str, str]) -> None:
    """POST /account/password with logout_devices: every other device is logged out."""
    path = "/_matrix/client/v3/account/password"
    body: dict[str, Any] = {"new_password": "another horse battery", "logout_devices": True}
    status, challenge = await client.start("POST", path, me["access_token"], body)
    assert status == 401, challenge
    body["auth"] = password_auth(me["user_id"], challenge["session"])
    status, answer = await client.start("POST", path, me["access_token"], body)
    assert status == 200, answer


@pytest.mark.parametrize(
    "log_out", [delete_device, change_password], ids=["device deleted", "password changed"]
)
@pytest_twisted.ensureDeferred
async def test_a_waiting_sync_of_a_logged_out_device_answers_unknown_token_at_once(
    tmp_path: Path, log_out: Any
) -> None:
    clock = TestClock()
    hs = await make_server(tmp_path, clock)
    client = Client(hs)
    try:
        laptop = await client.register(hs, "owner")
        login = await hs.accounts.create_session(laptop["user_id"], None, "Phone", refreshable=False, ip=None)
        phone = {
            "user_id": laptop["user_id"],
            "device_id": login.device_id,
            "access_token": login.tokens.access_token,
        }
        status, first = await client.sync(phone["access_token"])
        assert status == 200
        poll = client.sync(phone["access_token"], first["next_batch"], POLL_MS)
        await until(lambda: hs.notifier.waiting_users() == 1, "the phone's long-poll waits")
        started = clock.seconds()

        await log_out(client, hs, laptop, phone)

        await until(lambda: poll.called, "the long-poll answered without the clock moving")
        status, body = await poll
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN"), body
        assert body["soft_logout"] is False
        assert clock.seconds() == started
        # The laptop's own long-poll is not ended by it.
        status, mine = await client.sync(laptop["access_token"])
        assert status == 200
        poll = client.sync(laptop["access_token"], mine["next_batch"], 1000)
        await until(lambda: hs.notifier.waiting_users() == 1, "the laptop's long-poll waits")
        assert not poll.called
        clock.advance(2)
        await until(lambda: poll.called, "the laptop's long-poll answers at its timeout")
        assert (await poll)[0] == 200
    finally:
        await hs.stop(None)
