"""Span-tagged training shards: a datastore version turned into token-level training rows.

Build (``spanroute shards build``) reads one pinned datastore version and writes Parquet shards of
whole GRPO groups plus a ``manifest.json`` that pins the source (store path, resolved version),
the tokenizer (sha256 of its files), the span source, the teacher templates and every shard's
sha256. One row per rollout (columns in ``SHARD_SCHEMA``):

- ``prompt_ids``: the rendered prompt the policy saw, tokenised without added special tokens;
- ``response_ids`` / ``old_logprobs``: the sampled tokens and their behaviour log-probs (nats);
- ``reward``, ``correct``, ``group_id``;
- ``route``: int8 per response token (0 none, 1 key, 2 error), for a whole shard at once from the
  Arrow ``spans`` column (``spans.token_routes_flat``; every span must reach a token);
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
import pyarrow.compute as pc
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
    return batch_response_offsets(tokenizer, [response], np.asarray(ids, dtype=np.int64).reshape(-1),
                                  np.array([0, len(ids)], dtype=np.int64))


def batch_response_offsets(tokenizer: Any, responses: list[str], ids_N: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """`response_offsets` of many rows at once: offsets ``[N, 2]`` of the flat sampled ids ``ids_N``
    (row b owns ``ids_N[splits[b]:splits[b+1]]``, Arrow list layout). One batched tokenizer call and
    whole-array checks of the fast path; only rows that fail it decode prefixes."""
    from itertools import chain

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special_arr = np.array(sorted(special), dtype=np.int64)
    enc = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True) if responses else \
        {"input_ids": [], "offset_mapping": []}
    n_B = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    len_B = np.diff(splits)
    B, M = len(len_B), int(n_B.sum())
    enc_M = np.fromiter(chain.from_iterable(enc["input_ids"]), dtype=np.int64, count=M)
    om_M2 = np.fromiter(chain.from_iterable(chain.from_iterable(enc["offset_mapping"])), dtype=np.int64,
                        count=2 * M).reshape(-1, 2)
    # Re-tokenised token k of row b sits at ids_N[splits[b] + k] when the row's ids start with it.
    row_M = np.repeat(np.arange(B), n_B)
    fits_M = (n_B <= len_B)[row_M]
    pos_M = np.where(fits_M, splits[:-1][row_M] + np.arange(M) - np.repeat(np.cumsum(n_B) - n_B, n_B), 0)
    same_M = fits_M & (ids_N[pos_M] == enc_M) if len(ids_N) else fits_M
    good_M = same_M & (np.isin(enc_M, special_arr) | (om_M2[:, 0] < om_M2[:, 1]))  # real tokens non-empty
    row_N = np.repeat(np.arange(B), len_B)
    tail_N = np.arange(len(ids_N)) - np.repeat(splits[:-1], len_B) >= n_B[row_N]  # past the text: specials only
    bad_B = (np.bincount(row_M[~good_M], minlength=B) > 0) | (n_B > len_B) | \
        (np.bincount(row_N[tail_N & ~np.isin(ids_N, special_arr)], minlength=B) > 0)
    out = np.repeat(np.array([[len(r), len(r)] for r in responses], dtype=np.int64).reshape(-1, 2), len_B, axis=0)
    ok_M = ~bad_B[row_M]
    out[pos_M[ok_M]] = om_M2[ok_M]
    for b in np.flatnonzero(bad_B):
        out[splits[b]: splits[b + 1]] = _decoded_offsets(tokenizer, responses[b],
                                                         ids_N[splits[b]: splits[b + 1]].tolist(), special)
    return out


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


def rows_to_shard(table: pa.Table, tokenizer: Any, *, span_source: str = "auto",
                  templates: tuple[str, ...] = ("reference",)) -> pa.Table:
    """Convert rollout rows (ROLLOUT_SCHEMA columns) into shard rows; pure, row order kept.

    Column at a time: the token columns pass through as Arrow, routes come from the Arrow ``spans``
    column in one ``spans.token_routes_flat`` call over the flat offsets, and each distinct prompt
    is tokenised once, in one batched tokenizer call. Refuses (ValueError naming the rollout) rows
    without sampled tokens, log-probs or reward, and any span no token reaches.
    """
    from spans import span_arrays, token_routes_flat  # the spans package owns the char -> token rule

    schema = shard_schema(templates)
    if table.num_rows == 0:
        return schema.empty_table()
    _check_rollout_columns(table)
    ids_col = table.column("response_token_ids").combine_chunks().cast(pa.list_(pa.int32()))
    splits = np.zeros(table.num_rows + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(ids_col).to_numpy(), out=splits[1:])
    ids_N = pc.list_flatten(ids_col).to_numpy().astype(np.int64)
    offsets_N2 = batch_response_offsets(tokenizer, table.column("response").to_pylist(), ids_N, splits)
    start_S, end_S, code_S, row_S = span_arrays(_column(table, "spans"))
    keep_S, used = _chosen_spans(_column(table, "spans"), row_S, table.num_rows, span_source)
    tokens_S = np.zeros(int(keep_S.sum()), dtype=np.int64)
    route_N = token_routes_flat(offsets_N2[:, 0], offsets_N2[:, 1], splits, start_S[keep_S], end_S[keep_S],
                                code_S[keep_S], row_S[keep_S], span_tokens_S=tokens_S)
    if (tokens_S == 0).any():  # a span no token reaches: the per-row check names it
        b = int(row_S[keep_S][np.argmax(tokens_S == 0)])
        spans, _ = choose_spans(table.column("spans")[b].as_py(), span_source)
        check_routes(spans, offsets_N2[splits[b]: splits[b + 1]], route_N[splits[b]: splits[b + 1]],
                     f"rollout {table.column('rollout_id')[b].as_py()} (tokenizer {_tokenizer_name(tokenizer)})")
        raise AssertionError(f"row {b}: token_routes_flat lost a span that check_routes finds")
    reward = table.column("reward").combine_chunks().cast(pa.float32())
    correct = pc.if_else(pc.is_null(_column(table, "correct")), pc.greater(reward, 0), _column(table, "correct"))
    cols = {
        "rollout_id": table.column("rollout_id"), "group_id": table.column("group_id"),
        "prompt_id": table.column("prompt_id"),
        "prompt_ids": _tokenize_column(tokenizer, table.column("prompt").to_pylist()),
        "response_ids": ids_col, "old_logprobs": table.column("response_logprobs").cast(pa.list_(pa.float32())),
        "reward": reward, "correct": correct,
        "route": pa.ListArray.from_arrays(pa.array(splits.astype(np.int32)), pa.array(route_N, pa.int8())),
        "span_source": pa.array(used, pa.string()),
    }
    if templates:
        rows = table.select([c for c in _TEACHER_COLUMNS if c in table.column_names]).to_pylist()
        for t in templates:
            cols[f"teacher_prompt_ids_{t}"] = _tokenize_column(tokenizer, _teacher_texts(tokenizer, rows, t))
    one = [x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x for x in (cols[f.name] for f in schema)]
    return pa.Table.from_arrays([x.cast(f.type) for x, f in zip(one, schema)], schema=schema)


_TEACHER_COLUMNS = ("rollout_id", "prompt", "messages", "reference", "error_type", "skill")


def _column(table: pa.Table, name: str) -> pa.Array:
    """Column `name` as one array; all nulls (of the rollout schema's type) when the table lacks it."""
    if name in table.column_names:
        return table.column(name).combine_chunks()
    from datastore.schema import ROLLOUT_SCHEMA

    return pa.nulls(table.num_rows, ROLLOUT_SCHEMA.field(name).type)


def _check_rollout_columns(table: pa.Table) -> None:
    """The per-row preconditions on whole columns; raises for the first bad row, in row order."""
    ids, lps = _column(table, "response_token_ids"), _column(table, "response_logprobs")
    missing_B = pc.or_(pc.is_null(ids), pc.is_null(lps)).to_numpy(zero_copy_only=False)
    n_ids = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    n_lps = pc.list_value_length(lps).to_numpy(zero_copy_only=False)
    mismatch_B = ~missing_B & (np.nan_to_num(n_ids, nan=0) != np.nan_to_num(n_lps, nan=0))
    no_reward_B = pc.is_null(_column(table, "reward")).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(missing_B | mismatch_B | no_reward_B)
    if not len(bad):
        return
    i = int(bad[0])
    where = f"rollout {table.column('rollout_id')[i].as_py()}"
    if missing_B[i]:
        raise ValueError(f"{where}: response_token_ids/response_logprobs are missing; shards need the "
                         "sampled tokens and their behaviour log-probs")
    if mismatch_B[i]:
        raise ValueError(f"{where}: {int(n_ids[i])} response_token_ids but {int(n_lps[i])} response_logprobs")
    raise ValueError(f"{where}: reward is null (verify the rollouts first)")


def _chosen_spans(spans: pa.Array, row_S: np.ndarray, n_rows: int, span_source: str
                  ) -> tuple[np.ndarray, list[str | None]]:
    """`choose_spans` on the flat spans of a column: (keep mask over the flat spans, source used per
    row or None). Under ``auto`` each row keeps the spans of its first present source in
    ``SPAN_PRIORITY``."""
    source = pc.list_flatten(spans.fill_null(pa.scalar([], type=spans.type))).field("source")
    names = SPAN_PRIORITY if span_source == "auto" else (span_source,)
    rank_S = np.full(len(row_S), len(names), dtype=np.int64)  # index in `names`; len(names): not a candidate
    for k, name in enumerate(names):
        rank_S[pc.equal(source, name).fill_null(False).to_numpy(zero_copy_only=False)] = k
    best_B = np.full(n_rows, len(names), dtype=np.int64)
    np.minimum.at(best_B, row_S, rank_S)
    used = [names[k] if k < len(names) else None for k in best_B.tolist()]
    return (rank_S < len(names)) & (rank_S == best_B[row_S]), used


def _tokenize_column(tokenizer: Any, texts: list[str]) -> pa.Array:
    """``list<int32>`` ids of each text (no special tokens added); each distinct text tokenised once."""
    index: dict[str, int] = {}
    inverse = [index.setdefault(t, len(index)) for t in texts]
    ids = tokenizer(list(index), add_special_tokens=False)["input_ids"] if index else []
    return pa.array(ids, pa.list_(pa.int32())).take(pa.array(inverse, pa.int64()))


def _teacher_texts(tokenizer: Any, rows: list[dict], template: str) -> list[str]:
    """`teacher_prompt_text` of each row; rows that agree on everything it reads render once
    (the prompt, the chat, the template's fields, and the skill, which is always parsed)."""
    cache: dict[str, str] = {}
    out = []
    read = ("prompt", "messages", "skill", *_TEMPLATE_FIELDS[template])
    for row in rows:
        key = json.dumps([row.get(c) for c in read], ensure_ascii=False)
        if key not in cache:
            cache[key] = teacher_prompt_text(tokenizer, row, template)
        out.append(cache[key])
    return out


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
