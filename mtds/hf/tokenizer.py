"""The tokenizer files of an exported model directory, from the run's tokenizer.

Sentencepiece: tokenizer.model is the sentencepiece file as trained; tokenizer.json an equivalent
fast tokenizer, so `AutoTokenizer.from_pretrained` works without sentencepiece's slow wrapper.
Hugging Face: the tokenizer directory's own files, copied (`copy_hf_tokenizer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from data_tools.hf_tokenizer import HF_FILES, HUGGINGFACE, SENTENCEPIECE, load_hf_tokenizer, special_id
from data_tools.spm import BOS, CLS, EOD, MASK, PAD, SEP, UNK, USER_DEFINED_SYMBOLS, load_sentencepiece
from mtds.data.tokenizer import sentinel_ids


def write_tokenizer(model_path: str, out_dir: str, model_max_length: int, bert: bool = False,
                    tokenizer_type: str = SENTENCEPIECE) -> dict:
    """tokenizer.model (the sentencepiece file as trained) + an equivalent fast tokenizer.json;
    a Hugging Face tokenizer (`tokenizer_type`) is copied instead (copy_hf_tokenizer).

    The tokenizer.json reproduces data_tools.train_tokenizer's sentencepiece settings: spaces become
    U+2581 with no dummy prefix and no normalization, a word starts at a U+2581 that follows
    non-space (runs of spaces stay one word: allow_whitespace_only_pieces), BPE merges ranked by
    piece score, byte fallback, and [CLS]/[SEP]/[MASK] (and T5's sentinels) as atomic user-defined symbols.
    For BERT, [CLS]/[SEP]/[MASK] are also named cls/sep/mask tokens and encoding with special
    tokens frames the text as in training ([CLS] a [SEP] (b [SEP]), token types 0 then 1), so
    `pipeline("fill-mask")` works as is.
    Returns the special-token ids for the model config.
    """
    if tokenizer_type == HUGGINGFACE:
        return copy_hf_tokenizer(model_path, out_dir)
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    sp = load_sentencepiece(model_path)
    shutil.copyfile(model_path, os.path.join(out_dir, "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = bpe_merges(sp)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581*[^\u2581]+|\u2581+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (PAD, UNK, BOS, EOD)])
    # sentencepiece matches user-defined symbols whole (T5's sentinels too, where trained in): so does this
    atomic = list(USER_DEFINED_SYMBOLS) + [sp.id_to_piece(i) for i in sentinel_ids(vocab)]
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in atomic])
    special = {"pad_token": PAD, "unk_token": UNK, "bos_token": BOS, "eos_token": EOD}
    if bert:
        cls_id, sep_id = sp.piece_to_id(CLS), sp.piece_to_id(SEP)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
            special_tokens=[(CLS, cls_id), (SEP, sep_id)])
        special.update(cls_token=CLS, sep_token=SEP, mask_token=MASK)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    ids = {"pad_token_id": sp.piece_to_id(PAD), "bos_token_id": sp.piece_to_id(BOS),
           "eos_token_id": sp.piece_to_id(EOD)}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                  **special, "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  # sentencepiece reads "</s>" in text as plain characters; so does this tokenizer. Not
                  # for BERT: there "[MASK]" in text must stay the mask token once it is named special.
                  "split_special_tokens": not bert}
    if bert:  # segment ids for the pair framing
        tok_config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    return ids


def copy_hf_tokenizer(tok_dir: str, out_dir: str) -> dict:
    """The run's Hugging Face tokenizer files as they are (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, ... where present): AutoTokenizer on the export is then the tokenizer
    the data was made with, BOS handling and added tokens included. Returns the special-token ids."""
    tok = load_hf_tokenizer(tok_dir)  # one line if it moved or broke since training
    for name in HF_FILES:  # an earlier export's files must not mix with these
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
    for name in HF_FILES:
        if os.path.isfile(os.path.join(tok_dir, name)):
            shutil.copyfile(os.path.join(tok_dir, name), os.path.join(out_dir, name))
    eos, pad = special_id(tok, "eos"), special_id(tok, "pad")
    return {"pad_token_id": eos if pad is None else pad, "bos_token_id": special_id(tok, "bos"), "eos_token_id": eos}


def bpe_merges(sp) -> list[tuple[str, str]]:
    """BPE merge list equivalent to a sentencepiece BPE model's piece scores.

    sentencepiece merges the adjacent pair whose merged piece has the highest score; a rank-ordered
    merge list does the same when every (left, right) split of each piece into two vocabulary
    pieces is listed by descending piece score (longer left parts first within a piece).
    """
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, pid in vocab.items():
        splits = [(piece[:j], piece[j:]) for j in range(1, len(piece)) if piece[:j] in vocab and piece[j:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges += [(left, right, sp.get_score(pid)) for left, right in splits]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: ties keep id order
    return [(left, right) for left, right, _ in merges]


def write_chat_template(out_dir: str, model_path: str, tokenizer_type: str = SENTENCEPIECE) -> str | None:
    """An SFT run's chat template in the exported tokenizer_config.json, so `apply_chat_template`
    (and what serves the export, e.g. vLLM's chat endpoint) frames a chat as the training data did.

    The run does not record data_tools.sft's --template; "auto" is what it resolves to from the
    tokenizer alone: a tokenizer with its own chat_template keeps it (copied with its files; a run
    that forced --template default on such a tokenizer is not told apart), any other gets the
    default template as Jinja (data_tools.chat_format.default_jinja), and special tokens in text are
    read as such (split_special_tokens false: a turn ends with the eos token the template writes;
    so message text that spells one, e.g. "</s>", is that token here and plain text in mtds).
    Returns the template written, or None."""
    from data_tools.chat_format import ChatEncoder, default_jinja

    enc = ChatEncoder(model_path, tokenizer_type, "auto")
    if enc.template != "default":
        return None
    prefix = "".join(enc.hf.convert_ids_to_tokens(enc.prefix)) if enc.prefix else ""  # e.g. an HF BOS
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(chat_template=default_jinja(prefix), split_special_tokens=False)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return config["chat_template"]
