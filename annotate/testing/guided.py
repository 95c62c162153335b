"""Schema-shaped JSON from a transformers causal LM, by guided template filling (no extra library).

The JSON skeleton of the answer schema is written by us; the model only fills the values, under
constraints: the segment number is the most likely of ``1..n`` (so it is always in range), the
``error_type`` the most likely member of the fixed list (both by first-token log-prob), and free-text values (quote, reason) are
greedy tokens up to the first ``"`` or line break. The result always parses and fits the schema —
what a JSON-schema-constrained server (vLLM ``json_schema``) guarantees, done here for a CPU test
model. Used by the scripted server to put a real model behind the OpenAI-compatible API.
"""

from __future__ import annotations

import json

from annotate.templates import ERROR_TYPES


class GuidedJSON:
    """Answers annotation requests with a causal LM (e.g. SmolLM2-135M-Instruct) on CPU.

    One prefill of the prompt, then incremental steps on the KV cache: choices (segment number,
    error_type) are scored by the log-prob of their first token, which is distinct for every
    choice here, so they cost no extra forward pass."""

    def __init__(self, model, tokenizer, max_value_tokens: int = 12):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.tok = tokenizer
        self.max_value_tokens = max_value_tokens

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _feed(self, state, ids: list[int]):
        """Append `ids`; returns (cache, log-probs [V] of the next token)."""
        torch = self.torch
        with torch.no_grad():
            res = self.model(torch.tensor([ids]), past_key_values=state, use_cache=True, logits_to_keep=1)
        return res.past_key_values, torch.log_softmax(res.logits[0, -1].float(), -1)

    def _choose(self, logp, options: list[str]) -> str:
        return max(options, key=lambda o: float(logp[self._ids(o)[0]]))

    def _free_text(self, state, logp):
        """Greedy tokens until a quote or newline would be written (the JSON string closes)."""
        out = ""
        for _ in range(self.max_value_tokens):
            nxt = int(logp.argmax())
            piece = self.tok.decode([nxt])
            cut = min((piece.find(c) for c in '"\n' if c in piece), default=-1)
            if cut >= 0 or nxt == self.tok.eos_token_id:
                out += piece[:cut] if cut > 0 else ""
                break
            out += piece
            state, logp = self._feed(state, [nxt])
        return out.strip(), state

    def __call__(self, messages: list[dict], schema_name: str, n_segments: int) -> str:
        prompt = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        state, logp = self._feed(None, self._ids(prompt + '{"steps": [{"segment": '))
        seg = int(self._choose(logp, [str(k) for k in range(1, max(1, n_segments) + 1)]))
        state, logp = self._feed(state, self._ids(f'{seg}, "quote": "'))
        quote, state = self._free_text(state, logp)
        state, logp = self._feed(state, self._ids(json.dumps(quote)[1:] + ', "reason": "'))
        reason, state = self._free_text(state, logp)
        answer = {"steps": [{"segment": seg, "quote": quote, "reason": reason}]}
        if schema_name == "error_spans":
            state, logp = self._feed(state, self._ids(json.dumps(reason)[1:] + '}], "error_type": "'))
            answer["error_type"] = self._choose(logp, list(ERROR_TYPES))
        return json.dumps(answer)
