"""`annotate self` in-process: the policy's own `Generator` (train/rollouts/generate.py) answers the prompts.

Same requests, cache and evidence as the HTTP path: each rendered request is hashed the same way
(its ``model`` is the checkpoint), looked up in the same SQLite cache, and only misses are
generated, greedily, in batches. The chat messages are rendered with the checkpoint's chat
template. A request's ``response_format`` is honoured as an OpenAI-compatible server would:
``json_schema`` decodes only JSON its schema allows, ``json_object`` only a JSON object
(llguidance masks, `train.rollouts.grammar`), on generators that support it (`HFGenerator`); the
answer is still parsed and validated like any other, so a quote not in the response is still caught.
With `reasoning` (the default) the model may think first: a `<think>…</think>` block before the JSON
is left free, as vLLM's structured outputs do behind a `--reasoning-parser`, and only the JSON after
it is read (`annotate.parse`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from annotate.engine import Summary, request_key
from annotate.journal import CallRecord, Journal, canonical


def response_schema(body: dict) -> dict | None:
    """The JSON schema a request's OpenAI ``response_format`` asks for: the schema of
    ``json_schema``, any object for ``json_object``, None when the body has none."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    return None


@dataclass
class GeneratorRunner:
    """A drop-in for `engine.run_calls` that answers with a local `Generator` instead of HTTP."""

    generator: object  # train.rollouts.generate.Generator (has .generate and .tokenizer for HF)
    cache_path: Path
    batch_size: int = 16
    reasoning: bool = True  # allow a <think>…</think> block before the constrained JSON

    def render(self, messages: list[dict]) -> str:
        tok = getattr(self.generator, "tokenizer", None)
        if tok is not None and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of a rendered prompt as the generator encodes it (0 without a tokenizer)."""
        tok = getattr(self.generator, "tokenizer", None)
        return len(tok(prompt, add_special_tokens=False)["input_ids"]) if tok is not None else 0

    def __call__(self, bodies: list[dict]) -> tuple[dict[str, CallRecord], Summary]:
        from train.rollouts.generate import Sampling

        t0 = time.perf_counter()
        keyed = {}
        for b in bodies:
            keyed.setdefault(request_key(canonical(b)), b)
        journal = Journal(self.cache_path)
        try:
            records = dict(journal.lookup(list(keyed)))
            summary = Summary(requests=len(keyed), cached=len(records))
            todo = [k for k in keyed if k not in records]
            for i in range(0, len(todo), self.batch_size):
                part = todo[i : i + self.batch_size]
                journal.mark_inflight([(k, canonical(keyed[k])) for k in part])
                max_new = max(int(keyed[k].get("max_tokens") or 256) for k in part)
                extra = {}
                if getattr(self.generator, "supports_json_schema", False):
                    extra["json_schemas"] = [response_schema(keyed[k]) for k in part]
                    extra["reasoning"] = self.reasoning
                prompts = [self.render(keyed[k]["messages"]) for k in part]
                outs = self.generator.generate(
                    prompts, n=1, sampling=Sampling(temperature=0.0, max_new_tokens=max_new), seeds=[0] * len(part), **extra)
                for k, prompt, samples in zip(part, prompts, outs, strict=True):
                    s, n_prompt = samples[0], self.prompt_tokens(prompt)
                    rec = CallRecord(k, "done", s.text, canonical({"text": s.text, "finish_reason": s.finish_reason,
                                                                   "completion_tokens": len(s.token_ids)}),
                                     n_prompt, len(s.token_ids), 0.0, None, 1)
                    records[k] = rec
                    journal.record(rec)
                    summary.sent += 1
                    summary.done += 1
                    summary.prompt_tokens += n_prompt
                    summary.completion_tokens += len(s.token_ids)
                journal.flush()
        finally:
            journal.close()
        summary.elapsed_s = time.perf_counter() - t0
        return records, summary
