"""Span-tagged training shards: a datastore version turned into token-level training rows.

Build (``spanroute shards build``) reads one pinned datastore version and writes Parquet shards of
whole GRPO groups plus a ``manifest.json`` that pins the source (store path, resolved version),
the tokenizer (sha256 of its files), the span source, the teacher templates and every shard's
sha256. One row per rollout (columns in ``SHARD_SCHEMA``):

- ``prompt_ids``: the rendered prompt the policy saw, tokenised without added special tokens;
- ``response_ids`` / ``old_logprobs``: the sampled tokens and their behaviour log-probs (nats);
- ``reward``, ``correct``, ``group_id``;
- ``route``: int8 per response token from ``spans.token_routes`` (0 none, 1 key, 2 error);
- ``teacher_prompt_ids_<template>``: the privileged prompt for each teacher template (the teacher
  scores ``teacher prompt + response_ids``; positions align on response tokens).

Rows are sorted by (group_id, rollout_id), so the same version, tokenizer and options give
byte-identical shards. A killed build resumes: finished shards (listed in ``progress.json``
with the same build key) are kept, the rest are written again.

Read: ``ShardReader(dir)`` loads the shards (memory-mapped) and ``BatchStream`` yields batches of
``groups_per_step`` whole groups in a deterministic shuffled order (epoch e uses a permutation
seeded by ``(seed, e)``); its ``state()`` is the data position a checkpoint stores, so a resumed
run continues mid-epoch with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARDS_FORMAT = 1
SPAN_PRIORITY = ("human", "api", "self", "rule")  # `auto` routes on the first present on a row

# Which row field each teacher template needs (templates themselves: train.teacher.TEACHER_TEMPLATES).
_TEMPLATE_FIELDS = {"reference": ("reference",), "error_type": ("error_type",), "skill": ("skill",),
                    "reference+error": ("reference", "error_type")}


def _list(t: pa.DataType) -> pa.DataType:
    return pa.list_(t)


def shard_schema(templates: Iterable[str]) -> pa.Schema:
    fields = [
        pa.field("rollout_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt_ids", _list(pa.int32()), nullable=False),
        pa.field("response_ids", _list(pa.int32()), nullable=False),
        pa.field("old_logprobs", _list(pa.float32()), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("route", _list(pa.int8()), nullable=False),
        pa.field("span_source", pa.string()),
    ]
    fields += [pa.field(f"teacher_prompt_ids_{t}", _list(pa.int32()), nullable=False) for t in templates]
    return pa.schema(fields, metadata={"spanroute.shards_format": str(SHARDS_FORMAT)})


# ----------------------------------------------------------------------------------------- build


def tokenizer_hash(tokenizer_dir: str | Path) -> str:
    """sha256 over the tokenizer's files (names and bytes), so a manifest pins the exact vocabulary."""
    h = hashlib.sha256()
    d = Path(tokenizer_dir)
    names = sorted(p.name for p in d.iterdir() if p.is_file() and (p.name.startswith("tokenizer")
                   or p.name in ("vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.jinja")))
    if not names:
        raise FileNotFoundError(f"no tokenizer files in {d}")
    for name in names:
        h.update(name.encode() + b"\0" + (d / name).read_bytes())
    return h.hexdigest()


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def tokenizer_vocab_hash(tokenizer: Any) -> str:
    """sha256 of the token -> id table (added tokens included), i.e. what a shard's ids mean. Unlike
    `tokenizer_hash` it survives a re-save of the same tokenizer (e.g. a run's ``final/``)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def check_tokenizer(manifest: dict[str, Any], shards: str | Path, tokenizer: Any) -> None:
    """Refuse, in one line naming both, shards whose ids were made by another tokenizer than
    `tokenizer` (the model's): compares the manifest's vocabulary hash (or, for shards built
    before it was recorded, its tokenizer-files hash) with the model's."""
    want = manifest.get("tokenizer_vocab_sha256")
    model_dir = getattr(tokenizer, "name_or_path", "") or "?"
    if want is not None:
        have = tokenizer_vocab_hash(tokenizer)
    else:
        want = manifest.get("tokenizer_sha256")
        have = tokenizer_hash(model_dir) if Path(model_dir).is_dir() else None
    if want is None or want == have:
        return
    src, vocab = manifest.get("tokenizer_path"), manifest.get("tokenizer_vocab_size")
    raise ValueError(
        f"shards {shards} were built with another tokenizer than the model's: shards' tokenizer"
        f"{' ' + src if src else ''} ({f'vocab {vocab}, ' if vocab else ''}sha256 {want[:12]}), model's tokenizer "
        f"{model_dir} (vocab {len(tokenizer)}, sha256 {(have or '?')[:12]}); rebuild them with "
        f"`spanroute shards build --model {model_dir} ...` or train the model they were built for")


def response_offsets(tokenizer: Any, response: str, ids: list[int]) -> np.ndarray:
    """Code-point offsets ``[T, 2]`` (end exclusive) of each sampled token inside `response`.

    Fast path: re-tokenise the text with offsets and use them when the ids agree (trailing special
    tokens allowed: the final EOS is in the ids, not in the text, and gets the empty range at the
    end) **and** every non-special token has ``start < end``. Some fast tokenizers report empty
    offsets for real tokens — Llama-3's ``(0,0),(3,3),(7,7),…`` (tokenizers < 0.20.1 with
    ``ignore_merges``), whitespace-only tokens under ``trim_offsets`` — and trusting those would
    route no token at all. Otherwise (or for a sampled segmentation the tokenizer would not
    produce) decode prefixes: token t covers ``[len(decode(ids[:t])), len(decode(ids[:t+1])))``;
    a special token covers its text where the response holds it (generators decode with
    ``skip_special_tokens=False``) and an empty range where it does not (the final EOS), and every piece of a character split over several tokens
    (byte-level BPE) carries that character, as the fast byte-level offsets do.

    Tokens decoding past the end of `response` (a stop string generation cut off) get the empty
    range at its end. Raises ValueError naming the tokenizer when a decoded prefix and `response`
    part ways (a tokenizer whose decode does not give back the text), since then no offset can be
    trusted.
    """
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if list(enc["input_ids"]) == list(ids[:n]) and all(i in special for i in ids[n:]):
        om = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        real = np.array([i not in special for i in ids[:n]], dtype=bool)
        if bool((om[real, 0] < om[real, 1]).all()):
            out = np.full((len(ids), 2), len(response), dtype=np.int64)
            out[:n] = om
            return out
    return _decoded_offsets(tokenizer, response, ids, special)


def _decoded_offsets(tokenizer: Any, response: str, ids: list[int], special: set[int]) -> np.ndarray:
    out = np.zeros((len(ids), 2), dtype=np.int64)
    prev = 0
    kept: list[int] = []  # the ids whose decoded text is in `response` (generators decode specials as text)
    for t in range(len(ids)):
        text = tokenizer.decode(kept + [ids[t]], skip_special_tokens=False)
        if ids[t] in special:
            # a special token sampled mid-response is in the text; the final EOS is not: empty range
            if response.startswith(text) and len(text) > prev:
                out[t], prev, kept = (prev, len(text)), len(text), kept + [ids[t]]
            else:
                out[t] = (prev, prev)
            continue
        kept.append(ids[t])
        partial = text.endswith("\ufffd") and not response.startswith(text)  # an unfinished UTF-8 sequence
        text = text.rstrip("\ufffd") if partial else text
        if partial and response.startswith(text) and len(text) < len(response):
            # a piece of the next character: it carries that character, as fast byte-level offsets do
            out[t] = (min(prev, len(text)), len(text) + 1)
            prev = max(prev, len(text))
            continue
        if not response.startswith(text) and text.startswith(response):
            text = response  # tokens past the text's end (a stop string cut off the text): empty ranges
        if not response.startswith(text):
            raise ValueError(
                f"tokenizer {_tokenizer_name(tokenizer)}: its offsets are empty or disagree with the ids, and "
                f"decoding token {t} gives {text[-40:]!r}, which is not how the response goes on "
                f"({response[max(prev - 20, 0): prev + 20]!r}); spans cannot be placed on its tokens")
        k = max(len(text), prev)
        out[t] = (prev, k)
        prev = k
    return out


def check_routes(spans: list[dict], offsets: np.ndarray, route: np.ndarray, where: str) -> dict[str, int]:
    """The spans-to-routes round trip of one row: every span must reach at least one token.

    A token reaches a span when its (non-empty) code-point range overlaps it; the token's route is
    then the span's label, or ``error`` where an error span shares it (spans.routes' rule).
    Raises ValueError naming the row and span that no token covers (a span would be lost
    silently). Returns ``{"key": tokens routed 1, "error": tokens routed 2, "spans": n}``.
    """
    s_T, e_T = offsets[:, 0], offsets[:, 1]
    for sp in spans:
        hit = (s_T < sp["end"]) & (e_T > sp["start"]) & (s_T < e_T)
        if not hit.any() or not (route[hit] > 0).all():
            raise ValueError(f"{where}: the {sp['label']} span [{sp['start']}, {sp['end']}) {sp.get('text')!r} "
                             f"routes no token; the tokenizer's offsets lose it")
    return {"key": int((route == 1).sum()), "error": int((route == 2).sum()), "spans": len(spans)}


def choose_spans(spans: list[dict] | None, span_source: str) -> tuple[list[dict], str | None]:
    """The spans one row routes on: those of `span_source`, or under ``auto`` of the first source
    present in human > api > self > rule. Returns (spans, source used or None)."""
    spans = spans or []
    if span_source == "auto":
        present = {s["source"] for s in spans}
        for src in SPAN_PRIORITY:
            if src in present:
                return [s for s in spans if s["source"] == src], src
        return [], None
    chosen = [s for s in spans if s["source"] == span_source]
    return chosen, (span_source if chosen else None)


def teacher_prompt_text(tokenizer: Any, row: dict, template: str) -> str:
    """The rendered privileged prompt of `row` under `template` (``train.teacher``'s templates).

    A row lacking the template's field (no `error_type` on a correct rollout, no skill yet) gets
    the student's own prompt: on that row the teacher is the student.
    """
    from train.teacher import teacher_prompt_text as render

    if not all(row.get(f) for f in _TEMPLATE_FIELDS[template]):
        return row["prompt"]
    return render(tokenizer, row, template)


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def rows_to_shard(table: pa.Table, tokenizer: Any, *, span_source: str = "auto",
                  templates: tuple[str, ...] = ("reference",)) -> pa.Table:
    """Convert rollout rows (ROLLOUT_SCHEMA columns) into shard rows; pure, row order kept."""
    from spans import token_routes  # the spans package owns the char -> token rule

    out: dict[str, list] = {f.name: [] for f in shard_schema(templates)}
    for i, row in enumerate(table.to_pylist()):
        where = f"rollout {row['rollout_id']}"
        ids = row.get("response_token_ids")
        lps = row.get("response_logprobs")
        if ids is None or lps is None:
            raise ValueError(f"{where}: response_token_ids/response_logprobs are missing; shards need the "
                             "sampled tokens and their behaviour log-probs")
        if len(ids) != len(lps):
            raise ValueError(f"{where}: {len(ids)} response_token_ids but {len(lps)} response_logprobs")
        if row.get("reward") is None:
            raise ValueError(f"{where}: reward is null (verify the rollouts first)")
        spans, used = choose_spans(row.get("spans"), span_source)
        offsets = response_offsets(tokenizer, row["response"], ids)
        route = np.asarray(token_routes(spans, offsets, len(ids)), dtype=np.int8) if spans else \
            np.zeros(len(ids), dtype=np.int8)
        check_routes(spans, offsets, route, f"{where} (tokenizer {_tokenizer_name(tokenizer)})")
        out["rollout_id"].append(row["rollout_id"])
        out["group_id"].append(row["group_id"])
        out["prompt_id"].append(row["prompt_id"])
        out["prompt_ids"].append(_tokenize(tokenizer, row["prompt"]))
        out["response_ids"].append(list(ids))
        out["old_logprobs"].append(list(lps))
        out["reward"].append(float(row["reward"]))
        out["correct"].append(bool(row.get("correct")) if row.get("correct") is not None else float(row["reward"]) > 0)
        out["route"].append(route.tolist())
        out["span_source"].append(used)
        for t in templates:
            out[f"teacher_prompt_ids_{t}"].append(_tokenize(tokenizer, teacher_prompt_text(tokenizer, row, t)))
    return pa.table(out, schema=shard_schema(templates))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _group_chunks(group_ids: list[str], rows_per_shard: int) -> list[list[int]]:
    """Row indices per shard: whole groups, about `rows_per_shard` rows each."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i, g in enumerate(group_ids):
        if cur and g != group_ids[i - 1] and len(cur) >= rows_per_shard:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


def build_shards_from_table(table: pa.Table, tokenizer_dir: str | Path, out: str | Path, *,
                            source: dict[str, Any], span_source: str = "auto",
                            templates: tuple[str, ...] = ("reference",), rows_per_shard: int = 4096,
                            progress: Any = None) -> dict[str, Any]:
    """Write shards of `table` into `out`; returns the manifest. See the module docstring.

    `source` is recorded in the manifest (e.g. ``{"store": path, "version": 3}``).
    """
    from transformers import AutoTokenizer

    for t in templates:
        if t not in _TEMPLATE_FIELDS:
            raise ValueError(f"unknown teacher template {t!r}; known: {', '.join(_TEMPLATE_FIELDS)}")
    if span_source != "auto" and span_source not in SPAN_PRIORITY:
        raise ValueError(f"--span-source must be auto or one of {', '.join(SPAN_PRIORITY)}, got {span_source!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_hash = tokenizer_hash(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    table = table.sort_by([("group_id", "ascending"), ("rollout_id", "ascending")])
    key_doc = {"format": SHARDS_FORMAT, "source": source, "tokenizer_sha256": tok_hash,
               "span_source": span_source, "templates": list(templates), "rows_per_shard": rows_per_shard,
               "rows": table.num_rows}
    build_key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()
    manifest_path = out / "manifest.json"
    progress_path = out / "progress.json"
    for p in (manifest_path, progress_path):
        if p.exists():
            old = json.loads(p.read_text())
            if old.get("build_key") != build_key:
                raise ValueError(f"{out} already holds shards of another build ({p.name} differs in source, "
                                 "tokenizer or options); choose a new --out or delete it")
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    done: dict[str, dict] = json.loads(progress_path.read_text())["shards"] if progress_path.exists() else {}

    chunks = _group_chunks(table.column("group_id").to_pylist(), rows_per_shard)
    shards: list[dict] = []
    sources: dict[str, int] = {}
    span_tokens = total_tokens = 0
    routed = {"key": 0, "error": 0}  # response tokens routed to each channel (every span reaches >= 1)
    for k, idx in enumerate(chunks):
        name = f"shard-{k:05d}.parquet"
        path = out / name
        if name in done and path.exists() and _sha256(path) == done[name]["sha256"]:
            shard = pq.read_table(path)
        else:
            shard = rows_to_shard(table.take(idx), tokenizer, span_source=span_source, templates=templates)
            tmp = out / (name + ".tmp")
            pq.write_table(shard, tmp, compression="zstd")
            os.replace(tmp, path)
            done[name] = {"file": name, "rows": shard.num_rows, "sha256": _sha256(path)}
            progress_path.write_text(json.dumps({"build_key": build_key, "shards": done}, indent=1))
        shards.append(done[name])
        for s in shard.column("span_source").to_pylist():
            sources[str(s)] = sources.get(str(s), 0) + 1
        routes = shard.column("route").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        span_tokens += int((routes > 0).sum())
        routed["key"] += int((routes == 1).sum())
        routed["error"] += int((routes == 2).sum())
        total_tokens += int(routes.size)
        if progress is not None:
            progress(k + 1, len(chunks))
    manifest = {**key_doc, "build_key": build_key, "tokenizer_path": str(tokenizer_dir),
                "tokenizer_vocab_sha256": tokenizer_vocab_hash(tokenizer), "tokenizer_vocab_size": len(tokenizer),
                "shards": shards, "groups": len(set(table.column("group_id").to_pylist())),
                "rows_by_span_source": sources, "response_tokens": total_tokens,
                "span_token_fraction": span_tokens / max(total_tokens, 1), "routed_span_tokens": routed}
    manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
    progress_path.unlink(missing_ok=True)
    return manifest


def build_shards(store: str | Path, version: int | str | None, tokenizer_dir: str | Path, out: str | Path,
                 **kwargs: Any) -> dict[str, Any]:
    """Read `version` (number, tag, or None for latest) of the datastore at `store` and build shards."""
    from datastore import Store

    st = Store.open(str(store))
    v = st.resolve(version) if version is not None else st.latest_version()
    if v is None:
        raise ValueError(f"store {store} holds no versions yet")
    table = st.read(version=v)
    return build_shards_from_table(table, tokenizer_dir, out, source={"store": str(Path(store).resolve()),
                                   "version": int(v), "tag": version if isinstance(version, str) else None}, **kwargs)


# ------------------------------------------------------------------------------------------ read


class ShardReader:
    """All rows of a shard folder, with the row indices of each group in first-seen order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"{self.path} has no manifest.json (an unfinished or missing shard build)")
        self.manifest = json.loads(mpath.read_text())
        tables = [pq.read_table(self.path / s["file"], memory_map=True) for s in self.manifest["shards"]]
        if not tables:
            raise ValueError(f"{self.path}: the manifest lists no shards")
        self.table = pa.concat_tables(tables)
        groups: dict[str, list[int]] = {}
        for i, g in enumerate(self.table.column("group_id").to_pylist()):
            groups.setdefault(g, []).append(i)
        self.group_rows: list[list[int]] = list(groups.values())
        self.templates: list[str] = list(self.manifest.get("templates", []))

    @property
    def num_groups(self) -> int:
        return len(self.group_rows)


@dataclass
class BatchStream:
    """Deterministic shuffled batches of whole groups; `state()` is the resumable data position."""

    reader: ShardReader
    groups_per_step: int
    seed: int = 0
    epoch: int = 0
    position: int = 0  # groups already consumed in this epoch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.reader.num_groups)

    def next(self) -> pa.Table:
        """The next batch (rows of `groups_per_step` groups); wraps into the next epoch."""
        if self.groups_per_step > self.reader.num_groups:
            raise ValueError(f"groups_per_step={self.groups_per_step} exceeds the {self.reader.num_groups} "
                             f"groups in {self.reader.path}")
        if self.position + self.groups_per_step > self.reader.num_groups:
            self.epoch, self.position = self.epoch + 1, 0  # drop the ragged tail: every batch is full
        order = self._order(self.epoch)[self.position: self.position + self.groups_per_step]
        self.position += self.groups_per_step
        rows = [i for g in order for i in self.reader.group_rows[g]]
        return self.reader.table.take(rows)

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
