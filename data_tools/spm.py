"""Sentencepiece model file conventions, owned by data_tools and read by training (no torch import).

`data_tools.train_tokenizer` writes models with this special-token layout:
    0 <pad>   1 <unk>   2 <s>   3 </s> (= end of document)   4 [CLS]   5 [SEP]   6 [MASK]
and, with `--sentinel-tokens N` (T5's span corruption), 7 <extra_id_0> ... 6+N <extra_id_{N-1}>.
Kept free of megatron/torch imports so data_tools' worker processes start in well under a second;
sentencepiece itself is imported only to load a model, so Hugging Face tokenizer users
(data_tools.hf_tokenizer, which shares TokenizerError) need not install it.
"""

from __future__ import annotations

import os

PAD, UNK, BOS, EOD = "<pad>", "<unk>", "<s>", "</s>"
CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
USER_DEFINED_SYMBOLS = (CLS, SEP, MASK)
DEFAULT_SENTINEL_TOKENS = 100
"""T5's count (Raffel et al. 2020): a span-corruption sample of 512 tokens at 15% masking has ~25 spans."""


def sentinel_piece(i: int) -> str:
    """The i-th sentinel, the name T5 and Hugging Face's T5 tokenizers use: <extra_id_0>, <extra_id_1>, ..."""
    return f"<extra_id_{i}>"


def sentinel_pieces(n: int) -> list[str]:
    return [sentinel_piece(i) for i in range(n)]


class TokenizerError(ValueError):
    """A tokenizer file or directory that is missing or not a usable tokenizer (one line)."""


def load_sentencepiece(model_path: str | os.PathLike):
    """Load a sentencepiece model, or raise a one-line TokenizerError naming the file."""
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise TokenizerError(
            f"{model_path}: tokenizer model not found; build one with `python -m data_tools.train_tokenizer`"
        )
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.load(model_path)
    except (RuntimeError, OSError) as e:
        raise TokenizerError(
            f"{model_path}: not a sentencepiece model ({str(e).splitlines()[0][:80]})"
        ) from None
    return sp
