"""data.document_mask: documents packed into one sequence are computed as if each were alone."""

from __future__ import annotations

import pytest
import torch

ATOL = 1e-5  # fp32: SDPA with a mask and with is_causal sum in other orders


@pytest.fixture(scope="module")
def model(world_of_one):
    """A tiny random-weight GPT (RoPE) in fp32 and eval mode."""
    from helpers import tiny_cfg
    from mtds.kinds import build_model

    cfg = tiny_cfg(num_attention_heads=4, num_query_groups=2)
    torch.manual_seed(0)
    m = build_model(cfg, 512, "fp32", on_gpu=False).eval()  # the tiny_data tokenizer's 512
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


EOD = 3


def _packed(docs):
    """tokens [1, s] of the documents one after another, and megatron-core's block-causal mask
    [1, 1, s, s] and restarting position ids [1, s] for them (as GPTDataset builds them)."""
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    tokens = torch.cat(docs)
    mask, _, positions = _get_ltor_masks_and_position_ids(tokens, EOD, True, True, False, True)
    return tokens[None], mask[None], positions[None]


def test_each_packed_document_gets_the_logits_it_gets_alone(model):
    g = torch.Generator().manual_seed(1)
    docs = [torch.cat([torch.randint(7, 512, (n,), generator=g), torch.tensor([EOD])]) for n in (9, 20, 14)]
    tokens, mask, positions = _packed(docs)
    assert positions[0, 10].item() == 0 and mask.shape == (1, 1, 46, 46)
    with torch.no_grad():
        packed = model(tokens, positions, mask)  # [1, 46, V]
        start = 0
        for doc in docs:
            alone = model(doc[None], torch.arange(len(doc))[None], None)
            torch.testing.assert_close(packed[:, start:start + len(doc)], alone, atol=ATOL, rtol=0)
            start += len(doc)
        # Without the mask, later documents see the earlier ones: the property is the mask's doing.
        unmasked = model(tokens, torch.arange(tokens.shape[1])[None], None)
    assert (unmasked[:, 10:] - packed[:, 10:]).abs().max() > 1e-2


@pytest.mark.parametrize("path", ["dense", "flex"])
def test_document_ids_give_megatrons_mask_on_both_attention_paths(model, monkeypatch, path):
    """The ids the data carries (mtds.data.document_ids) give the logits megatron-core's own
    block-causal mask gives: as SDPA's dense mask (CPU) and as FlexAttention's BlockMask (GPU;
    here flex_attention's CPU reference implementation runs the same BlockMask)."""
    from mtds.data.document_ids import document_ids
    from mtds.models import document_attention

    monkeypatch.setattr(document_attention, "_cached", None)
    if path == "flex":
        monkeypatch.setattr(document_attention, "FLEX_DEVICES", ("cuda", "cpu"))
    g = torch.Generator().manual_seed(2)
    docs = [torch.cat([torch.randint(7, 512, (n,), generator=g), torch.tensor([EOD])]) for n in (30, 5, 20)]
    docs[-1] = docs[-1][:-1]  # the last document runs past the sequence's end, as in GPTDataset samples
    tokens, mask, positions = _packed(docs)
    ids = document_ids(tokens, EOD)  # [1, s]
    assert ids[0].tolist() == [0] * 31 + [1] * 6 + [2] * 20
    assert torch.equal(~document_attention.dense_allowed(ids), mask)
    with torch.no_grad():
        expected = model(tokens, positions, mask)
        got = model(tokens, positions, ids)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    built = document_attention._cached is not None and document_attention._cached[0] is ids  # a BlockMask was made
    assert built == (path == "flex")


def test_the_dataset_and_forward_step_use_the_mask(model, tiny_data, tmp_path):
    """GPTDataset with data.document_mask yields document ids (no [s, s] mask) and restarting
    positions, and the task's forward step gives the loss of the documents computed one by one."""
    from mtds.config import build_config
    from mtds.data.sources import resolve_sources
    from helpers import micro_batch_loss
    from mtds.tasks import causal_lm
    from mtds.tasks.causal_lm import build_datasets
    from mtds.data.tokenizer import SentencePieceTokenizer

    cfg = build_config(overrides={"data": {"paths": tiny_data["prefix"], "tokenizer_model": tiny_data["tokenizer_model"],
                                           "split": "90,10,0", "seq_length": "64", "document_mask": "true"},
                                  "training": {"run_dir": str(tmp_path)}})
    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
    tok = SentencePieceTokenizer(sources.tokenizer_model)
    train, _, _ = build_datasets(cfg, sources, tok, [4000, 8, 0], 1)
    with_eod = next(s for s in (train[i] for i in range(len(train))) if (s["tokens"][8:-8] == tok.eod).any())
    batch = {k: torch.as_tensor(v)[None] for k, v in with_eod.items()}
    assert "attention_mask" not in batch and batch["document_ids"].shape == (1, 64)
    cut = int((batch["tokens"][0, :-8] == tok.eod).nonzero()[-1]) + 1  # first position of the next document
    assert (batch["tokens"][0, :cut - 1] != tok.eod).all()
    assert batch["position_ids"][0, cut] == 0
    loss, _ = micro_batch_loss(causal_lm, model, batch)
    with torch.no_grad():  # the same tokens as two separate sequences
        parts = []
        for lo, hi in ((0, cut), (cut, 64)):
            tokens, labels = batch["tokens"][:, lo:hi], batch["labels"][:, lo:hi]
            logits = model(tokens, torch.arange(hi - lo)[None], None)
            parts.append(torch.nn.functional.cross_entropy(logits[0].float(), labels[0], reduction="none"))
    assert loss.item() == pytest.approx(torch.cat(parts).mean().item(), rel=1e-5)


@pytest.mark.slow
def test_pretraining_with_the_document_mask_runs_end_to_end(tiny_data, tmp_path):
    from helpers import ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

    ds = write_ds_config(str(tmp_path / "ds.json"), micro=2, precision="fp32")
    ok(run_pretrain(tiny_gpt_args(tiny_data, tmp_path / "run", ds, "--training.train_iters=4",
                                  "--data.document_mask=true", "--training.eval_interval=2")))
    losses = [v for _, v in scalars(str(tmp_path / "run"))["train/loss"]]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
