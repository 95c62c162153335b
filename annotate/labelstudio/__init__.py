"""Human labeling in a real Label Studio: a stage of its own (`spanroute ls serve|push|pull|status`).

    project.py  push rollouts as tasks, pull people's spans back as a new store version, status
    server.py   install (its own venv) and start a local Label Studio server
    cli.py      the `spanroute ls` commands

>>> from annotate.labelstudio import connect, ensure_project, push, pull
>>> client = connect(url, token); project = ensure_project(client, "my rollouts")

Names are imported on first use (the SDK and pyarrow load only when a command needs them), so
`spanroute --help`, which imports `annotate.labelstudio.cli`, stays fast.
"""

from importlib import import_module

_PROJECT = ("LABEL_CONFIG", "LS_LABELS", "LabelStudioError", "PullResult", "PushFilter", "PushResult",
            "Status", "TOKEN_ENV", "annotation_spans", "annotator_id", "connect", "default_title",
            "ensure_project", "env_token", "evidence_score", "existing_tasks", "load_cursor",
            "prompt_hashes", "pull", "push", "read_token", "remove_duplicates", "select_rows", "status",
            "task_for_row")
_SERVER = ("LSServer", "LS_VERSION", "ServerError", "cache_dir", "ensure_template", "ensure_venv",
           "free_port", "start")
_WHERE = {**dict.fromkeys(_PROJECT, "annotate.labelstudio.project"),
          **dict.fromkeys(_SERVER, "annotate.labelstudio.server")}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'annotate.labelstudio' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
