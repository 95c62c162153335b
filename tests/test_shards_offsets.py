"""Token offsets for routing across tokenizer behaviours: trusted only where they are real.

Small tokenizers are built with `tokenizers` (no hub): byte-level BPE (GPT-2/Qwen style), the same
with ``trim_offsets`` (whitespace-only tokens get empty offsets, as RoBERTa's do), Metaspace BPE
(Llama-2/Mistral style), and a lowercasing one whose decode does not give the text back.
Llama-3's fault — every real token reported as ``(start, start)``, e.g. ``(0,0),(3,3),(7,7),(10,10)``
for ``"are you ok?"`` (tokenizers < 0.20.1) — is injected by rewriting a real tokenizer's offsets,
since the installed `tokenizers` no longer produces it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import train.shards as S
from spans import token_routes

_CORPUS = ["are you ok? are you there? ok ok fine", "so  x = 12 + 30 = 42 ok 👍 fine"] * 50


def _fast(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if kind == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = []
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == "lowercase":
        tok.normalizer = normalizers.Lowercase()
    tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet,
                                                         special_tokens=["<eos>"], show_progress=False))
    if kind == "trim":
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.name_or_path = kind
    return fast


class _EmptyOffsets:
    """A real tokenizer whose offsets come back as Llama-3's did: ``(start, start)`` per token."""

    def __init__(self, tok):
        self._tok = tok
        self.name_or_path = f"llama3-empty-offsets({tok.name_or_path})"

    def __call__(self, text, **kw):
        enc = self._tok(text, **kw)
        if "offset_mapping" in enc:  # one text or a batch (the shard builder tokenises batches)
            empty = lambda om: [(a, a) for a, _ in om]  # noqa: E731
            om = enc["offset_mapping"]
            enc["offset_mapping"] = [empty(x) for x in om] if isinstance(text, list) else empty(om)
        return enc

    def __getattr__(self, name):
        return getattr(self._tok, name)


_TOKENIZERS = {k: _fast(k) for k in ("bytelevel", "trim", "metaspace", "lowercase")}
_TOKENIZERS["llama3"] = _EmptyOffsets(_TOKENIZERS["bytelevel"])
_TOKENIZERS["llama3-lowercase"] = _EmptyOffsets(_TOKENIZERS["lowercase"])


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]


def _span(text: str, part: str, label: str) -> dict:
    a = text.index(part)
    return dict(start=a, end=a + len(part), label=label, source="api", annotator="m", text=part)


# tokenizer, response, span (text, label), routes (response tokens + EOS). Tokens, for reading:
# bytelevel/llama3 "are you ok?" -> are |Ġyou |Ġok |?   (offsets (0,3)(3,7)(7,10)(10,11))
# trim              "are you ok?" -> same tokens, offsets (0,3)(4,7)(8,10)(10,11): all real, trusted
# trim              "so  x = 12"  -> so |Ġ |Ġx |Ġ= |Ġ12: the lone Ġ has (3,3), so offsets go untrusted
# metaspace         "are you ok?" -> ▁are |▁you |▁ok?
# llama3            "ok 👍 fine"  -> ok |Ġ👍 |Ġfine  (👍 is one token of four bytes)
CASES = [
    ("bytelevel", "are you ok?", ("ok", "key"), [0, 0, 1, 0, 0]),
    ("trim", "are you ok?", ("ok", "key"), [0, 0, 1, 0, 0]),
    ("trim", "so  x = 12", ("x", "error"), [0, 0, 2, 0, 0, 0]),
    ("metaspace", "are you ok?", ("ok", "key"), [0, 0, 1, 0]),
    ("llama3", "are you ok?", ("ok", "key"), [0, 0, 1, 0, 0]),  # the case: [0,0,0,0,0] before
    ("llama3", "are you ok?", ("are you", "error"), [2, 2, 0, 0, 0]),
    ("llama3", "so  x = 12", ("12", "key"), [0, 0, 0, 0, 1, 0]),
    ("llama3", "ok 👍 fine", ("👍", "key"), [0, 1, 0, 0]),
]


@pytest.mark.parametrize("name,text,span,want", CASES, ids=[f"{c[0]}:{c[1]}:{c[2][0]}" for c in CASES])
def test_routes_by_tokenizer_behaviour(name, text, span, want):
    tok = _TOKENIZERS[name]
    ids = _ids(tok, text)
    spans = [_span(text, *span)]
    om = S.response_offsets(tok, text, ids)
    route = token_routes(spans, om, len(ids))
    assert route.tolist() == want
    assert S.check_routes(spans, om, route, "row") == {"key": want.count(1), "error": want.count(2), "spans": 1}


def test_pieces_of_one_character_all_carry_it_on_the_decode_path():
    tok = _TOKENIZERS["llama3"]
    text = "ok 👍"
    # a sampled segmentation the tokenizer would not produce: one token per byte-level symbol
    pieces = [t for ch in tok.convert_ids_to_tokens(_ids(tok, text)[:-1]) for t in ch]
    ids = tok.convert_tokens_to_ids(pieces) + [tok.eos_token_id]
    om = S.response_offsets(tok, text, ids)
    route = token_routes([_span(text, "👍", "key")], om, len(ids))
    # o, k, Ġ, then the emoji's 4 bytes (each carries the emoji, code point 3), then EOS
    assert om.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [3, 4], [3, 4], [3, 4], [4, 4]]
    assert route.tolist() == [0, 0, 0, 1, 1, 1, 1, 0]


def test_untrusted_offsets_and_a_decode_that_differs_are_refused_naming_the_tokenizer():
    tok = _TOKENIZERS["llama3-lowercase"]
    text = "Are you OK?"
    with pytest.raises(ValueError, match=r"tokenizer llama3-empty-offsets\(lowercase\).*not how the response"):
        S.response_offsets(tok, text, _ids(tok, text))
    # the same tokenizer with its real offsets is fine: offsets are trusted, decode is not needed
    good = _TOKENIZERS["lowercase"]
    om = S.response_offsets(good, text, _ids(good, text))
    assert token_routes([_span(text, "OK", "key")], om, len(om)).tolist() == [0, 0, 1, 0, 0]


def test_tokens_past_the_text_get_the_empty_range_at_its_end():
    """Generation stopped on a stop string: the ids hold it, the text was cut before it."""
    tok = _TOKENIZERS["llama3"]
    full, text = "are you ok? fine", "are you ok?"
    ids = _ids(tok, full)  # are |Ġyou |Ġok |? |Ġfine |EOS
    om = S.response_offsets(tok, text, ids)
    assert om.tolist() == [[0, 3], [3, 7], [7, 10], [10, 11], [11, 11], [11, 11]]
    assert token_routes([_span(text, "ok", "key")], om, len(ids)).tolist() == [0, 0, 1, 0, 0, 0]


# offsets [T, 2], spans, lost? — the round trip must refuse any span no token reaches
ROUND_TRIP = [
    ([[0, 3], [3, 7], [7, 10]], [(7, 9, "key")], None),
    ([[0, 0], [3, 3], [7, 7]], [(7, 9, "key")], "routes no token"),   # empty offsets trusted
    ([[0, 3], [3, 7], [7, 7]], [(8, 9, "error")], "routes no token"),  # span past the last real token
    ([[0, 3], [3, 7], [7, 10]], [(0, 2, "key"), (0, 5, "error")], None),  # key under error: routed 2
]


@pytest.mark.parametrize("offsets,spans,error", ROUND_TRIP)
def test_round_trip_refuses_a_lost_span(offsets, spans, error):
    text = "are you ok?"
    sp = [dict(start=a, end=b, label=lab, source="api", annotator="m", text=text[a:b]) for a, b, lab in spans]
    om = np.asarray(offsets)
    route = token_routes(sp, om, len(om))
    if error:
        with pytest.raises(ValueError, match=error):
            S.check_routes(sp, om, route, "rollout r1")
    else:
        assert S.check_routes(sp, om, route, "rollout r1")["spans"] == len(sp)


def test_shard_rows_route_through_untrusted_offsets():
    from datastore.schema import ROLLOUT_SCHEMA

    tok = _TOKENIZERS["llama3"]
    text = "are you ok?"
    ids = _ids(tok, text)
    row = dict(rollout_id="r1", prompt_id="p", group_id="g", prompt="q: ", response=text,
               response_token_ids=ids, response_logprobs=[-1.0] * len(ids), reward=1.0, correct=True,
               spans=[_span(text, "ok", "key")])
    shard = S.rows_to_shard(pa.Table.from_pylist([row], schema=ROLLOUT_SCHEMA), tok, templates=())
    assert shard.column("route").to_pylist() == [[0, 0, 1, 0, 0]]
