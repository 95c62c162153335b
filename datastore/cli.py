"""`spanroute data ...`: look after a versioned rollout store from the shell.

Heavy libraries (pyarrow, lance, datasets) are imported inside the commands so `--help` is fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from datastore.cli_options import STORE, VERSION

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "A store is a directory holding one versioned table of rollouts (Lance). Every import, "
        "generation or annotation writes a new immutable version with a message and lineage "
        "(stage, annotator, prompt hash, model, parent version, row counts). Any version can be "
        "read by number or tag, diffed, verified and exported.\n\n"
        "Typical session:\n\n"
        "  spanroute data import rollouts.jsonl --store runs/store --map text=response\n\n"
        "  spanroute data log --store runs/store\n\n"
        "  spanroute data tag gen-run1 --store runs/store\n\n"
        "  spanroute data export --store runs/store --version gen-run1 --out out.parquet --format parquet"
    ),
)



def _store(path: Path, create: bool = False):
    """The store at ``path``; only ``import`` may create one, every other command refuses a path
    that holds no store (``not a spanroute store: PATH``) instead of showing it as empty."""
    from datastore.store import Store

    return Store(path) if create else Store.open(path)


def _console():
    from rich.console import Console

    return Console()


@app.command("import")
def import_(
    src: Path = typer.Argument(
        ..., help="A .jsonl file (one JSON object per line), a .parquet file or directory of them, "
        "or an HF `datasets` save_to_disk directory."
    ),
    store: Path = STORE,
    map_: list[str] = typer.Option(
        [], "--map", "-m",
        help="Rename a source column: --map text=response. Drop one: --map junk= . Repeatable.",
    ),
    message: str = typer.Option("", "--message", help="Version message (default: 'import SRC')."),
    correct_above: float = typer.Option(
        0.0, "--correct-above",
        help="Rows with a reward but no `correct` get correct = reward > this (default 0).",
    ),
) -> None:
    """Append the rows of SRC as a new version.

    Columns must be (or be mapped to) the rollout schema's names; prompt and response are required,
    the others are filled with nulls. Missing ids are derived as `rollouts generate` makes them:
    prompt_id = sha256(prompt)[:16]; group_id from prompt_id and model (the rows of one prompt from
    one model are one group; map a column to group_id to group otherwise); rollout_id from group,
    prompt, response, model and the row's index in its group; and `correct` = reward >
    --correct-above where only `reward` is given. What was derived is printed and kept in the
    version's lineage. Types are never guessed: a
    value of the wrong type, a malformed JSONL line, a duplicate rollout_id or a span whose text
    is not response\\[start:end] (offsets in code points) is refused with its file, line and column,
    and nothing is written.
    """
    from datastore.io import parse_mapping
    from datastore.lineage import Lineage

    s = _store(store, create=True)
    v = s.import_(src, parse_mapping(map_), message, Lineage(stage="import"), correct_above=correct_above)
    lineage = s.version_info(v).lineage
    for line in (lineage.get("extra") or {}).get("derived") or []:
        _console().print(line, highlight=False)
    _console().print(f"imported {lineage.get('rows_written', '?')} rows from {src} -> {store} version {v}")


@app.command("log")
def log_(
    store: Path = STORE,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per version instead of a table."),
) -> None:
    """List every version, oldest first: time, operation, stage, rows, tags and message."""
    from rich.table import Table

    versions = _store(store).versions()
    if as_json:
        for v in versions:
            typer.echo(json.dumps({"version": v.version, "timestamp": str(v.timestamp), "message": v.message,
                                   "rows": v.rows, "tags": list(v.tags), "lineage": v.lineage}, ensure_ascii=False))
        return
    if not versions:
        _console().print(f"{store}: no versions yet")
        return
    t = Table(title=f"{store}")
    for c in ("version", "time (UTC)", "op", "stage", "annotator/model", "rows", "tags", "message"):
        t.add_column(c)
    for v in versions:
        lin = v.lineage
        who = lin.get("annotator") or lin.get("model") or ""
        t.add_row(
            str(v.version), v.timestamp.strftime("%Y-%m-%d %H:%M:%S"), lin.get("operation", ""),
            lin.get("stage", ""), who, str(v.rows), ", ".join(v.tags), v.message,
        )
    _console().print(t)


def _cell(value, width: int = 48) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("show")
def show_(
    store: Path = STORE,
    version: str = VERSION,
    limit: int = typer.Option(10, "--limit", help="Rows to show."),
    columns: str = typer.Option(
        "rollout_id,group_id,response,reward,correct,spans,error_type",
        "--columns", "-c", help="Comma-separated columns to show ('all' for every column).",
    ),
) -> None:
    """Show the first rows of a version as a table (long values are cut)."""
    from rich.table import Table

    s = _store(store)
    ds = s.dataset(version)
    cols = ds.schema.names if columns == "all" else [c.strip() for c in columns.split(",") if c.strip()]
    tbl = s.read(ds.version, columns=cols).slice(0, max(0, limit))
    t = Table(title=f"{store} version {ds.version} ({ds.count_rows()} rows; first {tbl.num_rows})")
    for c in cols:
        t.add_column(c, overflow="fold")
    for row in tbl.to_pylist():
        t.add_row(*[_cell(row[c]) for c in cols])
    _console().print(t)


@app.command("diff")
def diff_(
    a: str = typer.Argument(..., help="The older version (number or tag)."),
    b: str = typer.Argument(..., help="The newer version (number or tag)."),
    store: Path = STORE,
    limit: int = typer.Option(10, "--limit", help="Rollout ids listed per category."),
) -> None:
    """What changed from A to B: rows added/removed, rows changed (and in which columns), columns added."""
    d = _store(store).diff(a, b)
    con = _console()
    con.print(d.summary(), highlight=False)
    for name, ids in (("added", d.added), ("removed", d.removed)):
        if ids:
            more = f" … (+{len(ids) - limit})" if len(ids) > limit else ""
            con.print(f"{name}: {', '.join(ids[:limit])}{more}", highlight=False)
    for rid, cols in list(d.changed.items())[:limit]:
        con.print(f"changed {rid}: {', '.join(cols)}", highlight=False)
    if len(d.changed) > limit:
        con.print(f"… (+{len(d.changed) - limit} changed rows)")


@app.command("tag")
def tag_(
    name: str = typer.Argument(..., help="Tag name: letters, digits, '.', '_', '-' (e.g. gen-run1, ann-api-0001)."),
    store: Path = STORE,
    version: str = VERSION,
    meta: list[str] = typer.Option([], "--meta", help="Metadata KEY=VALUE carried by the tag. Repeatable."),
) -> None:
    """Give a version a name that `--version` accepts everywhere (tags never move)."""
    metadata = {}
    for m in meta:
        if "=" not in m:
            raise ValueError(f"bad --meta {m!r}: expected KEY=VALUE")
        k, val = m.split("=", 1)
        metadata[k] = val
    v = _store(store).tag(name, version, metadata or None)
    _console().print(f"tagged version {v} as {name}")


@app.command("export")
def export_(
    store: Path = STORE,
    version: str = VERSION,
    out: Path = typer.Option(..., "--out", "-o", help="Output path (must not exist): a file, or a folder for hf."),
    format: str = typer.Option(
        ..., "--format", "-f",
        help="hf (a `datasets` save_to_disk dir: load with datasets.load_from_disk), parquet, or jsonl.",
    ),
) -> None:
    """Write one version out for other tools; the file appears only when complete."""
    s = _store(store)
    v = s.resolve(version)
    written = s.export(v, out, format)
    _console().print(f"exported version {v} ({s.dataset(v).count_rows()} rows) to {written} as {format}")


@app.command("verify")
def verify_(
    store: Path = STORE,
    version: str = VERSION,
) -> None:
    """Re-check a version from its data; exit 1 on any problem.

    Checks: schema, required columns non-null, unique rollout_id, every span's
    response\\[start:end] == text with an allowed label and source, token ids and log-probs of equal
    length, and each group_id within one prompt_id and prompt text.
    """
    report = _store(store).verify(version)
    con = _console()
    for p in report.problems:
        con.print(f"  {p}", highlight=False)
    con.print(report.summary(), highlight=False)
    if not report.ok:
        raise typer.Exit(1)
