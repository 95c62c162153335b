"""Annotation: key/error spans and Skill-SD skills by API model, the policy itself, or rules.

>>> from annotate import RuleAnnotator, annotate_store
>>> from datastore import Store
>>> version, results = annotate_store(Store("runs/store"), RuleAnnotator())

Names are imported on first use, so `spanroute --help` (which imports `annotate.cli`) stays fast.
"""

from importlib import import_module

_WHERE = {
    "ApiAnnotator": "annotate.api", "RequestParams": "annotate.api",
    "EngineConfig": "annotate.engine", "Summary": "annotate.engine", "run_calls": "annotate.engine",
    "annotate_store": "annotate.job", "skills_store": "annotate.job",
    "PRICES": "annotate.pricing", "Price": "annotate.pricing", "price_for": "annotate.pricing",
    "ERROR_TYPES": "annotate.templates", "load_prompt": "annotate.templates",
    "Annotator": "annotate.protocol", "Provenance": "annotate.protocol", "RowResult": "annotate.protocol",
    "rule_annotate": "train.toy.rule", "RuleAnnotator": "train.toy.rule",
    "ApiSkills": "annotate.skills", "RuleSkills": "train.toy.skills", "SkillBank": "annotate.skills",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'annotate' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), "load" if name == "load_prompt" else name)
