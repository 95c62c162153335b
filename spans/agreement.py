"""Agreement between two annotators' spans on the same rollouts, per label and overall.

- **exact F1**: a span counts as matched only with the same ``(start, end, label)`` on the same row;
  F1 = 2·matched / (spans of A + spans of B) (A and B play symmetric roles).
- **char F1**: characters both annotators gave the same label; F1 = 2·|A∩B| / (|A| + |B|).
- **Cohen's κ** over units — characters by default, tokens when ``offset_mappings`` are given (the
  unit the trainer routes on) — each unit labelled none/key/error (error wins where one annotator
  marked both, as in the routes); per label it is the binary κ of "has this label".

Scores pool all rows. A score with nothing to compare (no spans on either side, or κ with chance
agreement 1) is ``nan``, never a flattering 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spans.model import LABEL_CODES, Span, as_span
from spans.routes import token_routes_batch


@dataclass(frozen=True, slots=True)
class AgreementScores:
    """Scores for one label (or ``overall``); ``n_a``/``n_b`` count spans, ``units`` the κ units."""

    exact_f1: float
    char_f1: float
    kappa: float
    n_a: int
    n_b: int
    units: int


def agreement(
    spans_a: Sequence[Sequence[Span | dict] | None],
    spans_b: Sequence[Sequence[Span | dict] | None],
    texts: Sequence[str],
    *,
    offset_mappings: Sequence[Sequence[Sequence[int]] | np.ndarray] | None = None,
) -> dict[str, AgreementScores]:
    """Compare annotator A's and B's spans row by row; returns ``{"key", "error", "overall"}``.

    ``texts[i]`` is row i's response (code points); ``offset_mappings`` switches κ to tokens.
    """
    if not len(spans_a) == len(spans_b) == len(texts):
        raise ValueError(f"agreement: {len(spans_a)}, {len(spans_b)} span rows and {len(texts)} texts")
    rows_a = [[as_span(s) for s in r or ()] for r in spans_a]
    rows_b = [[as_span(s) for s in r or ()] for r in spans_b]

    char_offsets = [np.stack([np.arange(len(t)), np.arange(1, len(t) + 1)], axis=1) for t in texts]
    char_a = np.concatenate([np.zeros(0, np.int8), *token_routes_batch(rows_a, char_offsets)])
    char_b = np.concatenate([np.zeros(0, np.int8), *token_routes_batch(rows_b, char_offsets)])
    if offset_mappings is None:
        unit_a, unit_b = char_a, char_b
    else:
        unit_a = np.concatenate([np.zeros(0, np.int8), *token_routes_batch(rows_a, offset_mappings)])
        unit_b = np.concatenate([np.zeros(0, np.int8), *token_routes_batch(rows_b, offset_mappings)])

    def keys(rows, label=None):
        return {(i, s.start, s.end, s.label) for i, r in enumerate(rows) for s in r
                if label is None or s.label == label}

    out = {}
    for label in (*LABEL_CODES, "overall"):
        lab = None if label == "overall" else label
        ka, kb = keys(rows_a, lab), keys(rows_b, lab)
        exact = _ratio(2 * len(ka & kb), len(ka) + len(kb))
        if lab is None:
            both = int(np.count_nonzero((char_a == char_b) & (char_a > 0)))
            char = _ratio(2 * both, int(np.count_nonzero(char_a)) + int(np.count_nonzero(char_b)))
            kappa = cohen_kappa(unit_a, unit_b)
        else:
            code = LABEL_CODES[lab]
            ma, mb = char_a == code, char_b == code
            char = _ratio(2 * int(np.count_nonzero(ma & mb)), int(ma.sum()) + int(mb.sum()))
            kappa = cohen_kappa(unit_a == code, unit_b == code)
        out[label] = AgreementScores(exact, char, kappa, len(ka), len(kb), len(unit_a))
    return out


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two equal-length categorical label arrays; nan when chance agreement is 1."""
    a, b = np.asarray(a).astype(np.int64).ravel(), np.asarray(b).astype(np.int64).ravel()
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} vs {len(b)} labels")
    if not len(a):
        return math.nan
    k = int(max(a.max(), b.max())) + 1
    pa_, pb_ = np.bincount(a, minlength=k) / len(a), np.bincount(b, minlength=k) / len(b)
    po = float(np.mean(a == b))
    pe = float(pa_ @ pb_)
    return math.nan if pe >= 1.0 else (po - pe) / (1.0 - pe)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan
