"""Spans: the one place that knows what a span is.

Offsets everywhere are Unicode code points of the response (Python ``str`` indices), end
exclusive. Model (:class:`Span`, the Arrow ``SPAN_STRUCT``), validation with the overlap rule and
TRACE cap, segmentation into numbered steps, quote location, per-token routes (0 none, 1 key,
2 error), combining annotators' spans, agreement, and Label Studio's text rule.

Imports follow the flow spans -> datastore -> annotate -> train, with one known arrow against it:
``spans/cli.py`` (`spanroute spans show`) reads a datastore version and takes the shared
``--store``/``--version`` options from ``datastore.cli_options``. Nothing else in ``spans`` imports
``datastore``; the library itself stays free of it.
"""

from spans.agreement import AgreementScores, agreement, cohen_kappa
from spans.errors import SpanError
from spans.locate import Located, locate, locate_detail, normalize_with_map
from spans.merge import merge_spans, select_spans
from spans.model import (
    CODE_LABELS,
    LABEL_CODES,
    LABELS,
    SOURCES,
    SPAN_STRUCT,
    SPANS_TYPE,
    Span,
    as_span,
    spans_from_arrow,
    spans_to_arrow,
)
from spans.offsets import ls_text, ls_text_matches, strip_range
from spans.routes import (
    routes_to_spans,
    rowwise_searchsorted,
    span_arrays,
    token_routes,
    token_routes_batch,
    token_routes_flat,
)
from spans.segment import Segment, numbered, numbered_steps, segment, spans_from_segments
from spans.validate import ValidatedRow, validate, validate_batch, validate_report, validate_row

__all__ = [
    "AgreementScores", "CODE_LABELS", "LABELS", "LABEL_CODES", "Located", "SOURCES", "SPANS_TYPE",
    "SPAN_STRUCT", "Segment", "Span", "SpanError", "ValidatedRow", "agreement", "as_span",
    "cohen_kappa", "locate", "locate_detail", "ls_text", "ls_text_matches", "merge_spans",
    "normalize_with_map", "numbered", "numbered_steps", "routes_to_spans", "rowwise_searchsorted",
    "segment", "select_spans", "span_arrays", "spans_from_arrow", "spans_from_segments",
    "spans_to_arrow", "strip_range", "token_routes", "token_routes_batch", "token_routes_flat",
    "validate", "validate_batch", "validate_report", "validate_row",
]
