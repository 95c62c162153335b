"""The rollouts stage: G verified rollouts per prompt into a datastore version per batch.

Read top to bottom (`generate_to_store`): setup_generator -> load_prompts -> plan (skip groups
already stored, cut batches) -> for each batch of prompts: generate, verify, write one store version
(so a killed run loses at most one batch and a rerun continues where it stopped, never duplicating
a group) -> tag the final version.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from train.model_names import resolve_model
from train.rollouts.generate import PromptRecord, Sampling
from train.rollouts.prompts import PromptSource


@dataclass(frozen=True)
class GenerateOptions:
    """What one `rollouts generate` run does. `model` is a folder or a `train.model_names` shortcut
    (`toy`, `smollm2`); `model_name` is what the `model` column records (default: `model`).
    `batch_size` counts rows (prompt x sample) per generation batch, and each batch of whole groups
    is written as its own store version. `executor="ray"` generates every missing group on a Ray
    Data actor pool (`ray_address`, at most `ray_actors` actors); the driver still writes batch by
    batch. `vllm_args` is the JSON of extra `vllm.LLM` arguments. `threads` sets torch's CPU threads."""

    model: str
    store: Path
    prompts: PromptSource
    n: int = 8
    verifier: str = "toy-int"
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    batch_size: int = 64
    backend: str = "hf"
    model_name: str | None = None
    device: str | None = None
    dtype: str = "float32"
    vllm_args: str | None = None
    tag: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    ray_actors: int = 2
    threads: int | None = None


@dataclass(frozen=True)
class GenerateResult:
    """What a run did: `rows` rollouts (`groups` of G) written up to store `version` (None: the store
    is empty), `correct` of them correct, `tokens` response tokens in `seconds` of wall time."""

    rows: int
    groups: int
    correct: int
    tokens: int
    seconds: float
    version: int | None


class GenerateInterrupted(KeyboardInterrupt):
    """Ctrl-C after `groups` groups were written by this run (store up to `version`): rerunning the
    same command resumes."""

    def __init__(self, groups: int, version: int | None):
        super().__init__(f"interrupted after {groups} groups (store version {version})")
        self.groups, self.version = groups, version


class _RayPlan:
    """With executor ray the driver loads no model: only the tokenizer (to render prompts) and the
    names that make group ids, so `generate_to_store` reads the same as with a local generator."""

    def __init__(self, path: str, model_name: str, backend: str):
        from transformers import AutoTokenizer

        self.path, self.model_name, self.backend = path, model_name, backend
        self.tokenizer = AutoTokenizer.from_pretrained(path)


def vllm_engine_args(dtype: str, vllm_args: str | None) -> dict:
    """`--dtype` plus the `--vllm-args` JSON object (which wins); a clear error for bad JSON."""
    try:
        extra = json.loads(vllm_args) if vllm_args else {}
    except ValueError as e:
        raise ValueError(f"--vllm-args is not JSON ({e}): e.g. '{{\"max_model_len\": 2048}}'") from None
    if not isinstance(extra, dict):
        raise ValueError("--vllm-args must be a JSON object of vllm.LLM arguments")
    return {"dtype": dtype, **extra}


def check_options(opts: GenerateOptions) -> None:
    """Refuse bad options before any model is loaded."""
    from train.rollouts.verify import get_verifier

    if opts.n < 1 or opts.batch_size < 1 or opts.sampling.max_new_tokens < 1:
        raise ValueError("-n, --batch-size and --max-new-tokens must be at least 1")
    get_verifier(opts.verifier)
    if opts.executor not in ("local", "ray"):
        raise ValueError(f"--executor {opts.executor!r}: expected local or ray")


def setup_generator(opts: GenerateOptions):
    """The generator for `opts.model` (`toy` = the cached SFT'd toy policy, `smollm2` = the converted
    SmolLM2-135M-Instruct folder) and `opts.backend`; with executor ray, only a `_RayPlan`."""
    path, name = resolve_model(opts.model), opts.model_name or opts.model
    if opts.executor == "ray":
        return _RayPlan(path, name, opts.backend)
    if opts.backend == "hf":
        from train.rollouts.hf_generator import HFGenerator

        return HFGenerator.from_pretrained(path, model_name=name, device=opts.device, dtype=opts.dtype,
                                           batch_size=opts.batch_size)
    if opts.backend == "vllm":
        from train.rollouts.vllm_generator import VLLMGenerator

        return VLLMGenerator(path, model_name=name, **vllm_engine_args(opts.dtype, opts.vllm_args))
    raise ValueError(f"--backend {opts.backend!r}: expected hf or vllm")


def stored_groups(store, n: int, wanted: set[str]) -> set[str]:
    """Which of this run's group ids are already complete in the store. A partial group (this
    command always writes whole groups) is an error rather than something to silently top up;
    other runs' groups are none of our business."""
    if store.latest_version() is None:
        return set()
    counts = Counter(g for g in store.read(columns=["group_id"])["group_id"].to_pylist() if g in wanted)
    partial = {g: c for g, c in counts.items() if c != n}
    if partial:
        g, c = next(iter(partial.items()))
        raise ValueError(f"store {store.path}: group {g} has {c} rows, expected -n {n}; refusing to mix group sizes")
    return set(counts)


@dataclass
class _Plan:
    """The run's batches of prompts still to generate (`todo[b]` of batch b of `batches`), cut from
    the full prompt list so that a rerun sees the same batches and regenerates a missing one exactly
    (batch composition never changes what a rollout is)."""

    batches: int
    todo: list[tuple[int, list[PromptRecord]]]
    stored: int

    @property
    def groups(self) -> int:
        return sum(len(batch) for _, batch in self.todo)


def plan_batches(store, records: list[PromptRecord], model_name: str, samp: str, n: int, batch_size: int) -> _Plan:
    """Skip the groups already stored; cut the rest into batches of `batch_size // n` prompts."""
    from datastore.ids import group_id_of

    gid = {r.prompt_id: group_id_of(r.prompt_id, model_name, samp) for r in records}
    done = stored_groups(store, n, set(gid.values()))
    per_batch = max(1, batch_size // n)
    cut = [records[i : i + per_batch] for i in range(0, len(records), per_batch)]
    todo = [(b, [r for r in batch if gid[r.prompt_id] not in done]) for b, batch in enumerate(cut)]
    todo = [(b, batch) for b, batch in todo if batch]
    return _Plan(batches=len(cut), todo=todo, stored=len(records) - sum(len(batch) for _, batch in todo))


def setup_batches(gen, opts: GenerateOptions, plan: _Plan) -> Callable[[list[PromptRecord]], Any]:
    """prompts -> rollout table: `generate_rollouts` here, or the rows of one Ray job that generated
    every missing group ahead (actor start-up is paid once)."""
    import train.rollouts.generate as generate  # looked up at call time: tests inject faults there

    kw = dict(n=opts.n, sampling=opts.sampling, seed=opts.seed, verifier=opts.verifier)
    if opts.executor != "ray":
        return lambda batch: generate.generate_rollouts(gen, batch, **kw)
    from train.rollouts.ray_generate import rollouts_on_ray

    pending = [r for _, batch in plan.todo for r in batch]
    rows = rollouts_on_ray(pending, checkpoint=gen.path, model_name=gen.model_name, backend=opts.backend,
                           actors=opts.ray_actors, address=opts.ray_address,
                           engine_kwargs=vllm_engine_args(opts.dtype, opts.vllm_args), **kw) if pending else None
    return lambda batch: _rows_of(rows, batch)


def generate_to_store(opts: GenerateOptions, console=None) -> GenerateResult:
    """Generate `opts.n` rollouts per prompt, verify them, write each batch as a store version and
    tag the last one. Progress goes to `console` (rich, default stderr). Resumable: groups already
    in the store are skipped, so a rerun of a finished run writes nothing. Raises
    `GenerateInterrupted` on Ctrl-C, after the batches written so far."""
    from rich.console import Console

    from datastore import Store
    from train.rollouts.generate import sampling_json
    from train.rollouts.prompts import load_prompts

    console = console or Console(stderr=True)
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    check_options(opts)
    gen = setup_generator(opts)
    records, source = load_prompts(opts.prompts, gen.tokenizer)
    samp = sampling_json(opts.sampling, n=opts.n, seed=opts.seed, backend=gen.backend)
    store = Store(opts.store)
    plan = plan_batches(store, records, gen.model_name, samp, opts.n, opts.batch_size)
    console.print(f"{len(records)} prompts x {opts.n} samples; {plan.stored} groups already stored, "
                  f"{plan.groups} to go")
    tagged = store.tags().get(opts.tag) if opts.tag else None
    if tagged is not None and plan.groups:  # before any sampling: the name is taken by another run
        raise ValueError(f"tag {opts.tag!r} already exists (on version {tagged['version']}) and this run has "
                         f"{plan.groups} groups to go: pass another --tag")
    t0 = time.time()
    written = _write_batches(store, gen, plan, opts, samp, source, console)
    if opts.tag and written.version is not None and tagged is None:  # a finished tagged run reruns as a no-op
        store.tag(opts.tag, written.version, metadata={"stage": "generate", "model": gen.model_name, "sampling": samp})
    return GenerateResult(rows=written.rows, groups=written.rows // opts.n, correct=written.correct,
                          tokens=written.tokens, seconds=time.time() - t0, version=written.version)


@dataclass
class _Written:
    rows: int = 0
    correct: int = 0
    tokens: int = 0
    version: int | None = None


def _write_batches(store, gen, plan: _Plan, opts: GenerateOptions, samp: str, source: dict, console) -> _Written:
    """Generate and write each planned batch as one store version, with a progress bar; Ctrl-C
    (also during a Ray job) raises `GenerateInterrupted` with what was written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from datastore import Lineage

    out, model_name = _Written(version=store.latest_version()), gen.model_name
    try:
        generate_batch = setup_batches(gen, opts, plan)
        with Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("groups"),
                      TimeElapsedColumn(), TextColumn("{task.fields[acc]}"), console=console) as bar:
            task = bar.add_task("generate", total=plan.groups, acc="")
            for b, batch in plan.todo:
                table = generate_batch(batch)
                lineage = Lineage(
                    stage="generate",
                    model=model_name,
                    extra={"sampling": json.loads(samp), "seed": opts.seed, "verifier": opts.verifier,
                           "prompt_source": source, "batch": b, "batches": plan.batches, "groups": len(batch)},
                )
                out.version = store.write(table, message=f"generate {model_name}: batch {b + 1}/{plan.batches}, "
                                          f"{len(batch)} groups x {opts.n}", lineage=lineage)
                out.rows += table.num_rows
                out.correct += sum(table["correct"].to_pylist())
                out.tokens += sum(len(x) for x in table["response_token_ids"].to_pylist())
                bar.update(task, advance=len(batch), acc=f"accuracy {out.correct / out.rows:.1%}")
    except KeyboardInterrupt:
        raise GenerateInterrupted(out.rows // opts.n, out.version) from None
    return out


def _rows_of(table, batch):
    """The rows of `batch`'s prompts from a table generated ahead (prompt order, then sample index)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array([r.prompt_id for r in batch], pa.string())
    sub = table.filter(pc.is_in(table["prompt_id"], value_set=ids))
    order = pc.index_in(sub["prompt_id"], value_set=ids)
    return sub.take(pc.sort_indices(pa.table({"o": order, "i": pa.array(range(sub.num_rows))}),
                                    sort_keys=[("o", "ascending"), ("i", "ascending")]))
