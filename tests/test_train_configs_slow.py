"""Every shipped toy config trains the shipped toy policy without collapse.

For each `train/configs/toy_*.yaml`: rollouts of the toy policy on training problems (G = 8,
rule spans and rule skills, as `spanroute demo` makes them), shards, then the config for its own
steps and learning rate; held-out sampled accuracy (`train.evaluate`, the held-out seed) must not
fall by more than 0.05. A config whose learning rate ruins the policy (lr 1e-4 once sent it to
0 of 64) fails here instead of silently."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY_CONFIGS = sorted((ROOT / "train" / "configs").glob("toy_*.yaml"))
MAX_DROP = 0.05
EVAL_PROBLEMS, EVAL_SAMPLES, MAX_NEW_TOKENS = 200, 4, 48

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(policy, shards, baseline metrics) shared by every config."""
    from train.evaluate import evaluate
    from train.model_names import resolve_model
    from train.toy import TOY_EVAL_SEED, make_problems

    policy = resolve_model("toy")
    shards = build_shards(policy, tmp_path_factory.mktemp("configs") / "shards")
    base = evaluate(policy, make_problems(EVAL_PROBLEMS, seed=TOY_EVAL_SEED), EVAL_SAMPLES, MAX_NEW_TOKENS, seed=1)
    return policy, shards, base


def build_shards(policy: str, out: Path, prompts: int = 64, group: int = 8) -> Path:
    from annotate import RuleAnnotator, RuleSkills, annotate_store, skills_store
    from datastore import Lineage, Store
    from train.rollouts.generate import Sampling, generate_rollouts
    from train.rollouts.hf_generator import HFGenerator
    from train.shards import build_shards_from_table
    from train.toy import TOY_EVAL_SEED, make_problems, toy_prompt_records

    held = {p.prompt_id for p in make_problems(EVAL_PROBLEMS, seed=TOY_EVAL_SEED)}
    problems = [p for p in make_problems(prompts + EVAL_PROBLEMS, seed=10_000) if p.prompt_id not in held][:prompts]
    gen = HFGenerator.from_pretrained(policy, model_name="toy", device="cpu", batch_size=128)
    table = generate_rollouts(gen, toy_prompt_records(problems, gen.tokenizer), n=group,
                              sampling=Sampling(temperature=1.0, max_new_tokens=MAX_NEW_TOKENS), seed=0)
    # the same jobs as `spanroute annotate rule` and `skills extract --engine rule` (validation, cap)
    store = Store(str(out.parent / "store"))
    v = store.write(table, message="generate", lineage=Lineage(stage="generate", model="toy"))
    v, _ = annotate_store(store, RuleAnnotator(), v)
    v, _ = skills_store(store, RuleSkills(), v)
    build_shards_from_table(store.read(version=v), policy, out, source={"test": "configs"},
                            templates=("reference", "error_type", "skill"))
    return out


@pytest.mark.parametrize("config", TOY_CONFIGS, ids=lambda p: p.stem)
def test_shipped_toy_config_does_not_collapse_the_toy_policy(world, tmp_path, config):
    from train.config import load_config
    from train.evaluate import evaluate
    from train.recipe import train
    from train.toy import TOY_EVAL_SEED, make_problems

    policy, shards, base = world
    cfg = load_config(config, [f"model.path={policy}", f"data.shards={shards}", f"run.out={tmp_path / 'run'}",
                               "run.device=cpu", "run.tensorboard=false", "run.checkpoint_every=0"])
    train(cfg, log=lambda s: None)
    after = evaluate(tmp_path / "run" / "final", make_problems(EVAL_PROBLEMS, seed=TOY_EVAL_SEED), EVAL_SAMPLES,
                     MAX_NEW_TOKENS, seed=1)
    print(f"{config.stem}: accuracy {base['accuracy']:.3f} -> {after['accuracy']:.3f}, greedy "
          f"{base['greedy_accuracy']:.3f} -> {after['greedy_accuracy']:.3f}, length "
          f"{base['response_length']:.1f} -> {after['response_length']:.1f}")
    assert after["accuracy"] >= base["accuracy"] - MAX_DROP, (config.name, base, after)
