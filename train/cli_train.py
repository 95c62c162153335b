"""`spanroute shards build`, `spanroute train` and `spanroute demo`.

Heavy imports (torch, transformers, lance) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from datastore.cli_options import STORE, VERSION

shards_app = typer.Typer(no_args_is_help=True, help="Turn a datastore version into span-tagged training shards.")


@shards_app.command("build")
def build_(
    store: Path = STORE,
    version: str = VERSION,
    model: str = typer.Option(..., "--model", help="The policy folder (or toy, smollm2) whose tokenizer "
                              "makes the ids; its hash goes in the manifest and `train` checks it."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for shard-NNNNN.parquet + manifest.json."),
    span_source: str = typer.Option("auto", "--span-source", help="Which annotator's spans become routes: "
                                    "human | api | self | rule, or auto = per rollout the first present in "
                                    "human > api > self > rule."),
    template: list[str] = typer.Option(["reference", "error_type", "skill"], "--template",
                                       help="Teacher prompt template(s) to tokenise (repeatable): reference "
                                       "(the reference solution), error_type, skill."),
    rows_per_shard: int = typer.Option(4096, "--rows-per-shard", help="Rows per Parquet file (whole groups)."),
) -> None:
    """Build shards: prompt ids, response ids, behaviour log-probs, reward, group id, a per-token
    route (0 none, 1 key, 2 error) and teacher-prompt ids per template.

    Deterministic (same version + tokenizer + options give byte-identical shards) and resumable
    (rerun the same command after a kill: finished shards are kept).

    Example: spanroute shards build --store runs/store --version 3 --model runs/policy --out runs/shards
    """
    from rich.progress import Progress

    from train.model_names import resolve_model
    from train.shards import build_shards

    v: int | str | None = int(version) if version is not None and version.isdigit() else version
    with Progress() as bar:
        task = bar.add_task("shards", total=None)
        manifest = build_shards(store, v, resolve_model(model), out, span_source=span_source, templates=tuple(template),
                                rows_per_shard=rows_per_shard,
                                progress=lambda k, n: bar.update(task, completed=k, total=n))
    typer.echo(f"{manifest['rows']} rollouts in {manifest['groups']} groups -> {len(manifest['shards'])} shard(s) "
               f"in {out} (store v{manifest['source']['version']}, span tokens "
               f"{manifest['span_token_fraction']:.1%}, routes by source {manifest['rows_by_span_source']})")


def train_help() -> str:
    """The train command's help: what it does, then every config field with default and meaning."""
    from train.config import fields_help

    return ("Train with TRACE, Skill-SD, GRPO or all-token OPD from a YAML config (train/configs/ has "
            "examples) and section.field=value overrides.\n\nConfig fields (section.field = default  meaning):\n\n\b\n" + fields_help())


def train(
    config: str = typer.Argument(None, help="A YAML config file, or a shipped config by name: toy_trace, "
                                 "toy_grpo, toy_skill_sd, qwen3_1p7b_trace, qwen3_8b_trace_fsdp. Optional: "
                                 "defaults + overrides."),
    overrides: list[str] = typer.Argument(None, help="section.field=value overrides, e.g. method.name=grpo optim.lr=3e-5"),
    online: str = typer.Option(None, "--online", metavar="rule|self|api", help="Online rounds on the toy world "
                               "with this annotator: generate -> annotate -> skills -> store -> shards -> train "
                               "--steps-per-round steps, repeated; each round is a datastore version. rule: exact, "
                               "free; self: the current policy annotates its own rollouts (in process); api: "
                               "--base-url/--model. data.shards is not used."),
    base_url: str = typer.Option(None, "--base-url", help="--online api: OpenAI-compatible base URL."),
    model: str = typer.Option(None, "--model", help="--online api: model name as the endpoint knows it."),
    rounds: int = typer.Option(4, "--rounds", help="--online: number of rounds."),
    prompts_per_round: int = typer.Option(32, "--prompts-per-round", help="--online: prompts sampled per round."),
    group_size: int = typer.Option(8, "--num-generations", "-n", help="--online: samples per prompt (G)."),
    steps_per_round: int = typer.Option(4, "--steps-per-round", help="--online: optimizer steps per round."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or config print."),
) -> None:
    """Train with TRACE, Skill-SD, GRPO or all-token OPD.

    The config is a YAML file of sections model / data / method / optim / run (train/configs/ has
    examples); overrides after it win. A run resumes from <run.out>/checkpoints when one is there.
    Several devices: `torchrun --nproc_per_node N -m train.cli train CONFIG run.distributed=fsdp`.

    Example: spanroute train toy_trace optim.steps=20 run.out=runs/t1
    """
    import os

    from train.config import check_device, load_config, replace
    from train.model_names import resolve_config, resolve_model

    items = list(overrides or [])
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        items.insert(0, config)
        config = None
    cfg = load_config(None if config is None else resolve_config(config), items)
    check_device(cfg)  # before any import or write that a wrong device would waste
    if cfg.model.path:  # `toy` / `smollm2` as everywhere else; the written config.yaml names the folder
        cfg = replace(cfg, model={"path": resolve_model(cfg.model.path, "model.path")})
    rank0 = int(os.environ.get("RANK", "0")) == 0
    log = (lambda s: None) if quiet or not rank0 else (lambda s: typer.echo(s))
    if online:
        from train.online import OnlineConfig, run_online

        run_online(cfg, OnlineConfig(rounds=rounds, prompts_per_round=prompts_per_round, group_size=group_size,
                                     steps_per_round=steps_per_round, annotator=online, base_url=base_url,
                                     model=model), log=log)
        return
    from train.recipe import train as run

    if quiet or not rank0:
        res = run(cfg, log=log)
    else:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task(cfg.method.name, total=cfg.optim.steps)
            res = run(cfg, log=log, on_step=lambda m: bar.update(
                task, completed=m["step"] + 1, description=f"{cfg.method.name} loss {m['loss']:+.3f} "
                f"reward {m['reward']:.2f}"))
    log(f"done: {res['steps']} steps -> {res['out']} (metrics.jsonl, curves.png, final/)")


# typer: one parameter per command-line option; the body only builds the job's typed options and calls it.
def eval_(
    model: str = typer.Option(..., "--model", help="Policy folder (model + tokenizer), e.g. runs/toy/trace/final; "
                              "`toy` = the shipped toy policy."),
    toy: int = typer.Option(None, "--toy", help="N held-out toy problems (default 200 when --prompts is not given)."),
    toy_seed: int = typer.Option(None, "--toy-seed", help="Seed of the --toy problems (default: the held-out seed, "
                                 "never trained on)."),
    prompts: str = typer.Option(None, "--prompts", help="Prompt source instead: .jsonl, .parquet or a datasets folder "
                                "(see `rollouts generate --help` for its columns)."),
    mapping: list[str] = typer.Option([], "--map", help="SOURCE_COLUMN=FIELD for --prompts, repeatable."),
    split: str = typer.Option(None, "--split", help="Split of a DatasetDict folder."),
    verifier: str = typer.Option("toy-int", "--verifier", help="toy-int, last-int or math (as `rollouts generate`)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N prompts."),
    n: int = typer.Option(4, "-n", "--samples", help="Sampled answers per prompt (temperature 1)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Response length cap, in tokens."),
    seed: int = typer.Option(1, "--seed", help="Sampling seed (the same seed gives the same samples)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
) -> None:
    """Held-out accuracy (sampled and greedy), response length and entropy of a checkpoint.

    Example: spanroute eval --model runs/toy/trace/final   (compare with --model toy, the start)
    """
    import json

    import torch

    from train.evaluate import evaluate_records
    from train.model_names import resolve_model
    from train.rollouts.hf_generator import HFGenerator
    from train.rollouts.prompts import PromptSource, load_prompts
    from train.toy import TOY_EVAL_SEED

    path = resolve_model(model)
    if prompts is None and toy is None:
        toy = 200
    torch.manual_seed(seed)
    gen = HFGenerator.from_pretrained(path, model_name="eval", device=device, batch_size=128)
    records, source = load_prompts(PromptSource(path=prompts, toy=toy, mapping=tuple(mapping), split=split, limit=limit,
                                                toy_seed=TOY_EVAL_SEED if toy_seed is None else toy_seed), gen.tokenizer)
    m = evaluate_records(gen, records, n=n, max_new_tokens=max_new_tokens, seed=seed, verifier=verifier)
    typer.echo(f"{path}: {m['prompts']} prompts × {n} samples\n"
               f"  accuracy (sampled, T=1)  {m['accuracy']:.3f} ± {m['stderr']:.3f} (binomial s.e.)\n"
               f"  accuracy (greedy)        {m['greedy_accuracy']:.3f}\n"
               f"  response length          {m['response_length']:.1f} tokens\n"
               f"  entropy                  {m['entropy']:.3f} nats/token")
    if json_out is not None:
        json_out.write_text(json.dumps({**m, "model": path, "source": source, "samples": n, "seed": seed}, indent=1))


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder: summary.json, results.md, curves.png, "
                             "the store, each arm's runs."),
    quick: bool = typer.Option(False, "--quick", help="Plumbing check in seconds: a random tiny policy, one "
                               "round, two steps per arm, two seeds (accuracies are meaningless)."),
    policy: str = typer.Option(None, "--model", help="Start from this policy folder (or toy, smollm2) instead of the toy policy."),
    arms: str = typer.Option("grpo,trace", "--arms", help="all, or a comma list of: grpo, trace-fkl, trace-rkl, "
                             "trace, trace-random, opd, trace-self, skill-sd (grpo is always run: it is the "
                             "reference of every comparison)."),
    seeds: int = typer.Option(None, "--seeds", min=1, help="Number of paired seeds 0..N-1 (default 3; 2 with --quick)."),
    rounds: int = typer.Option(None, "--rounds", help="Online rounds per arm and seed (default: the demo's budget)."),
) -> None:
    """Run the whole flow on the embedded toy world and compare arms over paired seeds.

    Loads the toy policy (shipped in train/weights/; a changed recipe is built once and cached), then per
    seed evaluates it on held-out problems and runs each arm from the same start with the same
    budget: online rounds (generate -> annotate -> skills -> store -> shards -> train), then the same
    held-out evaluation. Prints each arm's mean sampled accuracy with a 95% Student t interval over
    seeds and its paired difference to GRPO; writes <out>/summary.json, results.md and curves.png.
    No GPU, API key or server needed. Exits 1 if an arm could not run on this tree (the others
    still run and are reported).
    """
    from dataclasses import replace

    from train.demo import QUICK, DemoConfig, resolve_arms, run_demo

    dc = QUICK if quick else DemoConfig()
    dc = replace(dc, arms=resolve_arms(arms), **({"seeds": tuple(range(seeds))} if seeds else {}),
                 **({"rounds": rounds} if rounds else {}))
    from train.model_names import resolve_model

    summary = run_demo(out, dc, policy=resolve_model(policy) if policy else None, log=typer.echo)
    if summary["failed"]:
        raise typer.Exit(1)
