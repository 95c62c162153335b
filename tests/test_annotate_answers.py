"""What a model's answer text becomes (issue 14 kinds 1 and 12): the JSON inside reasoning and
notes, and answers cut at the token limit. Pure functions plus the real scripted server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from annotate.api import ApiAnnotator, RequestParams, read_answer
from annotate.engine import EngineConfig
from annotate.journal import CallRecord
from annotate.parse import parse_json
from annotate.pricing import Price
from annotate.testing.scripted_server import ScriptedServer
from annotate.templates import ERROR_SCHEMA, KEY_SCHEMA, MAX_STEPS, SKILL_SCHEMA, load

sys.path.insert(0, str(Path(__file__).parent))
from annotate_fixtures import toy_records  # noqa: E402

ANSWER = '{"steps": [{"segment": 2, "quote": "42 * 3 = 127", "reason": "3 * 42 is 126"}], "error_type": "arithmetic"}'
OBJ = json.loads(ANSWER)
DRAFT = '{"steps": []}'

# (answer text, schema, expected object or None, expected status)
CASES = [
    (ANSWER, ERROR_SCHEMA, OBJ, "ok"),
    # reasoning before the answer, with braces and a draft that itself fits the schema
    # (reasoning then the answer alone is what a reasoning model writes: ok, as behind vLLM's reasoning parser)
    ('<think>The error is in step {2}; draft: {"steps": []}</think>\n' + ANSWER, ERROR_SCHEMA, OBJ, "ok"),
    ('<think>The error is in step {2}; draft: {"steps": []}</think>\n' + ANSWER, KEY_SCHEMA, OBJ, "ok"),
    ("<thinking>sets {1,2} and {3}</thinking>" + ANSWER, ERROR_SCHEMA, OBJ, "ok"),
    ("<think>a</think>\n" + ANSWER + "\n<think>b</think>\n", ERROR_SCHEMA, OBJ, "ok"),
    ("Sure. <think>a</think>\n" + ANSWER, ERROR_SCHEMA, OBJ, "repaired"),
    ("<think>a</think>\n" + ANSWER + "\nDone.", ERROR_SCHEMA, OBJ, "repaired"),
    ("<REASONING>{" + DRAFT + "</REASONING>\n```json\n" + ANSWER + "\n```", ERROR_SCHEMA, OBJ, "repaired"),
    # notes after the answer: prose braces, a JSON object of another shape
    (ANSWER + "\nNote: sets like {a, b}.", ERROR_SCHEMA, OBJ, "repaired"),
    (ANSWER + '\n{"confidence": 0.9}', ERROR_SCHEMA, OBJ, "repaired"),
    (ANSWER + "\nNote: unbalanced { brace", ERROR_SCHEMA, OBJ, "repaired"),
    ("Draft: " + DRAFT + "\nFinal: " + ANSWER + "\n(that's {all})", ERROR_SCHEMA, OBJ, "repaired"),
    # the last fitting object wins over an earlier one
    (DRAFT + "\nCorrected: " + ANSWER, ERROR_SCHEMA, OBJ, "repaired"),
    # prose braces before the answer that never close
    ("Step {2 is where it breaks. " + ANSWER, ERROR_SCHEMA, OBJ, "repaired"),
    # fences and trailing commas
    ('```json\n{"steps": [],}\n```', KEY_SCHEMA, {"steps": []}, "repaired"),
    ('Sure! Here it is: {"steps": [1]} hope it helps', None, {"steps": [1]}, "repaired"),
    # no schema: the last object
    ('{"a": 1} then {"b": 2}', None, {"b": 2}, "repaired"),
    # failures, each with its reason
    ('{"steps": [{"segment": 1', KEY_SCHEMA, None, "failed"),
    ("[1, 2]", KEY_SCHEMA, None, "failed"),
    ("", KEY_SCHEMA, None, "failed"),
    ('<think>only a draft {"steps": []}</think> and no answer', KEY_SCHEMA, None, "failed"),
    ('<think>still thinking {"steps": []} when the tokens ran out', KEY_SCHEMA, None, "failed"),
    ('{"confidence": 0.9}', KEY_SCHEMA, None, "failed"),
    ('{"steps": "none"}', KEY_SCHEMA, None, "failed"),  # right key, wrong type
    ('{"steps": [], "error_type": 3}', ERROR_SCHEMA, None, "failed"),
]


@pytest.mark.parametrize("text, schema, want, status", CASES)
def test_parse_json_takes_the_last_complete_object_that_fits_the_schema(text, schema, want, status):
    obj, got_status, err = parse_json(text, schema)
    assert (obj, got_status) == (want, status)
    assert (err is None) == (status == "ok")  # a repair is noted, a failure says why


@pytest.mark.parametrize("text, note", [
    ("<REASONING>{" + DRAFT + "</REASONING>\n```json\n" + ANSWER + "\n```", "a code fence around it"),
    (ANSWER + "\nNote: sets like {a, b}.", "23 characters after it"),
    ("Sure. <think>a</think>\n" + ANSWER, "5 characters before it"),
    ("Draft: " + DRAFT + "\nFinal: " + ANSWER, "the last of 2 objects that fit the schema, 27 characters before it"),
    ('```json\n{"steps": [],}\n```', "a code fence around it, trailing commas removed"),
])
def test_a_repair_says_what_was_around_the_answer(text, note):
    obj, status, got = parse_json(text, KEY_SCHEMA)
    assert status == "repaired" and got == f"JSON taken from a longer answer: {note}"


@pytest.mark.parametrize("text, why", [
    ('{"steps": [{"segment": 1', "invalid JSON"),
    ("[1, 2]", "not an object"),
    ("", "empty answer"),
    ('<think>still thinking {"steps": []}', "ended inside <think>"),
    ('{"confidence": 0.9}', "lacks 'steps'"),
    ('<think>x</think>{"confidence": 1} {"n": 2}', "2 JSON object(s) found, none fits"),
])
def test_a_failed_parse_says_why(text, why):
    assert why in parse_json(text, KEY_SCHEMA)[2]


def _call(content, finish="stop", completion_tokens=7):
    raw = json.dumps({"choices": [{"index": 0, "finish_reason": finish, "message": {"content": content}}]})
    return CallRecord("k", "done", content, raw, 10, completion_tokens, 0.0, None, 1)


@pytest.mark.parametrize("call, status, obj, note", [
    (_call(ANSWER), "ok", OBJ, None),
    (_call(ANSWER[:40], "length", 64), "truncated", None, "answer cut at max_tokens=64"),
    (_call("<think>" + "x" * 100, "length", 64), "truncated", None, "finish_reason=length, 64 completion tokens"),
    # a complete answer before the cut (the model went on with notes) is still the answer
    (_call(ANSWER + "\nNote: I also checked {", "length", 64), "repaired", OBJ,
     "JSON taken from a longer answer: 22 characters after it; answer cut at max_tokens=64"),
    (_call('{"steps": [{"segment": 1', "stop"), "failed", None, "invalid JSON"),
    # the in-process runner's raw record
    (CallRecord("k", "done", ANSWER[:30], json.dumps({"text": ANSWER[:30], "finish_reason": "length"}),
                0, 64, 0.0, None, 1), "truncated", None, "max_tokens=64"),
    (CallRecord("k", "failed", None, None, 0, 0, 0.0, "HTTP 500: boom", 3), "failed", None, "HTTP 500"),
])
def test_truncated_answers_say_so_with_the_limit(call, status, obj, note):
    got, got_status, err = read_answer(call, ERROR_SCHEMA, 64)
    assert (got, got_status) == (obj, status)
    assert (note is None and err is None) or note in err


def test_annotation_schemas_are_bounded():
    for schema in (KEY_SCHEMA, ERROR_SCHEMA):
        steps = schema["properties"]["steps"]
        assert steps["maxItems"] == MAX_STEPS
        assert all(p["maxLength"] > 0 for k, p in steps["items"]["properties"].items() if p["type"] == "string")
    assert all(p["maxLength"] > 0 for p in SKILL_SCHEMA["properties"].values())
    # the bounds are part of the request, so of the cache key and the prompt hash
    body = load("key_spans").response_format()
    assert body["json_schema"]["schema"]["properties"]["steps"]["maxItems"] == MAX_STEPS


@pytest.mark.parametrize("max_tokens, want", [(512, {"ok"}), (12, {"truncated"})])
def test_a_served_answer_cut_at_max_tokens_is_recorded_as_truncated(tmp_path, max_tokens, want):
    records = [r for r in toy_records(12, seed=9) if r["correct"] is not None]
    with ScriptedServer() as srv:  # enforces max_tokens like a real server: finish_reason=length
        cfg = EngineConfig(base_url=srv.base_url, cache_path=tmp_path / "c.sqlite", price=Price(1, 2),
                           progress=False)
        results = ApiAnnotator(cfg, "scripted", params=RequestParams(max_tokens=max_tokens)).annotate(records)
    assert {r.status for r in results} == want
    for r in results:
        if r.status == "truncated":
            assert r.spans == [] and r.raw_response and f"max_tokens={max_tokens}" in r.error
            assert r.completion_tokens == max_tokens and "invalid JSON" not in r.error
