"""`spanroute spans` commands: look at spans."""

from __future__ import annotations

from pathlib import Path

import typer

from datastore.cli_options import STORE, VERSION

app = typer.Typer(
    no_args_is_help=True,
    help="Look at spans: render responses with their key/error spans, per annotator.",
)

COLUMNS = ["rollout_id", "response", "spans", "correct", "reward", "error_type"]


@app.command("show")
def show(
    store: Path = STORE,
    version: str | None = VERSION,
    rollout: str | None = typer.Option(
        None, "--rollout", help="Show this rollout only (its full id, or a unique prefix of it)."
    ),
    limit: int = typer.Option(5, "--limit", min=1, help="Show at most this many rollouts."),
    source: str | None = typer.Option(
        None, "--source", help="Only spans from this source: api, self, human or rule."
    ),
    all_rows: bool = typer.Option(
        False, "--all", help="Also show rollouts without (matching) spans; by default they are skipped."
    ),
    html_out: Path | None = typer.Option(
        None, "--out", "-o", help="Write a self-contained HTML page here instead of printing to the terminal."
    ),
) -> None:
    """Render responses with key spans in green and error spans in red, one rendering per annotator.

    Offsets are code points of the response. Examples:

      spanroute spans show --store runs/store --limit 3

      spanroute spans show --store runs/store --version ann-rule-0001 --source rule --out spans.html

      spanroute spans show --store runs/store --rollout 3f9a2c
    """
    from datastore import Store

    from spans.model import SOURCES

    if source is not None and source not in SOURCES:
        raise ValueError(f"--source {source!r} is not one of {', '.join(SOURCES)}")
    rows = select_rows(Store.open(store), version, rollout=rollout, limit=limit, source=source, all_rows=all_rows)
    if not rows:
        what = f"rollout {rollout!r}" if rollout else "rollouts with spans" + (f" from {source}" if source else "")
        hint = "" if rollout or all_rows else " (add --all to show rollouts without spans)"
        raise ValueError(f"no {what} in store {store} version {version or 'latest'}{hint}")
    if html_out is not None:
        from spans.render import render_html

        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(render_html(rows, title=f"spans: {store} @ {version or 'latest'}", source=source),
                            encoding="utf-8")
        typer.echo(f"wrote {html_out} ({len(rows)} rollout(s))")
        return
    from rich.console import Console

    from spans.render import legend, render_row

    console = Console()
    plain = console.no_color or not console.is_terminal  # no colours: mark spans with [[...]]
    if not plain:
        console.print(legend())
    for row in rows:
        console.print(render_row(row, source=source, brackets=plain))


def select_rows(store, version: str | None, *, rollout: str | None, limit: int, source: str | None,
                all_rows: bool) -> list[dict]:
    """Stream the store's rows and keep the first ``limit`` that match (never loads all responses)."""
    import pyarrow.compute as pc

    ds = store.dataset(version)  # the Lance dataset streams batches
    available = set(ds.schema.names)
    columns = [c for c in COLUMNS if c in available]
    batches = ds.to_batches(columns=columns)
    out: list[dict] = []
    matches: list[dict] = []
    for batch in batches:
        if rollout is not None:
            mask = pc.starts_with(batch.column("rollout_id"), rollout)
            matches += batch.filter(mask).to_pylist()
            if any(r["rollout_id"] == rollout for r in matches):
                return [r for r in matches if r["rollout_id"] == rollout]
            continue
        for row in batch.to_pylist():
            spans = [s for s in row.get("spans") or () if source is None or s["source"] == source]
            if spans or all_rows:
                out.append(row)
                if len(out) >= limit:
                    return out
    if rollout is not None:
        if len(matches) > 1:
            ids = ", ".join(r["rollout_id"] for r in matches[:5])
            raise ValueError(f"--rollout {rollout!r} matches {len(matches)} rollouts ({ids}…): give more of the id")
        return matches
    return out
