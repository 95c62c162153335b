"""Prompt templates (files under `annotate/prompts/`), their JSON schemas and content hashes.

A template's identity is the sha256 of its file bytes plus its answer schema, so editing either
changes the hash recorded in lineage and, because the rendered request changes, misses the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

PROMPT_DIR = Path(__file__).parent / "prompts"

# Coarse diagnostic labels for incorrect rollouts (the `error_type` column). Fixed: the teacher
# prompt and the UI may show them, and the rule annotator emits the same names.
ERROR_TYPES = (
    "arithmetic",  # a computation step is wrong (17 + 25 = 43)
    "wrong_operation",  # right numbers, wrong operation or operand taken from the problem
    "misread_problem",  # the plan does not match what was asked
    "logic",  # an invalid inference or skipped case
    "incomplete",  # stops before the answer
    "format",  # the answer is not stated in the required form
    "other",
)

# Bounds, so a model under constrained decoding cannot keep adding steps or words until
# max_tokens cuts the JSON (issue 14: unbounded, a small served model failed 60 of 64 rows that
# way; bounded, 62 of 64 ended cleanly). Code points; prompts ask for "one to three" steps.
MAX_STEPS = 6
MAX_QUOTE = 200
MAX_REASON = 160
MAX_SKILL_FIELD = 800

_STEP = {
    "type": "object",
    "properties": {
        "segment": {"type": "integer", "description": "1-based segment number"},
        "quote": {"type": "string", "maxLength": MAX_QUOTE, "description": "exact words copied from that segment"},
        "reason": {"type": "string", "maxLength": MAX_REASON},
    },
    "required": ["segment", "quote", "reason"],
    "additionalProperties": False,
}
KEY_SCHEMA = {
    "type": "object",
    "properties": {"steps": {"type": "array", "items": _STEP, "maxItems": MAX_STEPS}},
    "required": ["steps"],
    "additionalProperties": False,
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": _STEP, "maxItems": MAX_STEPS},
        "error_type": {"type": "string", "enum": list(ERROR_TYPES)},
    },
    "required": ["steps", "error_type"],
    "additionalProperties": False,
}
SKILL_SCHEMA = {
    "type": "object",
    "properties": {
        "success_analysis": {"type": "string", "maxLength": MAX_SKILL_FIELD},
        "mistake_analysis": {"type": "string", "maxLength": MAX_SKILL_FIELD},
        "golden_workflow": {"type": "string", "maxLength": MAX_SKILL_FIELD},
    },
    "required": ["success_analysis", "mistake_analysis", "golden_workflow"],
    "additionalProperties": False,
}
_SCHEMAS = {"key_spans": KEY_SCHEMA, "error_spans": ERROR_SCHEMA, "skill_summary": SKILL_SCHEMA}


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template with `$name` placeholders and the JSON schema its answer must follow."""

    name: str
    system: str
    user: str
    schema: dict
    sha256: str  # of the file bytes + canonical schema; recorded in lineage as `prompt_hash`

    def messages(self, **fields: str) -> list[dict]:
        """The rendered chat messages; every placeholder must be given (KeyError names it)."""
        fields.setdefault("error_types", ", ".join(ERROR_TYPES))
        return [
            {"role": "system", "content": Template(self.system).substitute(fields)},
            {"role": "user", "content": Template(self.user).substitute(fields)},
        ]

    def response_format(self) -> dict:
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.schema, "strict": True},
        }


def _split(text: str, path: Path) -> tuple[str, str]:
    if "[system]\n" not in text or "\n[user]\n" not in text:
        raise ValueError(f"{path}: a prompt file needs a '[system]' and a '[user]' section")
    system, user = text.split("[system]\n", 1)[1].split("\n[user]\n", 1)
    return system.strip(), user.strip()


@cache
def load(name: str, directory: str | None = None) -> PromptTemplate:
    """Load `prompts/<name>.md` (or `<directory>/<name>.md` for a user's own template)."""
    path = Path(directory or PROMPT_DIR) / f"{name}.md"
    if not path.exists():
        raise FileNotFoundError(f"prompt template {path} not found")
    raw = path.read_bytes()
    schema = _SCHEMAS.get(name)
    if schema is None:
        raise ValueError(f"{path}: unknown template name {name!r}; expected one of {sorted(_SCHEMAS)}")
    digest = hashlib.sha256(raw + json.dumps(schema, sort_keys=True).encode()).hexdigest()
    system, user = _split(raw.decode("utf-8"), path)
    return PromptTemplate(name, system, user, schema, digest)
