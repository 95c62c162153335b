"""Find an annotator's quote in the response, never trusting model-emitted offsets.

Three tiers, first hit wins: exact substring; a normalised match mapped back to original code-point
offsets; then fuzzy (``rapidfuzz`` partial-ratio alignment on the normalised strings, score >=
``threshold``, widened to whole words). A quote that occurs more than once (for fuzzy: a second
region scoring within 5 points of the best) is resolved by ``near`` — an offset, a ``(start, end)``
range or a :class:`~spans.segment.Segment` — choosing the unique closest occurrence, or refused.

Normalisation (:func:`normalize_with_map`) works per extended grapheme cluster (UAX #29, the
``regex`` module's ``\\X``): each cluster is NFKC-normalised on its own and every character of the
result remembers the cluster's original range. Clusters hold what normalization composes (a base and
its marks, Hangul jamo L+V+T, Indic vowel signs, Thai SARA AM), so quote and text may each be in any
of NFC/NFD/NFKC/NFKD, in any script (fullwidth forms, ligatures such as ``ﬁ``, CJK compatibility
ideographs, Arabic presentation forms), and a normalised or fuzzy hit is returned in the ORIGINAL
text's code points, widened to whole clusters (it never cuts a user-perceived character). On top of
NFKC: every white-space run is one space, curly quotes/primes are ASCII quotes, dashes and the minus
sign are ``-``, and zero-width spaces, soft hyphens, BOMs, word joiners and emoji variation
selectors (U+FE0E/U+FE0F) are dropped.
"""

from __future__ import annotations

import bisect
import unicodedata
from dataclasses import dataclass

import regex
from rapidfuzz import fuzz

from spans.offsets import strip_range

_QUOTE_MAP = {
    **dict.fromkeys("‘’‚‛′`´", "'"),
    **dict.fromkeys("“”„‟″«»", '"'),
    **dict.fromkeys("‐‑‒–—―−", "-"),
}
_AMBIGUITY_MARGIN = 5.0  # rapidfuzz score points
# invisible, never meaningful in a quote (VS15/VS16 pick text or emoji style of the same symbol)
_DROP = {"\u200b", "\u00ad", "\ufeff", "\u2060", "\ufe0e", "\ufe0f"}
_CLUSTER = regex.compile(r"\X")


@dataclass(frozen=True, slots=True)
class Located:
    """The outcome of :func:`locate_detail`: where, how, and if not found, why."""

    span: tuple[int, int] | None
    method: str | None  # "exact" | "normalized" | "fuzzy" | None
    score: float = 0.0  # 100 for exact/normalised, the rapidfuzz score for fuzzy
    candidates: int = 0  # occurrences seen at the winning tier
    reason: str | None = None  # why span is None: "empty quote" | "absent" | "ambiguous: …"


def locate(text: str, quote: str, near=None, *, threshold: float = 90.0) -> tuple[int, int] | None:
    """Code-point ``(start, end)`` of ``quote`` in ``text``, or None when absent or ambiguous."""
    return locate_detail(text, quote, near, threshold=threshold).span


def locate_detail(text: str, quote: str, near=None, *, threshold: float = 90.0) -> Located:
    """Like :func:`locate`, with the method, score and the reason for a refusal (for evidence)."""
    if not quote or not quote.strip():
        return Located(None, None, reason="empty quote")
    exact = _all_occurrences(text, quote)
    if exact:
        return _choose(exact, near, "exact", 100.0)

    ntext, nstart, nend = normalize_with_map(text)
    nquote, _, _ = normalize_with_map(quote)
    nquote = nquote.strip()
    if not nquote:
        return Located(None, None, reason="empty quote")
    hits = _all_occurrences(ntext, nquote)
    if hits:
        return _choose([(nstart[a], nend[b - 1]) for a, b in hits], near, "normalized", 100.0)

    # Fuzzy: too short a quote matches anything, so need a few characters.
    if len(nquote) < 4 or not ntext:
        return Located(None, None, reason="absent")
    best = _fuzzy(ntext, nquote, 0, len(ntext), threshold)
    if best is None:
        return Located(None, None, reason="absent")
    score, a, b = best
    found = [(a, b)]
    # Another region nearly as good as the best (a repeated step) makes the quote ambiguous;
    # "nearly": partial-ratio scores of equal copies differ by a few points with window edges.
    for lo, hi in ((0, a), (b, len(ntext))):
        other = _fuzzy(ntext, nquote, lo, hi, max(threshold, score - _AMBIGUITY_MARGIN))
        if other is not None:
            found.append((other[1], other[2]))
    spans = [_trim(text, nstart[x], nend[y - 1]) for x, y in found]
    return _choose(sorted(set(spans)), near, "fuzzy", score)


def normalize_with_map(s: str) -> tuple[str, list[int], list[int]]:
    """Normalise ``s`` (see the module docstring) and map each output char to its source range.

    Returns ``(norm, start, end)``: ``norm[k]`` came from ``s[start[k]:end[k]]``, the code-point range
    of the grapheme cluster it was normalised from (a white-space run: from its first to its last
    cluster). So ``e`` + U+0301 matches a precomposed ``é``, jamo ``ᄒ ᅡ ᆫ`` match the syllable ``한``
    and ``ﬁ`` matches ``fi``, each mapped back to where it is in ``s``.
    """
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for m in _CLUSTER.finditer(s):
        i, j = m.span()
        cluster = m.group()
        for ch in cluster if cluster.isascii() else unicodedata.normalize("NFKC", cluster):
            ch = _QUOTE_MAP.get(ch, ch)
            if ch in _DROP:
                continue
            if ch.isspace():
                if out and out[-1] == " ":
                    ends[-1] = j  # one space stands for the whole run
                    continue
                ch = " "
            out.append(ch)
            starts.append(i)
            ends.append(j)
    return "".join(out), starts, ends


def cluster_bounds(s: str) -> list[int]:
    """Code-point offsets where a grapheme cluster of ``s`` starts, plus ``len(s)``: ``[0, …, len(s)]``."""
    return [m.start() for m in _CLUSTER.finditer(s)] + [len(s)]


def _all_occurrences(hay: str, needle: str) -> list[tuple[int, int]]:
    """Every (possibly overlapping) occurrence of ``needle`` in ``hay``."""
    out = []
    k = hay.find(needle)
    while k >= 0:
        out.append((k, k + len(needle)))
        k = hay.find(needle, k + 1)
    return out


def _fuzzy(ntext: str, nquote: str, lo: int, hi: int, threshold: float):
    """Best partial alignment of ``nquote`` inside ``ntext[lo:hi]`` scoring >= threshold."""
    if hi - lo < max(4, len(nquote) // 2):
        return None
    al = fuzz.partial_ratio_alignment(nquote, ntext[lo:hi], score_cutoff=threshold)
    if al is None or al.score < threshold:
        return None
    a, b = lo + al.dest_start, lo + al.dest_end
    # The alignment may cut a word ("he" for "the"): widen it to whole words at both ends.
    while a > lo and ntext[a - 1].isalnum() and ntext[a].isalnum():
        a -= 1
    while b < hi and ntext[b].isalnum() and ntext[b - 1].isalnum():
        b += 1
    if a >= b:
        return None
    return al.score, a, b


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    """Shrink ``[a, b)`` so it neither starts nor ends with whitespace, then widen it to whole
    grapheme clusters, so it never cuts a ZWJ emoji sequence, a base character from its marks or
    a syllable from its jamo (a fuzzy edge can land inside one)."""
    a, b = strip_range(text, a, b)
    if a >= b:
        return a, b
    bounds = cluster_bounds(text)
    return bounds[bisect.bisect_right(bounds, a) - 1], bounds[bisect.bisect_left(bounds, b)]


def _near_range(near) -> tuple[int, int]:
    if isinstance(near, int):
        return near, near
    if hasattr(near, "start") and hasattr(near, "end"):
        return int(near.start), int(near.end)
    a, b = near
    return int(a), int(b)


def _choose(found: list[tuple[int, int]], near, method: str, score: float) -> Located:
    """One occurrence wins outright; several need ``near`` to pick a unique closest one."""
    found = [f for f in found if f[0] < f[1]]
    if not found:
        return Located(None, None, reason="absent")
    if len(found) == 1:
        return Located(found[0], method, score, 1)
    if near is None:
        return Located(None, method, score, len(found), reason=f"ambiguous: {len(found)} occurrences")
    na, nb = _near_range(near)

    def dist(f):  # 0 when overlapping the near range (or containing a near offset), else the gap
        if nb > na:
            return 0 if f[0] < nb and f[1] > na else (na - f[1] if f[1] <= na else f[0] - nb)
        return 0 if f[0] <= na < f[1] else (na - f[1] + 1 if f[1] <= na else f[0] - na)

    ds = sorted((dist(f), f) for f in found)
    if ds[0][0] == ds[1][0]:
        return Located(None, method, score, len(found),
                       reason=f"ambiguous: {len(found)} occurrences, none closest to {near!r}")
    return Located(ds[0][1], method, score, len(found))
