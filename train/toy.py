"""The toy world (DESIGN §8): seeded arithmetic problems, a tokenizer, tiny models, the toy policy.

Nothing can be downloaded here, so spanroute brings its own small world in which the whole flow
runs on two CPU cores:

- `make_problems` — multi-step integer arithmetic with one-step-per-line reference solutions,
  e.g. `Compute (17 + 25) * 3.` → `17 + 25 = 42\\n42 * 3 = 126\\nAnswer: 126`;
- `build_tokenizer` — a byte-level BPE (vocab 512) trained with `tokenizers` on generated problems,
  with a ChatML template (`<|im_start|>` / `<|im_end|>`), returned as a `PreTrainedTokenizerFast`;
- `tiny_model` — a random-init 2-layer Qwen2 (hidden 64) built in well under a second, for tests;
- `toy_policy` — a 4-layer × 128 Qwen2 that the project SFTs itself on *noisy* references so that it
  is right about half the time (RL needs room to improve), built once and cached.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)

# ChatML, as Qwen/SmolLM use it; `{% generation %}` is not used so the template works everywhere.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Problem:
    """One toy problem. `reference` is the full worked solution (the teacher's privileged
    information); `answer` the final integer; `prompt_id` a stable hash of the question."""

    prompt_id: str
    question: str
    reference: str
    answer: int


def prompt_id_of(question: str) -> str:
    """Stable id of a prompt text (16 hex chars of sha256): the same question → the same id,
    on any machine and in any process (unlike Python's salted `hash`)."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


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


def noisy_reference(problem: Problem, rng: random.Random) -> str:
    """A plausible *wrong* solution: one step's result is off by a small amount and every later
    step correctly carries the wrong value forward, so the first wrong line is the error span."""
    steps = parse_steps(problem.reference)
    k = rng.randrange(len(steps))
    out, carry = [], None
    for i, (a, op, b, r) in enumerate(steps):
        if carry is not None:
            a = carry
        r = _apply(op, a, b)
        if i == k:
            delta = rng.choice([d for d in range(-10, 11) if d != 0])
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


def _corpus(n: int = 3000) -> list[str]:
    # What the tokenizer is trained on: chat-rendered problems with their solutions, plus some
    # wrong ones, so merges cover digits, operators and the template; deterministic.
    rng = random.Random("spanroute-toy-tokenizer")
    texts = []
    for p in make_problems(n, seed=10_000):
        sol = noisy_reference(p, rng) if rng.random() < 0.3 else p.reference
        texts.append(f"{IM_START}user\n{p.question}{IM_END}\n{IM_START}assistant\n{sol}{IM_END}\n")
    return texts


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 512):
    """Train the toy byte-level BPE tokenizer (deterministic; ~0.1 s) and return it as a
    `PreTrainedTokenizerFast` with the ChatML template, `pad_token=<|endoftext|>` and
    `eos_token=<|im_end|>`. Any text encodes (full byte alphabet). Saved to `out_dir` if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START],
        padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def model_config(tokenizer, layers: int, hidden: int, heads: int = 4, kv_heads: int = 2):
    """A small Qwen2 config sized for the toy tokenizer: FFN 4×hidden, tied embeddings."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def tiny_model(tokenizer, layers: int = 2, hidden: int = 64, seed: int = 0):
    """A random-init `Qwen2ForCausalLM` (float32, eval mode) for unit tests; builds in < 1 s."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(model_config(tokenizer, layers, hidden)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model
