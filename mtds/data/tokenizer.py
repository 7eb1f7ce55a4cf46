"""The project's tokenizers behind megatron-core's tokenizer interface: a sentencepiece model
(`SentencePieceTokenizer`) or a Hugging Face tokenizer directory (`HuggingFaceTokenizer`), made
by `load_tokenizer(path, type)` (data.tokenizer_model / data.tokenizer_type).

Why a thin class rather than `megatron.core.tokenizers.MegatronTokenizer`: in megatron-core
0.16.1 that class's sentencepiece wrapper raises AttributeError for `pad` and `eod` even when
the model defines them, and exposes `cls`/`sep`/`mask` only in its deprecated legacy mode.
megatron-core's datasets read exactly the attributes of `MegatronLegacyTokenizer` (eod, pad,
cls, sep, mask, vocab_size, inv_vocab), so we implement that interface over
`sentencepiece.SentencePieceProcessor` and nothing more.

The special-token layout is fixed by `data_tools.train_tokenizer` (see `data_tools.spm`).
A Hugging Face tokenizer brings its own (see `HuggingFaceTokenizer`).
"""

from __future__ import annotations

import logging
import os
from functools import cached_property

import numpy as np

from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

from data_tools.hf_tokenizer import HUGGINGFACE, SENTENCEPIECE, load_hf_tokenizer, special_id, tokenizer_type
from data_tools.spm import BOS, CLS, EOD, MASK, PAD, SEP, UNK, TokenizerError, load_sentencepiece, sentinel_piece


def load_tokenizer(path: str | os.PathLike, type: str = "auto", key: str = "data.tokenizer_type"):
    """The tokenizer at `path`: "auto" (a directory is Hugging Face, a file sentencepiece),
    "SentencePieceTokenizer" or "HuggingFaceTokenizer". One-line TokenizerError for a bad path or
    a path that is not of the type asked for; `key` names the setting in that line."""
    if tokenizer_type(path, type, key) == HUGGINGFACE:
        return HuggingFaceTokenizer(path)
    return SentencePieceTokenizer(path)


def _quiet_legacy_warning() -> None:
    # megatron-core logs a deprecation warning for every legacy tokenizer made; its datasets
    # still read this interface, so the warning is noise here.
    logging.getLogger("megatron.core.datasets.megatron_tokenizer").setLevel(logging.ERROR)


class SentencePieceTokenizer(MegatronLegacyTokenizer):
    """sentencepiece model with the ids megatron-core's GPT and BERT datasets ask for."""

    tokenizer_type = SENTENCEPIECE

    def __init__(self, model_path: str | os.PathLike):
        model_path = os.fspath(model_path)
        self.model_path = model_path
        self.sp = load_sentencepiece(model_path)
        _quiet_legacy_warning()
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

    @cached_property
    def additional_special_tokens_ids(self) -> list[int]:
        """T5's sentinels <extra_id_0>, <extra_id_1>, ... in that order (megatron-core's
        T5MaskedWordPieceDataset reads this name); [] for a tokenizer trained without them."""
        return sentinel_ids(self.vocab)


class HuggingFaceTokenizer(MegatronLegacyTokenizer):
    """A Hugging Face tokenizer directory (transformers' AutoTokenizer) with the ids megatron-core's
    datasets ask for: eod = its eos token; pad = its pad token, else eos; bos as it names it;
    cls/sep/mask only if it names them (a one-line TokenizerError when BERT asks for a missing one).
    `tokenize` encodes as AutoTokenizer(text) does, special tokens (e.g. BOS) included, so prompts
    look like the documents data_tools.preprocess wrote; vocab_size = len(tokenizer), added tokens
    included.
    """

    tokenizer_type = HUGGINGFACE

    def __init__(self, path: str | os.PathLike):
        self.model_path = os.fspath(path)
        self.tok = load_hf_tokenizer(self.model_path)
        _quiet_legacy_warning()
        super().__init__(self.model_path)
        if self.eos is None:
            raise TokenizerError(f"{self.model_path}: tokenizer has no eos token (the end of a document); "
                                 "set eos_token in its tokenizer_config.json")

    def tokenize(self, text: str) -> list[int]:
        return list(self.tok(text)["input_ids"])

    def detokenize(self, ids) -> str:
        return self.tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @cached_property
    def vocab(self) -> dict[str, int]:
        return dict(self.tok.get_vocab())

    @cached_property
    def inv_vocab(self) -> dict[int, str]:
        return {i: t for t, i in self.vocab.items()}

    def _required(self, name: str) -> int:
        idx = special_id(self.tok, name)
        if idx is None:
            raise TokenizerError(f"{self.model_path}: tokenizer has no {name} token, which BERT needs; set "
                                 f"{name}_token in its tokenizer_config.json (its tokenizer.json must know it), or "
                                 "train one with `python -m data_tools.train_tokenizer --type hf-bpe`")
        return idx

    @property
    def eos(self) -> int | None:
        return special_id(self.tok, "eos")

    @property
    def eod(self) -> int:
        return self.eos

    @property
    def pad(self) -> int:
        pad = special_id(self.tok, "pad")
        return self.eos if pad is None else pad

    @property
    def bos(self) -> int | None:
        return special_id(self.tok, "bos")

    @property
    def cls(self) -> int:
        return self._required("cls")

    @property
    def sep(self) -> int:
        return self._required("sep")

    @property
    def mask(self) -> int:
        return self._required("mask")

    @cached_property
    def additional_special_tokens_ids(self) -> list[int]:
        """T5's sentinels <extra_id_0>, ... by name (Hugging Face T5 tokenizers number them down
        from the end of the vocabulary), in sentinel order; [] when it has none."""
        return sentinel_ids(self.vocab)


def sentinel_ids(vocab: dict[str, int]) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... up to the first one missing."""
    ids = []
    while (idx := vocab.get(sentinel_piece(len(ids)))) is not None:
        ids.append(idx)
    return ids
