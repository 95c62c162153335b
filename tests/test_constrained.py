"""Schema-constrained decoding on the transformers backend (llguidance masks, train/rollouts/grammar.py)."""

import json

import pytest

from annotate.local import response_schema
from annotate.templates import load
from train.rollouts.generate import Sampling
from train.rollouts.grammar import schema_grammar

SCHEMA = {
    "type": "object",
    # not in alphabetical order: the answer must keep the schema's order (the toy policy was SFT'd on it)
    "properties": {"verdict": {"type": "string", "enum": ["key", "error"]},
                   "segment": {"type": "integer", "minimum": 1, "maximum": 3}},
    "required": ["verdict", "segment"],
    "additionalProperties": False,
}


def _valid(text: str) -> bool:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (isinstance(obj, dict) and set(obj) == {"segment", "verdict"} and isinstance(obj["segment"], int)
            and 1 <= obj["segment"] <= 3 and obj["verdict"] in ("key", "error"))


@pytest.fixture(scope="module")
def generator():
    from train.rollouts.hf_generator import HFGenerator
    from train.toy import build_tokenizer, tiny_model

    tok = build_tokenizer()
    return HFGenerator(tiny_model(tok, seed=3), tok, model_name="random", batch_size=8)


def test_a_random_model_answers_only_what_the_schema_allows(generator):
    prompts = [f"question {i}" for i in range(6)]
    sampling = Sampling(temperature=1.0, max_new_tokens=40)
    free = generator.generate(prompts, n=2, sampling=sampling, seeds=list(range(6)))
    assert not any(_valid(s.text) for row in free for s in row)  # random weights write no such JSON on their own
    held = generator.generate(prompts, n=2, sampling=sampling, seeds=list(range(6)), json_schemas=[SCHEMA] * 6)
    for row in held:
        for s in row:
            assert _valid(s.text), s.text
            assert list(json.loads(s.text)) == list(SCHEMA["properties"]), s.text
            assert s.finish_reason == "stop" and s.text == json.dumps(json.loads(s.text))  # json.dumps layout
            assert len(s.logprobs) == len(s.token_ids) and all(lp <= 0.0 for lp in s.logprobs)


def test_rows_without_a_schema_decode_as_if_none_had_one(generator):
    prompts = [f"question {i}" for i in range(4)]
    sampling = Sampling(temperature=1.0, max_new_tokens=24)
    free = generator.generate(prompts, n=1, sampling=sampling, seeds=[7] * 4)
    mixed = generator.generate(prompts, n=1, sampling=sampling, seeds=[7] * 4, json_schemas=[SCHEMA, None, SCHEMA, None])
    assert [mixed[i][0].token_ids for i in (1, 3)] == [free[i][0].token_ids for i in (1, 3)]
    assert _valid(mixed[0][0].text) and _valid(mixed[2][0].text)


def test_the_request_body_names_the_schema_as_an_openai_server_reads_it():
    tpl = load("error_spans")
    assert response_schema({"response_format": tpl.response_format()}) == tpl.schema
    assert response_schema({"response_format": {"type": "json_object"}}) == {"type": "object"}
    assert response_schema({"messages": []}) is None
    schema_grammar(tpl.schema)  # the annotator's own schemas compile


@pytest.mark.parametrize("reasoning", [False, True])
def test_a_schema_llguidance_cannot_use_is_a_one_line_error(reasoning):
    with pytest.raises(ValueError, match="constrained decoding: .*unsatisfiable") as err:
        schema_grammar({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 1}},
                        "required": ["n"]}, reasoning)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, allowed", [
    ('{"verdict": "key", "segment": 2}', True),  # no reasoning: the plain answer
    ('<think>\n[1] 7 - 2 = 5 | 7 - 2 = 5 ok\n</think>\n{"verdict": "error", "segment": 1}', True),
    ('<think>{"verdict": "key", "segment": 9}</think>\n{"verdict": "key", "segment": 3}', True),  # a draft is free
    ('<think>a</think>\n<think>b</think>\n{"verdict": "key", "segment": 1}', False),  # one block only
    ('<think>a</think>\n{"verdict": "key", "segment": 4}', False),  # the answer is still held to the schema
    ('<think>a</think>\n{"verdict":"key","segment":1}', False),  # and to the json.dumps layout
    ('Sure! {"verdict": "key", "segment": 1}', False),
    ('{"verdict": "key", "segment": 1}{', False),
])
def test_with_reasoning_a_think_block_may_precede_the_constrained_answer(generator, text, allowed):
    from train.rollouts.grammar import JsonConstraint

    tok = generator.tokenizer
    matcher = JsonConstraint(tok, [SCHEMA], generator.model.config.vocab_size, generator.eos_ids, reasoning=True).matchers[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    taken = all(matcher.consume_token(t) for t in ids)
    assert (taken and matcher.is_accepting()) == allowed, text


def test_with_reasoning_a_random_model_still_ends_in_the_schema_or_inside_its_thought(generator):
    prompts = [f"question {i}" for i in range(6)]
    held = generator.generate(prompts, n=2, sampling=Sampling(temperature=1.0, max_new_tokens=40),
                              seeds=list(range(6)), json_schemas=[SCHEMA] * 6, reasoning=True)
    samples = [s for row in held for s in row]
    thinking = [s for s in samples if s.text.startswith("<think>")]
    assert thinking and len(thinking) < len(samples), [s.text for s in samples]  # both ways open at token 1
    for s in samples:
        _, closed, answer = s.text.partition("</think>\n")
        if s not in thinking:
            assert _valid(s.text), s.text
        elif closed and s.finish_reason == "stop":  # a finished thought is followed by a whole answer
            assert _valid(answer), s.text
        elif closed:  # cut at max_new_tokens: the answer's start
            assert answer == "" or answer.startswith("{"), s.text
