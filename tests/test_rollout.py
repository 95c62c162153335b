"""Rollout generation on the transformers backend with a tiny random model: log-probs, seeds,
stop strings, schema, rewards, and the `spanroute rollouts generate` command (incl. kill+resume)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datastore.schema import ROLLOUT_SCHEMA
from train.rollouts.generate import PromptRecord, Sample, Sampling, generate_rollouts
from train.rollouts.hf_generator import HFGenerator, logprob_max_abs_diff, teacher_forced_logprobs
from train.toy import build_tokenizer, make_problems, tiny_model, toy_prompt_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy 2-core box OpenMP barriers make
    # two threads many times slower; results are the same either way.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok, model):
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _records(tok, n=6, seed=0):
    return toy_prompt_records(make_problems(n, seed), tok)


@pytest.mark.parametrize(
    "sampling",
    [Sampling(max_new_tokens=24), Sampling(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=24)],
    ids=["t1", "filtered"],
)
def test_logprobs_are_raw_and_match_teacher_forcing(tok, model, sampling):
    gen = HFGenerator(model, tok, model_name="tiny", batch_size=8)
    table = generate_rollouts(gen, _records(tok), n=3, sampling=sampling, seed=1)
    diff = logprob_max_abs_diff(model, tok, table)
    print(f"logprob max abs diff vs teacher-forced forward ({sampling}): {diff:.2e}")
    assert diff <= 1e-4
    # the logprobs are of the raw distribution: with filtering they are NOT the filtered ones, whose
    # kept tokens would all have log-prob >= log(1/20) under top-k 20
    if sampling.top_k:
        flat = [x for row in table["response_logprobs"].to_pylist() for x in row]
        assert min(flat) < -4.0


def test_samples_do_not_depend_on_batching(tok, model):
    recs = _records(tok)
    s = Sampling(max_new_tokens=16)
    a = generate_rollouts(HFGenerator(model, tok, model_name="m", batch_size=1), recs, n=3, sampling=s, seed=5)
    b = generate_rollouts(HFGenerator(model, tok, model_name="m", batch_size=64), recs, n=3, sampling=s, seed=5)
    c = generate_rollouts(HFGenerator(model, tok, model_name="m", batch_size=64), recs[3:], n=3, sampling=s, seed=5)
    assert a["rollout_id"].to_pylist() == b["rollout_id"].to_pylist()
    assert a["response_token_ids"].to_pylist() == b["response_token_ids"].to_pylist()
    assert c["rollout_id"].to_pylist() == b["rollout_id"].to_pylist()[9:]
    d = generate_rollouts(HFGenerator(model, tok, model_name="m", batch_size=64), recs, n=3, sampling=s, seed=6)
    assert d["response"].to_pylist() != b["response"].to_pylist()  # the seed matters
    group = b["response"].to_pylist()[:3]
    assert len(set(group)) == 3  # samples within a group differ


def test_greedy_matches_transformers_generate(tok, model):
    import torch

    rec = _records(tok, 1)[0]
    gen = HFGenerator(model, tok, model_name="m")
    [[s]] = gen.generate([rec.prompt], n=1, sampling=Sampling(temperature=0, max_new_tokens=12), seeds=[0])
    ids = tok(rec.prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = model.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    assert s.token_ids == ref[0, ids["input_ids"].shape[1] :].tolist()[: len(s.token_ids)]


def test_stop_strings_and_eos_convention(tok, model):
    recs = _records(tok, 8)
    gen = HFGenerator(model, tok, model_name="m", batch_size=32)
    groups = gen.generate([r.prompt for r in recs], n=4, sampling=Sampling(max_new_tokens=40, stop=("=", "\n")), seeds=list(range(8)))
    stopped = 0
    for group in groups:
        for s in group:
            assert len(s.token_ids) == len(s.logprobs) <= 40
            if s.token_ids and s.token_ids[-1] == tok.eos_token_id:
                assert s.text == tok.decode(s.token_ids[:-1], skip_special_tokens=False)
            else:
                assert s.text == tok.decode(s.token_ids, skip_special_tokens=False)
            if s.finish_reason == "stop" and s.token_ids[-1] != tok.eos_token_id:
                stopped += 1
                # it stops at the first stop string: the text without its last token has none
                assert "=" in s.text or "\n" in s.text
                head = tok.decode(s.token_ids[:-1], skip_special_tokens=False)
                assert "=" not in head and "\n" not in head
            if s.finish_reason == "length":
                assert len(s.token_ids) == 40
    assert stopped > 0


class ScriptedGenerator:
    """A Generator that answers with the reference (even samples) or a wrong answer (odd ones):
    checks that generate_rollouts verifies what it is given. Not a stand-in for a model."""

    model_name = "scripted"
    backend = "scripted"

    def generate(self, prompts, *, n, sampling, seeds):
        out = []
        for p in prompts:
            q = re.search(r"Compute (.*)\.<\|im_end\|>", p).group(1)
            value = eval(q)  # the question is a plain Python expression
            out.append([Sample(f"Answer: {value if j % 2 == 0 else value + 1}", [1, 2], [-0.5, -0.25], "stop") for j in range(n)])
        return out


def test_rows_schema_groups_and_rewards(tok):
    recs = _records(tok, 5)
    table = generate_rollouts(ScriptedGenerator(), recs, n=4, sampling=Sampling(), seed=0, verifier="toy-int")
    assert table.schema.equals(ROLLOUT_SCHEMA, check_metadata=False)
    assert table.num_rows == 20
    assert len(set(table["rollout_id"].to_pylist())) == 20
    for r in recs:
        rows = [x for x in table.to_pylist() if x["prompt_id"] == r.prompt_id]
        assert len(rows) == 4 and len({x["group_id"] for x in rows}) == 1
    assert table["correct"].to_pylist() == [True, False, True, False] * 5
    assert table["reward"].to_pylist() == [1.0, 0.0, 1.0, 0.0] * 5
    assert set(table["verifier"].to_pylist()) == {"toy-int"}
    assert json.loads(table["sampling"][0].as_py())["n"] == 4
    assert table["messages"][0].as_py() == [{"role": "user", "content": make_problems(5, 0)[0].question}]


# ---------------------------------------------------------------------------------------------
# the command


def _cli(*args: str) -> int:
    from train.cli import main

    return main(list(args))


def _independent_reward(row) -> float:
    """Recompute a toy reward without train.rollouts.verify: evaluate the question, read `Answer:`."""
    q = re.search(r"Compute (.*)\.<\|im_end\|>", row["prompt"]).group(1)
    m = re.search(r"Answer:\s*(-?\d+)", row["response"])
    return float(m is not None and int(m.group(1)) == eval(q))


def test_cli_generate_writes_verified_rows(tmp_path, model_dir, tok, model):
    from datastore import Store

    store = tmp_path / "store"
    args = ["rollouts", "generate", "--model", str(model_dir), "--toy", "10", "--store", str(store), "-n", "4",
            "--max-new-tokens", "20", "--batch-size", "16", "--seed", "3", "--tag", "gen-test"]
    assert _cli(*args) == 0
    s = Store(store)
    table = s.read()
    assert table.num_rows == 40
    assert table.select(ROLLOUT_SCHEMA.names).schema.equals(ROLLOUT_SCHEMA, check_metadata=False)
    per_prompt = {}
    for row in table.to_pylist():
        per_prompt.setdefault(row["prompt_id"], []).append(row)
        assert row["reward"] == _independent_reward(row)
        assert row["correct"] == (row["reward"] == 1.0)
        assert len(row["response_token_ids"]) == len(row["response_logprobs"]) > 0
    assert sorted(len(v) for v in per_prompt.values()) == [4] * 10
    diff = logprob_max_abs_diff(model, tok, table)
    print(f"CLI rows: logprob max abs diff vs teacher-forced forward: {diff:.2e}")
    assert diff <= 1e-4
    [info] = [v for v in s.versions() if "gen-test" in v.tags]
    assert info.version == s.latest_version()
    lin = info.lineage
    assert lin["stage"] == "generate" and lin["model"] == str(model_dir)
    assert lin["extra"]["seed"] == 3 and lin["extra"]["prompt_source"] == {"toy": 10, "toy_seed": 0}
    assert lin["extra"]["sampling"]["max_new_tokens"] == 20
    # a rerun has nothing left to do and writes nothing
    before = s.latest_version()
    assert _cli(*args[:-2]) == 0
    assert s.latest_version() == before
    # another run (other G) into the same store adds its own groups next to these
    assert _cli(*[a if a != "4" else "2" for a in args[:-2]], "--limit", "3") == 0
    assert s.read().num_rows == 46


def test_cli_reads_jsonl_parquet_and_datasets_with_mapping(tmp_path, model_dir):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datastore import Store

    rows = [{"problem": f"What is {i} + {i}?", "answer": 2 * i, "junk": "x"} for i in range(3)]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hf"))
    for i, src in enumerate(["p.jsonl", "p.parquet", "hf"]):
        store = tmp_path / f"s{i}"
        assert _cli("rollouts", "generate", "--model", str(model_dir), "--prompts", str(tmp_path / src),
                    "--map", "problem=question", "--map", "answer=reference", "--verifier", "last-int",
                    "--store", str(store), "-n", "2", "--max-new-tokens", "8") == 0
        t = Store(store).read()
        assert t.num_rows == 6
        assert sorted(set(t["reference"].to_pylist())) == ["0", "2", "4"]
        assert all(p.startswith("<|im_start|>user\nWhat is ") for p in t["prompt"].to_pylist())


def test_cli_errors_name_row_and_column(tmp_path, model_dir, capsys):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "hi"}) + "\n")
    rc = _cli("rollouts", "generate", "--model", str(model_dir), "--prompts", str(tmp_path / "bad.jsonl"),
              "--store", str(tmp_path / "s"), "-n", "2")
    assert rc == 1
    err = capsys.readouterr().err
    assert "row 0" in err and "'reference'" in err
    rc = _cli("rollouts", "generate", "--model", str(model_dir), "--toy", "2", "--store", str(tmp_path / "s"),
              "--verifier", "nope")
    assert rc == 1 and "unknown verifier 'nope'" in capsys.readouterr().err


def test_killed_run_resumes_to_exactly_the_uninterrupted_groups(tmp_path, model_dir):
    """SIGKILL a real `rollouts generate` process mid-run, rerun it, and compare with a run that was
    never interrupted: the same rollout ids, tokens and log-probs, no group twice."""
    from datastore import Store

    def args(store):
        return ["rollouts", "generate", "--model", str(model_dir), "--toy", "24", "--store", str(store), "-n", "2",
                "--max-new-tokens", "16", "--batch-size", "4", "--seed", "7", "--threads", "1"]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _cli(*args(whole)) == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "train.cli", *args(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if killed.exists() and (Store(killed).latest_version() or 0) >= 2:  # two batches written
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Store(killed).read()
    assert 0 < partial.num_rows < 48

    assert _cli(*args(killed)) == 0
    a = Store(whole).read().sort_by("rollout_id")
    b = Store(killed).read().sort_by("rollout_id")
    cols = ["rollout_id", "group_id", "prompt_id", "response", "response_token_ids", "response_logprobs", "reward"]
    assert a.select(cols).equals(b.select(cols))
    assert b.num_rows == 48 and len(set(b["group_id"].to_pylist())) == 24


def test_teacher_forced_helper_on_known_tokens(tok, model):
    rec = _records(tok, 1)[0]
    ids = tok("17 + 25 = 42", add_special_tokens=False)["input_ids"]
    lps = teacher_forced_logprobs(model, tok, rec.prompt, ids)
    assert len(lps) == len(ids) and all(x < 0 for x in lps)


def test_prompt_record_is_hashable_config():
    r = PromptRecord("a", "b", "c")
    assert r == PromptRecord("a", "b", "c")
