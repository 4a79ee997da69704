"""The tokenizer: a byte-level BPE trained with `tokenizers` on the training documents (cached on disk and
saved as an HF tokenizer), or any `AutoTokenizer` path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, model_max_length=10**9
    )


def load_or_train_bpe(path: Path, texts_fn, vocab_size: int) -> PreTrainedTokenizerFast:
    """Load the cached tokenizer at `path`, or train one and publish it atomically (rename of a temp dir)."""
    if not (path / "tokenizer.json").is_file():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        train_bpe(texts_fn(), vocab_size).save_pretrained(tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(path)
        except OSError:  # another process published it first
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(path)


def load_pretrained(name_or_path: str):
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path} has no EOS token, which packing needs between documents")
    tok.model_max_length = 10**9
    return tok
