"""Spans: the one place that knows what a span is (model, validation, segmentation, routes)."""

from spans.model import LABELS, SOURCES, SPAN_STRUCT, SPANS_TYPE, Span

__all__ = ["LABELS", "SOURCES", "SPAN_STRUCT", "SPANS_TYPE", "Span"]
