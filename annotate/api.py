"""The api/self annotator: render prompts, run them through the engine, map answers to spans.

The model sees the response as numbered segments (`spans` segmentation) with the problem and the
reference solution, and answers in a JSON schema: key steps for a correct rollout, the first
wrong step plus an `error_type` for an incorrect one. Answers become exact spans in `parse.py`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from annotate.engine import EngineConfig, Summary, request_key, run_calls
from annotate.journal import canonical
from annotate.parse import map_answer, parse_json
from annotate.protocol import Provenance, RowResult
from annotate.secrets import redact
from annotate.templates import PromptTemplate, load
from spans import numbered


@dataclass(frozen=True)
class RequestParams:
    """Sampling parameters that go into every request (and so into the cache key)."""

    temperature: float = 0.0
    max_tokens: int = 512
    response_format: str = "json_schema"  # json_schema | json_object | none (for endpoints without it)
    seed: int | None = None


def public_url(url: str) -> str:
    """`url` without user:password or query string, safe to record in lineage."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def combined_hash(templates: list[PromptTemplate]) -> str:
    return hashlib.sha256("".join(t.sha256 for t in templates).encode()).hexdigest()[:16]


def build_body(tpl: PromptTemplate, model: str, params: RequestParams, **fields: str) -> dict:
    body = {
        "model": model,
        "messages": tpl.messages(**fields),
        "temperature": params.temperature,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.response_format == "json_schema":
        body["response_format"] = tpl.response_format()
    elif params.response_format == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


def not_sent_reason(summary: Summary | None) -> str:
    """Why a request was not sent: the job's fatal fault, or the budget."""
    if summary is not None and summary.fatal:
        return f"not sent: the job stopped ({summary.fatal})"
    return "not sent: --max-cost reached"


def finish_reason(raw: str | None) -> str | None:
    """``finish_reason`` of a stored raw answer: a chat completion's first choice, or the
    in-process runner's record; None when absent or unreadable."""
    try:
        data = json.loads(raw or "")
        return (data["choices"][0] if "choices" in data else data).get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def read_answer(call, schema: dict, max_tokens: int) -> tuple[dict | None, str, str | None]:
    """(object, status, error or note) of one finished call: a failed call fails with its error; an
    answer cut at the token limit (``finish_reason=length``) is ``truncated`` with the limit, unless
    a complete object fitting `schema` came before the cut (then ``repaired``, noted); otherwise
    `parse_json`'s verdict (a ``repaired`` one with its note)."""
    if call.state != "done" or call.content is None:
        return None, "failed", redact(call.error or "no answer")
    obj, status, err = parse_json(call.content, schema)
    if finish_reason(call.response) != "length":
        return obj, status, err
    cut = (f"answer cut at max_tokens={max_tokens} (finish_reason=length, "
           f"{call.completion_tokens} completion tokens); raise --max-tokens")
    if obj is None:
        return None, "truncated", cut
    return obj, "repaired", "; ".join(x for x in (err, cut) if x)


@dataclass
class ApiAnnotator:
    """Span annotation through any OpenAI-compatible endpoint (source ``api``, or ``self`` when the
    endpoint serves the policy being trained)."""

    engine: EngineConfig
    model: str
    source: str = "api"
    params: RequestParams = field(default_factory=RequestParams)
    prompt_dir: str | None = None
    checkpoint: str | None = None  # recorded for `self`
    summary: Summary | None = None
    runner: Callable[[list[dict]], tuple[dict, Summary]] | None = None  # default: HTTP engine

    def __post_init__(self) -> None:
        if self.engine.job_id is None:  # one job: every batch of this annotator shares --max-cost
            self.engine = replace(self.engine, job_id=uuid.uuid4().hex)
        self.key_tpl = load("key_spans", self.prompt_dir)
        self.err_tpl = load("error_spans", self.prompt_dir)
        name = self.checkpoint.rstrip("/").split("/")[-1] if self.checkpoint else self.model
        self.provenance = Provenance(
            source=self.source,
            annotator=f"{self.source}:{name}",
            model=self.model,
            prompt_hash=combined_hash([self.key_tpl, self.err_tpl]),
            extra={
                "prompt_hashes": {"key_spans": self.key_tpl.sha256, "error_spans": self.err_tpl.sha256},
                "base_url": public_url(self.engine.base_url) if self.runner is None else "in-process",
                "params": self.params.__dict__,
                **({"checkpoint": self.checkpoint} if self.checkpoint else {}),
            },
        )

    def body_for(self, rec: dict) -> dict | None:
        if rec.get("correct") is None:
            return None
        tpl = self.key_tpl if rec["correct"] else self.err_tpl
        return build_body(tpl, self.model, self.params, prompt=rec.get("prompt") or "",
                          reference=rec.get("reference") or "(none)",
                          numbered=numbered(rec["response"]))

    def annotate(self, records: list[dict]) -> list[RowResult]:
        idx = [i for i, r in enumerate(records) if r.get("correct") is not None]
        if self.runner is not None:
            bodies = [self.body_for(records[i]) for i in idx]
            calls, self.summary = self.runner(bodies)
            keys = [request_key(canonical(b)) for b in bodies]
        else:  # rendered lazily: the engine starts sending while later rows are still rendered
            keys = []
            calls, self.summary = run_calls((self.body_for(records[i]) for i in idx), self.engine,
                                            total=len(idx), order=keys)
        key_of = dict(zip(idx, keys, strict=True))
        out = []
        for i, rec in enumerate(records):
            if i not in key_of:
                out.append(RowResult(rec["rollout_id"], [], None, "skipped", "no verifier result (`correct` is null)"))
                continue
            out.append(self._row(rec, key_of[i], calls.get(key_of[i])))
        return out

    def _row(self, rec: dict, key: str, call) -> RowResult:
        rid = rec["rollout_id"]
        if call is None:
            return RowResult(rid, [], None, "skipped", not_sent_reason(self.summary), request_hash=key)
        ev = dict(request_hash=key, raw_response=call.response, prompt_tokens=call.prompt_tokens,
                  completion_tokens=call.completion_tokens, cost_usd=call.cost_usd)
        label = "key" if rec["correct"] else "error"
        tpl = self.key_tpl if rec["correct"] else self.err_tpl
        obj, status, err = read_answer(call, tpl.schema, self.params.max_tokens)
        if obj is None:
            return RowResult(rid, [], None, status, err, **ev)
        m = map_answer(obj, rec["response"], label, self.provenance.source, self.provenance.annotator)
        notes = "; ".join(x for x in ([err] if err else []) + m.notes)
        if m.status == "failed":
            return RowResult(rid, [], None, "failed", notes or "no usable step", **ev)
        final = "repaired" if (status == "repaired" or m.status == "repaired") else "ok"
        return RowResult(rid, m.spans, m.error_type, final, notes or None, **ev)
