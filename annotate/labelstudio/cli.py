"""`spanroute ls`: humans check and correct machine spans in a real Label Studio.

    spanroute ls serve                          # install (once) + start a local server; prints URL and token
    export SPANROUTE_LS_URL=http://127.0.0.1:8080 SPANROUTE_LS_TOKEN=…
    # (or the SDK's LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY; flags win, then SPANROUTE_LS_*, then LABEL_STUDIO_*)
    spanroute ls push --store runs/store --only-incorrect --sample 50 --seed 1
    …correct spans in the browser…
    spanroute ls pull --store runs/store        # new store version with source=human spans
    spanroute ls status --store runs/store
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from datastore.cli_options import STORE, VERSION

app = typer.Typer(
    no_args_is_help=True,
    help="Human span correction in Label Studio. URL: --url, else SPANROUTE_LS_URL, else LABEL_STUDIO_URL; "
         "token: --token-file, else SPANROUTE_LS_TOKEN, else LABEL_STUDIO_API_KEY (the SDK's names). The "
         "token is never printed (except by `serve`, which made it).",
)
console = Console()

URL = typer.Option("http://127.0.0.1:8080", "--url", envvar=["SPANROUTE_LS_URL", "LABEL_STUDIO_URL"],
                   help="Label Studio base URL (env SPANROUTE_LS_URL, else LABEL_STUDIO_URL).")
TOKEN_FILE = typer.Option(None, "--token-file",
                          help="File holding the API token; default: env SPANROUTE_LS_TOKEN, else "
                               "LABEL_STUDIO_API_KEY.")
PROJECT = typer.Option(None, "--project",
                       help="Label Studio project title (default: 'spanroute <store dir name>').")


def _open(url: str, token_file: Optional[Path], store_dir: Path, project: Optional[str]):
    from annotate.labelstudio import project as ls
    from datastore import Store

    client = ls.connect(url, ls.read_token(token_file))
    store = Store.open(store_dir)
    pid = ls.ensure_project(client, project or ls.default_title(store_dir))
    return ls, client, store, pid


@app.command("serve")
def serve_(
    port: int = typer.Option(8080, "--port", help="Port on 127.0.0.1 (must be free: refused otherwise)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Server data (default: <cache>/labelstudio/data; kept)."),
    token_file: Optional[Path] = TOKEN_FILE,
) -> None:
    """Install Label Studio 1.23.2 into its own venv (once, ~2 min) and run it until Ctrl-C.

    The venv and a migrated data-dir template live under $SPANROUTE_CACHE/labelstudio (default
    ~/.cache/spanroute/labelstudio); later starts take seconds. Prints the URL, the login and
    the API token to use as SPANROUTE_LS_TOKEN (saved, mode 600, in <cache>/labelstudio/token).
    """
    import secrets
    import signal

    from annotate.labelstudio import server as ls_server
    from annotate.labelstudio.project import env_token

    cache = ls_server.cache_dir()
    token_path = cache / "token"
    if token_file:
        token = Path(token_file).read_text().strip()
    elif from_env := env_token():
        token = from_env
    elif token_path.exists():
        token = token_path.read_text().strip()
    else:
        token = secrets.token_hex(20)
        cache.mkdir(parents=True, exist_ok=True)
        token_path.write_text(token + "\n")
        token_path.chmod(0o600)
    pw_path = cache / "password"
    if not pw_path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        pw_path.write_text(secrets.token_urlsafe(12) + "\n")
        pw_path.chmod(0o600)
    password = pw_path.read_text().strip()
    def _interrupt(signum, frame):  # SIGTERM/SIGHUP stop the server like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    server = ls_server.start(data_dir or cache / "data", token=token, password=password, port=port,
                             log=lambda m: console.print(f"[dim]{m}[/]"))
    try:
        # plain echo: these lines are copied and pasted, so rich must not wrap them
        typer.echo(f"Label Studio {ls_server.LS_VERSION} at {server.url}")
        typer.echo(f"login: {server.username} / {password}")
        typer.echo(f"export SPANROUTE_LS_URL={server.url} SPANROUTE_LS_TOKEN={token}")
        typer.echo("Ctrl-C stops it.", err=True)
        while server.alive():
            time.sleep(1)
        raise RuntimeError(f"Label Studio exited (log {server.log_path})")
    finally:
        server.stop()


@app.command("init")
def init_(url: str = URL, token_file: Optional[Path] = TOKEN_FILE, store: Path = STORE,
          project: Optional[str] = PROJECT) -> None:
    """Create (or find) the store's Label Studio project.

    Its view: the prompt on top, KeySpan/ErrorSpan labels on the response (per symbol), a
    correct/incorrect choice, the reference solution folded away, an optional skill note.
    """
    _, _, _, pid = _open(url, token_file, store, project)
    console.print(f"project {pid} at {url.rstrip('/')}/projects/{pid}")


@app.command("push")
def push_(
    url: str = URL, token_file: Optional[Path] = TOKEN_FILE, store: Path = STORE,
    project: Optional[str] = PROJECT,
    version: Optional[str] = VERSION,
    only_incorrect: bool = typer.Option(False, "--only-incorrect", help="Only rollouts whose answer is wrong."),
    only_unannotated: bool = typer.Option(False, "--only-unannotated", help="Only rollouts without human spans."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Push a random sample of N of the selected rows."),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample (same seed, same rows)."),
    batch_size: int = typer.Option(200, "--batch-size", help="Tasks per import request."),
) -> None:
    """Push rollouts as tasks, with the machine spans as predictions.

    Idempotent: rollouts already in the project are skipped, so a rerun (or a rerun after a
    killed push) creates only what is missing. Predictions: one per (source, annotator), with
    model_version source:annotator@prompt_hash.
    """
    from rich.progress import Progress

    ls, client, st, pid = _open(url, token_file, store, project)
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task("pushing", total=None)
        res = ls.push(st, client, pid, version=version, batch_size=batch_size,
                      flt=ls.PushFilter(only_incorrect, only_unannotated, sample, seed),
                      progress=lambda n: bar.advance(job, n))
    console.print(f"project {pid}: {res.selected} selected, {res.created} created, {res.already} already "
                  f"there" + (f", {res.duplicates_removed} duplicates removed" if res.duplicates_removed else ""))


@app.command("pull")
def pull_(url: str = URL, token_file: Optional[Path] = TOKEN_FILE, store: Path = STORE,
          project: Optional[str] = PROJECT) -> None:
    """Pull new or changed annotations into a new store version as human spans.

    Spans get source=human and annotator=ls-user-<id>. A span whose text disagrees with its
    offsets refuses the whole pull (task named, nothing written). Skipped tasks are recorded.
    """
    ls, client, st, pid = _open(url, token_file, store, project)
    res = ls.pull(st, client, pid)
    if res.version is None:
        console.print(f"project {pid}: nothing new" + (f" ({len(res.cancelled)} skipped tasks recorded)"
                                                      if res.cancelled else ""))
        return
    console.print(f"project {pid}: {res.rows} rollouts from {len(res.tasks)} tasks by {', '.join(res.annotators)} "
                  f"-> store version {res.version}" + (f"; {len(res.cancelled)} skipped" if res.cancelled else ""))


@app.command("status")
def status_(url: str = URL, token_file: Optional[Path] = TOKEN_FILE, store: Path = STORE,
            project: Optional[str] = PROJECT,
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Counts (pushed, annotated, skipped, pulled) and human-vs-machine agreement.

    Agreement on the pulled rollouts: exact-span F1, character F1 and Cohen's kappa over
    characters, for each machine annotator.
    """
    from dataclasses import asdict

    ls, client, st, pid = _open(url, token_file, store, project)
    s = ls.status(st, client, pid)
    if as_json:
        console.print_json(json.dumps(asdict(s), default=str))
        return
    console.print(f"project {pid}: {s.pushed} pushed, {s.annotated} annotated, {s.cancelled} skipped, "
                  f"{s.pulled} pulled")
    for who, per in s.agreement.items():
        o = per["overall"]
        console.print(f"  human vs {who}: exact F1 {o['exact_f1']:.2f}, char F1 {o['char_f1']:.2f}, "
                      f"kappa {o['kappa']:.2f}")
