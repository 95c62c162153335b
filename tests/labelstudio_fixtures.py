"""Fixtures for the Label Studio tests: one real server per test session, stores with machine spans.

The server comes from annotate/labelstudio/server.py — the same code as `spanroute ls serve`: its own venv
and a migrated data-dir template, cached under $SPANROUTE_CACHE/labelstudio (first session ~2.5
min, later ones seconds). If it cannot be installed or started the tests FAIL with the reason;
they are never skipped, so CI cannot pass without having exercised the real server.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import http.cookiejar
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from spans import SPANS_TYPE, Span

# A response with an emoji (ZWJ sequence: several code points, one symbol), '𝑥' (outside the BMP),
# CRLF line breaks and a plain-ASCII tail.
UNICODE_RESPONSE = "Let 𝑥 = 17 + 25 = 42 👩‍💻\r\n𝑥 * 3 = 127\r\nAnswer: 127"


_SERVER = []  # one server per test process, shared by every module that imports the fixture


def _shared_server():
    """Start the server once per process. (A session fixture imported into several modules is a
    separate fixture in each, which would start one server per module.)"""
    from annotate.labelstudio import server as srv

    if not _SERVER or not _SERVER[0].alive():
        try:
            server = srv.start(log=lambda m: print(f"[labelstudio] {m}", flush=True))
        except Exception as e:  # noqa: BLE001 - turn any install/start problem into a clear failure
            pytest.fail(f"could not install/start a real Label Studio for the labelstudio tests: {e}",
                        pytrace=False)
        atexit.register(server.stop)
        _SERVER[:] = [server]
    return _SERVER[0]


@pytest.fixture(scope="session")
def ls_server():
    """A running Label Studio (LSServer: url, token, username, password); stopped at exit."""
    return _shared_server()


@pytest.fixture(scope="session")
def ls_client(ls_server):
    from annotate.labelstudio import connect

    return connect(ls_server.url, ls_server.token)


_titles = itertools.count()


@pytest.fixture
def ls_project(ls_client, request):
    """A fresh project (its own title) for one test."""
    from annotate.labelstudio import ensure_project

    return ensure_project(ls_client, f"t{next(_titles)} {request.node.name}"[:50])


def rollout_rows(n: int, *, unicode_first: bool = True) -> list[dict]:
    """`n` rollouts with rule spans (and, on the first, the non-ASCII response)."""
    rows = []
    for i in range(n):
        if i == 0 and unicode_first:
            resp = UNICODE_RESPONSE
        else:
            a, b = 10 + i, 3 + i
            resp = f"{a} + {b} = {a + b}\n{a + b} * 2 = {2 * (a + b) + (i % 2)}\nAnswer: {2 * (a + b) + (i % 2)}"
        correct = i % 2 == 0 if i else False
        first = resp.split("\n")[0].rstrip("\r")
        spans = [Span(0, len(first), "key", "rule", "rule", first)]
        if not correct:
            j = resp.index("\n") + 1
            k = resp.index("\n", j)
            line = resp[j:k].rstrip("\r")
            spans.append(Span(j, j + len(line), "error", "rule", "rule", line))
        rows.append({
            "rollout_id": f"r{i:04d}", "prompt_id": f"p{i // 2}", "group_id": f"g{i // 2}",
            "prompt": f"Compute problem {i}.", "response": resp, "correct": correct,
            "reference": "the reference solution", "model": "toy",
            "spans": [s.to_dict() for s in spans],
        })
    return rows


def make_store(path: Path, n: int = 6, rows: list[dict] | None = None):
    """A store at `path` with `n` rule-annotated rollouts (or the given `rows`) in version 1."""
    from datastore import Lineage, Store
    from datastore.schema import ROLLOUT_SCHEMA

    rows = rows or rollout_rows(n)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    table = pa.table({k: pa.array(v, ROLLOUT_SCHEMA.field(k).type if k != "spans" else SPANS_TYPE)
                      for k, v in cols.items()})
    store = Store(path)
    store.write(table, message="test rollouts", lineage=Lineage(stage="annotate", annotator="rule",
                                                                   prompt_hash="rulehash01"))
    return store


def login_cookies(server) -> dict[str, str]:
    """Log `server`'s user in over HTTP (the login form's CSRF token, then its POST) and return the
    cookies of the logged-in session (`sessionid`, `csrftoken`).

    Why not the login form in the browser: Label Studio 1.23 keeps sessions in signed cookies and
    writes a session on every anonymous request, so each response to the login page's CSS, fonts or
    analytics beacon sets an anonymous `sessionid`. One that arrives after the login POST's response
    logs the browser out again; that is a race, and on a busy machine a test can lose it. A browser
    that gets these cookies before its first request never sends an anonymous one.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(f"{server.url}/user/login/", timeout=60).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf, "email": server.username,
                                   "password": server.password, "persist_session": "on"}).encode()
    opener.open(urllib.request.Request(f"{server.url}/user/login/", data=body,
                                       headers={"Referer": f"{server.url}/user/login/"}), timeout=60).read()
    whoami = json.load(opener.open(f"{server.url}/api/current-user/whoami", timeout=60))
    assert whoami["email"] == server.username, f"logged in as {whoami.get('email')!r}, not {server.username!r}"
    return {c.name: c.value for c in jar if c.name in ("sessionid", "csrftoken")}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's headless-capable chromium; installed with apt-get when missing (root)."""
    for name in ("chromium", "chromium-browser"):
        if p := shutil.which(name):
            return p
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]  # wait for another run's apt-get rather than fail on its lock
    try:
        subprocess.run([*apt, "update", "-qq"], check=True, capture_output=True, timeout=300)
        subprocess.run([*apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                       check=True, capture_output=True, timeout=600,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
        detail = getattr(e, "stderr", b"") or b""
        pytest.fail(f"Debian's chromium is missing and `apt-get install chromium` failed (needs root and "
                    f"the Debian mirror): {e} {detail.decode(errors='replace')[-300:]}", pytrace=False)
    p = shutil.which("chromium")
    if not p:
        pytest.fail("apt-get installed chromium but no `chromium` is on PATH", pytrace=False)
    return p


class CDPPage:
    """One headless Debian-chromium page driven over the DevTools protocol (aiohttp websocket).

    Flags from DESIGN §9; `--remote-debugging-port=0` + the profile's DevToolsActivePort file give
    a free port without races. `close()` kills the browser's process group.
    """

    def __init__(self, chromium: str):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", "--window-size=1400,1000", f"--user-data-dir={self.profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        marker = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(marker) and open(marker).read().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port (exit {self.proc.returncode})")
            time.sleep(0.1)
        port = int(open(marker).read().split()[0])
        # The DevTools port can answer before the about:blank tab is listed (seen on a busy machine):
        # poll the target list instead of taking its first entry on trust.
        while not (pages := [p for p in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                             if p["type"] == "page"]):
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium opened its DevTools port but never listed a page")
            time.sleep(0.1)
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._connect())
        self.n = 0
        self.navigations: list[str] = []  # main-frame URLs in order (Page.frameNavigated, after Page.enable)
        self.errors: list[str] = []  # uncaught page exceptions and failed loads (after Runtime/Network.enable)

    async def _connect(self):
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.ws_url, max_msg_size=0)

    async def _send(self, method, params):
        self.n += 1
        mid = self.n
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:  # events interleave with replies: wait for ours
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("method") == "Page.frameNavigated" and not msg["params"]["frame"].get("parentId"):
                self.navigations.append(msg["params"]["frame"]["url"])
            elif msg.get("method") == "Runtime.exceptionThrown":
                d = msg["params"]["exceptionDetails"]
                self.errors.append(d.get("exception", {}).get("description", d.get("text", ""))[:300])
            elif msg.get("method") == "Network.loadingFailed":
                self.errors.append(f"load failed: {msg['params'].get('errorText')} (request {msg['params'].get('requestId')})")
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def send(self, method: str, **params):
        return self.loop.run_until_complete(asyncio.wait_for(self._send(method, params), 60))

    def eval(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(str(r["exceptionDetails"])[:500])
        return r["result"].get("value")

    def set_cookies(self, url: str, cookies: dict[str, str]) -> None:
        """Put `cookies` in the browser for `url`'s host before any page of it loads."""
        for name, value in cookies.items():
            self.send("Network.setCookie", name=name, value=value, url=url)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait(self, expr: str, timeout: float = 90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if v := self.eval(expr):
                    return v
            except RuntimeError:
                pass  # page navigating: the context went away
            time.sleep(0.25)
        raise TimeoutError(f"page never satisfied: {expr}")

    def screenshot(self, path: Path) -> None:
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        if getattr(self, "loop", None) is not None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.ws.close())
                self.loop.run_until_complete(self.session.close())
            self.loop.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
