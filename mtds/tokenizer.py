"""The project's tokenizer: a sentencepiece model behind megatron-core's tokenizer interface.

Why a thin class rather than `megatron.core.tokenizers.MegatronTokenizer`: in megatron-core
0.16.1 that class's sentencepiece wrapper raises AttributeError for `pad` and `eod` even when
the model defines them, and exposes `cls`/`sep`/`mask` only in its deprecated legacy mode.
megatron-core's datasets read exactly the attributes of `MegatronLegacyTokenizer` (eod, pad,
cls, sep, mask, vocab_size, inv_vocab), so we implement that interface over
`sentencepiece.SentencePieceProcessor` and nothing more.

The special-token layout is fixed by `data_tools.train_tokenizer` (see `data_tools.spm`).
"""

from __future__ import annotations

import logging
import os
from functools import cached_property

import numpy as np

from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

from data_tools.spm import BOS, CLS, EOD, MASK, PAD, SEP, UNK, TokenizerError, load_sentencepiece


class SentencePieceTokenizer(MegatronLegacyTokenizer):
    """sentencepiece model with the ids megatron-core's GPT and BERT datasets ask for."""

    def __init__(self, model_path: str | os.PathLike):
        model_path = os.fspath(model_path)
        self.model_path = model_path
        self.sp = load_sentencepiece(model_path)
        # megatron-core logs a deprecation warning for every legacy tokenizer made; its datasets
        # still read this interface, so the warning is noise here.
        logging.getLogger("megatron.core.datasets.megatron_tokenizer").setLevel(logging.ERROR)
        super().__init__(model_path)
        missing = [t for t in (PAD, EOD) if self.sp.piece_to_id(t) == self.sp.unk_id()]
        if missing:
            raise TokenizerError(
                f"{model_path}: sentencepiece model lacks special tokens {missing}; "
                "train it with `python -m data_tools.train_tokenizer`"
            )

    # -- encode / decode -------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def tokenize_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        """Encode many texts at once; sentencepiece spreads them over C++ threads."""
        return self.sp.encode(texts, num_threads=num_threads)

    def detokenize(self, ids) -> str:
        return self.sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @cached_property
    def vocab(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}

    @cached_property
    def inv_vocab(self) -> dict[int, str]:
        return {i: self.sp.id_to_piece(i) for i in range(self.vocab_size)}

    def _id(self, piece: str) -> int:
        idx = self.sp.piece_to_id(piece)
        if idx == self.sp.unk_id() and piece != UNK:
            raise TokenizerError(
                f"{self.model_path}: no {piece} token; retrain with `python -m data_tools.train_tokenizer`"
            )
        return idx

    @property
    def pad(self) -> int:
        return self._id(PAD)

    @property
    def eod(self) -> int:
        return self._id(EOD)

    @property
    def bos(self) -> int:
        return self._id(BOS)

    @property
    def eos(self) -> int:
        return self._id(EOD)

    @property
    def cls(self) -> int:
        return self._id(CLS)

    @property
    def sep(self) -> int:
        return self._id(SEP)

    @property
    def mask(self) -> int:
        return self._id(MASK)
