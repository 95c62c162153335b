"""A real OpenAI-compatible HTTP server with scripted answers and injected faults, for tests and benchmarks.

FastAPI + uvicorn on a 127.0.0.1 port-0 socket, in a background thread (`ScriptedServer`) or its
own process (`python -m annotate.testing.scripted_server`, prints ``READY <base_url>``). It serves
``POST /v1/chat/completions`` and ``GET /v1/models``.

- answers come from a `responder(body) -> content` function (default: `toy_oracle`, which annotates
  toy-arithmetic requests correctly, with optional deterministic content faults: malformed JSON,
  out-of-range segment numbers, quotes not in the text);
- transport faults are drawn deterministically from (Idempotency-Key, attempt): 429 with
  Retry-After, 500, and slow answers (longer than the client's timeout);
- idempotency: a request whose ``Idempotency-Key`` was already answered gets the stored answer
  again (logged ``replayed``, not billed); one still being computed gets 409. So the request log
  proves whether any request was *answered* (computed, billed) twice;
- `max_tokens` is enforced as a real server does (4 characters a token): a longer answer is cut
  and says ``finish_reason: "length"``;
- a server's own refusals: `models` (a model it does not serve gets 404, as vLLM answers),
  `api_key` (any other bearer token gets 401), and `FaultPlan.fatal` (insufficient_quota 429,
  401, 403, 404, a 400 refusing the schema) after `fatal_after` answers — faults no retry fixes;
- optional fixed latency per answer (`latency_s`) for throughput benchmarks.
"""


import argparse
import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Responder = Callable[[dict], str]


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of transport faults per attempt; only the first `faulty_attempts` attempts of
    a key can fault, so every request eventually succeeds if the client retries enough."""

    p429: float = 0.0
    p500: float = 0.0
    pslow: float = 0.0
    slow_s: float = 2.0
    retry_after_s: float = 0.05
    faulty_attempts: int = 2
    seed: int = 0
    ratelimit_every: int = 0  # every Nth answer says x-ratelimit-remaining-requests: 0 (reset 20ms)
    # a fault no retry fixes, on every request after the first `fatal_after` answers (see FATAL)
    fatal: str | None = None
    fatal_after: int = 0

    def draw(self, key: str, attempt: int) -> str | None:
        if attempt > self.faulty_attempts:
            return None
        u = _unit(f"{self.seed}:{key}:{attempt}")
        for kind, p in (("429", self.p429), ("500", self.p500), ("slow", self.pslow)):
            if u < p:
                return kind
            u -= p
        return None


def _unit(s: str) -> float:
    """A deterministic number in [0, 1) from a string."""
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2**64


# Bodies as OpenAI's API words them (error.type / error.code), for faults no retry can fix.
FATAL = {
    "insufficient_quota": (429, {"message": "You exceeded your current quota, please check your plan and billing "
                                            "details.", "type": "insufficient_quota", "code": "insufficient_quota"}),
    "invalid_api_key": (401, {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                              "code": "invalid_api_key"}),
    "permission_denied": (403, {"message": "Project does not have access to this model.",
                                "type": "invalid_request_error", "code": "model_not_allowed"}),
    "model_not_found": (404, {"message": "The model does not exist or you do not have access to it.",
                              "type": "invalid_request_error", "code": "model_not_found"}),
    "bad_schema": (400, {"message": "Invalid schema for response_format 'key_spans': 'maxLength' is not permitted.",
                         "type": "invalid_request_error", "code": "invalid_json_schema"}),
}


def _error(status: int, err: dict) -> tuple[int, bytes, list]:
    return status, json.dumps({"error": err}).encode(), []


@dataclass
class LogEntry:
    t: float
    key: str
    attempt: int
    kind: str  # answered | replayed | 429 | 500 | 409 | slow


# --------------------------------------------------------------------------------------------
# Default responder: a correct annotator of the toy arithmetic world, with content faults.

_SEG = re.compile(r"^\[(\d+)\] (.*)$", re.M)


def _numbered_segments(user: str) -> list[tuple[int, str]]:
    block = user.split("numbered by segment:\n", 1)[-1]
    return [(int(n), t) for n, t in _SEG.findall(block)]


@dataclass(frozen=True)
class ToyOracle:
    """Answers annotation requests like a careful model would, from the numbered segments.

    Content faults (fractions of requests, deterministic by request content): `p_malformed`
    returns broken JSON, `p_out_of_range` a segment number past the end (with a correct quote),
    `p_bad_quote` a quote that is not in the text (with a correct segment number).
    """

    p_malformed: float = 0.0
    p_out_of_range: float = 0.0
    p_bad_quote: float = 0.0

    def __call__(self, body: dict) -> str:
        from train.toy.rule import annotate_lines  # the same checker the rule annotator uses

        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")
        user = body["messages"][-1]["content"]
        if schema == "skill_summary":
            return json.dumps({"success_analysis": "checked each step", "mistake_analysis":
                               "slips in arithmetic", "golden_workflow": "1. compute 2. check 3. answer"})
        segs = _numbered_segments(user)
        texts = [t for _, t in segs]
        ref = user.split("Reference solution (privileged, for you only):\n", 1)[-1].split("\n\n", 1)[0]
        want_error = schema == "error_spans"
        picks, error_type = annotate_lines(texts, ref, want_error=want_error)
        steps = [{"segment": i + 1, "quote": texts[i][a:b], "reason": "this part decides it"} for i, a, b in picks]
        u = _unit(json.dumps(body["messages"], sort_keys=True))
        if u < self.p_malformed:
            return '{"steps": [{"segment": 1, "quote": "oops", "reason": '  # truncated JSON
        u -= self.p_malformed
        if steps and u < self.p_out_of_range:
            steps[0] = dict(steps[0], segment=len(texts) + 7)
        elif steps and u < self.p_out_of_range + self.p_bad_quote:
            steps[0] = dict(steps[0], quote="a sentence that never appears in the response")
        out = {"steps": steps}
        if want_error:
            out["error_type"] = error_type or "other"
        return json.dumps(out)


# --------------------------------------------------------------------------------------------
@dataclass
class _State:
    responder: Responder
    faults: FaultPlan
    latency_s: float
    log: list[LogEntry] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    answers: dict[str, bytes] = field(default_factory=dict)
    computing: set[str] = field(default_factory=set)
    log_path: str | None = None
    n_answers: int = 0
    models: tuple[str, ...] | None = None  # served model names (None: any); others get 404 like vLLM
    api_key: str | None = None  # when set, any other bearer token gets 401


async def handle(state: _State, raw: bytes, idem_key: str | None, log,
                 auth: str | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """One chat-completion request -> (status, body, extra headers). Shared by both routes below."""
    if state.api_key is not None and auth != f"Bearer {state.api_key}":
        log("-", 0, "401")
        return _error(*FATAL["invalid_api_key"])
    try:
        body = json.loads(raw)
        assert isinstance(body.get("messages"), list) and body.get("model")
    except (ValueError, AssertionError, AttributeError):
        return 400, b'{"error":{"message":"invalid request: need model and messages[]"}}', []
    if state.models is not None and body["model"] not in state.models:
        log("-", 0, "404")
        return _error(404, {"message": f"The model `{body['model']}` does not exist.", "type": "NotFoundError",
                            "code": 404})
    if state.faults.fatal and state.n_answers >= state.faults.fatal_after:
        log("-", 0, state.faults.fatal)
        return _error(*FATAL[state.faults.fatal])
    key = idem_key or hashlib.sha256(raw).hexdigest()
    attempt = state.attempts[key] = state.attempts.get(key, 0) + 1
    fault = state.faults.draw(key, attempt)
    if fault == "429":
        log(key, attempt, "429")
        ra = state.faults.retry_after_s
        return 429, b'{"error":{"message":"rate limited","type":"rate_limit"}}', [
            (b"retry-after", f"{ra:g}".encode()), (b"retry-after-ms", str(int(ra * 1000)).encode())]
    if fault == "500":
        log(key, attempt, "500")
        return 500, b'{"error":{"message":"internal error"}}', []
    if key in state.answers:
        log(key, attempt, "replayed")
        return 200, state.answers[key], []
    if key in state.computing:
        log(key, attempt, "409")
        return 409, b'{"error":{"message":"request with this idempotency key in progress"}}', []
    state.computing.add(key)
    try:
        if fault == "slow":
            log(key, attempt, "slow")
            await asyncio.sleep(state.faults.slow_s)
        if state.latency_s:
            await asyncio.sleep(state.latency_s)
        content = state.responder(body)
        prompt_chars = sum(len(m.get("content") or "") for m in body["messages"])
        usage = {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(content) // 4 + 1}
        finish = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and usage["completion_tokens"] > limit:  # 4 chars a token, as counted
            content, finish, usage["completion_tokens"] = content[: 4 * limit], "length", limit
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        answer = json.dumps({
            "id": "chatcmpl-" + key[:16], "object": "chat.completion", "created": 0,
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        }).encode()
        state.answers[key] = answer
        log(key, attempt, "answered")
    finally:
        state.computing.discard(key)
    state.n_answers += 1
    every = state.faults.ratelimit_every
    if every and state.n_answers % every == 0:
        return 200, answer, [(b"x-ratelimit-remaining-requests", b"0"), (b"x-ratelimit-reset-requests", b"20ms")]
    return 200, answer, []


def build_app(state: _State):
    """The FastAPI app, wrapped so chat completions take a plain-ASGI fast path (FastAPI's request
    parsing costs ~0.5 ms of CPU per request, which on a 2-core box would be taken from the client
    a benchmark measures). Set ``SCRIPTED_SERVER_PLAIN=1`` to route everything through FastAPI."""
    import os

    from fastapi import FastAPI, Request, Response

    app = FastAPI()
    log_file = open(state.log_path, "a", buffering=1) if state.log_path else None  # noqa: SIM115

    def log(key: str, attempt: int, kind: str) -> None:
        e = LogEntry(time.time(), key, attempt, kind)
        state.log.append(e)
        if log_file:
            log_file.write(json.dumps(e.__dict__) + "\n")

    @app.get("/v1/models")
    async def models() -> dict:
        names = state.models if state.models is not None else ("scripted",)
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "test"} for n in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        status, payload, headers = await handle(state, await request.body(),
                                                request.headers.get("idempotency-key"), log,
                                                request.headers.get("authorization"))
        return Response(payload, status, headers={k.decode(): v.decode() for k, v in headers},
                        media_type="application/json")

    if os.environ.get("SCRIPTED_SERVER_PLAIN") == "1":
        return app

    async def asgi(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            return await app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        idem = next((v.decode() for k, v in scope["headers"] if k == b"idempotency-key"), None)
        auth = next((v.decode() for k, v in scope["headers"] if k == b"authorization"), None)
        status, payload, headers = await handle(state, b"".join(chunks), idem, log, auth)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), *headers]})
        await send({"type": "http.response.body", "body": payload})

    return asgi


class ScriptedServer:
    """The server in a daemon thread. ``with ScriptedServer(...) as srv: srv.base_url``."""

    def __init__(self, responder: Responder | None = None, faults: FaultPlan = FaultPlan(),
                 latency_s: float = 0.0, log_path: str | None = None, models: tuple[str, ...] | None = None,
                 api_key: str | None = None):
        self.state = _State(responder or ToyOracle(), faults, latency_s, log_path=log_path,
                            models=models, api_key=api_key)
        self._server = None
        self._thread = None
        self.base_url = ""

    @property
    def log(self) -> list[LogEntry]:
        return self.state.log

    def answered_twice(self) -> list[str]:
        """Keys the server computed (billed) more than once: must be empty."""
        seen: dict[str, int] = {}
        for e in list(self.state.log):
            if e.kind == "answered":
                seen[e.key] = seen.get(e.key, 0) + 1
        return [k for k, n in seen.items() if n > 1]

    def start(self) -> "ScriptedServer":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.state), log_level="warning", access_log=False,
                                loop=_best_loop(), http=_best_http(), lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("scripted server did not start within 10 s")
            time.sleep(0.005)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _best_loop() -> str:
    try:
        import uvloop  # noqa: F401
        return "uvloop"
    except ImportError:
        return "asyncio"


def _best_http() -> str:
    try:
        import httptools  # noqa: F401
        return "httptools"
    except ImportError:
        return "h11"


def main() -> None:
    p = argparse.ArgumentParser(description="Run the scripted OpenAI-compatible server in this process.")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--p429", type=float, default=0.0)
    p.add_argument("--p500", type=float, default=0.0)
    p.add_argument("--log", default=None, help="append the request log here as JSONL")
    a = p.parse_args()
    srv = ScriptedServer(faults=FaultPlan(p429=a.p429, p500=a.p500), latency_s=a.latency, log_path=a.log).start()
    print(f"READY {srv.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
