"""The two places where firebase-admin has no public option, kept here and nowhere else.

firebase-admin 7.7.0 (pinned in setup.cfg) sends to the constant
`_MessagingService.FCM_URL`; a service object's `_fcm_url` (set from it when the app's
messaging service is first made) is what `messaging.send` posts to. Pointing it at a
configured endpoint is what lets a private relay, or the tests' local FCM endpoint, stand
in for Google's. Its HTTP session also retries 500/503 itself, sleeping on the worker
thread; the gateway retries on the reactor's clock instead (dispatch.with_retries), so
those retries are switched off. tests/test_push_gateway_fcm.py fails if an upgrade
renames either attribute.
"""

from __future__ import annotations

from typing import Any

import requests
from firebase_admin import App, messaging

FCM_PATH = "/v1/projects/{0}/messages:send"


def prepare_messaging(app: App, endpoint: str | None) -> None:
    """Make `app`'s messaging service now: posting to `endpoint` (None: Google's), without
    the library's own retries."""
    service: Any = messaging._get_messaging_service(app)
    base = service._fcm_url.split("/v1/projects/")[0]
    if endpoint is not None:
        service._fcm_url = endpoint + FCM_PATH.format(app.project_id)
        base = endpoint
    session: requests.Session = service._client.session
    session.mount(base, requests.adapters.HTTPAdapter(max_retries=0))


def fcm_url(app: App) -> str:
    """Where `app`'s messages go (for the test that guards the attributes above)."""
    url: str = messaging._get_messaging_service(app)._fcm_url
    return url
