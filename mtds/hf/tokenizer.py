"""The tokenizer files of an exported model directory, from the run's sentencepiece model.

tokenizer.model is the sentencepiece file as trained; tokenizer.json an equivalent fast
tokenizer, so `AutoTokenizer.from_pretrained` works without sentencepiece's slow wrapper.
"""

from __future__ import annotations

import json
import os
import shutil

from data_tools.spm import BOS, CLS, EOD, MASK, PAD, SEP, UNK, USER_DEFINED_SYMBOLS, load_sentencepiece


def write_tokenizer(model_path: str, out_dir: str, model_max_length: int, bert: bool = False) -> dict:
    """tokenizer.model (the sentencepiece file as trained) + an equivalent fast tokenizer.json.

    The tokenizer.json reproduces data_tools.train_tokenizer's sentencepiece settings: spaces become
    U+2581 with no dummy prefix and no normalization, a word starts at a U+2581 that follows
    non-space (runs of spaces stay one word: allow_whitespace_only_pieces), BPE merges ranked by
    piece score, byte fallback, and [CLS]/[SEP]/[MASK] as atomic user-defined symbols.
    For BERT, [CLS]/[SEP]/[MASK] are also named cls/sep/mask tokens and encoding with special
    tokens frames the text as in training ([CLS] a [SEP] (b [SEP]), token types 0 then 1), so
    `pipeline("fill-mask")` works as is.
    Returns the special-token ids for the model config.
    """
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
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in USER_DEFINED_SYMBOLS])
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
