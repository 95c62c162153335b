"""Human span correction in a real Label Studio: push rollouts as tasks, pull annotations back.

The flow, top to bottom:

    client = connect(url, token)                        # fails fast: server down / token wrong
    project = ensure_project(client, title)             # created once with LABEL_CONFIG, then found
    push(store, client, project, version=…, …)          # one task per rollout, machine spans as predictions
    … people correct the spans in the browser …
    pull(store, client, project)                        # new/updated annotations -> new store version
    status(store, client, project)                      # counts + human-vs-machine agreement

Facts this relies on (DESIGN §6, Label Studio 1.23.2): offsets are code points in both systems;
the server never checks a result's ``text`` against its offsets, and the UI saves the browser's
rendered text (a tab or a run of spaces as one space, spaces before a line break dropped, each
``\\r``/``\\n`` as backslash + ``n``) — so on pull the offsets are authoritative, ``text`` is compared
with :func:`spans.ls_text_matches`, a real mismatch refuses the pull, and the stored text is rebuilt
from the offsets.

Idempotency: a task carries its ``rollout_id`` in ``data``; push lists the project's rollout ids
first and imports only the missing ones, batch by batch (the Community edition imports each batch
synchronously, in one transaction). A client killed mid-batch can leave the server finishing that
batch after the rerun listed the project, so push ends by removing duplicate tasks of one rollout
that nobody has annotated (the oldest task is kept).

Incremental pull: ``<store>/labelstudio/pull-<project>.json`` keeps the server time of the newest
task update seen and the ``updated_at`` of every annotation already pulled; a pull asks the server
only for tasks updated since then (minus a little slack) and takes only annotations it has not
seen in that exact state. Cancelled (skipped) annotations are recorded there, never written as an
empty span set.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from datastore.schema import evidence_for
from spans import (
    SPANS_TYPE, Span, SpanError, agreement, as_span, ls_text_matches, merge_spans, select_spans, spans_to_arrow,
    validate,
)

LS_LABELS = {"key": "KeySpan", "error": "ErrorSpan"}
LABELS_FROM_LS = {v: k for k, v in LS_LABELS.items()}
SPAN_FROM, TEXT_TO, CHOICE_FROM, NOTE_FROM = "spans", "response", "correct", "skill_note"
PULL_SLACK = timedelta(seconds=5)  # tolerate same-second updates around the cursor time

# The labeling view: the prompt above, the response with KeySpan/ErrorSpan labels on code points
# (granularity="symbol": one emoji or '𝑥' is one selectable unit), correctness, the reference
# solution folded away (privileged: shown to the checker only on demand), an optional skill note.
LABEL_CONFIG = """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Response: mark the steps that carry the answer (KeySpan) and the first wrong step (ErrorSpan)"/>
  <Labels name="spans" toName="response">
    <Label value="KeySpan" background="#2ca02c"/>
    <Label value="ErrorSpan" background="#d62728"/>
  </Labels>
  <Text name="response" value="$response" granularity="symbol"/>
  <Header value="Is the final answer correct?"/>
  <Choices name="correct" toName="response" choice="single" showInline="true">
    <Choice value="correct"/>
    <Choice value="incorrect"/>
  </Choices>
  <Collapse>
    <Panel value="Reference solution (click to show)">
      <Text name="reference" value="$reference"/>
    </Panel>
  </Collapse>
  <TextArea name="skill_note" toName="response" placeholder="Optional: a skill or lesson this rollout shows" rows="2" maxSubmissions="1" editable="true"/>
</View>"""


class LabelStudioError(RuntimeError):
    """Label Studio is unreachable, refused us, or sent something we will not store."""


def _api_errors(fn):
    """Turn the SDK's ApiError (whose text carries response headers and cookies) into one line."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            body = e.body if isinstance(e.body, dict) else {"detail": str(e.body)[:200]}
            what = body.get("validation_errors") or body.get("detail") or body
            raise LabelStudioError(f"Label Studio refused {fn.__name__}: HTTP {e.status_code}: {what}") from None
    return wrapped


# ---- connecting --------------------------------------------------------------------------------


# Where the token comes from, first found wins: --token-file, then spanroute's own variable, then
# the Label Studio SDK's standard one (the URL: --url, SPANROUTE_LS_URL, LABEL_STUDIO_URL; cli.py).
TOKEN_ENV = ("SPANROUTE_LS_TOKEN", "LABEL_STUDIO_API_KEY")


def env_token() -> str:
    """The token from env SPANROUTE_LS_TOKEN, else LABEL_STUDIO_API_KEY; "" when neither is set."""
    return next((v for n in TOKEN_ENV if (v := os.environ.get(n, "").strip())), "")


def read_token(token_file: str | Path | None = None) -> str:
    """The API token: from `token_file` if given, else env SPANROUTE_LS_TOKEN, else LABEL_STUDIO_API_KEY
    (the SDK's variable). Never printed. Raises LabelStudioError naming both variables when none is set."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as e:
            raise LabelStudioError(f"cannot read the Label Studio token file {token_file}: {e.strerror}") from None
    else:
        token = env_token()
    if not token:
        raise LabelStudioError("no Label Studio token: set SPANROUTE_LS_TOKEN (or the SDK's LABEL_STUDIO_API_KEY) "
                               "or pass --token-file (`spanroute ls serve` prints one)")
    return token


def connect(url: str, token: str, *, timeout_s: float = 30.0):
    """A `label_studio_sdk.LabelStudio` client, after checking the server answers and takes the token.

    The check is the SDK's own whoami, so a legacy token and a personal access token (a JWT the SDK
    exchanges) both work. Raises LabelStudioError with one line naming `url` and what to check;
    never shows the token.
    """
    import httpx
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    url = url.rstrip("/")
    try:
        client = LabelStudio(base_url=url, api_key=token, timeout=timeout_s)
        client.users.whoami()
    except httpx.HTTPError as e:
        raise LabelStudioError(f"cannot reach Label Studio at {url} ({type(e).__name__}): is the server "
                               f"running (`spanroute ls serve`) and is --url / SPANROUTE_LS_URL / "
                               f"LABEL_STUDIO_URL right?") from None
    except ApiError as e:
        if e.status_code in (401, 403):
            detail = e.body.get("detail") if isinstance(e.body, dict) else None
            raise LabelStudioError(
                f"Label Studio at {url} rejected the token (HTTP {e.status_code}"
                + (f": {str(detail)[:120]}" if detail else "") + "): check --token-file / SPANROUTE_LS_TOKEN / "
                "LABEL_STUDIO_API_KEY (a legacy token needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on "
                "the server)") from None
        raise LabelStudioError(f"Label Studio at {url} answered HTTP {e.status_code} to whoami: is it "
                               f"Label Studio, and is --url right?") from None
    except ValueError:  # a 200 that is not Label Studio's JSON (pydantic / JSON decode errors)
        raise LabelStudioError(f"{url} answered whoami with something that is not Label Studio's: is --url "
                               f"right?") from None
    return client


@_api_errors
def ensure_project(client, title: str) -> int:
    """The id of the project called `title`, created with LABEL_CONFIG if there is none."""
    if not 0 < len(title) <= 50:
        raise LabelStudioError(f"project title {title!r} must be 1-50 characters (a Label Studio limit)")
    for p in client.projects.list(title=title):
        if p.title == title:
            return int(p.id)
    p = client.projects.create(title=title, label_config=LABEL_CONFIG,
                               description="spanroute: correct the machine key/error spans")
    return int(p.id)


def default_title(store_path: str | Path) -> str:
    return f"spanroute {Path(store_path).resolve().name}"[:50]


# ---- push --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushFilter:
    """Which rows of a version to push. `sample` draws that many rows with `seed` (reproducible)."""

    only_incorrect: bool = False
    only_unannotated: bool = False  # rows without any human spans yet
    sample: int | None = None
    seed: int = 0


def select_rows(rows: list[dict], flt: PushFilter) -> list[dict]:
    """The rows `flt` keeps, in store order (a sample is drawn from rows sorted by rollout_id)."""
    keep = [r for r in rows
            if (not flt.only_incorrect or r.get("correct") is False)
            and (not flt.only_unannotated or not select_spans(r.get("spans"), source="human"))]
    if flt.sample is not None and flt.sample < len(keep):
        ids = sorted(r["rollout_id"] for r in keep)
        chosen = set(random.Random(flt.seed).sample(ids, flt.sample))
        keep = [r for r in keep if r["rollout_id"] in chosen]
    return keep


def prompt_hashes(store) -> dict[str, str]:
    """annotator -> prompt hash of the newest version that annotator wrote (from lineage)."""
    out: dict[str, str] = {}
    for info in store.versions():  # oldest first: newer versions overwrite
        lin = info.lineage or {}
        if lin.get("annotator") and lin.get("prompt_hash"):
            out[lin["annotator"]] = lin["prompt_hash"]
    return out


_SCORE = {"ok": 1.0, "repaired": 0.5, "failed": 0.0, "truncated": 0.0, "skipped": 0.0}


def evidence_score(cell, source: str, annotator: str) -> float:
    """How cleanly THIS annotator's own output parsed on a row (its own `annotation` entry, never
    another job's): 1 ok, 0.5 repaired, 0 failed/truncated/skipped; 1 for rules and when the row
    holds no evidence of it (spans from elsewhere, e.g. an import)."""
    if source == "rule":
        return 1.0
    e = evidence_for(cell, source, annotator)
    return _SCORE.get((e or {}).get("parse_status") or "ok", 1.0)


def _result(i: int, s: Span) -> dict:
    return {"id": f"s{i}", "from_name": SPAN_FROM, "to_name": TEXT_TO, "type": "labels",
            "value": {"start": s.start, "end": s.end, "text": s.text, "labels": [LS_LABELS[s.label]]}}


def task_for_row(row: dict, hashes: dict[str, str], version: int) -> dict:
    """One Label Studio task: the rollout's text fields, plus one prediction per machine annotator.

    model_version = ``<source>:<annotator>@<prompt hash>``; score = how cleanly the annotator's
    output parsed (1 ok, 0.5 repaired, 0 failed; 1 for rules), so LS can sort doubtful tasks first.
    """
    machine: dict[tuple[str, str], list[Span]] = {}
    for s in map(as_span, row.get("spans") or ()):
        if s.source != "human":
            machine.setdefault((s.source, s.annotator), []).append(s)
    predictions = []
    for (source, annotator), group in sorted(machine.items()):
        result = [_result(i, s) for i, s in enumerate(group)]
        if row.get("correct") is not None:
            result.append({"id": "c0", "from_name": CHOICE_FROM, "to_name": TEXT_TO, "type": "choices",
                           "value": {"choices": ["correct" if row["correct"] else "incorrect"]}})
        h = hashes.get(annotator)
        predictions.append({
            "model_version": f"{source}:{annotator}" + (f"@{h}" if h else ""),
            "score": evidence_score(row.get("annotation"), source, annotator),
            "result": result,
        })
    data = {
        "rollout_id": row["rollout_id"], "prompt_id": row.get("prompt_id"), "prompt": row.get("prompt") or "",
        "response": row["response"], "reference": row.get("reference") or "",
        "correct": row.get("correct"), "model": row.get("model"), "store_version": version,
    }
    return {"data": data, "predictions": predictions}


def _list_tasks(client, project: int, **kw) -> Iterable:
    return client.tasks.list(project=project, page_size=500, **kw)


@_api_errors
def existing_tasks(client, project: int) -> dict[str, list[int]]:
    """rollout_id -> task ids (oldest first) of every task in `project`."""
    out: dict[str, list[int]] = {}
    for t in _list_tasks(client, project, fields="task_only", include="id,data"):
        rid = (t.data or {}).get("rollout_id")
        if rid is not None:
            out.setdefault(rid, []).append(int(t.id))
    return {k: sorted(v) for k, v in out.items()}


@dataclass(frozen=True)
class PushResult:
    project: int
    selected: int
    created: int
    already: int
    duplicates_removed: int


@_api_errors
def push(store, client, project: int, *, version=None, flt: PushFilter = PushFilter(),
         batch_size: int = 200, progress: Callable[[int], None] | None = None) -> PushResult:
    """Create one task per selected rollout that the project does not have yet.

    Safe to rerun and to kill: each batch is one import; the rollouts already there are skipped;
    duplicates left by a client killed mid-batch are removed at the end (unannotated ones only).
    `progress(n)` is called with the number of tasks each batch created.
    """
    v = store.resolve(version)
    rows = store.read(v, columns=[c for c in ("rollout_id", "prompt_id", "prompt", "response", "reference",
                                              "correct", "model", "spans", "annotation")]).to_pylist()
    chosen = select_rows(rows, flt)
    have = existing_tasks(client, project)
    todo = [r for r in chosen if r["rollout_id"] not in have]
    hashes = prompt_hashes(store)
    created = 0
    for i in range(0, len(todo), batch_size):
        batch = [task_for_row(r, hashes, v) for r in todo[i:i + batch_size]]
        res = client.projects.import_tasks(project, request=batch, commit_to_project=True)
        created += int(res.task_count or 0)
        if progress:
            progress(len(batch))
    removed = remove_duplicates(client, project)
    return PushResult(project, len(chosen), created, len(chosen) - len(todo), removed)


@_api_errors
def remove_duplicates(client, project: int) -> int:
    """Delete all but the oldest task of a rollout, when nobody annotated the extra ones."""
    removed = 0
    for rid, ids in existing_tasks(client, project).items():
        for tid in ids[1:]:
            t = client.tasks.get(str(tid))
            if not (t.annotations or []):
                client.tasks.delete(str(tid))
                removed += 1
    return removed


# ---- pull --------------------------------------------------------------------------------------


def _cursor_path(store, project: int) -> Path:
    return Path(store.path) / "labelstudio" / f"pull-{project}.json"


def load_cursor(store, project: int) -> dict:
    p = _cursor_path(store, project)
    if not p.exists():
        return {"task_updated_at": None, "seen": {}, "pulled": {}, "cancelled": {}}
    return json.loads(p.read_text())


def _save_cursor(store, project: int, cursor: dict) -> None:
    p = _cursor_path(store, project)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(cursor, indent=1, sort_keys=True))
    os.replace(tmp, p)  # atomic: a crash leaves the old cursor, and the next pull redoes the work


def annotator_id(user_id) -> str:
    """The `annotator` of a Label Studio user's spans: stable per server, no e-mail in the store."""
    return f"ls-user-{user_id}"


def annotation_spans(response: str, result: list[dict], annotator: str, *, task_id: int,
                     rollout_id: str) -> list[Span]:
    """Spans of one annotation's `result`, offsets authoritative, text rebuilt from them.

    Label Studio saves the browser's rendering of the region (white space collapsed or dropped,
    line breaks as backslash + n): :func:`spans.ls_text_matches` accepts that. Raises
    LabelStudioError naming the task, the rollout and the span when a label is unknown, the offsets
    are not code points inside the response, or `text` really differs from ``response[start:end]``.
    """
    out = []
    for item in result or ():
        if item.get("type") != "labels" or item.get("from_name") != SPAN_FROM:
            continue
        val = item.get("value") or {}
        start, end, text = val.get("start"), val.get("end"), val.get("text")
        labels = val.get("labels") or ()
        if not ls_text_matches(response, start, end, text if text is not None else ""):
            there = response[start:end] if type(start) is int and type(end) is int else None
            raise LabelStudioError(
                f"task {task_id} (rollout {rollout_id}): span {list(labels)} [{start}:{end}) text {text!r} does "
                f"not match the response there ({there!r}); refused, nothing written")
        for lab in labels:
            if lab not in LABELS_FROM_LS:
                raise LabelStudioError(f"task {task_id} (rollout {rollout_id}): unknown label {lab!r}; refused")
            out.append(Span(start, end, LABELS_FROM_LS[lab], "human", annotator, response[start:end]))
    return out


def _choice(result: list[dict], name: str, kind: str):
    for item in result or ():
        if item.get("from_name") == name and item.get("type") == kind:
            vals = (item.get("value") or {}).get(kind) or []
            return vals[0] if vals else None
    return None


@dataclass(frozen=True)
class PullResult:
    version: int | None  # the new store version, None when nothing new
    tasks: list[int] = field(default_factory=list)
    annotators: list[str] = field(default_factory=list)
    rows: int = 0
    cancelled: list[int] = field(default_factory=list)


def _dt(s) -> datetime:
    return s if isinstance(s, datetime) else datetime.fromisoformat(str(s).replace("Z", "+00:00"))


def _new_annotations(client, project: int, cursor: dict):
    """(fresh, cancelled, newest) of the tasks updated since the cursor: fresh maps (rollout,
    annotator) to the latest annotation not yet pulled in this state, cancelled lists (task id,
    annotation), newest is the server time of the newest task update seen."""
    query = None
    if cursor.get("task_updated_at"):
        since = (_dt(cursor["task_updated_at"]) - PULL_SLACK).isoformat().replace("+00:00", "Z")
        query = json.dumps({"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": since}]}})
    newest = cursor.get("task_updated_at")
    fresh: dict[tuple[str, str], dict] = {}  # (rollout, annotator) -> latest annotation
    cancelled: list[tuple[int, dict]] = []
    for t in _list_tasks(client, project, fields="all", query=query):
        if newest is None or _dt(t.updated_at) > _dt(newest):
            newest = _dt(t.updated_at).isoformat()
        rid = (t.data or {}).get("rollout_id")
        for a in t.annotations or ():
            a = a if isinstance(a, dict) else a.model_dump(mode="json")
            stamp = str(a.get("updated_at"))
            if rid is None or cursor["seen"].get(str(a["id"])) == stamp:
                continue
            if a.get("was_cancelled"):
                cancelled.append((int(t.id), a))
                continue
            key = (rid, annotator_id(a.get("completed_by")))
            if key not in fresh or _dt(fresh[key]["updated_at"]) < _dt(a["updated_at"]):
                fresh[key] = {**a, "task": int(t.id), "response_in_task": (t.data or {}).get("response")}
    return fresh, cancelled, newest


@_api_errors
def pull(store, client, project: int) -> PullResult:
    """Write the annotations new or changed since the last pull as human spans, in one new version.

    All or nothing: any refused annotation raises LabelStudioError (task named) and nothing is
    written, the cursor included. Latest annotation per (task, user) wins.
    """
    cursor = load_cursor(store, project)
    fresh, cancelled, newest = _new_annotations(client, project, cursor)
    for tid, a in cancelled:
        cursor["cancelled"][str(a["id"])] = {"task": tid, "annotator": annotator_id(a.get("completed_by")),
                                             "updated_at": str(a.get("updated_at"))}
    if not fresh:
        for _, a in cancelled:
            cursor["seen"][str(a["id"])] = str(a.get("updated_at"))
        cursor["task_updated_at"] = newest
        _save_cursor(store, project, cursor)
        return PullResult(None, cancelled=[tid for tid, _ in cancelled])

    table = store.read(columns=["rollout_id", "response", "spans"]).to_pylist()
    by_id = {r["rollout_id"]: r for r in table}
    new_spans: dict[str, list[Span]] = {}
    for (rid, who), a in sorted(fresh.items()):
        row = by_id.get(rid)
        if row is None:
            raise LabelStudioError(f"task {a['task']}: rollout {rid} is not in store {store.path}; refused "
                                   f"(was the project pushed from another store?)")
        if a["response_in_task"] != row["response"]:
            raise LabelStudioError(f"task {a['task']} (rollout {rid}): the task's response differs from the "
                                   f"store's; refused")
        current = new_spans.get(rid, row["spans"] or [])
        mine = annotation_spans(row["response"], a.get("result"), who, task_id=a["task"], rollout_id=rid)
        try:  # same-label overlaps merge; key overlapping error by one person is refused (spans rules)
            mine = validate(row["response"], mine, max_fraction=None, rollout_id=rid)
        except SpanError as e:
            raise LabelStudioError(f"task {a['task']}: {e}; refused") from None
        new_spans[rid] = merge_spans(current, mine, "human", who)
    ids = sorted(new_spans)
    upd = pa.table({"rollout_id": pa.array(ids, pa.string()),
                    "spans": spans_to_arrow([new_spans[i] for i in ids]).cast(SPANS_TYPE)})
    tasks = sorted({a["task"] for a in fresh.values()})
    annotators = sorted({who for _, who in fresh})
    pulled_at = datetime.now(timezone.utc).isoformat()
    from datastore import Lineage
    lineage = Lineage(stage="ls-pull", annotator=",".join(annotators), extra={"labelstudio": {
        "url": str(client._client_wrapper.get_base_url()), "project": project, "task_ids": tasks,
        "annotation_ids": sorted(int(a["id"]) for a in fresh.values()), "annotator_ids": annotators,
        "pull_time": pulled_at, "cancelled_task_ids": sorted({tid for tid, _ in cancelled}),
        "human_verdicts": {rid: _choice(a.get("result"), CHOICE_FROM, "choices") for (rid, _), a in fresh.items()},
        "skill_notes": {rid: n for (rid, _), a in fresh.items()
                        if (n := _choice(a.get("result"), NOTE_FROM, "text"))},
    }})
    version = store.update(upd, message=f"ls pull: human spans on {len(ids)} rollouts from project {project}",
                           lineage=lineage)
    for (rid, who), a in fresh.items():
        cursor["seen"][str(a["id"])] = str(a.get("updated_at"))
        cursor["pulled"][rid] = sorted(set(cursor["pulled"].get(rid, [])) | {who})
    for _, a in cancelled:
        cursor["seen"][str(a["id"])] = str(a.get("updated_at"))
    cursor["task_updated_at"] = newest
    _save_cursor(store, project, cursor)
    return PullResult(version, tasks, annotators, len(ids), sorted({tid for tid, _ in cancelled}))


# ---- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    project: int
    pushed: int
    annotated: int
    cancelled: int
    pulled: int
    agreement: dict[str, dict]  # "<source>:<annotator>" -> {"key"|"error"|"overall": scores dict}


@_api_errors
def status(store, client, project: int) -> Status:
    """Counts of tasks pushed / annotated / cancelled, rollouts pulled, and agreement of the pulled
    human spans with each machine annotator on the same rollouts (spans.agreement)."""
    pushed = annotated = cancelled = 0
    for t in _list_tasks(client, project, fields="task_only", include="id,total_annotations,cancelled_annotations"):
        pushed += 1
        annotated += int((t.total_annotations or 0) > 0)
        cancelled += int((t.cancelled_annotations or 0) > 0)
    cursor = load_cursor(store, project)
    rows = [r for r in store.read(columns=["rollout_id", "response", "spans", "annotation"]).to_pylist()
            if r["rollout_id"] in cursor["pulled"]]
    scores: dict[str, dict] = {}
    machines = sorted({(s.source, s.annotator) for r in rows for s in map(as_span, r["spans"] or ())
                       if s.source != "human"})
    for src, who in machines:
        human = [select_spans(r["spans"], source="human") for r in rows]
        mach = [select_spans(r["spans"], source=src, annotator=who) for r in rows]
        res = agreement(human, mach, [r["response"] for r in rows])
        scores[f"{src}:{who}"] = {k: asdict(v) for k, v in res.items()}
        # its own evidence on those rows: mean parse score (1 ok, 0.5 repaired, 0 failed/truncated)
        scores[f"{src}:{who}"]["parse_score"] = (
            sum(evidence_score(r.get("annotation"), src, who) for r in rows) / len(rows) if rows else None)
    return Status(project, pushed, annotated, cancelled, len(cursor["pulled"]), scores)
