"""Install, start and stop a real Label Studio server, for users (`spanroute ls serve`) and tests.

The server (label-studio 1.23.2) pins `openai<2` and `pyarrow<25`, which clash with the project's
environment, so it lives in ITS OWN venv under the cache dir; the project only needs the SDK.

Layout of the cache dir (``$SPANROUTE_CACHE/labelstudio``, default ``~/.cache/spanroute/labelstudio``)::

    venv/                  label-studio's own virtual environment (``venv/.complete`` once usable)
    template/              a data dir with all migrations applied and no user (``.complete`` marker)
    data/                  the persistent data dir of `spanroute ls serve`
    token                  the token `spanroute ls serve` uses (mode 600)

A fresh data dir takes ~40 s to migrate; a copy of the migrated template starts in seconds. The
template holds no user: each start creates its own user with the token it is given, because the
legacy-token switch is stored on the organization when that first user creates it.

Label Studio reads bare ``USERNAME``/``PASSWORD``/``HOST``/``PORT`` from the environment and
silently moves to port+1 when its port is busy, so the server gets a clean environment and a start
is only accepted once the port we asked for answers *our* token with *our* user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from datastore.cache import build_once, cache_root

LS_VERSION = "1.23.2"
LS_REQUIREMENT = f"label-studio=={LS_VERSION}"
INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 600.0  # a crash is seen at once (alive()); this only bounds a start that hangs
# Migrating a fresh data dir takes ~40 s on an idle machine and took 10+ min on 2 cores at load 20;
# it is done once, so it gets a generous deadline.
TEMPLATE_TIMEOUT_S = 1800.0


# Label Studio's defaults send usage events to labelstud.io (its login page also loads a tracking
# iframe from there) and server errors, with request data, to HumanSignal's Sentry. A server that
# holds people's datasets on 127.0.0.1 sends neither.
OFFLINE_ENV = {"COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}


class ServerError(RuntimeError):
    """Label Studio could not be installed, started or reached (the message says what to check)."""


def cache_dir() -> Path:
    """Where the server venv, the data-dir template and the serve data live."""
    return cache_root() / "labelstudio"


def _base_python() -> str:
    """An interpreter to build the venv from: the base one, not the project venv's."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(cache: Path | None = None, *, log=print) -> Path:
    """Create (once) Label Studio's own venv; return the path of its `label-studio` script.

    Idempotent and safe across processes: a `.complete` marker is written only after a
    successful install, so an interrupted install is redone from scratch on the next call.
    """
    cache = cache or cache_dir()
    venv = cache / "venv"
    script = venv / "bin" / "label-studio"
    marker = venv / ".complete"
    build_once(lambda: _marked(marker) and script.exists(), cache / ".install.lock",
               lambda: _install_venv(venv, marker, log))
    return script


def _marked(marker: Path) -> bool:
    """Was this cache entry finished for the Label Studio version we pin?"""
    return marker.exists() and marker.read_text().strip() == LS_REQUIREMENT


def _install_venv(venv: Path, marker: Path, log) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    log(f"installing {LS_REQUIREMENT} into its own venv at {venv} (about 1-2 minutes, once)")
    t0 = time.monotonic()
    # --no-compile: byte-compiling all of Django + Label Studio up front is a large share of the
    # install; the modules a start really imports compile on first use instead.
    steps = [
        [_base_python(), "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-compile", LS_REQUIREMENT],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                                  env=_clean_env({}))
        except subprocess.TimeoutExpired as e:
            raise ServerError(f"installing {LS_REQUIREMENT} timed out after {e.timeout:.0f} s "
                              f"(check network access to PyPI)") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ServerError(f"installing {LS_REQUIREMENT} into {venv} failed: "
                              f"{' | '.join(tail)} (check network access to PyPI and disk space)")
    marker.write_text(LS_REQUIREMENT + "\n")
    log(f"installed {LS_REQUIREMENT} in {time.monotonic() - t0:.0f} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment: nothing of ours leaks in (bare USERNAME/PORT/HOST would be read)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class LSServer:
    """A running Label Studio: its URL, credentials, data dir and process (a group leader)."""

    url: str
    port: int
    username: str
    password: str
    token: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen
    remove_data_dir: bool = False  # a temporary data dir made by start(): deleted by stop()

    def __repr__(self) -> str:  # never show the token or password
        return f"LSServer(url={self.url!r}, username={self.username!r}, data_dir={str(self.data_dir)!r})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server and everything it spawned (SIGTERM to the group, then SIGKILL)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout_s)
        if self.remove_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LSServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _log_tail(path: Path, n: int = 5) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


def _spawn(script: Path, data_dir: Path, port: int, env_extra: dict[str, str], log_path: Path):
    env = _clean_env({"LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), **env_extra})
    log_fh = open(log_path, "wb")  # fresh per start: _served_port reads it
    try:
        return subprocess.Popen(
            [str(script), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
    finally:
        log_fh.close()


def _wait_ready(server: LSServer, timeout_s: float) -> None:
    """Wait until `server.url` answers /health AND recognises our token as our user."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(f"Label Studio exited with code {server.proc.returncode} while starting "
                              f"(log {server.log_path}: {_log_tail(server.log_path)})")
        served = _served_port(server.log_path)
        if served is not None and served != server.port:
            raise _PortTaken()  # Label Studio moved to another port: ours was busy
        try:
            status, _ = _get(server.url + "/health", timeout=2.0)
            if status == 200:
                if not server.token:  # template build: no user to check
                    return
                status, body = _get(server.url + "/api/current-user/whoami", server.token)
                if status == 200 and json.loads(body).get("email") == server.username:
                    return
                # Someone else answers on our port (Label Studio moved to port+1): give up this try.
                raise _PortTaken()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise ServerError(f"Label Studio did not answer {server.url}/health within {timeout_s:.0f} s "
                      f"(log {server.log_path}: {_log_tail(server.log_path)})")


class _PortTaken(Exception):
    pass


_SERVING = re.compile(rb"development server at http://[^:/]+:(\d+)/")


def _served_port(log_path: Path) -> int | None:
    """The port Label Studio says it serves on (its log), or None before it says so."""
    try:
        found = _SERVING.findall(log_path.read_bytes())
    except OSError:
        return None
    return int(found[-1]) if found else None


def ensure_template(script: Path, cache: Path | None = None, *, log=print) -> Path:
    """A data dir with every migration applied and no user, built once by a throwaway start."""
    cache = cache or cache_dir()
    template = cache / "template"
    build_once(lambda: _marked(template / ".complete"), cache / ".template.lock",
               lambda: _build_template(script, cache, template, log))
    return template


def _build_template(script: Path, cache: Path, template: Path, log) -> None:
    shutil.rmtree(template, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix="template-", dir=cache))
    log("migrating a fresh Label Studio data dir (about 40 s, once)")
    t0 = time.monotonic()
    port = free_port()
    log_path = cache / "template-build.log"
    log_path.unlink(missing_ok=True)
    proc = _spawn(script, building, port, {}, log_path)
    server = LSServer(f"http://127.0.0.1:{port}", port, "", "", "", building, log_path, proc,
                      remove_data_dir=True)  # a failed build leaves nothing behind
    try:
        _wait_ready(server, TEMPLATE_TIMEOUT_S)
    except _PortTaken:
        server.stop()
        raise ServerError(f"port {port} was taken while building the template; retry") from None
    except BaseException:
        server.stop()
        raise
    server.remove_data_dir = False
    server.stop()
    building.rename(template)
    (template / ".complete").write_text(LS_REQUIREMENT + "\n")
    log(f"template ready in {time.monotonic() - t0:.0f} s")


def start(
    data_dir: Path | None = None,
    *,
    token: str | None = None,
    username: str = "spanroute@localhost",
    password: str | None = None,
    port: int | None = None,
    cache: Path | None = None,
    log=print,
    attempts: int = 3,
) -> LSServer:
    """Start Label Studio headless on 127.0.0.1; return once it serves our user on our port.

    `data_dir`: kept as is if it already holds a database, else filled from the template (a fresh
    temporary dir when None). `token`: the legacy API token to give the user (random when None;
    at least 6 characters). The caller owns the server: `stop()` it, or use it as a context manager.
    """
    cache = cache or cache_dir()
    script = ensure_venv(cache, log=log)
    template = ensure_template(script, cache, log=log)
    temporary = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="ls-data-")) if temporary else Path(data_dir)
    if not (data_dir / "label_studio.sqlite3").exists():
        shutil.copytree(template, data_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
    token = token or secrets.token_hex(20)
    password = password or secrets.token_urlsafe(12)
    env_extra = {
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        **OFFLINE_ENV,
    }
    last = ""
    for _ in range(attempts):
        p = port or free_port()
        log_path = data_dir / "server.log"
        proc = _spawn(script, data_dir, p, env_extra, log_path)
        server = LSServer(f"http://127.0.0.1:{p}", p, username, password, token, data_dir, log_path, proc)
        try:
            _wait_ready(server, START_TIMEOUT_S)
            server.remove_data_dir = temporary
            return server
        except _PortTaken:
            server.stop()
            last = f"port {p} answered, but not as our server"
            if port:
                break
        except BaseException:
            server.stop()
            if temporary:
                shutil.rmtree(data_dir, ignore_errors=True)
            raise
    if temporary:
        shutil.rmtree(data_dir, ignore_errors=True)
    raise ServerError(f"could not start Label Studio on 127.0.0.1: {last} (pick another --port; for an "
                      f"existing --data-dir, use the token its user was created with)")
