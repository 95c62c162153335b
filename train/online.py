"""Online rounds: generate → annotate → skills → store → shards → train N steps → repeat.

Each round samples G rollouts per prompt from the *current* policy and writes them to the datastore;
then the SAME jobs as ``spanroute annotate rule|self|api`` and ``spanroute skills extract`` annotate
exactly that round's rows (`annotate.job.annotate_store` / `skills_store`, so span validation,
TRACE's 25% cap, evidence and lineage are those of a run by hand); that round's shards are built from
the pinned version and the same training run continues for ``steps_per_round`` more steps (``train``
resumes its own checkpoint: weights, AdamW moments, teacher, RNG). So TRACE runs on-policy, as in the
paper, and every batch it trained on can be traced back to a datastore version.

Annotators (``OnlineConfig.annotator``):

- ``rule``: the toy world's exact checker (free);
- ``self``: the current policy annotates its own rollouts each round, in process (transformers,
  greedy, through the same request cache as ``annotate self``), as in TRACE's online self-annotation;
- ``api``: any OpenAI-compatible endpoint (``base_url``, ``model``, key in ``$api_key_env``).

Skills always come from the toy world's rule extractor (exact and free).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from train.config import TrainConfig, replace

ANNOTATORS = ("rule", "self", "api")


@dataclass(frozen=True)
class OnlineConfig:
    """One online run: how many rounds, how much data per round, how much training per round, and
    who annotates."""

    rounds: int = 4
    prompts_per_round: int = 32
    group_size: int = 8
    steps_per_round: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0  # rollout sampling seed; round r uses seed + r
    store: str = ""  # datastore directory (default: <run.out>/store)
    annotator: str = "rule"  # rule | self | api
    base_url: str | None = None  # api: the OpenAI-compatible endpoint
    model: str | None = None  # api: the model name the endpoint knows
    api_key_env: str = "OPENAI_API_KEY"  # api: NAME of the variable holding the key
    annotate_max_tokens: int = 192  # self/api: completion token limit per annotation request
    name: str = ""  # the run's name in rollout ids and lineage (default: run.out's folder name)


@dataclass(frozen=True)
class RoundRows:
    """An `annotate.executor` that maps only the rows this round generated (the store holds every
    earlier round too, which must keep the spans their own policy gave them)."""

    rollout_ids: frozenset[str]
    name: str = "local"

    def map_rows(self, store, version, columns, fn, *, limit=None, group_key=None):
        records = [r for r in store.read(version=version, columns=columns).to_pylist()
                   if r["rollout_id"] in self.rollout_ids]
        return records, fn(records[:limit] if limit else records)


def check_online(oc: OnlineConfig) -> None:
    """Raise ValueError (one line) for an unknown annotator, or ``api`` without base_url/model."""
    if oc.annotator not in ANNOTATORS:
        raise ValueError(f"--online annotator must be one of {', '.join(ANNOTATORS)}, got {oc.annotator!r}")
    if oc.annotator == "api" and not (oc.base_url and oc.model):
        raise ValueError("--online api needs --base-url and --model (any OpenAI-compatible endpoint)")


def make_annotator(oc: OnlineConfig, store_dir: Path, generator: Any = None, label: str = ""):
    """The span annotator of `oc.annotator`. ``self`` answers with `generator` (the round's policy,
    an `HFGenerator`), its requests cached under ``<store>/_annotate/cache.sqlite`` and keyed by
    `label` (the round's policy name) so one round never reuses another's answers.
    Raises ValueError for an unknown annotator or ``api`` without base_url/model."""
    check_online(oc)
    if oc.annotator == "rule":
        from annotate import RuleAnnotator  # the toy world's, through annotate's registry

        return RuleAnnotator()
    from annotate.api import ApiAnnotator, RequestParams
    from annotate.engine import EngineConfig

    cache = Path(store_dir) / "_annotate" / "cache.sqlite"
    params = RequestParams(max_tokens=oc.annotate_max_tokens)
    if oc.annotator == "self":
        from annotate.local import GeneratorRunner

        engine = EngineConfig(base_url="in-process", cache_path=cache, progress=False, label="annotate self")
        return ApiAnnotator(engine, label, source="self", checkpoint=label, params=params,
                            runner=GeneratorRunner(generator, cache, batch_size=64))
    engine = EngineConfig(base_url=oc.base_url, cache_path=cache, api_key_env=oc.api_key_env, progress=False,
                          label="annotate api")
    return ApiAnnotator(engine, oc.model, source="api", params=params)


def online_rounds(cfg: TrainConfig, oc: OnlineConfig, problems: Sequence[Any], *,
                  log: Callable[[str], None] = print,
                  on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run `oc.rounds` rounds on toy `problems` (cycled, `prompts_per_round` per round).

    The policy that generates (and, for ``self``, annotates) round r is ``cfg.model.path`` for
    r = 0, then ``<run.out>/final``. Returns ``{"rounds": [{round, versions, shards, rollouts,
    train_accuracy, annotated}], "last": last step metrics}``; writes ``<run.out>/rounds.json``.
    """
    import pyarrow.compute as pc

    from annotate import RuleSkills, annotate_store, skills_store
    from datastore import Lineage, Store
    from train.recipe import train
    from train.rollouts.generate import Sampling, generate_rollouts
    from train.rollouts.hf_generator import HFGenerator
    from train.toy import toy_prompt_records
    from train.shards import build_shards_from_table

    check_online(oc)
    out = Path(cfg.run.out)
    store_dir = Path(oc.store or out / "store")
    store = Store(str(store_dir))
    rounds: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for r in range(oc.rounds):
        policy = cfg.model.path if r == 0 else str(out / "final")
        name = f"{oc.name or out.name}-round{r}"
        gen = HFGenerator.from_pretrained(policy, model_name=name, device="cpu" if cfg.run.device == "cpu" else None)
        k = oc.prompts_per_round
        chosen = [problems[(r * k + i) % len(problems)] for i in range(k)]
        sampling = Sampling(temperature=oc.temperature, max_new_tokens=oc.max_new_tokens)
        table = generate_rollouts(gen, toy_prompt_records(chosen, gen.tokenizer), n=oc.group_size,
                                  sampling=sampling, seed=oc.seed + r)
        extra = {"round": r, "run": str(out)}
        v_gen = store.write(table, message=f"round {r}: generate",
                            lineage=Lineage(stage="generate", model=name, extra=extra))
        mine = RoundRows(frozenset(table["rollout_id"].to_pylist()))
        ann = make_annotator(oc, store_dir, gen, label=f"{out.resolve()}@round{r}")
        v_ann, results = annotate_store(store, ann, v_gen, executor=mine, extra=extra)
        del gen
        v_last, _ = skills_store(store, RuleSkills(), v_ann, executor=mine, extra=extra)
        rows = store.read(version=v_last)
        rows = rows.filter(pc.is_in(rows["rollout_id"], value_set=table["rollout_id"]))
        shards = out / "rounds" / f"round-{r:03d}" / "shards"
        manifest = build_shards_from_table(rows, policy, shards, source={"store": str(store_dir.resolve()),
                                           "version": int(v_last)}, templates=("reference", "error_type", "skill"))
        acc = sum(rows["correct"].to_pylist()) / max(rows.num_rows, 1)
        annotated = sum(res.status in ("ok", "repaired") and bool(res.spans) for res in results)
        log(f"round {r + 1}/{oc.rounds}: {rows.num_rows} rollouts, sampled accuracy {acc:.3f}, "
            f"{oc.annotator} spans on {annotated}/{len(results)}, span tokens "
            f"{manifest['span_token_fraction']:.2f}, store v{v_last}")
        rcfg = replace(cfg, data={"shards": str(shards)}, optim={"steps": (r + 1) * oc.steps_per_round},
                       run={"plot": r == oc.rounds - 1})
        res = train(rcfg, on_step=on_step, log=lambda s: None if r else log(s))
        last = res["last"]
        rounds.append({"round": r, "versions": {"generate": v_gen, "annotate": v_ann, "final": v_last},
                       "shards": str(shards), "rollouts": rows.num_rows, "train_accuracy": acc,
                       "annotated": annotated})
    (out / "rounds.json").write_text(json.dumps(rounds, indent=1))
    return {"rounds": rounds, "last": last}



def run_online(cfg: TrainConfig, oc: OnlineConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`spanroute train --online ANNOTATOR`: `oc.rounds` rounds on fresh toy problems of the run's
    seed, ``rounds × steps_per_round`` optimizer steps in all."""
    from train.toy import make_problems

    cfg = replace(cfg, optim={"steps": oc.rounds * oc.steps_per_round})
    problems = make_problems(oc.rounds * oc.prompts_per_round, seed=10_000 + cfg.optim.seed)
    res = online_rounds(cfg, dataclasses.replace(oc, seed=cfg.optim.seed), problems, log=log)
    log(f"done: {len(res['rounds'])} rounds; last step {res['last']}")
    return res

