"""Pure parts of the Label Studio bridge (no server): selection, task shape, result -> spans."""

from __future__ import annotations

import pytest

from annotate import labelstudio as ls
from spans import Span, ls_text_matches
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


# (response, start, end, text Label Studio saved, accepted?). The accepted renderings are the ones
# measured in the real UI (DESIGN §6): the browser's rendered text, offsets exact.
LS_TEXT_CASES = [
    ("tab:\there", 0, 9, "tab: here", True),  # a tab is rendered as one space
    ("a    b", 0, 6, "a b", True),  # a run of spaces collapses
    ("a \t  b", 0, 6, "a b", True),  # spaces and tabs together: one space
    ("end   \nnext", 0, 11, "end\\nnext", True),  # spaces before a line break vanish
    ("end\n   next", 0, 11, "end\\nnext", True),  # ... and after it (pre-line)
    ("129.\r\n👩‍💻", 0, 9, "129.\\n\\n👩‍💻", True),  # each \r and \n as backslash + n
    ("a \t \r\n  b", 0, 9, "a\\n\\nb", True),
    ("a\n\nb", 0, 4, "a\\n\\nb", True),  # an empty line: two breaks, both kept
    ("x\u00a0\u00a0y", 0, 4, "x\u00a0\u00a0y", True),  # no-break spaces are kept as they are
    ("cafe\u0301 ok", 0, 8, "cafe\u0301 ok", True),  # a combining accent stays decomposed
    ("cafe\u0301 ok", 0, 8, "café ok", True),  # canonically equal (NFC) text agrees too
    ("done  \nnext", 0, 6, "done", True),  # trailing spaces whose line break is outside the span
    ("done  \nnext", 0, 6, "done ", True),
    ("  \tlead", 0, 7, "lead", True),  # leading white space at the start of the text
    ("line\nnext", 0, 5, "line", True),  # the span ends on the break; the rendering drops it
    ("tab:\there", 0, 9, "tab:\there", True),  # the exact slice (API-made results)
    ("a\r\nb", 0, 4, "a\nb", False),  # one break for two: a real difference in line breaks
    ('print("a\\n")', 0, 12, 'print("a\\n")', True),  # a literal backslash-n in the response
    ('print("a\\n")', 0, 12, 'print("a\n")', False),  # ... is not a line break
    ("tab:\there", 0, 9, "tab:here", False),  # a space inside the span never vanishes
    ("a b", 0, 3, "a  b", False),  # nor is one added
    ("x\u00a0y", 0, 3, "x y", False),  # LS keeps a no-break space: a plain one is another text
    ("a\n\nb", 0, 4, "a\\nb", False),  # a line break lost inside the span
    ("Let 𝑥 = 42", 0, 10, "Let x = 42", False),  # another character
    ("Let 𝑥 = 42", 0, 10, "Let 𝑥 = 4", False),  # a character short
    ("tab:\there", 0, 9, "WRONG", False),
    ("tab:\there", 0, 99, "tab: here", False),  # offsets outside the response
    ("tab:\there", 3, 3, "", False),  # empty span
    ("tab:\there", 0.0, 9, "tab: here", False),  # offsets that are not ints
    ("tab:\there", False, 9, "tab: here", False),
    ("tab:\there", 0, 9, None, False),  # no text at all
]


@pytest.mark.parametrize("response,start,end,text,ok", LS_TEXT_CASES)
def test_ls_text_matches_accepts_the_rendering_refuses_a_real_mismatch(response, start, end, text, ok):
    assert ls_text_matches(response, start, end, text) is ok


def test_pull_stores_text_rebuilt_from_offsets_and_names_task_and_span():
    r = "Step 1:\t17 +  25 = 42   \nStep 2: 42 * 3 = 126"
    e = r.index("\nStep 2")
    saved = "Step 1: 17 + 25 = 42\\nStep 2"  # as the UI saves a region over the first line break
    (span,) = ls.annotation_spans(r, [_labels(0, e + 7, saved)], "ls-user-1", task_id=7, rollout_id="r9")
    assert (span.start, span.end, span.text) == (0, e + 7, r[:e + 7])
    with pytest.raises(ls.LabelStudioError, match=r"task 7 \(rollout r9\): span \['KeySpan'\] \[0:6\) text 'Step 2'"):
        ls.annotation_spans(r, [_labels(0, 6, "Step 2")], "ls-user-1", task_id=7, rollout_id="r9")


def test_token_is_read_not_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("SPANROUTE_LS_TOKEN", raising=False)
    with pytest.raises(ls.LabelStudioError, match="SPANROUTE_LS_TOKEN"):
        ls.read_token()
    f = tmp_path / "tok"
    f.write_text("secret-token-value\n")
    assert ls.read_token(f) == "secret-token-value"


@pytest.mark.parametrize("ours,sdk,file,want", [
    ("tok-ours", None, None, "tok-ours"),
    (None, "tok-sdk", None, "tok-sdk"),  # the SDK's LABEL_STUDIO_API_KEY is read
    ("tok-ours", "tok-sdk", None, "tok-ours"),  # spanroute's own variable wins over the SDK's
    ("  ", "tok-sdk", None, "tok-sdk"),  # a blank variable counts as unset
    ("tok-ours", "tok-sdk", "tok-file", "tok-file"),  # --token-file wins over both
    (None, None, None, None),
])
def test_token_precedence_file_then_ours_then_sdk(tmp_path, monkeypatch, ours, sdk, file, want):
    for name, value in (("SPANROUTE_LS_TOKEN", ours), ("LABEL_STUDIO_API_KEY", sdk)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    path = None
    if file:
        path = tmp_path / "tok"
        path.write_text(file + "\n")
    if want is None:
        with pytest.raises(ls.LabelStudioError, match="SPANROUTE_LS_TOKEN.*LABEL_STUDIO_API_KEY"):
            ls.read_token(path)
    else:
        assert ls.read_token(path) == want
