"""Property tests for spans/: round trips and invariants over random text and offsets."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spans import (
    Span,
    locate,
    routes_to_spans,
    rowwise_searchsorted,
    segment,
    spans_from_segments,
    token_routes,
    token_routes_batch,
    token_routes_flat,
    validate,
)
from tests.spans_fixtures import naive_routes, offsets, token_edges

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that exercises the hard parts: LaTeX, astral math letters, ZWJ emoji, CRLF, quotes.
ALPHABET = st.sampled_from(
    list("ab 12+=.?!\n\r\t$\\[](){}`'\"") + ["𝑥", "👩‍💻", "\u200d", "é", "e\u0301", "“", "”", "\r\n", "```", "$$"]
)
TEXT = st.lists(ALPHABET, min_size=1, max_size=40).map("".join)


@st.composite
def text_and_spans(draw, edges_of=None):
    """A text and one annotator's spans on random cut points (or on the given edges)."""
    text = draw(TEXT)
    edges = edges_of(text) if edges_of else list(range(len(text) + 1))
    cuts = sorted(set(draw(st.lists(st.sampled_from(edges), max_size=8))))
    spans = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        label = draw(st.sampled_from(["key", "error"]))
        spans.append(Span(a, b, label, "api", "m", text[a:b]))
    return text, spans


def bpe_edges(text):
    return token_edges(offsets(text), len(text))


@SETTINGS
@given(text_and_spans())
def test_validate_routes_spans_round_trip_on_characters(ts):
    text, spans = ts
    kept = validate(text, spans, max_fraction=None)
    om = [(i, i + 1) for i in range(len(text))]
    routes = token_routes(kept, om, len(om))
    assert routes.tolist() == naive_routes(kept, om)
    assert routes_to_spans(routes, om, text, "api", "m") == kept


@SETTINGS
@given(text_and_spans(edges_of=bpe_edges))
def test_validate_routes_spans_round_trip_on_byte_level_bpe(ts):
    text, spans = ts
    kept = validate(text, spans, max_fraction=None)
    om = offsets(text)  # with <|im_start|>/<|im_end|> at (0, 0)
    routes = token_routes(kept, om, len(om))
    assert routes.tolist() == naive_routes(kept, om)
    assert routes_to_spans(routes, om, text, "api", "m") == kept


@SETTINGS
@given(TEXT, st.integers(5, 80))
def test_segments_tile_the_text(text, long_line):
    segs = segment(text, long_line=long_line)
    assert "".join(s.text for s in segs) == text
    assert [s.index for s in segs] == list(range(1, len(segs) + 1))
    pos = 0
    for s in segs:
        assert s.start == pos < s.end and text[s.start:s.end] == s.text
        pos = s.end
    assert pos == len(text)
    # all segments back as spans: exact offsets, the whole text minus its outer whitespace
    chosen = spans_from_segments(text, range(1, len(segs) + 1), "key", "rule", "r", long_line=long_line)
    assert all(text[s.start:s.end] == s.text for s in chosen)
    assert "".join(s.text for s in chosen) == text.strip() or not text.strip()


@SETTINGS
@given(TEXT, st.data())
def test_locate_returns_only_true_occurrences(text, data):
    a = data.draw(st.integers(0, len(text) - 1))
    b = data.draw(st.integers(a + 1, len(text)))
    quote = text[a:b]
    assume(quote.strip())
    got = locate(text, quote, near=(a, b))
    if got is not None:
        assert text[got[0]:got[1]] == quote
    occurrences = sum(text.startswith(quote, i) for i in range(len(text)))  # overlapping too
    if occurrences == 1:
        assert got == (a, b)


@st.composite
def random_batch(draw):
    """Rows of arbitrary (even unsorted, empty) token offsets and arbitrary spans."""
    rows, oms = [], []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(0, 12))
        om = []
        for _ in range(n):
            a = draw(st.integers(0, 20))
            om.append((a, a + draw(st.integers(0, 4))))
        mode = draw(st.sampled_from(["random", "sorted", "sorted+specials"]))
        if mode != "random":
            om.sort()
        if mode == "sorted+specials":  # BOS/EOS/inner specials, (0, 0) or (k, k)
            for _ in range(draw(st.integers(1, 3))):
                k = draw(st.sampled_from([0, draw(st.integers(0, 20))]))
                om.insert(draw(st.integers(0, len(om))), (k, k))
        spans = []
        for _ in range(draw(st.integers(0, 3))):
            a = draw(st.integers(0, 22))
            b = draw(st.integers(a + 1, 24))
            spans.append(Span(a, b, draw(st.sampled_from(["key", "error"])), "api", "m", "x" * (b - a)))
        rows.append(spans)
        oms.append(om)
    return rows, oms


@SETTINGS
@given(random_batch())
def test_batched_routes_equal_the_naive_loop(batch):
    rows, oms = batch
    got = token_routes_batch(rows, oms)
    assert [g.tolist() for g in got] == [naive_routes(r, om) for r, om in zip(rows, oms)]


@SETTINGS
@given(random_batch())
def test_span_token_counts_equal_the_overlap_rule(batch):
    """`span_tokens_S` counts, per span, the non-empty tokens of its row that overlap it (what the
    shard builder's lost-span check reads), on sorted, special-laden and unsorted offsets alike."""
    rows, oms = batch
    splits = np.cumsum([0] + [len(om) for om in oms])
    om_N2 = np.array([t for om in oms for t in om], dtype=np.int64).reshape(-1, 2)
    sp = [(x.start, x.end, 1 if x.label == "key" else 2, r) for r, spans in enumerate(rows) for x in spans]
    a, b, code, row = (np.array(c, dtype=np.int64).reshape(-1) for c in zip(*sp)) if sp else \
        (np.zeros(0, dtype=np.int64),) * 4
    got = np.full(len(a), -1, dtype=np.int64)
    token_routes_flat(om_N2[:, 0], om_N2[:, 1], splits, a, b, code.astype(np.int8), row, span_tokens_S=got)
    want = [sum(1 for s, e in oms[r] if s < e and s < y and e > x) for x, y, _, r in sp]
    assert got.tolist() == want


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 30), max_size=10).map(sorted), min_size=1, max_size=6), st.data())
def test_rowwise_searchsorted_equals_numpy_per_row(rows, data):
    splits = np.cumsum([0] + [len(r) for r in rows])
    x = np.array([v for r in rows for v in r], dtype=np.int64)
    qrow = np.array(data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=10)), dtype=np.int64)
    q = np.array(data.draw(st.lists(st.integers(-1, 32), min_size=len(qrow), max_size=len(qrow))),
                 dtype=np.int64)
    for side in ("left", "right"):
        got = rowwise_searchsorted(x, splits[qrow], splits[qrow + 1], q, side=side)
        want = [splits[r] + np.searchsorted(np.array(rows[r]), v, side=side) for r, v in zip(qrow, q)]
        assert got.tolist() == [int(w) for w in want]


def test_flat_routes_with_no_tokens_or_spans():
    z = np.zeros(0, dtype=np.int64)
    assert token_routes_flat(z, z, np.array([0]), z, z, z.astype(np.int8), z).tolist() == []
