"""Hand-made cases for spans/: validation, segmentation, quotes, routes, merge, agreement, LS text."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from spans import (
    Segment,
    Span,
    SpanError,
    agreement,
    cohen_kappa,
    locate,
    locate_detail,
    ls_text,
    ls_text_matches,
    merge_spans,
    numbered,
    routes_to_spans,
    segment,
    select_spans,
    spans_from_arrow,
    spans_from_segments,
    spans_to_arrow,
    token_routes,
    token_routes_batch,
    validate,
    validate_batch,
    validate_report,
)
from tests.spans_fixtures import naive_routes, offsets

TEXT = "Step 1: 17 + 25 = 42\nStep 2: 42 * 3 = 126\nAnswer: 126"


def sp(text, sub, label="key", source="rule", annotator="r", occurrence=0):
    """The span of the ``occurrence``-th ``sub`` in ``text``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(sub, start + 1)
    return Span(start, start + len(sub), label, source, annotator, sub)


# ---------------------------------------------------------------- validation


def test_validate_accepts_spans_and_dicts_and_sorts():
    a, b = sp(TEXT, "42 * 3 = 126"), sp(TEXT, "17 + 25 = 42", "error")
    got = validate(TEXT, [a.to_dict(), b], max_fraction=None)
    assert got == [b, a]


@pytest.mark.parametrize(
    "span, reason",
    [
        (Span(5, 5, "key", "rule", "r", ""), "empty span"),
        (Span(-1, 3, "key", "rule", "r", "x"), "out of range"),
        (Span(40, 99, "key", "rule", "r", "x"), "out of range"),
        (Span(0, 4, "key", "rule", "r", "Stop"), "text does not match"),
        (Span(0, 4, "keys", "rule", "r", "Step"), "label 'keys'"),
        (Span(0, 4, "key", "gpt", "r", "Step"), "source 'gpt'"),
        ({"start": 0, "end": 4, "label": "key", "source": "rule"}, "missing field(s) text"),
        ({"start": 0.0, "end": 4, "label": "key", "source": "rule", "text": "Step"}, "integer"),
    ],
)
def test_validate_refuses_with_rollout_span_and_reason(span, reason):
    with pytest.raises(SpanError) as e:
        validate(TEXT, [span], rollout_id="r-17")
    msg = str(e.value)
    assert "rollout r-17" in msg and reason in msg
    assert e.value.rollout_id == "r-17" and reason in e.value.reason
    assert isinstance(e.value, ValueError)


def test_validate_merges_same_label_overlaps_and_touches():
    t = "abcdefghij"
    got = validate(t, [Span(0, 3, "key", "api", "m", "abc"), Span(2, 5, "key", "api", "m", "cde"),
                       Span(5, 6, "key", "api", "m", "f"), Span(8, 9, "key", "api", "m", "i")],
                   max_fraction=None)
    assert got == [Span(0, 6, "key", "api", "m", "abcdef"), Span(8, 9, "key", "api", "m", "i")]


def test_validate_refuses_key_error_overlap_in_one_annotator_but_not_across():
    t = "abcdefghij"
    key, err = Span(0, 4, "key", "api", "m", "abcd"), Span(3, 6, "error", "api", "m", "def")
    with pytest.raises(SpanError, match="overlap at \\[3:4\\)"):
        validate(t, [key, err], max_fraction=None)
    other = Span(3, 6, "error", "human", "ann-1", "def")
    assert validate(t, [key, other], max_fraction=None) == [key, other]
    touching = Span(4, 6, "error", "api", "m", "ef")  # sharing no character is fine
    assert validate(t, [key, touching], max_fraction=None) == [key, touching]


def test_cap_keeps_errors_first_then_earlier_and_reports_dropped():
    t = "x" * 100
    err = Span(80, 95, "error", "api", "m", "x" * 15)
    k1 = Span(0, 8, "key", "api", "m", "x" * 8)
    k2 = Span(10, 13, "key", "api", "m", "x" * 3)
    k3 = Span(20, 22, "key", "api", "m", "x" * 2)
    # budget 25 chars: error 15 -> 15, k1 8 -> 23, k2 3 would be 26 (dropped), k3 2 -> 25.
    kept, dropped = validate_report(t, [k1, k2, k3, err])
    assert kept == [k1, k3, err] and dropped == [k2]
    assert validate(t, [k1, k2, k3, err], max_fraction=None) == [k1, k2, k3, err]


def test_cap_is_per_annotator():
    t = "x" * 40
    a = Span(0, 10, "key", "api", "m", "x" * 10)
    b = Span(0, 10, "key", "human", "h", "x" * 10)
    assert validate(t, [a, b]) == [a, b]  # each uses 10 of its own 10-char budget


def test_cap_in_tokens_by_offsets_and_by_counter():
    t = "aa bb cc dd ee ff gg hh"
    om = [(0, 0)] + [(i, i + 2) for i in range(0, 23, 3)] + [(0, 0)]  # 8 word tokens + 2 specials
    s1 = Span(0, 5, "key", "rule", "r", "aa bb")  # 2 tokens
    s2 = Span(9, 11, "key", "rule", "r", "dd")  # 1 token
    # 25% of 8 tokens = 2: s1 fits, s2 does not. By characters (25% of 23 = 5.75) also only s1.
    assert validate(t, [s1, s2], unit="tokens", offset_mapping=om) == [s1]
    assert validate(t, [s2], unit="tokens", offset_mapping=om) == [s2]
    words = lambda s: len(s.split())  # noqa: E731
    assert validate(t, [s1, s2], unit="tokens", count_tokens=words, max_fraction=0.4) == [s1, s2]
    with pytest.raises(ValueError, match="offset_mapping"):
        validate(t, [s1], unit="tokens")


def test_validate_batch_reports_per_row():
    rows = [[sp(TEXT, "Answer: 126")], [Span(0, 4, "key", "rule", "r", "nope")], None]
    res = validate_batch([TEXT, TEXT, TEXT], rows, rollout_ids=["a", "b", "c"], max_fraction=None)
    assert [r.ok for r in res] == [True, False, True]
    assert res[0].spans == rows[0] and res[2].spans == []
    assert "rollout b" in str(res[1].error) and res[1].rollout_id == "b"


def test_validate_counts_code_points_for_astral_and_zwj():
    t = "I 👩‍💻 and 𝑥 = 1"
    s = Span(2, 5, "key", "self", "p", "👩‍💻")
    x = Span(10, 11, "error", "self", "p", "𝑥")
    assert t[2:5] == "👩‍💻" and t[10:11] == "𝑥"
    assert validate(t, [s, x], max_fraction=None) == [s, x]
    with pytest.raises(SpanError):  # half a ZWJ sequence's UTF-16 length is not our unit
        validate(t, [Span(2, 7, "key", "self", "p", "👩‍💻")], max_fraction=None)


# ---------------------------------------------------------------- segmentation


def tiles(text, segs):
    return "".join(s.text for s in segs) == text and all(
        a.end == b.start for a, b in zip(segs, segs[1:])
    ) and (not segs or (segs[0].start == 0 and segs[-1].end == len(text)))


def test_segment_lines_crlf_and_blank_lines():
    t = "Step 1: a\r\n\r\nStep 2: b\r\nAnswer: 3"
    segs = segment(t)
    assert [s.text for s in segs] == ["Step 1: a\r\n\r\n", "Step 2: b\r\n", "Answer: 3"]
    assert [s.index for s in segs] == [1, 2, 3] and tiles(t, segs)
    assert numbered(t) == "[1] Step 1: a\n[2] Step 2: b\n[3] Answer: 3"


def test_segment_never_splits_display_math_or_code_fences():
    t = "We solve\n\\[\nx = 1. \\\\\ny = 2.\n\\]\nthen\n```python\nprint(1)\n\nprint(2)\n```\nand $$a\nb$$ end"
    segs = segment(t)
    texts = [s.text for s in segs]
    assert "\\[\nx = 1. \\\\\ny = 2.\n\\]\n" in texts
    assert "```python\nprint(1)\n\nprint(2)\n```\n" in texts
    assert "and $$a\nb$$ end" in texts
    assert tiles(t, segs)
    crlf = "A\r\n\\[ x \\\\\r\n y \\]\r\nB"
    assert numbered(crlf) == "[1] A\n[2] \\[ x \\\\\n y \\]\n[3] B"


def test_segment_splits_long_lines_into_sentences_but_not_inside_math():
    t = ("First we note that $a. b$ holds, e.g. for a = 1. " * 3) + "Then \\(x. y\\) is fine! Done? yes"
    segs = segment(t, long_line=60)
    assert tiles(t, segs)
    assert all(s.text.count("$") % 2 == 0 for s in segs)
    assert all("e.g. for" in s.text for s in segs[:3])
    assert [s.text for s in segs[-3:]] == ["Then \\(x. y\\) is fine! ", "Done? ", "yes"]
    assert len(segment(t)) == 1  # a short enough line stays whole


def test_segment_survives_unclosed_math_and_dollars():
    t = "It costs $5 and then\n$10 more\n\\[ x = 1\ntruncated"
    segs = segment(t)
    assert [s.text for s in segs] == ["It costs $5 and then\n", "$10 more\n", "\\[ x = 1\n", "truncated"]
    assert segment("") == [] and [s.text for s in segment("  \n")] == ["  \n"]


def test_spans_from_segments_exact_and_contiguous_runs():
    t = "Step 1: 𝑥 = 2\r\nStep 2: 👩‍💻 wrong\r\n\r\nStep 3: fine  \nAnswer: 4"
    spans = spans_from_segments(t, [2, 3, 1], "error", "api", "gpt")
    assert len(spans) == 1
    s = spans[0]
    assert t[s.start:s.end] == s.text == "Step 1: 𝑥 = 2\r\nStep 2: 👩‍💻 wrong\r\n\r\nStep 3: fine"
    two = spans_from_segments(t, [1, 4], "key", "api", "gpt")
    assert [x.text for x in two] == ["Step 1: 𝑥 = 2", "Answer: 4"]
    assert validate(t, two, max_fraction=None) == two
    with pytest.raises(SpanError, match="not in 1..4"):
        spans_from_segments(t, [5], "key", "api", "gpt")


# ---------------------------------------------------------------- quote location


def test_locate_exact_and_repeated_substrings():
    assert locate(TEXT, "17 + 25") == (8, 15)
    assert locate(TEXT, "42") is None  # twice: refuse rather than guess
    d = locate_detail(TEXT, "42")
    assert d.reason.startswith("ambiguous") and d.candidates == 2
    second = TEXT.index("42", 20)
    assert locate(TEXT, "42", near=second + 1) == (second, second + 2)
    seg2 = segment(TEXT)[1]
    assert locate(TEXT, "42", near=seg2) == (second, second + 2)
    assert locate(TEXT, "42", near=(0, 10)) == (18, 20)
    assert locate("ab ab", "ab", near=2) is None  # equally close: still refused


def test_locate_normalised_whitespace_quotes_and_nfkc_map_back():
    t = "So “the   total”\r\nis 𝑥 = 5 — done"
    r = locate(t, '"the total" is x = 5 - done')
    assert r is not None and t[r[0]:r[1]] == "“the   total”\r\nis 𝑥 = 5 — done"
    assert locate_detail(t, '"the total"').method == "normalized"
    t2 = "cafe\u0301 au lait"  # e + combining acute; the quote has the precomposed é
    r2 = locate(t2, "café au")
    assert t2[r2[0]:r2[1]] == "cafe\u0301 au"


def test_locate_crlf_latex_and_zwj_emoji():
    t = "We get\r\n$\\frac{1}{2}$ 👩‍💻 ok\r\nnext"
    r = locate(t, "We get\n$\\frac{1}{2}$ 👩‍💻")
    assert t[r[0]:r[1]] == "We get\r\n$\\frac{1}{2}$ 👩‍💻"
    assert locate(t, "👩‍💻") == (22, 25)


def test_locate_fuzzy_and_absent():
    t = "First, multiply seventeen by three to get fifty-one. Then add four."
    d = locate_detail(t, "multiply seventen by three to get fifty one")
    assert d.method == "fuzzy" and d.score >= 90
    assert t[d.span[0]:d.span[1]].startswith("multiply seventeen")
    assert locate(t, "the moon is made of cheese") is None
    assert locate_detail(t, "   ").reason == "empty quote"
    assert locate_detail(t, "xyz").reason == "absent"


def test_locate_fuzzy_repeat_is_ambiguous():
    t = "add the two numbers carefully. ok. add the two numbers carefully."
    assert locate(t, "add teh two numbers carefuly") is None
    assert locate(t, "add teh two numbers carefuly", near=60) == (35, 64)


# ---------------------------------------------------------------- token routes


def test_routes_byte_level_bpe_partial_chars_and_specials():
    t = "Step 1: 𝑥 = 42 👩‍💻\r\nAnswer: 42 ∑"
    om = offsets(t)
    assert om[0] == (0, 0) and om[-1] == (0, 0)
    sigma = sp(t, "∑", "error")  # unseen in training: 3 byte tokens, each with offsets of the char
    assert om.count((sigma.start, sigma.end)) == 3
    x = sp(t, "𝑥", "key")  # merged with its leading space into one token " 𝑥"
    emoji = sp(t, "👩‍💻", "key")
    err = sp(t, "42", "error", occurrence=1)
    spans = [x, err, emoji, sigma]
    routes = token_routes(spans, om, len(om))
    assert routes.dtype == np.int8
    assert routes.tolist() == naive_routes(spans, om)
    by_offsets = dict(zip(om[1:-1], routes[1:-1].tolist()))
    assert by_offsets[(sigma.start, sigma.end)] == 2
    assert by_offsets[(x.start - 1, x.end)] == 1
    assert by_offsets[(emoji.start - 1, emoji.end)] == 1
    assert routes[0] == 0 and routes[-1] == 0  # specials (0, 0) never route, even with a span at 0
    assert token_routes([sp(t, "Step", "key")], om, len(om)).tolist()[:3] == [0, 1, 0]


def test_routes_overlap_rule_and_error_wins_shared_token():
    om = [(0, 5), (5, 10), (10, 15)]
    key = Span(0, 6, "key", "api", "a", "x" * 6)  # overlaps token 1 by one char
    err = Span(8, 9, "error", "human", "h", "x")  # inside token 1 as well
    assert token_routes([key], om, 3).tolist() == [1, 1, 0]
    assert token_routes([key, err], om, 3).tolist() == [1, 2, 0]
    assert token_routes([], om, 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="n_tokens=4"):
        token_routes([key], om, 4)


def test_routes_non_monotone_offsets_fall_back_exactly():
    om = [(5, 10), (0, 5), (0, 0), (10, 12)]
    spans = [Span(0, 3, "key", "api", "a", "xxx"), Span(11, 12, "error", "api", "a", "x")]
    assert token_routes(spans, om, 4).tolist() == naive_routes(spans, om) == [0, 1, 0, 2]


def test_routes_special_between_unsorted_tokens_is_not_trusted():
    om = [(5, 10), (0, 0), (0, 4), (10, 12), (0, 0)]
    spans = [Span(1, 2, "key", "api", "a", "x"), Span(6, 7, "error", "api", "a", "x")]
    assert token_routes(spans, om, 5).tolist() == naive_routes(spans, om) == [2, 0, 1, 0, 0]
    om2 = [(9, 9), (0, 3), (3, 5), (0, 0), (5, 8), (0, 0), (7, 7)]  # leading (k, k), inner, trailing
    spans2 = [Span(2, 6, "key", "api", "a", "x" * 4)]
    assert token_routes(spans2, om2, 7).tolist() == naive_routes(spans2, om2) == [0, 1, 1, 0, 1, 0, 0]


def test_batch_routes_equal_single_rows_and_accept_arrow():
    texts = [TEXT, "no spans here", "𝑥👩‍💻"]
    rows = [[sp(TEXT, "17 + 25 = 42"), sp(TEXT, "Answer", "error")], [], [sp(texts[2], "👩‍💻", "error")]]
    oms = [offsets(t) for t in texts]
    want = [token_routes(r, om, len(om)) for r, om in zip(rows, oms)]
    for got in (token_routes_batch(rows, oms), token_routes_batch(spans_to_arrow(rows), oms)):
        assert [g.tolist() for g in got] == [w.tolist() for w in want]
    with_null = pa.array([[r.to_dict() for r in rows[0]], None, [rows[2][0].to_dict()]],
                         type=spans_to_arrow([]).type)
    assert [g.tolist() for g in token_routes_batch(with_null, oms)] == [w.tolist() for w in want]


def test_routes_to_spans_inverts_on_token_edges():
    t = "Step 1: 17 + 25 = 42\nAnswer: 42"
    om = offsets(t)
    spans = validate(t, [sp(t, "Step 1:", "key"), sp(t, " 17 + 25", "error")], max_fraction=None)
    back = routes_to_spans(token_routes(spans, om, len(om)), om, t, "rule", "r")
    assert back == spans


# ---------------------------------------------------------------- merge, arrow, agreement, LS


def test_merge_spans_replaces_only_that_annotator():
    mine_old = Span(0, 4, "key", "api", "gpt", "Step")
    theirs = Span(0, 4, "key", "human", "ann-1", "Step")
    mine_other_source = Span(5, 6, "key", "self", "gpt", "1")
    new = [Span(8, 10, "error", "api", "gpt", "17")]
    got = merge_spans([mine_old, theirs, mine_other_source], new, "api", "gpt")
    assert got == [theirs, mine_other_source, new[0]]
    assert merge_spans(got, [], "api", "gpt") == [theirs, mine_other_source]
    assert select_spans(got, source="human") == [theirs]
    with pytest.raises(ValueError, match="human/ann-1"):
        merge_spans([], [theirs], "api", "gpt")


def test_arrow_round_trip():
    rows = [[sp(TEXT, "Step 1")], [], None]
    col = spans_to_arrow(rows)
    assert col.type == pa.list_(spans_to_arrow([]).type.value_type)
    assert spans_from_arrow(col) == [rows[0], [], []]


def test_agreement_hand_computed():
    t = "abcdefghij"  # 10 chars
    a = [[Span(0, 4, "key", "api", "m", "abcd"), Span(6, 8, "error", "api", "m", "gh")]]
    b = [[Span(0, 4, "key", "human", "h", "abcd"), Span(7, 9, "error", "human", "h", "hi")]]
    got = agreement(a, b, [t])
    # exact: key matches (1 of 1 each) -> 1.0; error 0 -> 0.0; overall 2*1/(2+2) = 0.5
    assert (got["key"].exact_f1, got["error"].exact_f1, got["overall"].exact_f1) == (1.0, 0.0, 0.5)
    # chars: error A={6,7}, B={7,8}: 2*1/4 = 0.5; overall (4 + 1) shared, 6 + 6 labelled: 10/12
    assert got["error"].char_f1 == 0.5 and got["overall"].char_f1 == pytest.approx(10 / 12)
    # kappa over chars, 3 classes: A = kkkk..ee.., B = kkkk...ee.
    # po = 8/10; pA = (.4 none,.4 key,.2 err), pB same -> pe = .16+.16+.04 = .36; κ = .44/.64
    assert got["overall"].kappa == pytest.approx(0.44 / 0.64)
    assert got["overall"].units == 10
    # the same in tokens of 2 chars: A = k k . e . ; B = k k . e e
    om = [(i, i + 2) for i in range(0, 10, 2)]
    tok = agreement(a, b, [t], offset_mappings=[om])
    assert tok["overall"].units == 5 and tok["overall"].kappa == pytest.approx(
        cohen_kappa([1, 1, 0, 2, 0], [1, 1, 0, 2, 2]))
    assert math.isnan(agreement([[]], [[]], [t])["key"].exact_f1)


def test_ls_text_rule_from_design():
    r = "total 129.\r\n👩‍💻 done\nnext"
    s, e = 6, 15
    assert r[s:e] == "129.\r\n👩‍💻"
    assert ls_text(r, s, e) == "129.\\n\\n👩‍💻"
    assert ls_text_matches(r, s, e, "129.\\n\\n👩‍💻")
    assert ls_text_matches(r, s, e, "129.\r\n👩‍💻")
    assert not ls_text_matches(r, s, e, "129.\\n👩‍💻")
    assert not ls_text_matches(r, 20, 99, "x")


def test_segment_dataclass_is_frozen():
    seg = segment("a\nb")[0]
    assert seg == Segment(1, 0, 2, "a\n")
    with pytest.raises(AttributeError):
        seg.start = 3  # type: ignore[misc]


def test_fuzzy_edges_never_cut_a_zwj_sequence_or_marks():
    from spans.locate import _trim

    t = "I am 👩‍💻 cafe\u0301 👍🏽 ok"
    assert t[slice(*_trim(t, 5, 6))] == "👩‍💻"  # a fuzzy edge after 👩 widens to the whole sequence
    assert t[slice(*_trim(t, 7, 9))] == "👩‍💻 "[:-1]  # starting on 💻 (after the ZWJ) too
    assert t[slice(*_trim(t, 9, 13))] == "cafe\u0301"  # and keeps the combining accent
    assert t[slice(*_trim(t, 15, 16))] == "👍🏽"  # and the skin tone
    assert _trim(t, 4, 5) == (5, 5)  # whitespace only: empty, nothing to widen
