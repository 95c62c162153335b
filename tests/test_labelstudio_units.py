"""Pure parts of the Label Studio bridge (no server): selection, task shape, result -> spans."""

from __future__ import annotations

import pytest

from annotate import labelstudio as ls
from spans import Span
from tests.labelstudio_fixtures import UNICODE_RESPONSE, rollout_rows


def _labels(start, end, text, label="KeySpan"):
    return {"from_name": "spans", "to_name": "response", "type": "labels",
            "value": {"start": start, "end": end, "text": text, "labels": [label]}}


def test_select_rows_filters_and_reproducible_sample():
    rows = rollout_rows(10)
    rows[2]["spans"] = rows[2]["spans"] + [Span(0, 2, "key", "human", "ls-user-1", rows[2]["response"][:2]).to_dict()]
    assert all(r["correct"] is False for r in ls.select_rows(rows, ls.PushFilter(only_incorrect=True)))
    assert "r0002" not in {r["rollout_id"] for r in ls.select_rows(rows, ls.PushFilter(only_unannotated=True))}
    a = ls.select_rows(rows, ls.PushFilter(sample=4, seed=7))
    b = ls.select_rows(list(reversed(rows)), ls.PushFilter(sample=4, seed=7))  # row order does not matter
    assert len(a) == 4 and {r["rollout_id"] for r in a} == {r["rollout_id"] for r in b}


def test_task_has_one_prediction_per_machine_annotator_with_hash_and_score():
    row = rollout_rows(1)[0]
    row["annotation"] = {"parse_status": "repaired"}
    row["spans"].append(Span(4, 5, "key", "api", "api:gpt", "𝑥").to_dict())
    task = ls.task_for_row(row, {"api:gpt": "abc123"}, version=3)
    assert task["data"]["response"] == UNICODE_RESPONSE and task["data"]["store_version"] == 3
    by = {p["model_version"]: p for p in task["predictions"]}
    assert set(by) == {"api:api:gpt@abc123", "rule:rule"}
    assert by["api:api:gpt@abc123"]["score"] == 0.5 and by["rule:rule"]["score"] == 1.0
    (api_span,) = [r for r in by["api:api:gpt@abc123"]["result"] if r["type"] == "labels"]
    assert api_span["value"] == {"start": 4, "end": 5, "text": "𝑥", "labels": ["KeySpan"]}


def test_result_to_spans_line_break_rule_and_refusal():
    r = UNICODE_RESPONSE
    s, e = r.index("42"), r.index("𝑥 * 3") + 1
    saved = r[s:e].replace("\r", "\\n").replace("\n", "\\n")  # what the UI saves across a CRLF
    (span,) = ls.annotation_spans(r, [_labels(s, e, saved)], "ls-user-1", task_id=9, rollout_id="r")
    assert (span.start, span.end, span.text, span.source) == (s, e, r[s:e], "human")  # text from offsets
    with pytest.raises(ls.LabelStudioError, match=r"task 9 \(rollout r\).*refused"):
        ls.annotation_spans(r, [_labels(0, 3, "Lex")], "ls-user-1", task_id=9, rollout_id="r")
    with pytest.raises(ls.LabelStudioError, match="unknown label"):
        ls.annotation_spans(r, [_labels(0, 3, "Let", "Other")], "ls-user-1", task_id=9, rollout_id="r")
    with pytest.raises(ls.LabelStudioError, match="must be 1-50"):
        ls.ensure_project(None, "x" * 51)


def test_token_is_read_not_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("SPANROUTE_LS_TOKEN", raising=False)
    with pytest.raises(ls.LabelStudioError, match="SPANROUTE_LS_TOKEN"):
        ls.read_token()
    f = tmp_path / "tok"
    f.write_text("secret-token-value\n")
    assert ls.read_token(f) == "secret-token-value"
