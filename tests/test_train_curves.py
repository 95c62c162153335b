"""curves.png: every panel has labelled axes with units, and a KL panel that ends early says λ
reached 0 there."""

from __future__ import annotations

import json

import pytest

from train.recipe import PLOTTED, curves_figure, plot_metrics


def _rows(steps: int = 12, zero_at: int = 8) -> list[dict]:
    rows = []
    for s in range(steps):
        lam = max(0.0, 0.5 * (zero_at - s) / zero_at)
        r = {"step": s, "loss": 0.1, "reward": 0.5, "lambda": lam, "entropy": 1.2, "response_length": 30.0,
             "clip_frac": 0.0, "span_token_frac": 0.2, "grad_norm": 0.3}
        if lam > 0:
            r["kl_forward"] = 0.01
        rows.append(r)
    return rows


@pytest.mark.parametrize("zero_at,note", [(8, True), (100, False)])
def test_every_panel_is_labelled_and_kl_panels_say_why_they_stop(zero_at, note):
    fig = curves_figure(_rows(zero_at=zero_at), "trace")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.axison}
    assert len(panels) == 9
    for title, ax in panels.items():
        assert ax.get_xlabel() == "optimizer step", title
        assert ax.get_ylabel(), title
    assert panels["entropy"].get_ylabel() == "nats / token"
    assert panels["response length"].get_ylabel() == "tokens"
    texts = [t.get_text() for t in panels[PLOTTED["kl_forward"][0]].texts]
    assert (texts == ["λ = 0 from step 8:\nteacher off, no KL"]) if note else texts == []


def test_plot_metrics_writes_a_png(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    png = plot_metrics(p, tmp_path / "curves.png", title="t")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
