"""`python -m train.toy build|measure`: build the toy policy (progress bar on stderr) or measure one.

    python -m train.toy build            # the default recipe into ~/.cache/spanroute (or $SPANROUTE_CACHE)
    python -m train.toy build --ship     # ... into train/weights/ (what the repository ships)
    python -m train.toy measure DIR      # the three capabilities of a policy folder, as JSON
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.toy", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the default toy policy (cached by recipe hash)")
    b.add_argument("--ship", action="store_true", help="build into train/weights/ (the shipped copy)")
    b.add_argument("--cache-dir", default=None, help="cache root (default $SPANROUTE_CACHE or ~/.cache/spanroute)")
    b.add_argument("--measure-problems", type=int, default=200, help="held-out problems to measure on (0: skip)")
    m = sub.add_parser("measure", help="measure a policy folder's three capabilities")
    m.add_argument("path", help="a policy folder in save_pretrained format (config.json, weights, tokenizer)")
    m.add_argument("--problems", type=int, default=200, help="held-out problems (seed 4242), 4 samples each (default 200)")
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        from pathlib import Path

        from train.toy.measure import measure_policy

        if not (Path(args.path) / "config.json").is_file():
            m.error(f"{args.path}: not a policy folder (no config.json)")
        if args.problems < 1:
            m.error(f"--problems must be at least 1, got {args.problems}")

        print(json.dumps(measure_policy(args.path, n_problems=args.problems, n_annotate=min(120, args.problems)), indent=2))
        return 0
    from train.toy.policy import SHIPPED_WEIGHTS, toy_policy

    cache = str(SHIPPED_WEIGHTS) if args.ship else args.cache_dir
    path = toy_policy(cache_dir=cache, measure_problems=args.measure_problems)
    print(path)
    print((path / "toy_policy.json").read_text(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
