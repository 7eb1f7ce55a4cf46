"""BERT unit tests: model build and mask layout, the loss/metrics of the forward step, and the
masking / sentence-order statistics of megatron-core's BERT dataset as mtds configures it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_cfg

SEQ = 64


def tiny_bert_config(binary_head: bool = True, pair: str | None = None, **data):
    pair = pair or ("sop" if binary_head else "none")
    return tiny_cfg("bert", max_position_embeddings=SEQ, task={"pair": pair}, data=data)


def build(binary_head: bool = True, vocab: int = 512, seed: int = 0):
    from mtds.kinds import build_model

    torch.manual_seed(seed)
    return build_model(tiny_bert_config(binary_head), vocab, "fp32", on_gpu=False).eval()


# -- model ---------------------------------------------------------------------------------
def test_bert_builds_without_transformer_engine_with_exact_parameter_count(world_of_one):
    """BertModel on our SDPA spec builds with TE absent; count = embeddings + layers + heads."""
    from mtds.models.attention import SDPAttention

    h, v, s, layers = 64, 512, SEQ, 2
    with_head, without = build(True), build(False)
    assert with_head.attn_mask_dimensions == "b11s"
    core = with_head.encoder.layers[0].self_attention.core_attention
    assert isinstance(core, SDPAttention)
    # Per layer: 2 LayerNorms (2h each), QKV (3h*h, no bias), proj (h*h), fc1 (4h*h), fc2 (4h*h).
    layer = 2 * 2 * h + 3 * h * h + h * h + 4 * h * h + 4 * h * h
    # Word + position embeddings (output layer tied to the word embedding), final LayerNorm,
    # LM head (dense h*h+h, LayerNorm 2h) and the output bias (v).
    common = v * h + s * h + layers * layer + 2 * h + (h * h + h) + 2 * h + v
    # Binary head: segment embeddings (2h), pooler (h*h+h), classifier (2h+2).
    sop = 2 * h + (h * h + h) + (2 * h + 2)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(without) == common
    assert count(with_head) == common + sop
    assert without.binary_head is None and with_head.binary_head is not None


def test_key_padding_mask_gives_the_same_outputs_as_megatrons_square_mask(world_of_one):
    """b11s (what SDPABertModel asks for) vs b1ss (DotProductAttention's layout): identical
    logits at every real token and identical SOP logits; padding changes nothing real."""
    model = build(True)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(7, 512, (3, SEQ), generator=g)
    lengths = torch.tensor([SEQ, 40, 17])
    padding = (torch.arange(SEQ)[None] < lengths[:, None]).long()  # 1 = token
    types = (torch.arange(SEQ)[None] >= lengths[:, None] // 2).long() * padding
    with torch.no_grad():
        logits, sop = model(tokens, padding, tokentype_ids=types)
        model.attn_mask_dimensions = "b1ss"
        logits_sq, sop_sq = model(tokens, padding, tokentype_ids=types)
        model.attn_mask_dimensions = "b11s"
        # The 17-token sample alone, unpadded: same outputs as inside the padded batch.
        alone, sop_alone = model(tokens[2:, :17], padding[2:, :17], tokentype_ids=types[2:, :17])
    real = padding.bool()
    torch.testing.assert_close(logits[real], logits_sq[real])
    torch.testing.assert_close(sop, sop_sq)
    torch.testing.assert_close(logits[2, :17], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sop[2], sop_alone[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logits).all() and torch.isfinite(logits_sq).all()


def fake_batch(b: int = 4, vocab: int = 512, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(7, vocab, (b, SEQ), generator=g)
    loss_mask = (torch.rand(b, SEQ, generator=g) < 0.15).long()
    loss_mask[:, 1] = 1
    labels = torch.where(loss_mask.bool(), torch.randint(7, vocab, (b, SEQ), generator=g), -1)
    padding = torch.ones(b, SEQ, dtype=torch.long)
    padding[0, 50:] = 0
    loss_mask[0, 50:], labels[0, 50:] = 0, -1
    types = (torch.arange(SEQ)[None] >= 20).long().expand(b, SEQ) * padding
    return {"text": text, "types": types, "labels": labels, "loss_mask": loss_mask, "padding_mask": padding,
            "is_random": torch.tensor([0, 1, 1, 0][:b]), "truncated": torch.zeros(b, dtype=torch.long)}


def test_forward_step_loss_is_mlm_plus_sop_and_mlm_matches_megatrons_own_loss(world_of_one):
    from mtds.tasks.masked_lm import count_targets, forward_step as bert_forward

    model = build(True)
    batch = fake_batch()
    with torch.no_grad():
        losses, metrics = bert_forward(model, batch, torch.device("cpu"))
        counts = count_targets(batch)
        # Independent reference: BertModel's own per-token LM loss (megatron's vocab-parallel
        # cross entropy), averaged over masked positions, and plain CE on the binary logits.
        per_token, sop_logits = model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"],
                                      lm_labels=batch["labels"].clamp(min=0))
        mask = batch["loss_mask"].float()
        ref_mlm = (per_token * mask).sum() / mask.sum()
        ref_sop = torch.nn.functional.cross_entropy(sop_logits, batch["is_random"])
    # Sums over the targets and their counts: the masked tokens, and the samples for the pair loss.
    assert set(losses) == set(counts) == {"mlm", "sop"} and counts["sop"] == 4 and counts["mlm"] == mask.sum()
    torch.testing.assert_close(losses["mlm"] / counts["mlm"], ref_mlm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["sop"] / counts["sop"], ref_sop, rtol=1e-5, atol=1e-5)
    assert set(metrics) == {"mlm_acc", "sop_acc"} and metrics["sop_acc"][1] == 4
    assert 0.0 <= metrics["mlm_acc"][0] <= mask.sum() and metrics["mlm_acc"][1] == mask.sum()
    assert not any(v.requires_grad for v, _ in metrics.values())


def test_forward_step_accuracy_counts_argmax_hits_on_masked_positions_only(world_of_one):
    """A model whose logits are one-hot on the labels at masked positions scores mlm_acc 1."""
    from mtds.tasks.masked_lm import forward_step as bert_forward

    batch = fake_batch()

    class Oracle(torch.nn.Module):
        add_binary_head = True

        def forward(self, tokens, padding_mask, tokentype_ids=None):
            logits = torch.zeros(*tokens.shape, 512)
            logits.scatter_(-1, batch["labels"].clamp(min=0)[..., None], 30.0)  # right at masked rows
            logits[~batch["loss_mask"].bool()] = 0  # unmasked rows: argmax 0, never a label
            sop = torch.nn.functional.one_hot(1 - batch["is_random"], 2).float()  # always wrong
            return logits, sop

    losses, metrics = bert_forward(Oracle(), batch, torch.device("cpu"))
    (hits, masked), (sop_hits, _) = metrics["mlm_acc"], metrics["sop_acc"]
    assert hits == masked == batch["loss_mask"].sum() and sop_hits == 0.0
    assert losses["mlm"] / masked < 1e-3


def test_forward_step_without_binary_head_reports_mlm_only(world_of_one):
    from mtds.tasks.masked_lm import Options, count_targets, forward_step as bert_forward

    model = build(False)
    with torch.no_grad():
        losses, metrics = bert_forward(model, fake_batch(), torch.device("cpu"), Options(pair="none"))
    assert set(metrics) == {"mlm_acc"} and set(losses) == set(count_targets(fake_batch(), Options(pair="none"))) == {"mlm"}


# -- dataset -------------------------------------------------------------------------------
N_SAMPLES = 3000


def bert_train_set(tiny_data, tmp_path, binary_head: bool, pair: str | None = None, n: int = N_SAMPLES):
    from mtds.tasks.masked_lm import build_datasets
    from mtds.data.sources import DataSources
    from mtds.data.tokenizer import SentencePieceTokenizer

    cfg = tiny_bert_config(binary_head, pair, paths=[tiny_data["sentence_prefix"]],
                           tokenizer_model=tiny_data["tokenizer_model"], seq_length=SEQ,
                           cache_dir=str(tmp_path / "cache"), seed=1234, split="90,10,0")
    tok = SentencePieceTokenizer(tiny_data["tokenizer_model"])
    sources = DataSources([tiny_data["sentence_prefix"]], None, tiny_data["tokenizer_model"])
    train, _, _ = build_datasets(cfg, sources, tok, [n, 0, 0], 1)
    return train, tok


@pytest.fixture(scope="module")
def sop_samples(world_of_one, tiny_data, tmp_path_factory):
    train, tok = bert_train_set(tiny_data, tmp_path_factory.mktemp("bert_sop"), binary_head=True)
    return train, tok, [train[i] for i in range(N_SAMPLES)]


def test_masking_fraction_and_80_10_10_split(sop_samples):
    """Over 3000 samples of 64 tokens (~25k masked tokens) with a fixed seed.

    Fraction: the dataset masks floor(min(p * target_len, max(1, round(p * n_tokens)))) tokens per
    sample ([CLS]/[SEP] count in n_tokens but are never masked), i.e. slightly under p; measured
    over all real tokens it must lie in [0.13, 0.15], and per sample never above p * n + 0.5.
    Split: each masked token independently becomes [MASK] w.p. 0.8, a random id w.p. 0.1 (which
    equals the original w.p. 1/vocab, counted as unchanged), else stays. With n >= 20k the
    binomial standard deviation of a share is <= 0.003, so +-0.015 is > 5 sigma.
    """
    train, tok, samples = sop_samples
    text = np.stack([s["text"] for s in samples])
    labels = np.stack([s["labels"] for s in samples])
    loss_mask = np.stack([s["loss_mask"] for s in samples]).astype(bool)
    real = np.stack([s["padding_mask"] for s in samples]).astype(bool)
    assert (labels[~loss_mask] == -1).all() and (labels[loss_mask] >= 0).all()
    # megatron-core derives padding_mask from `text == pad`, and its random replacement draws
    # from the whole vocabulary, so a random <pad> (p = 0.1 / vocab per masked token) turns a
    # masked token into an attention hole. That, and only that, may put a masked token outside.
    holes = loss_mask & ~real
    assert (text[holes] == tok.pad).all() and holes.sum() <= 10, holes.sum()
    real |= holes
    specials = np.isin(np.where(loss_mask, labels, text), [tok.cls, tok.sep])
    assert not (loss_mask & specials).any(), "[CLS] or [SEP] was masked"
    per_sample = loss_mask.sum(1) / real.sum(1)
    assert (loss_mask.sum(1) <= 0.15 * real.sum(1) + 0.5).all()
    fraction = loss_mask.sum() / real.sum()
    assert 0.13 <= fraction <= 0.15, fraction
    # Only samples drawn very short (short_seq_prob) get no masked token: p * target_len < 1.
    targets = np.asarray(train.sample_index[:len(samples), 2])
    assert (targets[per_sample == 0] * 0.15 < 1).all()

    masked_in, original = text[loss_mask], labels[loss_mask]
    n = masked_in.size
    assert n > 20_000
    to_mask = np.mean(masked_in == tok.mask)
    unchanged = np.mean(masked_in == original)
    random_id = 1.0 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.015, to_mask
    assert abs(random_id - 0.1) < 0.015, random_id
    assert abs(unchanged - 0.1) < 0.015, unchanged
    # Random replacements spread over the vocabulary, not a handful of ids.
    assert len(np.unique(masked_in[(masked_in != tok.mask) & (masked_in != original)])) > 200


def _find_all(haystack: bytes, needle: bytes, width: int = 4) -> list[int]:
    """Token offsets where `needle` occurs in `haystack` (int32 bytes, aligned matches only)."""
    out, start = [], 0
    while (i := haystack.find(needle, start)) >= 0:
        if i % width == 0:
            out.append(i // width)
        start = i + 1
    return out


def test_sentence_order_label_matches_segment_swap_and_is_balanced(sop_samples):
    """is_random = 1 exactly when segment B precedes segment A in the source document.

    Segments are recovered from `types` and un-masked with `labels`, then located in the
    sample's original sentences (from the dataset's sample index); truncation only trims their
    ends, so each stays a contiguous run. Samples whose segments can be placed both ways
    (repeated text) are skipped; they are rare. Labels are Bernoulli(0.5): over 3000 samples the
    standard deviation of the share is 0.009, so 0.5 +- 0.05 is > 5 sigma.
    """
    train, tok, samples = sop_samples
    low = train.dataset  # the IndexedDataset of sentences
    checked = 0
    for idx, s in enumerate(samples):
        real = s["padding_mask"].astype(bool) | s["loss_mask"].astype(bool)  # see the random-<pad> note above
        original = np.where(s["loss_mask"].astype(bool), s["labels"], s["text"])[real]
        types = s["types"][real]
        assert original[0] == tok.cls and types[0] == 0
        seg_a, seg_b = original[1:][types[1:] == 0], original[1:][types[1:] == 1]
        assert seg_a[-1] == tok.sep and seg_b[-1] == tok.sep and len(seg_b) > 1, "expected two segments"
        seg_a, seg_b = seg_a[:-1], seg_b[:-1]
        beg, end, _ = train.sample_index[idx]
        stream = np.concatenate([low[i] for i in range(beg, end)]).astype(np.int32).tobytes()
        at_a = _find_all(stream, seg_a.astype(np.int32).tobytes())
        at_b = _find_all(stream, seg_b.astype(np.int32).tobytes())
        assert at_a and at_b, "a segment is not a contiguous run of the sample's sentences"
        in_order = any(a + len(seg_a) <= b for a in at_a for b in at_b)
        swapped = any(b + len(seg_b) <= a for a in at_a for b in at_b)
        if in_order == swapped:
            continue
        assert s["is_random"] == int(swapped), f"sample {idx}: is_random={s['is_random']}, swapped={swapped}"
        checked += 1
    assert checked > 0.95 * len(samples)
    share = np.mean([s["is_random"] for s in samples])
    assert abs(share - 0.5) < 0.05, share


def test_without_binary_head_samples_are_one_segment(world_of_one, tiny_data, tmp_path):
    train, tok = bert_train_set(tiny_data, tmp_path, binary_head=False)
    for i in range(200):
        s = train[i]
        real = s["padding_mask"].astype(bool) | s["loss_mask"].astype(bool)
        assert (s["types"] == 0).all() and s["is_random"] == 0
        original = np.where(s["loss_mask"].astype(bool), s["labels"], s["text"])[real]
        assert original[0] == tok.cls and original[-1] == tok.sep and (original[1:-1] != tok.sep).all()


def test_a_separate_validation_set_is_checked_whole(world_of_one, tiny_data, tmp_path):
    """data.valid_paths: all of data.paths trains, the validation set is read whole, and it is
    checked like a split (document-level data there is refused, naming data.valid_paths)."""
    from mtds.tasks.masked_lm import build_datasets
    from mtds.config import ConfigError
    from mtds.data.sources import DataSources
    from mtds.data.tokenizer import SentencePieceTokenizer

    sent, doc, model = tiny_data["sentence_prefix"], tiny_data["prefix"], tiny_data["tokenizer_model"]
    tok = SentencePieceTokenizer(model)
    cfg = tiny_bert_config(True, paths=[sent], valid_paths=[sent], tokenizer_model=model, cache_dir=str(tmp_path / "c"))
    train, valid, test = build_datasets(cfg, DataSources([sent], None, model, [sent]), tok, [10, 4, None], 1)
    assert len(train) >= 10 and len(valid) >= 4 and test is None
    cfg = tiny_bert_config(True, paths=[sent], valid_paths=[doc], tokenizer_model=model, cache_dir=str(tmp_path / "d"))
    with pytest.raises(ConfigError, match=r"^data.valid_paths: .*the valid split \(documents 0\.\.\d+ of \d+, whole\)"):
        build_datasets(cfg, DataSources([sent], None, model, [doc]), tok, [10, 4, None], 1)


def test_document_level_data_is_refused_instead_of_hanging(world_of_one, tiny_data, tmp_path):
    """One sequence per document gives the sentence-order head no sentence pairs; megatron-core's
    sample builder would loop forever, so build_datasets names the fix instead."""
    from mtds.tasks.masked_lm import build_datasets
    from mtds.config import ConfigError
    from mtds.data.sources import DataSources
    from mtds.data.tokenizer import SentencePieceTokenizer

    prefix, model = tiny_data["prefix"], tiny_data["tokenizer_model"]
    cfg = tiny_bert_config(True, paths=[prefix], tokenizer_model=model, split="90,10,0",
                           cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="--split-sentences.*_sentence prefix"):
        build_datasets(cfg, DataSources([prefix], None, model), SentencePieceTokenizer(model), [10, 2, 0], 1)


# -- next-sentence prediction (task.pair = "nsp") ---------------------------------------------
def test_sop_is_megatron_cores_own_dataset(world_of_one, tiny_data, tmp_path):
    """pair=sop builds megatron-core's class itself, so its samples are what they were before."""
    from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset

    train, _ = bert_train_set(tiny_data, tmp_path, True, pair="sop", n=10)
    assert type(train) is BERTMaskedWordPieceDataset


def test_nsp_labels_are_half_random_and_random_b_comes_from_another_document(world_of_one, tiny_data, tmp_path):
    """10k samples: label 1 (random B) ~ Bernoulli(0.5) (sd of the share 0.005: 0.5 +- 0.03 is 6
    sigma); for label 1, B is a run of another document of the split; for label 0, of A's own."""
    from mtds.data.nsp_dataset import NSPMaskedWordPieceDataset

    train, tok = bert_train_set(tiny_data, tmp_path, True, pair="nsp", n=10_000)
    assert isinstance(train, NSPMaskedWordPieceDataset)
    low, docs = train.dataset, train.dataset.document_indices
    labels, checked = [], 0
    for idx in range(len(train)):
        rng = np.random.RandomState((train.config.random_seed + idx) % 2**32)  # as __getitem__ seeds it
        a, b, is_random, doc_a, doc_b = train.segments(idx, rng)
        labels.append(is_random)
        assert (doc_b != doc_a) == is_random
        assert doc_b in train.indices  # the same split
        if idx < 300:  # B is a contiguous run of doc_b's tokens
            stream = np.concatenate([low[i] for i in range(docs[doc_b], docs[doc_b + 1])]).astype(np.int32)
            assert _find_all(stream.tobytes(), np.asarray(b, dtype=np.int32).tobytes()), idx
            checked += 1
    assert checked == 300
    assert abs(np.mean(labels) - 0.5) < 0.03, np.mean(labels)


def test_nsp_samples_are_framed_and_masked_like_sop(world_of_one, tiny_data, tmp_path):
    train, tok = bert_train_set(tiny_data, tmp_path, True, pair="nsp", n=500)
    masked, tokens = 0, 0
    for i in range(500):
        s = train[i]
        real = s["padding_mask"].astype(bool)
        original = np.where(s["loss_mask"].astype(bool), s["labels"], s["text"])[real]
        types = s["types"][real]
        assert original[0] == tok.cls and original[-1] == tok.sep and (np.diff(types) >= 0).all()
        assert types[-1] == 1 and (original == tok.sep).sum() == 2  # [CLS] A [SEP] B [SEP]
        assert (s["padding_mask"][real.sum():] == 0).all() and (s["text"][~real] == 0).all()
        masked, tokens = masked + s["loss_mask"].sum(), tokens + real.sum() - 3
    assert 0.12 < masked / tokens < 0.16  # ~15% of the non-special tokens, as megatron-core masks


def test_nsp_metrics_are_named_after_the_pair_objective(world_of_one):
    from mtds.tasks.masked_lm import Options, forward_step

    from mtds.train.reduction import loss_of_parts

    with torch.no_grad():
        losses, metrics = forward_step(build(True), fake_batch(), torch.device("cpu"), Options(pair="nsp"))
    assert set(metrics) == {"mlm_acc", "nsp_acc"} and set(losses) == {"mlm", "nsp"}
    assert set(loss_of_parts(losses)[1]) == {"mlm_loss", "nsp_loss"}  # what the trainer logs beside the loss
