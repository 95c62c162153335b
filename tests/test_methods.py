"""The method table: every row resolves, the random-route control keeps counts, and the loop
source never compares a method's name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from train.methods import ALIASES, LOSS_ADAPTERS, METHODS, ROUTE_TRANSFORMS, method_of


def test_every_row_names_known_parts():
    for m in METHODS.values():
        assert m.loss in LOSS_ADAPTERS and m.route in ROUTE_TRANSFORMS, m.name
    for alias, name in ALIASES.items():
        assert method_of(alias) is METHODS[name]


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="trace-random"):
        method_of("tarce")


@pytest.mark.parametrize("route", [[0, 1, 1, 0, 2, 0, 0, 0], [0] * 8, [2] * 8, [1, 2, 0]])
def test_random_routes_keep_each_label_count_and_are_seeded(route):
    rows = [{"rollout_id": "r1", "route": route}]
    a = ROUTE_TRANSFORMS["random"](rows, 0)[0]["route"]
    b = ROUTE_TRANSFORMS["random"](rows, 0)[0]["route"]
    assert a == b  # same seed and rollout: the same placement (epochs, ranks, micro-batches)
    assert sorted(a) == sorted(route) and len(a) == len(route)
    assert rows[0]["route"] == route  # the input row is not modified


def test_random_routes_move_the_spans():
    route = [1] * 4 + [0] * 60
    moved = [ROUTE_TRANSFORMS["random"]([{"rollout_id": f"r{i}", "route": route}], 0)[0]["route"] for i in range(20)]
    assert sum(m != route for m in moved) >= 19  # C(64, 4) placements: staying put has p ≈ 1.6e-6
    first = np.mean([np.flatnonzero(m)[0] for m in moved])
    assert first > 3  # not biased to the original positions


def test_the_loop_never_compares_a_method_name():
    src = (Path(__file__).resolve().parents[1] / "train" / "recipe.py").read_text()
    names = "|".join(re.escape(n) for n in (*METHODS, *ALIASES))
    assert not re.search(rf"""==\s*["']({names})["']|in \(["']({names})""", src)
