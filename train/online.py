"""Online rounds: generate → annotate (rule) → skills → store → shards → train N steps → repeat.

Each round samples G rollouts per prompt from the *current* policy, writes them to the datastore
(one version per stage, with lineage), annotates them with the rule annotator, attaches rule skill
summaries, builds that round's shards from the pinned version, and continues the same training run
for ``steps_per_round`` more steps (``train`` resumes its own checkpoint: weights, AdamW moments,
teacher, RNG). So TRACE runs on-policy, as in the paper, and every batch it trained on can be
traced back to a datastore version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from train.config import TrainConfig, replace


@dataclass(frozen=True)
class OnlineConfig:
    """One online run: how many rounds, how much data per round, how much training per round."""

    rounds: int = 4
    prompts_per_round: int = 32
    group_size: int = 8
    steps_per_round: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0  # rollout sampling seed; round r uses seed + r
    store: str = ""  # datastore directory (default: <run.out>/store)


def rule_annotations(table: pa.Table) -> pa.Table:
    """rollout_id + spans + error_type from the toy rule annotator (replacing only its own spans)."""
    from train.toy.rule import ANNOTATOR, rule_annotate

    try:
        from spans import merge_spans
    except ImportError:  # pragma: no cover - older spans package
        merge_spans = None
    from datastore.schema import ROLLOUT_SCHEMA

    ids, spans_col, etypes = [], [], []
    for row in table.select(["rollout_id", "response", "reference", "correct", "spans"]).to_pylist():
        spans, etype = rule_annotate(row["response"], row["reference"], bool(row["correct"]))
        new = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in spans]
        if merge_spans is not None:
            merged = merge_spans(row["spans"] or [], new, "rule", ANNOTATOR)
            new = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in merged]
        ids.append(row["rollout_id"])
        spans_col.append(new)
        etypes.append(etype)
    return pa.table({"rollout_id": ids, "spans": pa.array(spans_col, type=ROLLOUT_SCHEMA.field("spans").type),
                     "error_type": pa.array(etypes, type=pa.string())})


def rule_skills(table: pa.Table) -> pa.Table:
    """rollout_id + skill (JSON): each prompt group's rule skill summary on all its rows."""
    from train.toy.skills import rule_skill

    rows = table.select(["rollout_id", "group_id", "response", "reference", "correct"]).to_pylist()
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group_id"], []).append(row)
    skill = {g: rule_skill(rs) for g, rs in groups.items()}
    return pa.table({"rollout_id": pa.array([r["rollout_id"] for r in rows], pa.string()),
                     "skill": pa.array([skill[r["group_id"]] for r in rows], pa.string())})


def _rows_of(full: pa.Table, table: pa.Table) -> pa.Table:
    """The rows of `full` (a store version) that this round generated."""
    import pyarrow.compute as pc

    return full.filter(pc.is_in(full["rollout_id"], value_set=table["rollout_id"]))


def online_rounds(cfg: TrainConfig, oc: OnlineConfig, problems: Sequence[Any], *,
                  log: Callable[[str], None] = print,
                  on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run `oc.rounds` rounds on toy `problems` (cycled, `prompts_per_round` per round).

    The policy that generates round r is ``cfg.model.path`` for r = 0, then ``<run.out>/final``.
    Returns ``{"rounds": [{round, versions, shards, accuracy, ...}], "last": last step metrics}``.
    """
    from datastore import Lineage, Store
    from train.recipe import train
    from train.rollout import HFGenerator, Sampling, generate_rollouts
    from train.toy import toy_prompt_records
    from train.shards import build_shards_from_table

    out = Path(cfg.run.out)
    store_dir = Path(oc.store or out / "store")
    store = Store(str(store_dir))
    template_set = ("reference", "error_type", "skill")
    rounds: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for r in range(oc.rounds):
        policy = cfg.model.path if r == 0 else str(out / "final")
        gen = HFGenerator.from_pretrained(policy, model_name=f"{out.name}-round{r}", device="cpu"
                                          if cfg.run.device == "cpu" else None)
        k = oc.prompts_per_round
        chosen = [problems[(r * k + i) % len(problems)] for i in range(k)]
        sampling = Sampling(temperature=oc.temperature, max_new_tokens=oc.max_new_tokens)
        table = generate_rollouts(gen, toy_prompt_records(chosen, gen.tokenizer), n=oc.group_size,
                                  sampling=sampling, seed=oc.seed + r)
        del gen
        lin = dict(model=f"{out.name}-round{r}", extra={"round": r, "run": str(out)})
        v_gen = store.write(table, message=f"round {r}: generate", lineage=Lineage(stage="generate", **lin))
        ann = rule_annotations(table)
        v_ann = store.update(ann, message=f"round {r}: annotate rule",
                             lineage=Lineage(stage="annotate", annotator="rule", **lin))
        try:
            sk = rule_skills(_rows_of(store.read(version=v_ann), table))
            v_last = store.update(sk, message=f"round {r}: skills rule",
                                  lineage=Lineage(stage="skills", annotator="rule", **lin))
        except ImportError:
            v_last = v_ann  # no skills package yet: the skill template falls back to the plain prompt
        mine = _rows_of(store.read(version=v_last), table)
        shards = out / "rounds" / f"round-{r:03d}" / "shards"
        manifest = build_shards_from_table(mine, policy, shards, source={"store": str(store_dir.resolve()),
                                            "version": int(v_last)}, templates=template_set)
        acc = sum(mine["correct"].to_pylist()) / max(mine.num_rows, 1)
        log(f"round {r + 1}/{oc.rounds}: {mine.num_rows} rollouts, sampled accuracy {acc:.3f}, "
            f"span tokens {manifest['span_token_fraction']:.2f}, store v{v_last}")
        rcfg = replace(cfg, data={"shards": str(shards)}, optim={"steps": (r + 1) * oc.steps_per_round},
                       run={"plot": r == oc.rounds - 1})
        res = train(rcfg, on_step=on_step, log=lambda s: None if r else log(s))
        last = res["last"]
        rounds.append({"round": r, "versions": {"generate": v_gen, "annotate": v_ann, "final": v_last},
                       "shards": str(shards), "rollouts": mine.num_rows, "train_accuracy": acc})
    (out / "rounds.json").write_text(json.dumps(rounds, indent=1))
    return {"rounds": rounds, "last": last}
