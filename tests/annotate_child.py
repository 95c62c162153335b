"""Run one api annotation job over records from a JSON file, in its own process (so a test can
SIGKILL it mid-job), and write the results as JSON. Usage: python annotate_child.py ARGS.json"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate.api import ApiAnnotator  # noqa: E402
from annotate.engine import EngineConfig  # noqa: E402
from annotate.pricing import Price  # noqa: E402


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    records = json.loads(Path(args["records"]).read_text())
    cfg = EngineConfig(base_url=args["base_url"], cache_path=Path(args["cache"]), concurrency=args.get("concurrency", 8),
                       timeout_s=args.get("timeout_s", 5.0), backoff_base_s=0.02, price=Price(1.0, 2.0),
                       max_cost_usd=args.get("max_cost"), progress=False, max_attempts=10)
    ann = ApiAnnotator(cfg, "scripted")
    results = ann.annotate(records)
    out = {"results": [asdict(r) for r in results], "summary": ann.summary.as_dict()}
    Path(args["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
