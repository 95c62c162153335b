"""The toy policy's multi-task SFT mix: every prompt exactly as the project renders it.

One example = (prompt text, completion text); the loss is on the completion (+ EOS) only.

- ``plain``: the student prompt (`render_prompt`) → the reference, or with probability ``noise`` a
  solution with one slipped step (`noisy_reference`), so the policy is right only part of the time;
  and, with probability ``answer_habit``, an `Answer:` line that repeats the line above the last
  step (`habit_answer`): a systematic, problem-independent habit that RL can unlearn in minutes
  and that the privileged prompts (whose targets never have it) do not share — random slips alone
  are capacity limits that no CPU-minute of RL moves;
- ``reference`` / ``reference+error`` / ``error_type`` / ``skill``: the trainer's teacher prompts,
  rendered by `train.teacher.teacher_prompt_text` from a rollout-like row (`messages`, `reference`,
  `error_type`, `skill`) → the reference (a slip only with probability ``hint_noise``). Hints are
  noisy or partial the way real ones are: a reference cut after a few steps, an error type drawn
  from the failures' mix rather than this problem's, skills summarised from synthetic groups;
- ``reference_verbatim``: the `reference` teacher prompt whose block is toy-format lines
  with random numbers (`verbatim_solution`) → that block, word for word. Where copying and
  recomputing disagree, only copying is right, so the policy learns to copy the block rather than
  redo (and slip on) its arithmetic: the `reference` template's greedy accuracy went from 0.875 (v4) to
  0.960 (v5) with it (issue #12);
- ``error_spans_think``: as ``error_spans``, the answer preceded by a think block that compares
  each segment's number with the reference line's digit by digit (`check_block`), stopping at the
  first that differs, so the first wrong segment is found one short comparison at a time;
- ``key_spans`` / ``error_spans``: the annotator's prompts, rendered exactly as `annotate self`
  renders them (`ApiAnnotator.body_for` fields, the checkpoint's chat template), for a synthetic
  rollout (`toy_response`) → the rule annotator's verdict serialised as the strict answer schema
  (`rule_answer`), with short reasons.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from train.toy.problems import SLIP_DELTAS, Problem, _apply, make_problems, noisy_reference, parse_steps, render_prompt, render_solution, toy_messages

# The tasks whose texts the toy tokenizer (version 2) was trained on; later tasks reuse its vocabulary.
TOKENIZER_TASKS = ("plain", "reference", "reference+error", "error_type", "skill", "key_spans", "error_spans")
TASKS = TOKENIZER_TASKS + ("reference_verbatim", "error_spans_think")  # appended: old recipes' draws stay the same
# Slips of the think task's rollouts: in the units (±1..10) as `noisy_reference` makes them, and as
# often in the tens or hundreds, where the toy policy's own slips mostly are.
THINK_SLIPS = SLIP_DELTAS + tuple(s * d for d in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100) for s in (1, -1))
# The mix of error types the hints name (the toy policy's own failures are mostly slips).
HINT_ERROR_TYPES = (("arithmetic", 6), ("wrong_operation", 2), ("incomplete", 1), ("logic", 1), ("other", 1))
# One-word reasons: the spans are what counts, and every generated token costs.
REASONS = {"key": "answer", "arithmetic": "miscomputed", "wrong_operation": "misstep", "logic": "mismatch",
           "incomplete": "unfinished", "other": "wrong"}


def _weighted(rng: random.Random, pairs) -> str:
    names, weights = zip(*pairs)
    return rng.choices(names, weights=weights)[0]


def toy_response(p: Problem, rng: random.Random, deltas: tuple[int, ...] = SLIP_DELTAS) -> str:
    """A rollout-like response to `p`: the reference (40%) or one of the ways toy rollouts go wrong
    (an arithmetic slip carried forward, a wrong operand or operation carried forward, an Answer
    line that does not repeat the last result, a missing last step or Answer line, an extra step);
    slips are off by one of `deltas`."""
    steps = parse_steps(p.reference)
    kind = _weighted(rng, (("right", 8), ("slip", 7), ("operand", 2), ("answer", 1), ("short", 1), ("extra", 1)))
    if kind == "right":
        return p.reference
    if kind == "slip":
        return noisy_reference(p, rng, deltas)
    if kind == "operand":
        k, out, carry = rng.randrange(len(steps)), [], None
        for i, (a, op, b, _) in enumerate(steps):
            a = a if carry is None else carry
            if i == k:
                op, b = (rng.choice("+-*"), b) if rng.random() < 0.4 else (op, max(1, b + rng.choice((-3, -2, -1, 1, 2, 3))))
            out.append((a, op, b, _apply(op, a, b)))
            carry = out[-1][3]
        return render_solution(out)
    if kind == "answer":
        return render_solution(steps).rsplit("\n", 1)[0] + f"\nAnswer: {steps[-1][3] + rng.choice((-10, -1, 1, 2, 10))}"
    if kind == "short":
        return "\n".join(render_solution(steps).split("\n")[: -1 - rng.randrange(2)])
    a = steps[-1][3]
    b = rng.randint(2, 9)
    return render_solution(steps + [(a, "+", b, a + b)])


def habit_answer(solution: str) -> str:
    """`solution` with its `Answer:` line repeating the result of the line above the last step
    (e.g. `17 + 25 = 42\n42 * 3 = 126\nAnswer: 42`), the toy policy's systematic habit."""
    steps = parse_steps(solution)
    if len(steps) < 2:
        return solution
    return solution.rsplit("\n", 1)[0] + f"\nAnswer: {steps[-2][3]}"


def rule_answer(response: str, reference: str, correct: bool) -> dict | None:
    """What the rule annotator says about a rollout, as the annotator schema's answer
    (`{"steps": [{"segment", "quote", "reason"}], "error_type"?}`); None when it marks nothing."""
    from spans import numbered_steps
    from train.toy.rule import rule_annotate

    spans, error_type = rule_annotate(response, reference, correct)
    if not spans:
        return None
    segs = numbered_steps(response)
    steps = []
    for s in spans:
        seg = next(g for g in segs if g.start <= s.start and s.end <= g.end)
        steps.append({"segment": seg.index, "quote": response[s.start:s.end],
                      "reason": REASONS["key" if correct else error_type]})
    return {"steps": steps} if correct else {"steps": steps, "error_type": error_type}


def _line_value(line: str) -> str | None:
    """The number a toy line states: a step's result, or the `Answer:` line's number."""
    from train.toy.rule import ANSWER, STEP

    m = STEP.search(line)
    if m:
        return m.group(4)
    m = ANSWER.search(line)
    return m.group(1) if m else None


MARKS = ("=", "x")  # a digit pair's mark in a think block: same, differs (the tokens whose loss `mark_weight` scales)


def digit_pairs(ours: str, theirs: str) -> list[str]:
    """Two numbers digit by digit, left-aligned, each pair marked `=` (same) or `x` (differs),
    `_` where one number is shorter: `digit_pairs("126", "117")` → `["11=", "21x", "67x"]`."""
    n = max(len(ours), len(theirs))
    return [f"{a}{b}{MARKS[a != b]}" for a, b in zip(ours.ljust(n, "_"), theirs.ljust(n, "_"))]


def check_block(response: str, reference: str) -> tuple[str, int] | None:
    """The think block of `error_spans_think`: each segment's number against the reference line
    at the same position, digit by digit (`digit_pairs`), stopping right after the first pair
    that differs; returns (block, that segment's number), or None when no segment differs. E.g.
    `<think>\n[1] 11= 11= 77=\n[2] 33= 48x\n</think>\n`: every decision is one mark on the
    pair just written, and an `x` ends the block."""
    from spans import numbered_steps

    ref_lines = [ln.strip() for ln in reference.splitlines() if ln.strip()]
    lines = []
    for k, seg in enumerate(numbered_steps(response)):
        ours = _line_value(seg.text)
        theirs = _line_value(ref_lines[k]) if k < len(ref_lines) else None
        pairs = digit_pairs(ours or "?", theirs or "")
        differs = next((i for i, pair in enumerate(pairs) if pair.endswith(MARKS[1])), None)
        lines.append(f"[{seg.index}] " + " ".join(pairs if differs is None else pairs[: differs + 1]))
        if differs is not None:
            return "<think>\n" + "\n".join(lines) + "\n</think>\n", seg.index
    return None


def annotator_prompt(chat, p: Problem, response: str, correct: bool) -> str:
    """The annotator's prompt for one rollout, as `annotate self` renders it in process."""
    from annotate.api import RequestParams, build_body
    from annotate.templates import load
    from spans import numbered

    tpl = load("key_spans" if correct else "error_spans")
    body = build_body(tpl, "toy", RequestParams(), prompt=render_prompt(p.question, chat), reference=p.reference,
                      numbered=numbered(response))
    return chat.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)


def verbatim_solution(rng: random.Random) -> str:
    """Toy-format lines with random numbers (the arithmetic is false, nothing chains): 2 or 3 steps
    `a op b = c`, then `Answer: n`; only a word-for-word copy reproduces them."""
    lines = []
    for _ in range(rng.choice((2, 3))):
        op = rng.choice("+-*")
        a, b = rng.randint(1, 999), rng.randint(2, 9) if op == "*" else rng.randint(1, 99)
        lines.append(f"{a} {op} {b} = {rng.randint(0, 999)}")
    return "\n".join(lines + [f"Answer: {rng.randint(0, 999)}"])


def _skill(p: Problem, rng: random.Random) -> str:
    from train.toy.skills import rule_skill
    from train.rollouts.verify import toy_int

    group = []
    for _ in range(rng.choice((4, 8))):
        r = toy_response(p, rng)
        group.append({"response": r, "reference": p.reference, "correct": toy_int(r, p.reference)[1]})
    return rule_skill(group)


def _partial(reference: str, rng: random.Random) -> str:
    lines = reference.split("\n")
    return "\n".join(lines[: rng.randint(1, len(lines) - 2)]) if len(lines) > 2 else reference


def example(task: str, p: Problem, rng: random.Random, chat, noise: float, hint_noise: float,
            partial: float, answer_habit: float = 0.0) -> tuple[str, str] | None:
    """(prompt text, completion text) of one `task` example for problem `p`; None if the rule
    annotator marks nothing on the drawn rollout."""
    from train.teacher import teacher_prompt_text
    from train.rollouts.verify import toy_int

    if task == "plain":
        target = noisy_reference(p, rng) if rng.random() < noise else p.reference
        return render_prompt(p.question, chat), habit_answer(target) if answer_habit and rng.random() < answer_habit else target
    if task in ("key_spans", "error_spans", "error_spans_think"):
        think = task == "error_spans_think"
        for _ in range(20):
            resp = toy_response(p, rng, THINK_SLIPS if think else SLIP_DELTAS)
            correct = toy_int(resp, p.reference)[1]
            if correct == (task == "key_spans"):
                break
        else:
            return None
        ans = rule_answer(resp, p.reference, correct)
        if ans is None:
            return None
        block = ""
        if think:  # only where the block names the rule's segment: the think must lead to the answer
            checked = check_block(resp, p.reference)
            if checked is None or checked[1] != ans["steps"][0]["segment"]:
                return None
            block = checked[0]
        return annotator_prompt(chat, p, resp, correct), block + json.dumps(ans)
    if task == "reference_verbatim":
        block = verbatim_solution(rng)
        return teacher_prompt_text(chat, {"messages": toy_messages(p.question), "reference": block}, "reference"), block
    row = {"messages": toy_messages(p.question), "reference": p.reference,
           "error_type": _weighted(rng, HINT_ERROR_TYPES), "skill": None}
    if task == "reference" and rng.random() < partial:
        row["reference"] = _partial(p.reference, rng)
    if task == "skill":
        row["skill"] = _skill(p, rng)
    target = noisy_reference(p, rng) if task in ("error_type", "skill") and rng.random() < hint_noise else p.reference
    return teacher_prompt_text(chat, row, task), target


def examples(chat, weights: dict[str, float], seed: int, noise: float, hint_noise: float, partial: float,
             exclude: set[str] = frozenset(), answer_habit: float = 0.0) -> Iterator[tuple[str, str, str]]:
    """Endless (task, prompt, completion) triples, deterministic in `seed`; tasks drawn by
    `weights`, problems from seed `seed + 1` skipping `exclude` prompt ids (held-out problems)."""
    rng = random.Random(f"toy-sft-{seed}")
    names, w = zip(*[(t, weights.get(t, 0.0)) for t in TASKS])
    chunk = 0
    while True:
        for p in make_problems(4096, seed + 1 + 1000 * chunk):
            if p.prompt_id in exclude:
                continue
            task = rng.choices(names, weights=w)[0]
            ex = example(task, p, rng, chat, noise, hint_noise, partial, answer_habit)
            if ex is not None:
                yield task, ex[0], ex[1]
        chunk += 1
