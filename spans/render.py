"""Show responses with their spans: rich text for the terminal and a self-contained HTML page.

Each annotator (``source/annotator``) gets its own rendering of the response, because different
annotators' spans may overlap; within one rendering, characters covered by both a key and an error
span (only possible in unvalidated data) show as ``both``. Input rows are dicts with at least
``response`` and ``spans`` (the Arrow ``to_pylist`` of a rollout table), optionally ``rollout_id``,
``correct``, ``reward``, ``error_type``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from spans.model import Span, as_span

STYLES = {"key": "bold black on green3", "error": "bold white on red3", "both": "bold white on magenta"}
CSS_COLORS = {"key": "#8fd694", "error": "#f28b82", "both": "#d7aefb"}


def by_annotator(spans: Sequence[Span | dict] | None, source: str | None = None) -> dict[str, list[Span]]:
    """Spans grouped as ``{"source/annotator": [...]}`` in first-seen order, optionally one source."""
    groups: dict[str, list[Span]] = {}
    for s in map(as_span, spans or ()):
        if source is None or s.source == source:
            groups.setdefault(f"{s.source}/{s.annotator}", []).append(s)
    return groups


def pieces(text: str, spans: Sequence[Span]) -> list[tuple[str, str | None, list[Span]]]:
    """Cut ``text`` at every span edge: ``(piece, "key"|"error"|"both"|None, covering spans)``."""
    edges = sorted({0, len(text), *(min(max(s.start, 0), len(text)) for s in spans),
                    *(min(max(s.end, 0), len(text)) for s in spans)})
    out = []
    for a, b in zip(edges, edges[1:]):
        cover = [s for s in spans if s.start < b and s.end > a]
        labels = {s.label for s in cover}
        kind = None if not labels else ("both" if len(labels) > 1 else labels.pop())
        out.append((text[a:b], kind, cover))
    return out


def _visible(piece: str, next_char: str = "") -> str:
    """Terminal-safe text: a bare CR would overwrite the line, so CRLF/CR show as one line break
    (``next_char`` follows the piece, so a CRLF cut by a span edge still shows once)."""
    piece = piece.replace("\r\n", "\n")
    if piece.endswith("\r") and next_char == "\n":
        piece = piece[:-1]
    return piece.replace("\r", "\n")


def render_text(text: str, spans: Sequence[Span], *, brackets: bool = False) -> Text:
    """The response as a rich ``Text`` with key spans green, error spans red.

    ``brackets=True`` also writes ``[[key: …]]`` around spans, for output without colour (a pipe,
    a log file, ``NO_COLOR``).
    """
    out = Text()
    pos = 0
    for piece, kind, _ in pieces(text, spans):
        pos += len(piece)
        shown = _visible(piece, text[pos:pos + 1])
        if kind and brackets:
            shown = f"[[{kind}: {shown}]]"
        out.append(shown, style=STYLES[kind] if kind else None)
    return out


def _header(row: dict) -> str:
    bits = [f"rollout {row.get('rollout_id', '?')}"]
    if row.get("correct") is not None:
        bits.append("correct" if row["correct"] else "incorrect")
    if row.get("reward") is not None:
        bits.append(f"reward {row['reward']:g}")
    if row.get("error_type"):
        bits.append(f"error_type {row['error_type']}")
    return " · ".join(bits)


def render_row(row: dict, *, source: str | None = None, brackets: bool = False) -> Panel:
    """One rollout as a rich Panel: one coloured rendering per annotator (or the plain response),
    each followed by its spans' offsets."""
    response = row.get("response") or ""
    groups = by_annotator(row.get("spans"), source)
    parts: list = []
    if not groups:
        parts += [Text("(no spans)", style="dim"), Text(_visible(response))]
    for who, spans in groups.items():
        n_key = sum(s.label == "key" for s in spans)
        title = Text(f"{who}: {n_key} key, {len(spans) - n_key} error", style="bold cyan")
        listing = Text("\n".join(f"  {s.label:5s} [{s.start}:{s.end}) {s.text!r}"
                                  for s in sorted(spans, key=lambda s: s.start)), style="dim")
        parts += [title, render_text(response, spans, brackets=brackets), listing, Text("")]
    return Panel(Group(*parts), title=_header(row), title_align="left")


def legend() -> Text:
    return Text.assemble(("key", STYLES["key"]), " ", ("error", STYLES["error"]), " ",
                         ("both", STYLES["both"]))


def render_html(rows: Iterable[dict], *, title: str = "spanroute spans", source: str | None = None) -> str:
    """A self-contained HTML page (inline CSS, no scripts or external assets) of the rows."""
    esc = html.escape
    body = []
    n = 0
    for row in rows:
        n += 1
        response = row.get("response") or ""
        groups = by_annotator(row.get("spans"), source)
        blocks = []
        if not groups:
            blocks.append(f'<div class="who">no spans</div><pre>{esc(response)}</pre>')
        for who, spans in groups.items():
            marked = []
            for piece, kind, cover in pieces(response, spans):
                if kind is None:
                    marked.append(esc(piece))
                    continue
                tip = "; ".join(f"{s.label} [{s.start}:{s.end})" for s in cover)
                marked.append(f'<mark class="{kind}" title="{esc(tip)}">{esc(piece)}</mark>')
            listing = "".join(
                f"<li><b class='{s.label}'>{s.label}</b> [{s.start}:{s.end}) {esc(repr(s.text))}</li>"
                for s in sorted(spans, key=lambda s: s.start)
            )
            blocks.append(f'<div class="who">{esc(who)}</div><pre>{"".join(marked)}</pre><ol>{listing}</ol>')
        body.append(f"<section><h2>{esc(_header(row))}</h2>{''.join(blocks)}</section>")
    css = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}"
        "pre{white-space:pre-wrap;word-wrap:break-word;background:#fafafa;padding:.8em;border:1px solid #ddd}"
        "section{margin-bottom:2.5em}h2{font-size:1em;font-family:monospace}"
        ".who{font-weight:bold;color:#046;margin-top:1em}ol{font-family:monospace;font-size:.85em}"
        + "".join(f"mark.{k},b.{k}{{background:{c}}}" for k, c in CSS_COLORS.items())
    )
    legend_html = " ".join(f'<mark class="{k}">{k}</mark>' for k in CSS_COLORS)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{css}</style></head><body><h1>{esc(title)}</h1>"
        f"<p>{n} rollout(s). Offsets are code points, end exclusive. Legend: {legend_html}</p>"
        f"{''.join(body)}</body></html>\n"
    )
