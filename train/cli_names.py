"""One option name per meaning across `spanroute` commands, and the old names kept as hidden aliases.

The names (chosen to match what TRL / HF / vLLM users already type):

| meaning | name | where |
|---|---|---|
| samples per prompt (vLLM's ``n``, TRL's ``num_generations``) | ``-n``, ``--num-generations`` | rollouts generate, train --online |
| how many rows to show / process | ``--limit`` | data show, data diff, spans show, annotate, rollouts generate |
| any model folder (or ``toy`` / ``smollm2``) | ``--model`` | rollouts generate, shards build, annotate self, demo |
| where a command writes its result | ``-o``, ``--out`` (as the config's ``run.out``) | data export, spans show, shards build, demo |
| prompt *data* | ``--prompts`` | rollouts generate |
| annotation prompt *templates* | ``--template-dir`` | annotate api/self, skills extract |

Old names still work for one release (``ALIASES``): ``main`` rewrites them before parsing and prints
one note on stderr; ``--help`` shows only the new names.
"""

from __future__ import annotations

# (group, command) -> {old option: new option}; ("train",) for a top-level command.
ALIASES: dict[tuple[str, ...], dict[str, str]] = {
    ("data", "show"): {"-n": "--limit"},
    ("data", "diff"): {"-n": "--limit"},
    ("data", "export"): {"--to": "--out", "--output-dir": "--out"},
    ("spans", "show"): {"--html": "--out"},
    ("shards", "build"): {"--tokenizer": "--model", "--output-dir": "--out"},
    ("annotate", "api"): {"--prompts": "--template-dir"},
    ("annotate", "self"): {"--prompts": "--template-dir", "--checkpoint": "--model"},
    ("skills", "extract"): {"--prompts": "--template-dir"},
    ("train",): {"--group-size": "--num-generations"},
    ("demo",): {"--policy": "--model", "--output-dir": "--out"},
}
# Old spellings whose meaning moved: `annotate self --checkpoint DIR --model NAME` used --model for
# the served name; when the old --checkpoint is there, its --model is that name.
WHEN_PRESENT: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {
    ("annotate", "self"): ("--checkpoint", {"--model": "--served-model-name"}),
}
GROUPS = ("data", "spans", "rollouts", "annotate", "skills", "ls", "shards")
REMOVED_IN = "0.3"


def _command_path(args: list[str]) -> tuple[tuple[str, ...], int]:
    """(group, command) or (command,) of an argv, and the index where its options start."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1  # root options (--debug)
    if i >= len(args):
        return (), len(args)
    if args[i] in GROUPS and i + 1 < len(args) and not args[i + 1].startswith("-"):
        return (args[i], args[i + 1]), i + 2
    return (args[i],), i + 1


def rewrite_aliases(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` with old option names replaced by the current ones, and one note per replacement.

    Only options of the command being run are touched; ``--old=value`` works too; nothing after a
    bare ``--`` is touched."""
    path, start = _command_path(args)
    table = dict(ALIASES.get(path, {}))
    rest = args[start:]
    cut = rest.index("--") if "--" in rest else len(rest)
    trigger = WHEN_PRESENT.get(path)
    if trigger and any(a == trigger[0] or a.startswith(trigger[0] + "=") for a in rest[:cut]):
        table.update(trigger[1])
    if not table:
        return list(args), []
    out, notes = list(args[:start]), []
    for k, a in enumerate(rest):
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if k < cut and name in table:
            new = table[name]
            out.append(new + eq + value)
            note = f"note: {' '.join(path)} {name} is now {new} (the old name goes in {REMOVED_IN})"
            if note not in notes:
                notes.append(note)
        else:
            out.append(a)
    return out, notes


def version_line() -> str:
    """``spanroute X.Y.Z (torch A, transformers B, Python C)`` without importing torch."""
    import platform
    from importlib import metadata

    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"spanroute {_own_version()} (torch {v('torch')}, transformers {v('transformers')}, "
            f"Python {platform.python_version()})")


def _own_version() -> str:
    """The installed distribution's version; from a source checkout, pyproject.toml's."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():  # a checkout (editable or on PYTHONPATH): its own pyproject is the truth
        return tomllib.loads(pyproject.read_text())["project"]["version"]
    try:
        return metadata.version("spanroute")
    except metadata.PackageNotFoundError:
        return "unknown"
