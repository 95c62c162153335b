"""Shards: deterministic, resumable, pinned by a manifest; routes and teacher prompts right; the
reader shuffles whole groups deterministically and resumes mid-epoch."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import train.shards as S
from tests.train_fixtures import make_policy, one_thread, toy_rollouts


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    policy = make_policy(d / "policy")
    return policy, toy_rollouts(policy, n_prompts=5, group=4)


def _build(table, policy, out, **kw):
    kw.setdefault("templates", ("reference", "error_type"))
    return S.build_shards_from_table(table, policy, out, source={"test": 1}, rows_per_shard=6, **kw)


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("shard-*.parquet"))}


def test_build_is_deterministic_and_pinned(world, tmp_path):
    policy, table = world
    m1 = _build(table, policy, tmp_path / "a")
    _build(table.take(list(reversed(range(table.num_rows)))), policy, tmp_path / "b")  # input order is irrelevant
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert m1["tokenizer_sha256"] == S.tokenizer_hash(policy) and m1["source"] == {"test": 1}
    assert m1["rows"] == table.num_rows == sum(s["rows"] for s in m1["shards"])
    assert len(m1["shards"]) > 1 and m1["groups"] == 5
    for s in m1["shards"]:  # whole groups per shard
        gids = pq.read_table(tmp_path / "a" / s["file"]).column("group_id").to_pylist()
        assert all(gids.count(g) == 4 for g in set(gids))


def test_routes_and_teacher_prompts(world, tmp_path):
    from transformers import AutoTokenizer

    policy, table = world
    _build(table, policy, tmp_path / "s")
    tok = AutoTokenizer.from_pretrained(policy)
    shard = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "s").glob("shard-*.parquet")))
    src = {r["rollout_id"]: r for r in table.to_pylist()}
    for row in shard.to_pylist():
        r = src[row["rollout_id"]]
        assert len(row["route"]) == len(row["response_ids"]) == len(row["old_logprobs"])
        assert row["route"][-1] == 0  # the final EOS is outside every span
        (span,) = r["spans"]
        code = 1 if span["label"] == "key" else 2
        routed = tok.decode([t for t, c in zip(row["response_ids"], row["route"]) if c == code])
        assert routed.strip() == span["text"].strip()
        assert set(row["route"]) <= {0, code}
        assert r["reference"] in tok.decode(row["teacher_prompt_ids_reference"])
        assert r["reference"] not in tok.decode(row["prompt_ids"])  # the student never sees it
        et = tok.decode(row["teacher_prompt_ids_error_type"])
        if r["correct"]:  # no error type: the teacher is the student on this template
            assert row["teacher_prompt_ids_error_type"] == row["prompt_ids"]
        else:
            assert "arithmetic" in et


def test_offsets_without_the_tokenizers_own_segmentation(world):
    from transformers import AutoTokenizer

    policy, _ = world
    tok = AutoTokenizer.from_pretrained(policy)
    text = "12 + 7 = 19\nAnswer: 19"
    # a sampled segmentation the tokenizer would not produce: one token per character
    ids = [tok.convert_tokens_to_ids(t) for t in tok.convert_ids_to_tokens(
        [i for ch in text for i in tok(ch, add_special_tokens=False)["input_ids"]])] + [tok.eos_token_id]
    om = S.response_offsets(tok, text, ids)
    assert [text[a:b] for a, b in om[:-1]] == list(text)
    assert tuple(om[-1]) == (len(text), len(text))


def test_span_source_choice():
    spans = [dict(start=0, end=2, label="key", source="rule", annotator="r", text="ab"),
             dict(start=3, end=4, label="error", source="human", annotator="h", text="d")]
    assert S.choose_spans(spans, "auto") == ([spans[1]], "human")
    assert S.choose_spans(spans, "rule") == ([spans[0]], "rule")
    assert S.choose_spans(spans, "api") == ([], None)


def test_killed_build_resumes_and_matches(world, tmp_path, monkeypatch):
    policy, table = world
    _build(table, policy, tmp_path / "ref")
    real, calls = S.rows_to_shard, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the second shard
        return real(*a, **k)

    monkeypatch.setattr(S, "rows_to_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        _build(table, policy, tmp_path / "run")
    assert not (tmp_path / "run" / "manifest.json").exists()
    calls.clear()
    monkeypatch.setattr(S, "rows_to_shard", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    m = _build(table, policy, tmp_path / "run")
    assert len(calls) == len(m["shards"]) - 1  # the finished first shard was kept
    assert _digests(tmp_path / "run") == _digests(tmp_path / "ref")
    with pytest.raises(ValueError, match="another build"):
        _build(table, policy, tmp_path / "run", span_source="rule")


def test_build_from_a_store_version_pins_it(world, tmp_path):
    from datastore import Lineage, Store

    policy, table = world
    store = Store(tmp_path / "store")
    v1 = store.write(table, message="gen", lineage=Lineage(stage="generate"))
    store.write(toy_rollouts(policy, n_prompts=2, group=2, seed=9), message="more", lineage=Lineage(stage="generate"))
    m = S.build_shards(tmp_path / "store", v1, policy, tmp_path / "s", templates=("reference",))
    assert m["source"]["version"] == v1 and m["rows"] == table.num_rows


def test_reader_shuffles_whole_groups_and_resumes_mid_epoch(world, tmp_path):
    policy, table = world
    _build(table, policy, tmp_path / "s")
    reader = S.ShardReader(tmp_path / "s")
    a = S.BatchStream(reader, groups_per_step=2, seed=3)
    batches = [a.next().column("rollout_id").to_pylist() for _ in range(5)]  # crosses an epoch (5 groups)
    assert all(len(b) == 8 for b in batches)
    assert a.epoch == 2
    b = S.BatchStream(reader, groups_per_step=2, seed=3)
    b.next()
    saved = json.loads(json.dumps(b.state()))
    c = S.BatchStream(reader, groups_per_step=2, seed=0)
    c.load_state(saved)
    assert [c.next().column("rollout_id").to_pylist() for _ in range(4)] == batches[1:]
    other = S.BatchStream(reader, groups_per_step=2, seed=4)
    assert [other.next().column("rollout_id").to_pylist() for _ in range(2)] != batches[:2]
