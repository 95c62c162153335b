"""Shared helpers for the spans tests: a tiny byte-level BPE built in-process (no downloads)."""

from __future__ import annotations

import functools

CORPUS = [
    "Step 1: 17 + 25 = 42\nStep 2: 42 * 3 = 126\nAnswer: 126",
    "We have $x^2 + 1 = 5$, so \\[ x = \\pm 2 \\]. The answer is 2.",
    "Let 𝑥 be the number 👩‍💻 of apples; “so” the total is \\(3x\\).",
]


@functools.lru_cache(maxsize=1)
def tiny_bpe():
    """A byte-level BPE (vocab 400) with <|im_start|>/<|im_end|> wrapped around every encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>",
        special_tokens=[("<|im_start|>", 0), ("<|im_end|>", 1)],
    )
    return tok


def offsets(text: str) -> list[tuple[int, int]]:
    """Code-point offsets of the tiny BPE's tokens of ``text`` (specials are (0, 0))."""
    return [tuple(o) for o in tiny_bpe().encode(text).offsets]


def token_edges(offs: list[tuple[int, int]], n_chars: int) -> list[int]:
    """Positions no token straddles: a span with both ends here maps to tokens exactly."""
    real = [(a, b) for a, b in offs if a < b]
    return [p for p in range(n_chars + 1) if all(b <= p or a >= p for a, b in real)]


def naive_routes(spans, offs) -> list[int]:
    """The reference: a per-token Python loop over spans (error wins)."""
    out = []
    for a, b in offs:
        r = 0
        for s in spans:
            if a < b and a < s.end and b > s.start:
                r = max(r, 1 if s.label == "key" else 2)
        out.append(r)
    return out
