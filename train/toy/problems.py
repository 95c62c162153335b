"""Toy problems: seeded multi-step integer arithmetic with one-step-per-line reference solutions,
e.g. `Compute (17 + 25) * 3.` → `17 + 25 = 42\\n42 * 3 = 126\\nAnswer: 126`, and their chat prompts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

from datastore.ids import prompt_id_of
from train.rollouts.generate import PromptRecord

OPS = ("+", "-", "*")
TOY_EVAL_SEED = 777  # held-out problems: never trained on
TOY_CHECK_SEED = 4242  # a seed no part of the project trains or tunes on: the independent check


@dataclass(frozen=True)
class Problem:
    """One toy problem. `reference` is the full worked solution (the teacher's privileged
    information); `answer` the final integer; `prompt_id` a stable hash of the question."""

    prompt_id: str
    question: str
    reference: str
    answer: int


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _operand(rng: random.Random, op: str, acc: int) -> int:
    # Keep every intermediate in 0..999 so solutions stay short and never negative.
    if op == "*":
        return rng.randint(2, 9)
    if op == "-":
        return rng.randint(1, max(1, min(acc, 99)))
    return rng.randint(1, min(99, 999 - acc))


def _one_problem(rng: random.Random, n_steps: int) -> tuple[str, list[tuple[int, str, int, int]]]:
    """Returns (expression, steps) with steps = [(left, op, right, result), ...] left to right."""
    acc = rng.randint(1, 99)
    expr = str(acc)
    steps: list[tuple[int, str, int, int]] = []
    for i in range(n_steps):
        ops = [
            o
            for o in OPS
            if not (o == "*" and acc > 110) and not (o == "-" and acc < 2) and not (o == "+" and acc > 998)
        ]
        op = rng.choice(ops)
        b = _operand(rng, op, acc)
        res = _apply(op, acc, b)
        steps.append((acc, op, b, res))
        expr = f"{expr} {op} {b}" if i == 0 else f"({expr}) {op} {b}"
        acc = res
    return expr, steps


def render_solution(steps: Iterable[tuple[int, str, int, int]]) -> str:
    """One step per line, then `Answer: N` with N the last step's result."""
    steps = list(steps)
    lines = [f"{a} {op} {b} = {r}" for a, op, b, r in steps]
    lines.append(f"Answer: {steps[-1][3]}")
    return "\n".join(lines)


def make_problems(n: int, seed: int, steps: tuple[int, ...] = (2, 3)) -> list[Problem]:
    """`n` distinct problems, deterministic in `seed`; each has a number of steps drawn from `steps`.

    Distinct questions, so that prompt ids are unique within the list (resumable generation keys
    on them)."""
    rng = random.Random(f"spanroute-toy-{seed}")
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n:
        expr, st = _one_problem(rng, rng.choice(tuple(steps)))
        question = f"Compute {expr}."
        if question in seen:
            continue
        seen.add(question)
        out.append(Problem(prompt_id_of(question), question, render_solution(st), st[-1][3]))
    return out


def parse_steps(reference: str) -> list[tuple[int, str, int, int]]:
    """Inverse of `render_solution` for well-formed solutions (the `Answer:` line is dropped)."""
    out = []
    for line in reference.splitlines():
        if line.startswith("Answer:"):
            continue
        lhs, rhs = line.split(" = ")
        a, op, b = lhs.split(" ")
        out.append((int(a), op, int(b), int(rhs)))
    return out


SLIP_DELTAS = tuple(d for d in range(-10, 11) if d != 0)


def noisy_reference(problem: Problem, rng: random.Random, deltas: tuple[int, ...] = SLIP_DELTAS) -> str:
    """A plausible *wrong* solution: one step's result is off by an amount drawn from `deltas`
    (default ±1..10) and every later step correctly carries the wrong value forward, so the
    first wrong line is the error span."""
    steps = parse_steps(problem.reference)
    k = rng.randrange(len(steps))
    out, carry = [], None
    for i, (a, op, b, r) in enumerate(steps):
        if carry is not None:
            a = carry
        r = _apply(op, a, b)
        if i == k:
            delta = rng.choice(deltas)
            r = r + delta if r + delta >= 0 else r - delta
        out.append((a, op, b, r))
        carry = r
    return render_solution(out)


def toy_messages(question: str) -> list[dict[str, str]]:
    """The chat form of a toy prompt: the question alone as the user turn."""
    return [{"role": "user", "content": question}]


def render_prompt(question: str, tokenizer) -> str:
    """The prompt text the policy sees for a question: the chat template with the generation
    prompt appended (`<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n`)."""
    return tokenizer.apply_chat_template(toy_messages(question), tokenize=False, add_generation_prompt=True)




def toy_prompt_records(problems, tokenizer) -> list[PromptRecord]:
    """Toy problems as prompt records: the chat-rendered question, the full reference solution."""
    return [
        PromptRecord(
            prompt_id=p.prompt_id,
            prompt=render_prompt(p.question, tokenizer),
            reference=p.reference,
            messages=tuple((m["role"], m["content"]) for m in toy_messages(p.question)),
        )
        for p in problems
    ]
