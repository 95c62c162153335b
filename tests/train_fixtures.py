"""Fixtures for the training tests: a tiny policy folder and span-tagged toy rollouts, built fast.

Rollouts are made without sampling (which costs seconds): for each toy problem G responses are
the reference solution or a copy with one wrong step, tokenised with the real toy tokenizer plus
the final EOS, and their behaviour log-probs are the tiny model's own teacher-forced log-probs
(so importance ratios start at 1, as on-policy data does). Spans follow the rule annotator's
convention: the answer line is a key span on correct rollouts, the first wrong step an error span.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import torch

from datastore.schema import ROLLOUT_SCHEMA


def make_policy(dirpath: Path, layers: int = 2, hidden: int = 32) -> Path:
    from train.toy import build_tokenizer, tiny_model

    tok = build_tokenizer(dirpath)
    tiny_model(tok, layers=layers, hidden=hidden, seed=0).save_pretrained(dirpath)
    return dirpath


def _wrong(reference: str) -> tuple[str, int, int]:
    """The reference with the first step's result off by one; (text, error start, error end)."""
    first, _, rest = reference.partition("\n")
    lhs, _, res = first.rpartition("= ")
    bad = str(int(res) + 1)
    line = f"{lhs}= {bad}"
    return line + ("\n" + rest if rest else ""), 0, len(line)


def toy_rollouts(policy: Path, n_prompts: int = 6, group: int = 4, seed: int = 0) -> pa.Table:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.toy import make_problems, render_prompt, toy_messages

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    rows = []
    for p in make_problems(n_prompts, seed=seed):
        prompt = render_prompt(p.question, tok)
        gid = f"g-{p.prompt_id}"
        for j in range(group):
            correct = j % 2 == 0
            if correct:
                text = p.reference
                ans = text.rfind("Answer:")
                spans = [dict(start=ans, end=len(text), label="key", source="rule", annotator="rule",
                              text=text[ans:])]
            else:
                text, s, e = _wrong(p.reference)
                spans = [dict(start=s, end=e, label="error", source="rule", annotator="rule", text=text[s:e])]
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([p_ids + ids])).logits[0, len(p_ids) - 1: -1]
                lps = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
            rows.append(dict(
                rollout_id=f"r-{p.prompt_id}-{j}", prompt_id=p.prompt_id, group_id=gid, prompt=prompt,
                messages=toy_messages(p.question), response=text, response_token_ids=ids,
                response_logprobs=lps.tolist(), reward=1.0 if correct else 0.0, correct=correct,
                verifier="toy-int", reference=p.reference, model="tiny", sampling=json.dumps({"n": group}),
                spans=spans, error_type=None if correct else "arithmetic",
                skill=json.dumps({"golden_workflow": "compute one step per line, then Answer: N"})))
    return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)


def build_toy_shards(tmp: Path, **kwargs) -> tuple[Path, Path]:
    """(policy dir, shards dir) under `tmp`."""
    from train.shards import build_shards_from_table

    policy = make_policy(tmp / "policy")
    table = toy_rollouts(policy, **kwargs)
    build_shards_from_table(table, policy, tmp / "shards", source={"test": "toy"},
                            templates=("reference", "error_type", "skill"), rows_per_shard=8)
    return policy, tmp / "shards"


def overrides(policy: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={policy}", f"data.shards={shards}", f"run.out={out}", "data.groups_per_step=2",
            "data.micro_batch_size=3", "optim.lr=1e-3", "optim.steps=3", "run.tensorboard=false",
            "run.plot=false", *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def one_thread():
    """Generator fixture body: torch on one thread for the test module, restored after.

    Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP threads
    that wait for each other make each step ~20× slower."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
