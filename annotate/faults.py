"""Faults no retry can fix: recognise them, stop the job at once, and say what to do.

Retrying helps with timeouts, 5xx and ordinary 429s. It cannot help with a bad or missing key
(401/403), an exhausted billing quota (429 whose body says ``insufficient_quota``), a model the
server does not serve (404), a request format the endpoint refuses for every row (400 about the
``response_format`` schema), or a server that is not there (connection refused on every attempt).
Each of these stops dispatch for the whole job (`annotate.ledger`), leaves unsent rows unsent
(``skipped``, so a rerun sends them) and ends the command with one line naming the cause and the
fix, and a non-zero exit.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from urllib.parse import urlsplit


class JobStopped(RuntimeError):
    """A job stopped by a fatal fault; the message is the one line the CLI prints."""


def _host(url: str) -> str:
    p = urlsplit(url)
    return f"{p.hostname}:{p.port}" if p.port else (p.hostname or url)


def is_local(url: str) -> bool:
    """Is the endpoint on this machine or a private network (a self-hosted server that may take
    no key)? Loopback, private and link-local addresses, ``localhost``, single-label names
    (``vllm``, a compose service) and ``.local``/``.internal``/``.lan`` names."""
    host = (urlsplit(url).hostname or "").lower()
    try:
        ip = ipaddress.ip_address(host)
        return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith((".local", ".internal", ".lan", ".localhost"))


def require_key(base_url: str, key_env: str) -> str:
    """The API key from ``$key_env``; refused (ValueError, before anything is sent) when it is
    unset and the endpoint is not local. A local server that wants no key gets ``none``."""
    key = os.environ.get(key_env) or ""
    if key or is_local(base_url):
        return key or "none"
    raise ValueError(f"no API key: ${key_env} is not set and {_host(base_url)} is not a local server; "
                     f"export {key_env}=<your key> (or --api-key-env NAME for another variable)")


def fatal_cause(status: int, body: str, *, model: str, base_url: str, key_env: str) -> str | None:
    """The one-line cause and fix of an HTTP error no retry can fix, or None (retry or fail the row)."""
    low = body.lower()
    short = body.strip().replace("\n", " ")[:200]
    if status == 429 and "insufficient_quota" in low:
        return (f"billing quota exhausted at {_host(base_url)} (HTTP 429 insufficient_quota): add credit to the "
                f"account of the key in ${key_env} or use another key, then rerun (answers received are cached)")
    if status == 401:
        return (f"{_host(base_url)} refused the API key (HTTP 401: {short}): put a valid key in ${key_env} "
                "(or --api-key-env NAME)")
    if status == 403:
        return (f"{_host(base_url)} forbids this key here (HTTP 403: {short}): check that the key in ${key_env} "
                f"may use model {model!r}")
    if status == 404:
        return (f"model {model!r} not found at {base_url} (HTTP 404: {short}): check --model "
                f"(GET {base_url.rstrip('/')}/models lists what the server serves) and --base-url")
    if status == 400 and ("response_format" in low or "json_schema" in low or "schema" in low):
        return (f"{_host(base_url)} refuses the request's response format (HTTP 400: {short}): rerun with "
                "--response-format json_object (or none)")
    return None


def refused(exc: BaseException) -> bool:
    """Was this client error a refused TCP connection? (The aiohttp transport reports one as
    ``APITimeoutError('Request timed out.')``; the cause chain holds the truth.)"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
            return True
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__ or next(
            (a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)), None)
    return False


def refused_cause(base_url: str, attempts: int) -> str:
    return (f"connection refused by {_host(base_url)} ({attempts} attempts): is the server at {base_url} "
            "running? Start it (or fix --base-url), then rerun")
