"""The toy world (DESIGN §8): seeded arithmetic problems, a tokenizer, tiny models, the toy policy.

Nothing can be downloaded here, so spanroute brings its own small world in which the whole flow
runs on two CPU cores:

- `make_problems` — multi-step integer arithmetic with one-step-per-line reference solutions,
  e.g. `Compute (17 + 25) * 3.` → `17 + 25 = 42\\n42 * 3 = 126\\nAnswer: 126`;
- `build_tokenizer` — a byte-level BPE (297 entries: bytes, specials, merges) trained with `tokenizers`,
  with a ChatML template (`<|im_start|>` / `<|im_end|>`), returned as a `PreTrainedTokenizerFast`;
- `tiny_model` — a random-init 2-layer Qwen2 (hidden 64) built in well under a second, for tests;
- `toy_policy` — a 4-layer × 128 Qwen2 that the project SFTs itself on *noisy* references so that it
  is right about half the time (RL needs room to improve), built once and cached.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
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


# Qwen2's pre-tokenizer: AutoTokenizer rebuilds any `qwen2` model folder's tokenizer with this
# pipeline (Qwen2Tokenizer), so the toy tokenizer must be trained with exactly it, or a model
# folder would tokenize differently after a reload. Digits become single tokens (good for
# arithmetic), spaces stay separate.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 512):
    """Train the toy byte-level BPE tokenizer (deterministic; ~0.1 s) and return it as a
    `PreTrainedTokenizerFast` with the ChatML template, `pad_token=<|endoftext|>` and
    `eos_token=<|im_end|>`. Any text encodes (full byte alphabet). Its normalizer and
    pre-tokenizer are Qwen2's, so `AutoTokenizer` reloads it identically from a Qwen2 model
    folder. Saved to `out_dir` if given. The vocabulary stops growing when no pair is left to
    merge, so it may hold fewer than `vocab_size` entries."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
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


# ---------------------------------------------------------------------------------------------
# The toy policy: SFT on noisy references, built once and cached.


@dataclass(frozen=True)
class ToyPolicyRecipe:
    """Everything that determines the toy policy's weights (its hash names the cache folder).

    DESIGN §8: Qwen2 4 layers × 128 (FFN 512, tied embeddings), AdamW lr 1e-3, batch 64, loss on
    completion tokens only. A fraction `noise` of the training references carry one slipped step
    (`noisy_reference`), so the policy learns to be right only part of the time and its mistakes
    look like real ones (a wrong line, carried forward)."""

    layers: int = 4
    hidden: int = 128
    lr: float = 1e-3
    batch_size: int = 64
    steps: int = 1200
    warmup: int = 50  # linear warm-up steps, then cosine decay to 10% of lr
    noise: float = 0.25
    seed: int = 0
    threads: int = 1  # fixed, so the weights do not depend on the machine's core count
    version: int = 1  # bump when the build code changes meaning

    def key(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


# The default recipe's output ships with the package (our own weights, 4 MB), so the demo on a fresh
# machine does not pay the ~16 CPU-minute build; other recipes build into the cache.
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"

TOY_EVAL_SEED = 777  # held-out problems: never trained on


def _cache_root() -> Path:
    import os

    return Path(os.environ.get("SPANROUTE_CACHE") or Path.home() / ".cache" / "spanroute")


def toy_policy(cache_dir: str | Path | None = None, recipe: ToyPolicyRecipe = ToyPolicyRecipe(),
               progress: bool = True) -> Path:
    """The SFT'd toy policy folder (model + tokenizer, `save_pretrained` format), building it on
    first use. Cached at `<cache_dir or $SPANROUTE_CACHE or ~/.cache/spanroute>/toy-policy-<hash>`;
    the build is deterministic (same recipe → same weights on the same torch build), takes a few
    CPU minutes, and is safe against concurrent builders (file lock + atomic rename). Its
    `toy_policy.json` records the build time and held-out greedy/sampled accuracy."""
    import fcntl
    import shutil
    import tempfile

    shipped = SHIPPED_WEIGHTS / f"toy-policy-{recipe.key()}"
    if cache_dir is None and (shipped / "toy_policy.json").exists():
        return shipped  # built by this very function and committed: a fresh clone skips the build
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    final = root / f"toy-policy-{recipe.key()}"
    if (final / "toy_policy.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".toy-policy-{recipe.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the folder
        if (final / "toy_policy.json").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".toy-policy-build-", dir=root))
        try:
            _build_toy_policy(tmp, recipe, progress)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _sft_batches(tokenizer, recipe: ToyPolicyRecipe, exclude: set[str]):
    """Yields `recipe.steps` batches of (input_ids_BT, attention_BT, labels_BT), right-padded,
    labels -100 outside the completion (response + EOS)."""
    import torch

    rng = random.Random(f"toy-sft-{recipe.seed}")
    problems = [p for p in make_problems(recipe.steps * recipe.batch_size + len(exclude), recipe.seed + 1)
                if p.prompt_id not in exclude]
    eos = tokenizer.eos_token_id
    for s in range(recipe.steps):
        rows = []
        for p in problems[s * recipe.batch_size : (s + 1) * recipe.batch_size]:
            sol = noisy_reference(p, rng) if rng.random() < recipe.noise else p.reference
            prompt = tokenizer(render_prompt(p.question, tokenizer), add_special_tokens=False)["input_ids"]
            resp = tokenizer(sol, add_special_tokens=False)["input_ids"] + [eos]
            rows.append((prompt + resp, [-100] * len(prompt) + resp))
        T = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id
        yield (
            torch.tensor([ids + [pad] * (T - len(ids)) for ids, _ in rows]),
            torch.tensor([[1] * len(ids) + [0] * (T - len(ids)) for ids, _ in rows]),
            torch.tensor([lab + [-100] * (T - len(lab)) for _, lab in rows]),
        )


def toy_accuracy(model, tokenizer, n_problems: int = 200, samples: int = 4, temperature: float = 1.0,
                 seed: int = 0) -> float:
    """Fraction of correct answers on held-out toy problems (`TOY_EVAL_SEED`), `samples` per
    problem at `temperature` (0 = greedy, one sample)."""
    from train.rollout import HFGenerator, Sampling, generate_rollouts, toy_prompt_records

    gen = HFGenerator(model, tokenizer, model_name="eval", batch_size=200)
    recs = toy_prompt_records(make_problems(n_problems, TOY_EVAL_SEED), tokenizer)
    n = 1 if temperature == 0 else samples
    tbl = generate_rollouts(gen, recs, n=n, sampling=Sampling(temperature=temperature, max_new_tokens=48), seed=seed)
    return sum(tbl["correct"].to_pylist()) / tbl.num_rows


def _build_toy_policy(out: Path, recipe: ToyPolicyRecipe, progress: bool) -> None:
    import time

    import torch

    t0, c0 = time.time(), time.process_time()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        _train_and_save(out, recipe, progress, t0, c0)
    finally:
        torch.set_num_threads(threads_before)


def _train_and_save(out: Path, recipe: ToyPolicyRecipe, progress: bool, t0: float, c0: float) -> None:
    import json
    import math
    import sys
    import time

    import torch

    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    model = tiny_model(tokenizer, layers=recipe.layers, hidden=recipe.hidden, seed=recipe.seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    def lr_factor(s: int) -> float:
        if s < recipe.warmup:
            return (s + 1) / recipe.warmup
        frac = (s - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    exclude = {p.prompt_id for p in make_problems(200, TOY_EVAL_SEED)}
    for step, (ids, attn, labels) in enumerate(_sft_batches(tokenizer, recipe, exclude)):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step == 0 or (step + 1) % 100 == 0):
            note = ""
            if (step + 1) % 300 == 0:  # a cheap look at the learning curve (greedy, 50 problems)
                model.eval()
                note = f", greedy accuracy {toy_accuracy(model, tokenizer, n_problems=50, temperature=0):.0%}"
                model.train()
            print(f"toy policy: step {step + 1}/{recipe.steps} loss {loss.item():.3f}{note} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    train_s = time.time() - t0
    if progress:
        print("toy policy: evaluating on 200 held-out problems...", file=sys.stderr, flush=True)
    greedy = toy_accuracy(model, tokenizer, temperature=0)
    sampled = toy_accuracy(model, tokenizer, temperature=1.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"recipe": asdict(recipe), "train_seconds": round(train_s, 1), "build_seconds": round(time.time() - t0, 1),
            "build_cpu_seconds": round(time.process_time() - c0, 1),
            "greedy_accuracy": greedy, "sampled_accuracy": sampled, "eval": "200 held-out problems, 4 samples at T=1"}
    (out / "toy_policy.json").write_text(json.dumps(info, indent=2))
    if progress:
        print(f"toy policy: built in {info['build_seconds']} s; held-out accuracy greedy {greedy:.1%}, "
              f"sampled {sampled:.1%} -> {out}", file=sys.stderr, flush=True)
