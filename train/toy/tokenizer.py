"""The toy tokenizer: a byte-level BPE trained on the texts the toy policy reads and writes.

Trained on the SFT mix itself (`corpus`): plain prompts and solutions, the trainer's
teacher prompts and the annotator's prompts with their JSON answers, so the templates' words and the
JSON punctuation are single tokens (an annotator prompt is ~250 tokens, not ~900 bytes).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)

# ChatML, as Qwen/SmolLM use it; `{% generation %}` is not used so the template works everywhere.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatText:
    """`CHAT_TEMPLATE` in plain Python, for rendering before a tokenizer exists (the tokenizer's
    own corpus). `apply_chat_template(..., tokenize=False)` gives the same text as the tokenizer's."""

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False, **_) -> str:
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


# Qwen2's pre-tokenizer: AutoTokenizer rebuilds any `qwen2` model folder's tokenizer with this
# pipeline (Qwen2Tokenizer), so the toy tokenizer must be trained with exactly it, or a model
# folder would tokenize differently after a reload. Digits become single tokens (good for
# arithmetic), spaces stay separate.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


TOKENIZER_VERSION = 2  # bump when the corpus or the training below changes


@functools.cache
def _trained(vocab_size: int) -> str:
    """The trained `tokenizers` JSON: from the on-disk cache, else trained (~10 s: the corpus
    renders 3000 examples of every task) and cached."""
    import hashlib

    from datastore.cache import cache_root

    key = hashlib.sha256(f"{TOKENIZER_VERSION}-{vocab_size}".encode()).hexdigest()[:12]
    path = cache_root() / f"toy-tokenizer-{key}.json"
    try:
        return path.read_text()
    except OSError:
        pass
    text = _train(vocab_size).to_str()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the retraining
    return text


def _train(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers


    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(ChatText()), trainer=trainer)
    return tok


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 1024):
    """Train the toy byte-level BPE tokenizer (deterministic; ~10 s once, then cached on disk under
    `datastore.cache.cache_root()` and in the process) and return it as a
    `PreTrainedTokenizerFast` with the ChatML template, `pad_token=<|endoftext|>` and
    `eos_token=<|im_end|>`. Any text encodes (full byte alphabet). Its normalizer and
    pre-tokenizer are Qwen2's, so `AutoTokenizer` reloads it identically from a Qwen2 model
    folder. Saved to `out_dir` if given. The vocabulary stops growing when no pair is left to
    merge, so it may hold fewer than `vocab_size` entries."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained(vocab_size))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START],
        padding_side="left",
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def corpus(chat, n: int = 3000) -> list[str]:
    """What the tokenizer is trained on: prompts + completions of every `TOKENIZER_TASKS` task, deterministic."""
    from train.toy.sft import TOKENIZER_TASKS, examples

    weights = {t: 1.0 for t in TOKENIZER_TASKS}
    it = examples(chat, weights, seed=10_000, noise=0.3, hint_noise=0.1, partial=0.2)
    return [f"{prompt}{completion}{IM_END}\n" for _, prompt, completion in (next(it) for _ in range(n))]
