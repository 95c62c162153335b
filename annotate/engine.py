"""The async LLM call engine: bounded, adaptive concurrency; retries; a request cache that never pays twice.

`run_calls(bodies, config)` sends chat-completion request bodies to any OpenAI-compatible endpoint
through the official `openai.AsyncOpenAI` client on the aiohttp transport and returns one
`CallRecord` per distinct request (keyed by the sha256 of the canonical request JSON).

- cache: a finished answer (state ``done``) is never requested again, across runs (`journal.py`);
- in-flight journal: a chunk of requests is committed as ``inflight`` before any of it is sent;
  each is sent with ``Idempotency-Key: <request hash>`` so a resend after a crash can be replayed
  by the server instead of recomputed (see `journal.py` for the exact guarantee);
- retries: timeouts, connection errors, 408/409/5xx and 429 retry with exponential backoff + jitter,
  never sooner than ``Retry-After`` / ``retry-after-ms``; other 4xx fail the row at once;
- fatal faults (`faults.py`: 401/403, 404 model, 429 ``insufficient_quota``, a 400 refusing the
  response format, connection refused on every attempt) stop the whole job at once: nothing more
  is sent, unsent requests stay unsent (``skipped``), ``summary.fatal`` says the cause and the fix;
  a missing key for a non-local endpoint is refused before anything is sent;
- adaptive concurrency: a 429 halves the send limit (at most once per second) and pauses sending
  for Retry-After; each success adds 1/limit back (AIMD). ``x-ratelimit-remaining-requests|tokens``
  of 0 pauses sending until the matching ``x-ratelimit-reset-*``;
- cost: usage tokens x `Price`; `max_cost_usd` is ONE budget per job (`EngineConfig.job_id`),
  shared by every engine run of the job in any process through `ledger.py`: a request is sent
  only if the job's spend plus the expected cost of everything in flight and of this one stays
  within it (expected = the job's mean cost so far; before any answer, an upper bound from the
  request's size and max_tokens). Then dispatch stops, what is in flight finishes, and the run
  returns cleanly (the rest are ``skipped``; a rerun with a larger budget picks them up, cached
  answers are free).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import hashlib
import itertools
import json
import random
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from annotate.faults import fatal_cause, refused, refused_cause, require_key
from annotate.journal import CallRecord, Journal, canonical
from annotate.ledger import Ledger
from annotate.pricing import Price
from annotate.progress import RunBar
from annotate.secrets import secret_values


@dataclass(frozen=True)
class EngineConfig:
    """How to reach the endpoint and how hard to push it."""

    base_url: str
    cache_path: Path  # the SQLite request cache / journal
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the value is never stored
    concurrency: int = 32  # the most requests in flight (the adaptive limit never exceeds it)
    timeout_s: float = 60.0  # per attempt
    max_attempts: int = 8
    backoff_base_s: float = 0.5  # first retry waits ~this, doubling, with jitter, capped below
    backoff_max_s: float = 30.0
    price: Price = field(default_factory=Price)
    max_cost_usd: float | None = None
    progress: bool = True
    label: str = "annotate"
    flush_s: float = 0.05  # answers are committed at least this often...
    flush_n: int = 64  # ...or every this many
    job_id: str | None = None  # runs sharing an id share one --max-cost budget and stop flag (ledger.py)


@dataclass
class Summary:
    """What one run did. `cost_usd` is this run's new spend (cache hits are free)."""

    requests: int = 0
    cached: int = 0
    sent: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0  # not sent: the cost budget was reached, or a fatal fault stopped the job
    retries: int = 0
    rate_limited: int = 0
    ratelimit_pauses: int = 0  # answers whose x-ratelimit-remaining-* was 0 (sending paused)
    min_concurrency: int = 0  # the lowest the adaptive limit went (429s halve it)
    resent_after_crash: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    stopped: str | None = None  # "max-cost" when the budget stopped the run, "fatal" on a fatal fault
    fatal: str | None = None  # the fatal fault's cause and fix, one line

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def request_key(body_json: str) -> str:
    """The cache key: sha256 of the canonical request JSON (model, messages, params, schema)."""
    return hashlib.sha256(body_json.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
class _Limiter:
    """AIMD concurrency limit plus a pause-until time (Retry-After, x-ratelimit-reset).

    Lock-free: the event loop is single-threaded and no await sits between a check and its update.
    """

    def __init__(self, max_limit: int):
        self.max = max_limit
        self.limit = float(max_limit)
        self.active = 0
        self.pause_until = 0.0
        self._last_cut = -1e9
        self.min_seen = max_limit
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self.pause_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self.active < max(1, int(self.limit)):
                self.active += 1
                return
            fut = loop.create_future()
            self._waiters.append(fut)
            await fut

    def release(self, ok: bool) -> None:
        self.active -= 1
        if ok and self.limit < self.max:
            self.limit = min(self.max, self.limit + 1.0 / self.limit)
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def slow_down(self, pause_s: float, cut: bool) -> None:
        now = asyncio.get_running_loop().time()
        self.pause_until = max(self.pause_until, now + pause_s)
        if cut and now - self._last_cut > 1.0:
            self.limit = max(1.0, self.limit / 2)
            self.min_seen = min(self.min_seen, int(self.limit))
            self._last_cut = now


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration_s(value: str | None) -> float | None:
    """'20ms' / '1.5s' / '6m0s' / '2' (seconds) -> seconds; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if parts:
        scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)
    try:  # an HTTP date (Retry-After may be one)
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def retry_after_s(headers) -> float | None:
    """Seconds the server asked us to wait, from retry-after-ms or Retry-After."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    return parse_duration_s(headers.get("retry-after"))


def _ratelimit_pause_s(headers) -> float | None:
    pauses = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            pauses.append(parse_duration_s(headers.get(f"x-ratelimit-reset-{kind}")) or 1.0)
    return max(pauses) if pauses else None


# ---------------------------------------------------------------------------------------------
class _Run:
    """State of one engine run; the main flow is `_run` below."""

    def __init__(self, config: EngineConfig, journal: Journal, total: int, api_key: str, ledger: Ledger):
        self.cfg = config
        # Every string that leaves the engine (answers, raw responses, errors) goes through
        # `redact`: the key in use plus any secret-looking environment variable.
        self._secrets = secret_values((api_key,))
        self.journal = journal
        self.ledger = ledger
        self.summary = Summary(requests=total)
        self.records: dict[str, CallRecord] = {}
        self.reserved: set[str] = set()
        self.unsent: set[str] = set()
        self.stop = False
        self.bar = RunBar(config.label, total or None, {
            "tokens": ("", "0.0k tok"), "cost": ("green", "$0.0000"), "retries": ("yellow", "0 retries"),
            "failed": ("red", "0 failed")}, enabled=config.progress)

    def redact(self, text: str | None) -> str | None:
        if text:
            for v in self._secrets:
                if v in text:
                    text = text.replace(v, "***")
        return text

    # -- budget and stops --------------------------------------------------------------------
    def expected_cost(self, body_json: str, body: dict) -> float:
        """What sending this request will probably cost: the job's mean cost per answer so far,
        or before any answer an upper bound (prompt ~ chars/4 tokens, completion = max_tokens)."""
        mean = self.ledger.mean_cost()
        if mean is not None:
            return mean
        return self.cfg.price.cost(len(body_json) // 4, int(body.get("max_tokens") or 1024))

    async def admit(self, key: str, body_json: str, body: dict) -> bool:
        """Reserve this request's expected cost in the job's budget; wait while requests in flight
        (here or in another process of the job) hold the rest; False when the budget is spent."""
        if self.cfg.max_cost_usd is None:
            return True
        while not self.stop:
            verdict = self.ledger.reserve(key, self.expected_cost(body_json, body))
            if verdict == "ok":
                self.reserved.add(key)
                return True
            if verdict == "stop":
                self.halt(self.ledger.stopped() or "max-cost")
                return False
            await asyncio.sleep(0.02)  # answers in flight will replace estimates with real costs
        return False

    def halt(self, reason: str) -> None:
        """Stop dispatching: ``max-cost``, or ``fatal: <cause>`` (also stops the job's other runs)."""
        if self.stop:
            return
        self.stop = True
        if reason.startswith("fatal: "):
            self.summary.stopped, self.summary.fatal = "fatal", reason[len("fatal: "):]
            self.ledger.stop(reason)
        else:
            self.summary.stopped = "max-cost"

    def check_job(self) -> None:
        """Pick up a stop another run of the same job recorded (between chunks)."""
        if not self.stop and (why := self.ledger.stopped()):
            self.halt(why)

    # -- one request ------------------------------------------------------------------------
    async def call(self, client, limiter: _Limiter, key: str, body_json: bytes, model: str) -> CallRecord | None:
        """The request's record, or None when a fatal fault stopped the job (the request then
        counts as not sent: its row is ``skipped`` and a rerun sends it)."""
        import httpx2
        import openai

        last_error = ""
        n_refused = 0
        for attempt in range(1, self.cfg.max_attempts + 1):
            await limiter.acquire()
            ok = False
            wait = None
            try:
                # The client's low-level `post` sends the canonical JSON we hashed, byte for byte
                # (the typed `chat.completions.create` re-transforms every param: ~1.3 ms/request).
                raw = await client.post("/chat/completions", cast_to=httpx2.Response, content=body_json,
                                        options={"headers": {"Idempotency-Key": key}})
                text = raw.text
                ok = True
                pause = _ratelimit_pause_s(raw.headers)
                if pause:
                    self.summary.ratelimit_pauses += 1
                    limiter.slow_down(pause, cut=False)
                return self._parse_ok(key, text, attempt)
            except openai.APIStatusError as e:
                status = e.status_code
                text = e.response.text if e.response is not None else str(e)
                last_error = self.redact(f"HTTP {status}: {_short(text)}")
                headers = e.response.headers if e.response is not None else None
                fatal = fatal_cause(status, text, model=model, base_url=self.cfg.base_url, key_env=self.cfg.api_key_env)
                if fatal:
                    self.halt("fatal: " + self.redact(fatal))
                    return None
                if status == 429:
                    self.summary.rate_limited += 1
                    wait = retry_after_s(headers)
                    limiter.slow_down(wait if wait is not None else self._backoff(attempt), cut=True)
                elif not (status in (408, 409) or status >= 500):
                    return self._failed(key, last_error, attempt)
                else:
                    wait = retry_after_s(headers)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                if refused(e):  # the aiohttp transport reports a refused connection as a timeout
                    n_refused += 1
                    last_error = f"connection refused by {self.cfg.base_url}"
                    # every attempt refused, or the server was never reached in this run: not there
                    if n_refused == self.cfg.max_attempts or (n_refused >= 3 and not self.summary.done):
                        self.halt("fatal: " + refused_cause(self.cfg.base_url, n_refused))
                        return None
                else:
                    last_error = self.redact(f"{type(e).__name__}: {e}")
            except Exception as e:  # noqa: BLE001 - one bad request fails its row, never the job
                return self._failed(key, self.redact(f"unexpected {type(e).__name__}: {e}"), attempt)
            finally:
                limiter.release(ok)
            if self.stop and self.summary.stopped == "fatal":
                return None  # another request found a fatal fault: do not retry this one
            if attempt < self.cfg.max_attempts:
                self.summary.retries += 1
                await asyncio.sleep(max(wait or 0.0, self._backoff(attempt)))
        return self._failed(key, f"gave up after {self.cfg.max_attempts} attempts; last: {last_error}",
                            self.cfg.max_attempts)

    def _backoff(self, attempt: int) -> float:
        return min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1)) * (0.5 + random.random())

    def _parse_ok(self, key: str, text: str, attempts: int) -> CallRecord:
        try:
            data = json.loads(text)
            content = data["choices"][0]["message"].get("content")
            usage = data.get("usage") or {}
            pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            # The HTTP call succeeded (and was likely billed) but the envelope is not a chat
            # completion: keep the raw text as evidence, do not retry (it would pay again).
            return CallRecord(key, "done", None, self.redact(text), 0, 0, 0.0,
                              f"unreadable response envelope: {type(e).__name__}: {e}", attempts)
        return CallRecord(key, "done", self.redact(content), self.redact(text), pt, ct,
                          self.cfg.price.cost(pt, ct), None, attempts)

    def _failed(self, key: str, error: str, attempts: int) -> CallRecord:
        return CallRecord(key, "failed", None, None, 0, 0, 0.0, error, attempts)

    # -- bookkeeping ------------------------------------------------------------------------
    def finish(self, rec: CallRecord) -> None:
        self.records[rec.key] = rec
        self.journal.record(rec)
        if rec.key in self.reserved:
            self.reserved.discard(rec.key)
            self.ledger.settle(rec.key, rec.cost_usd, paid=rec.state == "done")
        s = self.summary
        if rec.state == "done":
            s.done += 1
            s.prompt_tokens += rec.prompt_tokens
            s.completion_tokens += rec.completion_tokens
            s.cost_usd += rec.cost_usd
        else:
            s.failed += 1
        if self.journal.pending >= self.cfg.flush_n:
            self.journal.flush()
        self.tick(1)

    def tick(self, n: int) -> None:
        s = self.summary
        self.bar.update(n, tokens=f"{(s.prompt_tokens + s.completion_tokens) / 1000:.1f}k tok",
                        cost=f"${s.cost_usd:.4f}", retries=f"{s.retries} retries", failed=f"{s.failed} failed")


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "…"


# ---------------------------------------------------------------------------------------------
async def _run(bodies: Iterable[dict], cfg: EngineConfig, total: int | None,
               order: list[str]) -> tuple[dict[str, CallRecord], Summary]:
    """The engine's main flow in one place (over 80 lines on purpose): a dispatcher renders, hashes
    and journals requests chunk by chunk, workers send them, a flusher commits the journal; the
    three coroutines share this run's state (`run`, `keyed`, the queue), so they stay nested here."""
    import openai
    from openai import DefaultAioHttpClient

    t0 = time.perf_counter()
    api_key = require_key(cfg.base_url, cfg.api_key_env)  # refused here: nothing sent without a key
    journal = Journal(cfg.cache_path)
    ledger = Ledger(cfg.cache_path, cfg.job_id or uuid.uuid4().hex, cfg.max_cost_usd)
    run = _Run(cfg, journal, total or 0, api_key, ledger)
    crashed = journal.inflight()
    # key -> (canonical JSON, body); filled as bodies are rendered, so sending starts at once
    keyed: dict[str, tuple[str, dict]] = {}
    run.bar.start()
    queue: asyncio.Queue = asyncio.Queue()
    limiter = _Limiter(cfg.concurrency)

    async def dispatcher() -> None:
        # Per chunk: render + hash, serve cache hits, journal the misses as in flight (one commit)
        # before any can be sent; keep about two chunks queued so marks stay close to real sends.
        chunk = max(8, cfg.concurrency)
        it = iter(bodies)
        while True:
            part_bodies = list(itertools.islice(it, chunk))
            if not part_bodies:
                break
            fresh = []
            for body in part_bodies:
                body_json = canonical(body)
                key = request_key(body_json)
                order.append(key)
                if key not in keyed:
                    keyed[key] = (body_json, body)
                    fresh.append(key)
            hits = journal.lookup(fresh)
            run.records.update(hits)
            run.summary.cached += len(hits)
            run.tick(len(hits))
            todo = [k for k in fresh if k not in hits]
            run.summary.resent_after_crash += len(crashed.intersection(todo))
            run.check_job()
            if run.stop or not todo:
                continue  # after a budget stop: keep hashing (for the counts), send nothing
            while queue.qsize() > chunk and not run.stop:
                await asyncio.sleep(0.002)
            journal.mark_inflight([(k, keyed[k][0]) for k in todo])
            run.unsent.update(todo)
            for k in todo:
                queue.put_nowait(k)
        run.summary.requests = len(keyed)
        run.bar.update(total=len(keyed))
        for _ in range(cfg.concurrency):
            queue.put_nowait(None)

    async def worker(client) -> None:
        while (key := await queue.get()) is not None:
            body_json, body = keyed[key]
            if run.stop or not await run.admit(key, body_json, body):
                continue
            run.unsent.discard(key)
            run.summary.sent += 1
            rec = await run.call(client, limiter, key, body_json.encode(), str(body.get("model")))
            if rec is None:  # a fatal fault: not answered, so not sent as far as the rows go
                run.summary.sent -= 1
                run.unsent.add(key)
            else:
                run.finish(rec)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(cfg.flush_s)
            journal.flush()
            run.bar.update(rate=f"{run.summary.done / max(time.perf_counter() - t0, 1e-9):.1f} req/s")

    try:
        async with openai.AsyncOpenAI(
            base_url=cfg.base_url, api_key=api_key, timeout=cfg.timeout_s, max_retries=0,
            default_headers={"Content-Type": "application/json"},
            http_client=DefaultAioHttpClient(timeout=cfg.timeout_s),
        ) as client:
            flush_task = asyncio.create_task(flusher())
            workers = [asyncio.create_task(worker(client)) for _ in range(cfg.concurrency)]
            await asyncio.gather(dispatcher(), *workers)
            flush_task.cancel()
    finally:
        journal.flush()
        # Journaled but never sent (budget stop, fatal fault): not in flight after all.
        journal.forget_unsent(sorted(run.unsent))
        journal.close()
        ledger.release(run.reserved | set(keyed))  # this run's keys hold no reservation after it
        ledger.close()
        run.bar.stop()
    run.summary.skipped = len(keyed) - len(run.records)
    run.summary.min_concurrency = limiter.min_seen
    run.summary.elapsed_s = time.perf_counter() - t0
    return run.records, run.summary


def run_calls(bodies: Iterable[dict], config: EngineConfig, total: int | None = None,
              order: list[str] | None = None) -> tuple[dict[str, CallRecord], Summary]:
    """Send every distinct request body (or serve it from the cache); see the module docstring.

    `bodies` may be a lazy iterable: requests are rendered, hashed and sent chunk by chunk, so the
    first ones go out before the last are rendered (`total`, if known, sizes the progress bar).
    Returns ``(records, summary)`` where `records` maps `request_key(canonical(body))` to its
    `CallRecord` (missing for requests skipped by the budget); `order`, if given, receives each
    body's key in input order.
    """
    order = [] if order is None else order
    try:  # uvloop cuts the event loop's own CPU per request; the client is CPU-bound at high rates
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_run(bodies, config, total, order))
