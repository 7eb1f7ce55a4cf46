"""Hugging Face tokenizer directories (tokenizer.json + tokenizer_config.json), as data_tools and
training read them; the sentencepiece side is data_tools.spm.

- `tokenizer_type(path, requested)`: which kind a tokenizer path is. The names are Megatron-LM's
  `--tokenizer-type` values; "auto" takes a directory as Hugging Face and a file as sentencepiece.
- `load_hf_tokenizer(dir)`: transformers' AutoTokenizer, or a one-line TokenizerError naming the
  directory.
- `FastEncoder`: what preprocess workers encode with. AutoTokenizer configures its Rust backend
  (post-processor adding BOS/EOS as tokenizer_config.json asks, split_special_tokens) and then
  calls it directly, so the backend, serialized once in the main process and rebuilt in each
  worker with `tokenizers` alone, gives exactly AutoTokenizer's ids without transformers' slow
  import in every worker; `check_fast_encoder` verifies that on probe texts.

Imports transformers / tokenizers lazily: sentencepiece users never pay for them.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from data_tools.spm import TokenizerError

SENTENCEPIECE, HUGGINGFACE = "SentencePieceTokenizer", "HuggingFaceTokenizer"
TOKENIZER_TYPES = ("auto", SENTENCEPIECE, HUGGINGFACE)
# A tokenizer directory's files (tokenizer.json is required): an export copies those present.
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
            "chat_template.jinja", "tokenizer.model")
_TRAIN_HINT = "`python -m data_tools.train_tokenizer --type hf-bpe` trains one"


def tokenizer_type(path: str | os.PathLike, requested: str = "auto", key: str = "--tokenizer-type") -> str:
    """SENTENCEPIECE or HUGGINGFACE for `path`; `key` names the flag or config key in errors."""
    path = os.fspath(path)
    if requested not in TOKENIZER_TYPES:
        raise TokenizerError(f"{key} {requested!r}: choose one of {', '.join(TOKENIZER_TYPES)}")
    if requested == "auto":
        return HUGGINGFACE if os.path.isdir(path) else SENTENCEPIECE
    if requested == HUGGINGFACE and os.path.isfile(path):
        raise TokenizerError(f"{path}: is a file, but {HUGGINGFACE} ({key}) reads a directory with tokenizer.json; "
                             f"give that directory, or {SENTENCEPIECE} (or auto) for a sentencepiece .model")
    if requested == SENTENCEPIECE and os.path.isdir(path):
        raise TokenizerError(f"{path}: is a directory, but {SENTENCEPIECE} ({key}) reads a .model file; "
                             f"give the file, or {HUGGINGFACE} (or auto) for a tokenizer.json directory")
    return requested


def load_hf_tokenizer(path: str | os.PathLike):
    """transformers.AutoTokenizer of a local directory (fast tokenizers only), or a one-line TokenizerError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TokenizerError(f"{path}: tokenizer directory not found; give a directory with tokenizer.json "
                             f"({_TRAIN_HINT})")
    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: not a directory; a Hugging Face tokenizer is a directory with "
                             "tokenizer.json and tokenizer_config.json")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise TokenizerError(f"{path}: no tokenizer.json; give a directory a Hugging Face tokenizer was saved to "
                             f"(tokenizer.json + tokenizer_config.json, e.g. by save_pretrained), or {_TRAIN_HINT}")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- transformers raises OSError, ValueError, JSON and Rust errors alike
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise TokenizerError(f"{path}: transformers cannot load this tokenizer ({type(e).__name__}: {reason}); "
                             "check tokenizer.json / tokenizer_config.json") from None
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{path}: {type(tok).__name__} is not a fast (tokenizer.json) tokenizer; "
                             "save it with a tokenizer.json")
    return tok


def fast_encoder_spec(tok) -> dict:
    """What a worker process needs to rebuild `tok`'s encoding: picklable, transformers-free."""
    return {"json": tok.backend_tokenizer.to_str(), "split_special_tokens": bool(tok.split_special_tokens)}


class FastEncoder:
    """AutoTokenizer's Rust backend, rebuilt from `fast_encoder_spec` (tokenizers only)."""

    def __init__(self, spec: dict):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(spec["json"])
        # AutoTokenizer sets these per call (tok(text) truncates and pads nothing); they are
        # runtime state, not all of it serialized.
        self.tok.encode_special_tokens = spec["split_special_tokens"]
        self.tok.no_truncation()
        self.tok.no_padding()
        # Special tokens the post-processor puts around one text (BOS before, EOS after, ...):
        # from the special-token mask of a one-character probe.
        probe = self.tok.encode("a", add_special_tokens=True)
        mask = probe.special_tokens_mask
        first = mask.index(0) if 0 in mask else len(mask)
        last = len(mask) - mask[::-1].index(0) if 0 in mask else len(mask)
        self.prefix = np.asarray(probe.ids[:first], np.int64)
        self.suffix = np.asarray(probe.ids[last:], np.int64)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text as AutoTokenizer(text)["input_ids"] (special tokens included)."""
        return [np.asarray(e.ids, np.int64) for e in self.tok.encode_batch_fast(list(texts), add_special_tokens=True)]

    def encode_documents(self, sentences: Sequence[str], counts: np.ndarray) -> list[np.ndarray]:
        """Sentences, `counts[d]` per document: special tokens once per document, not per sentence
        (a BOS before every sentence would be data the model never sees at inference): the
        post-processor's leading ones before the document's first sentence, trailing ones after
        its last; the sentences themselves as AutoTokenizer(s, add_special_tokens=False)."""
        ids = [np.asarray(e.ids, np.int64) for e in self.tok.encode_batch_fast(list(sentences), add_special_tokens=False)]
        if len(self.prefix) or len(self.suffix):
            pos = 0
            for n in counts:
                if n:
                    ids[pos] = np.concatenate((self.prefix, ids[pos]))
                    ids[pos + n - 1] = np.concatenate((ids[pos + n - 1], self.suffix))
                pos += n
        return ids


PROBES = ("Hello, world!", "  def f(x):\n\treturn x**2  # 12345\n", "naïve café – 東京 🚀", "</s> <s> [MASK] <|endoftext|>")


def check_fast_encoder(tok, encoder: FastEncoder, path: str) -> None:
    """The rebuilt backend must encode as AutoTokenizer does (a tokenizer class that rewrites the
    text in Python before encoding would not): compared on probe texts, one line if not."""
    for text in PROBES:
        want = list(tok(text)["input_ids"])
        got = encoder.encode([text])[0].tolist()
        if got != want:
            raise TokenizerError(f"{path}: {type(tok).__name__} does not encode {text!r} as its tokenizer.json does "
                                 f"({want[:8]} vs {got[:8]}); this tokenizer class is not supported")


def special_id(tok, name: str) -> int | None:
    """The id of a named special token ("eos", "pad", "cls", ...), None if the tokenizer has none."""
    value = getattr(tok, f"{name}_token_id", None)
    return None if value is None else int(value)
