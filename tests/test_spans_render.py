"""Rendering spans for people: rich text and the self-contained HTML page (in-memory rows)."""

from __future__ import annotations

import re

import pyarrow as pa
from rich.console import Console

from spans import Span, spans_to_arrow
from spans.render import by_annotator, pieces, render_html, render_row, render_text

RESPONSE = "Step 1: 𝑥 = 2 <b>\r\nStep 2: 👩‍💻 wrong\nAnswer: 4"


def rows_table() -> pa.Table:
    s1 = Span(0, 13, "key", "rule", "toy", RESPONSE[0:13])
    s2 = Span(24, 29, "error", "rule", "toy", RESPONSE[24:29])
    s3 = Span(8, 31, "error", "human", "ann-1", RESPONSE[8:31])
    return pa.table({
        "rollout_id": ["r1", "r2"],
        "response": [RESPONSE, "no spans"],
        "spans": spans_to_arrow([[s1, s2, s3], []]),
        "correct": [False, True],
        "reward": pa.array([0.0, 1.0], pa.float32()),
    })


def test_pieces_cut_at_every_edge_and_mark_overlaps():
    spans = [Span(0, 4, "key", "api", "a", "abcd"), Span(2, 6, "error", "api", "b", "cdef")]
    got = [(p, k) for p, k, _ in pieces("abcdefgh", spans)]
    assert got == [("ab", "key"), ("cd", "both"), ("ef", "error"), ("gh", None)]


def test_render_row_one_rendering_per_annotator():
    row = rows_table().to_pylist()[0]
    assert list(by_annotator(row["spans"])) == ["rule/toy", "human/ann-1"]
    console = Console(record=True, width=100, color_system="truecolor")
    console.print(render_row(row))
    out = console.export_text()
    assert "rollout r1 · incorrect · reward 0" in out
    assert "rule/toy: 1 key, 1 error" in out and "human/ann-1: 0 key, 1 error" in out
    assert "\r" not in out and "👩‍💻" in out
    only_human = Console(record=True, width=100)
    only_human.print(render_row(row, source="human"))
    assert "rule/toy" not in only_human.export_text()


def test_render_text_styles_the_span_characters():
    text = render_text("ab\r\ncd", [Span(1, 3, "error", "api", "a", "b\r")])
    assert text.plain == "ab\ncd"
    styled = [(text.plain[s.start:s.end], str(s.style)) for s in text.spans]
    assert styled == [("b", "bold white on red3")]  # the CR of a cut CRLF is not shown twice


def test_html_page_is_self_contained_and_escaped():
    page = render_html(rows_table().to_pylist(), title="t <x>")
    assert page.startswith("<!doctype html>")
    assert "&lt;b&gt;" in page and "<b>\r" not in page  # the response's "<b>" is text, not markup
    assert "t &lt;x&gt;" in page
    assert not re.search(r"(src|href)=|<script|<link", page)
    assert page.count('<mark class="key"') == 2  # the span, plus the legend
    assert f'<mark class="error" title="error [24:29)">{RESPONSE[24:29]}</mark>' in page
    assert "no spans" in page and "2 rollout(s)" in page
