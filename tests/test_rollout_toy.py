"""The toy world and the verifiers: deterministic problems, a working tokenizer, exact rewards."""

from __future__ import annotations

import random
import threading

import pytest

from train.rollouts.verify import VERIFIERS, get_verifier, reference_int
from train.toy import (
    build_tokenizer,
    make_problems,
    noisy_reference,
    parse_steps,
    prompt_id_of,
    render_prompt,
    tiny_model,
)


def test_problems_are_deterministic_distinct_and_correct():
    a, b = make_problems(200, seed=3), make_problems(200, seed=3)
    assert a == b
    assert make_problems(50, seed=4) != a[:50]
    assert len({p.prompt_id for p in a}) == 200
    for p in a:
        steps = parse_steps(p.reference)
        assert len(steps) in (2, 3)
        for (x, op, y, r) in steps:
            assert r == (x + y if op == "+" else x - y if op == "-" else x * y)
            assert 0 <= r <= 999
        for prev, nxt in zip(steps, steps[1:]):
            assert nxt[0] == prev[3]  # each step continues from the last result
        assert p.reference.endswith(f"Answer: {p.answer}")
        assert p.prompt_id == prompt_id_of(p.question)
        # the question evaluates to the answer (it is a plain Python expression)
        assert eval(p.question.removeprefix("Compute ").removesuffix(".")) == p.answer


def test_example_format():
    p = next(p for p in make_problems(500, 0, steps=(2,)) if "(" in p.question)
    assert p.question.startswith("Compute (") and p.question.endswith(".")
    assert p.reference.count("\n") == 2


def test_noisy_reference_is_wrong_from_one_step_on():
    rng = random.Random(0)
    for p in make_problems(100, seed=1):
        bad = noisy_reference(p, rng)
        assert VERIFIERS["toy-int"](bad, p.reference) == (0.0, False)
        good, noisy = parse_steps(p.reference), parse_steps(bad)
        first = next(i for i, (g, n) in enumerate(zip(good, noisy)) if g != n)
        assert noisy[first][:3] == good[first][:3]  # the slip is in the result, not the operands


def test_tokenizer_roundtrip_chat_template_and_save(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(tmp_path / "tok")
    assert 512 < len(tok) <= 1024  # bytes, specials, and merges down to whole template words
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    prompt = render_prompt("Compute (17 + 25) * 3.", tok)
    assert prompt == "<|im_start|>user\nCompute (17 + 25) * 3.<|im_end|>\n<|im_start|>assistant\n"
    text = "17 + 25 = 42\n42 * 3 = 126\nAnswer: 126 — héllo 🙂"
    assert tok.decode(tok(text)["input_ids"]) == text
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(prompt)["input_ids"] == tok(prompt)["input_ids"]
    assert render_prompt("x", again) == render_prompt("x", tok)
    assert build_tokenizer().get_vocab() == tok.get_vocab()  # deterministic


def test_model_folder_reloads_the_same_tokenizer(tmp_path):
    # AutoTokenizer rebuilds a qwen2 folder's tokenizer as Qwen2Tokenizer (its own pre-tokenizer):
    # the toy tokenizer must survive that, or rollouts and training would disagree on token ids.
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = render_prompt("Compute ((19 * 9) + 57) - 98.", tok) + "19 * 9 = 171\nAnswer: 130<|im_end|>\n x'll  é"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    from train.toy.problems import make_problems
    from train.toy.sft import annotator_prompt

    ann = annotator_prompt(tok, make_problems(1, 0)[0], "1 + 2 = 3\nAnswer: 3", False)
    assert again(ann)["input_ids"] == tok(ann)["input_ids"]
    assert len(tok(ann)["input_ids"]) < 320  # template words are single tokens
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id == tok.pad_token_id


def test_tiny_model_runs():
    import torch

    tok = build_tokenizer()
    model = tiny_model(tok)
    ids = tok([render_prompt("Compute 1 + 2.", tok)], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tok)
    again = tiny_model(tok)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize(
    "response,reference,expected",
    [
        ("17 + 25 = 42\n42 * 3 = 126\nAnswer: 126", "17 + 25 = 42\n42 * 3 = 126\nAnswer: 126", True),
        ("Answer: 126", "126", True),
        ("Answer: 125", "Answer: 126", False),
        ("Answer: 1260", "Answer: 126", False),
        ("126", "Answer: 126", False),  # the toy format is required
        ("Answer: 12\nAnswer: 126", "Answer: 126", False),  # the first answer counts
        ("Answer: -3", "-3", True),
    ],
)
def test_toy_int(response, reference, expected):
    assert VERIFIERS["toy-int"](response, reference) == (float(expected), expected)


def test_last_int_and_bad_reference():
    assert VERIFIERS["last-int"]("She has 3 + 4 = 7 apples. So 7.", "7") == (1.0, True)
    assert VERIFIERS["last-int"]("It costs 1,200 dollars", "1200") == (1.0, True)
    assert VERIFIERS["last-int"]("no idea", "7") == (0.0, False)
    with pytest.raises(ValueError, match="not an integer"):
        reference_int("seven")
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        get_verifier("nope")


def test_math_verify_main_thread_and_worker_thread():
    mv = VERIFIERS["math-verify"]
    assert mv("so the answer is $\\frac{1}{2}$", "\\boxed{0.5}") == (1.0, True)
    assert mv("\\boxed{41}", "$42$") == (0.0, False)
    assert mv("I don't know", "$42$") == (0.0, False)
    out = []
    t = threading.Thread(target=lambda: out.append(mv("\\boxed{2x+1}", "$1 + 2x$")))
    t.start()
    t.join()
    assert out == [(1.0, True)]


def test_toy_policy_builds_once_and_caches(tmp_path, monkeypatch):
    # The mechanics on a 3-step recipe (the real one takes minutes): folder, info file, cache hit,
    # SPANROUTE_CACHE, reload with AutoModel/AutoTokenizer.
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.toy import ToyPolicyRecipe, toy_policy

    recipe = ToyPolicyRecipe(cycles=(2, 1), layers=1, hidden=32, batch_size=8, long_batch_size=2, init=None)
    monkeypatch.setenv("SPANROUTE_CACHE", str(tmp_path))
    path = toy_policy(recipe=recipe, progress=False, measure_problems=3)
    assert path.parent == tmp_path and path.name == f"toy-policy-{recipe.key()}"
    info = json.loads((path / "toy_policy.json").read_text())
    m = info["measured"]
    assert info["recipe"]["cycles"] == [2, 1] and info["recipe_key"] == recipe.key()
    assert 0.0 <= m["plain_sampled"] <= 1.0 and 0.0 <= m["reference_greedy"] <= 1.0
    assert m["self_annotation"]["rows"] == 3
    stamp = (path / "toy_policy.json").stat().st_mtime_ns
    assert toy_policy(recipe=recipe, progress=False, measure_problems=3) == path
    assert (path / "toy_policy.json").stat().st_mtime_ns == stamp  # cached: nothing rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".toy-policy-build-")]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 1 and tok.eos_token == "<|im_end|>"
