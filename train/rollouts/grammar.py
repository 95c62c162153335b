"""Schema-constrained decoding for the transformers backend, with llguidance (the grammar engine
vLLM and llama.cpp also use; a Rust wheel with no dependencies, CPU only).

`JsonConstraint` keeps one `llguidance.LLMatcher` per generated row: before each token it masks the
logits to the tokens the row's JSON schema still allows, after it feeds the chosen token to the
matcher. A row without a schema (None) is left free. A row whose JSON is complete (or whose matcher
failed) may only end; once it has ended (EOS) it is left free, since HF `generate` pads it itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache


# One layout, Python's `json.dumps` default (`{"a": 1, "b": [2, 3]}`): no free whitespace, so a weak
# model cannot spend its token budget on spaces and newlines, and the toy policy's SFT answers
# (`json.dumps`) are exactly what the grammar allows.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@lru_cache(maxsize=8)
def _ll_tokenizer(tokenizer, n_vocab: int, eos_ids: tuple[int, ...]):
    """The llguidance view of a fast HF tokenizer (~1 s for a 50k vocabulary, so cached)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos_ids))


# An optional reasoning block before the JSON, as reasoning models write it: `<think>`, any text up
# to the first `</think>`, a newline. Only what follows is constrained, as with vLLM's structured
# outputs behind a `--reasoning-parser`; `annotate.parse` reads only the JSON after it.
_REASONING_LARK = """start: think? answer
think: "<think>" thought "\\n"
thought[stop="</think>"]: /(.|\\n)*/
answer: %json """


def schema_grammar(schema: dict | str, reasoning: bool = False) -> str:
    """An llguidance grammar for a JSON schema (a dict, or its JSON text); with `reasoning`, an
    optional `<think>…</think>\\n` block may come first (free text, unbounded but for the caller's
    max_new_tokens). Raises ValueError if llguidance cannot compile it (the message names the
    schema's problem)."""
    import llguidance

    text = schema if isinstance(schema, str) else json.dumps(schema)
    if reasoning:
        with_layout = dict(json.loads(text), **{"x-guidance": JSON_LAYOUT})  # the layout, inline
        grammar = llguidance.LLMatcher.grammar_from_lark(_REASONING_LARK + json.dumps(with_layout) + "\n")
    else:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_LAYOUT)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        first = messages[0].splitlines()[0] if messages else "llguidance gave no reason"
        raise ValueError(f"JSON schema not usable for constrained decoding: {first}")  # one line, not the grammar
    return grammar


class JsonConstraint:
    """Per-row JSON-schema masks for one generate batch.

    `schemas[b]` is row b's JSON schema (dict or JSON text) or None (unconstrained); `vocab` is the
    model's logits width V; `eos_ids` the tokens that end a row; `reasoning`: a `<think>…</think>`
    block may precede each row's JSON (`schema_grammar`). A row whose JSON is complete may only end
    (EOS); a row that has ended is left free (HF pads it). Raises ValueError for a schema llguidance
    cannot compile."""

    def __init__(self, tokenizer, schemas: Sequence[dict | str | None], vocab: int, eos_ids: Sequence[int],
                 reasoning: bool = False):
        import llguidance

        ll_tok = _ll_tokenizer(tokenizer, vocab, tuple(eos_ids))
        self.eos_ids = list(eos_ids)
        texts = [None if s is None else s if isinstance(s, str) else json.dumps(s) for s in schemas]
        # once per distinct schema, not per row; no sort_keys: property order is the order the JSON is written in
        grammars = {t: schema_grammar(t, reasoning) for t in set(texts) - {None}}
        self.matchers = [None if t is None else llguidance.LLMatcher(ll_tok, grammars[t], log_level=0) for t in texts]
        self.ended = [s is None for s in schemas]

    def _allowed(self, b: int, V: int):
        import numpy as np

        m = self.matchers[b]
        if m.is_stopped() or m.is_error():  # complete (or unusable): only an end is left
            out = np.zeros(V, dtype=bool)
            out[self.eos_ids] = True
            return out
        return np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), bitorder="little")[:V].astype(bool)

    def mask(self, scores_BV):
        """`scores_BV` [B, V] with every token a live row's schema forbids set to -inf (a new tensor)."""
        import numpy as np
        import torch

        rows = [b for b, done in enumerate(self.ended) if not done]
        if not rows:
            return scores_BV
        allowed = np.stack([self._allowed(b, scores_BV.shape[-1]) for b in rows])
        out = scores_BV.clone()
        idx = torch.tensor(rows, device=out.device)
        out[idx] = out[idx].masked_fill(torch.from_numpy(~allowed).to(out.device), float("-inf"))
        return out

    def advance(self, chosen_B) -> None:
        """Feed each live row's chosen token [B] to its matcher; an EOS ends the row."""
        for b, tok in enumerate(chosen_B.tolist()):
            if self.ended[b]:
                continue
            if tok in self.eos_ids:
                self.ended[b] = True
            elif not self.matchers[b].is_stopped():
                self.matchers[b].consume_token(tok)
