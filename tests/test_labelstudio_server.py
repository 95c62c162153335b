"""annotate/labelstudio/server.py: the server we start is the one that answers, whatever the environment."""

from __future__ import annotations

import socket

import pytest

from annotate.labelstudio import server as ls_server
from tests.labelstudio_fixtures import ls_server as running_server  # noqa: F401

pytestmark = pytest.mark.labelstudio


def test_busy_port_is_refused_not_silently_moved(monkeypatch, running_server):  # noqa: F811
    # Bare names Label Studio would read, and a port someone else holds: start must not be fooled.
    monkeypatch.setenv("USERNAME", "intruder@example.com")
    monkeypatch.setenv("PASSWORD", "intruder-password")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("HOST", "http://example.invalid")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ls_server.ServerError, match=rf"port {port} .*not as our server"):
            ls_server.start(port=port, attempts=1, log=lambda m: None)


def test_running_server_answers_our_user_only(running_server):  # noqa: F811
    import httpx

    me = httpx.get(f"{running_server.url}/api/current-user/whoami",
                   headers={"Authorization": f"Token {running_server.token}"}).json()
    assert me["email"] == running_server.username
    assert httpx.get(f"{running_server.url}/api/current-user/whoami",
                     headers={"Authorization": "Token " + "0" * 40}).status_code == 401
    assert running_server.token not in repr(running_server)


def test_the_server_sends_nothing_to_labelstud_io_or_sentry(running_server):  # noqa: F811
    # Label Studio's defaults: usage events to labelstud.io (a tracking iframe on the login page)
    # and errors with request data to HumanSignal's Sentry. Both are off in the pages it serves.
    import urllib.request

    from tests.labelstudio_fixtures import login_cookies

    login_page = urllib.request.urlopen(f"{running_server.url}/user/login/", timeout=60).read().decode()
    assert "window.APP_SETTINGS.collect_analytics = false;" in login_page
    cookies = "; ".join(f"{k}={v}" for k, v in login_cookies(running_server).items())
    app_page = urllib.request.urlopen(urllib.request.Request(
        f"{running_server.url}/projects/", headers={"Cookie": cookies}), timeout=60).read().decode()
    assert "collect_analytics: false" in app_page and "sentry_dsn: null" in app_page
    assert "sentry.io" not in login_page + app_page
