"""The toy world (DESIGN §8), in one package that generic code never imports (except the lazy
registries: `annotate rule`, `skills extract --engine rule`, `--model toy`).

- `problems`: seeded multi-step integer arithmetic with one-step-per-line reference solutions;
- `tokenizer`: a byte-level BPE trained on the texts the toy policy reads and writes;
- `models`: tiny random-init Qwen2s for tests;
- `rule` / `skills`: the exact rule annotator and rule-based Skill-SD skills;
- `sft` / `policy` / `measure`: the toy policy (multi-task SFT), built once and cached, and the
  measurement of its three capabilities.
"""

from train.toy.models import model_config, tiny_model
from train.toy.policy import SHIPPED_WEIGHTS, ToyPolicyRecipe, toy_accuracy, toy_policy
from train.toy.problems import (TOY_EVAL_SEED, Problem, make_problems, noisy_reference, parse_steps, prompt_id_of, render_prompt,
                                render_solution, toy_messages, toy_prompt_records)
from train.toy.tokenizer import CHAT_TEMPLATE, IM_END, IM_START, PAD, SPECIAL_TOKENS, build_tokenizer

__all__ = ["CHAT_TEMPLATE", "IM_END", "IM_START", "PAD", "Problem", "SHIPPED_WEIGHTS", "SPECIAL_TOKENS", "TOY_EVAL_SEED",
           "ToyPolicyRecipe", "build_tokenizer", "make_problems", "model_config", "noisy_reference", "parse_steps",
           "prompt_id_of", "render_prompt", "render_solution", "tiny_model", "toy_accuracy", "toy_messages",
           "toy_policy", "toy_prompt_records"]
