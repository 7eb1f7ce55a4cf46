"""T5 (`--model-type t5`: mtds/models/t5.py + mtds/tasks/span_corruption.py): span-corruption
samples, the sentinel tokens, the refusals, and one end-to-end run on the default corpus that
learns, resumes bit for bit, evaluates and fills spans."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import torch

from helpers import call, run_pretrain, scalars, write_ds_config


def t5_cfg(tiny_data, run_dir, **task):
    from mtds.config import build_config

    return build_config({"model": {"model_type": "t5", "preset": "t5-tiny", "max_position_embeddings": 64},
                         "task": task,
                         "data": {"paths": [tiny_data["t5_prefix"]], "tokenizer_model": tiny_data["t5_tokenizer_model"],
                                  "split": "90,10,0", "num_workers": 0},
                         "training": {"run_dir": str(run_dir)}})


def test_sentinel_tokens_are_trained_in_and_encode_as_one_id(tiny_data):
    from mtds.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(tiny_data["t5_tokenizer_model"])
    assert tok.additional_special_tokens_ids == list(range(7, 7 + 16))  # right after [MASK] (data_tools.spm)
    assert tok.tokenize("a <extra_id_3> b").count(10) == 1  # <extra_id_3> = id 10, one piece
    assert SentencePieceTokenizer(tiny_data["tokenizer_model"]).additional_special_tokens_ids == []


def test_span_corruption_samples_hold_each_sentinel_once_in_order_and_rebuild_the_text(tiny_data, world_of_one,
                                                                                           tmp_path):
    """For 200 samples: the encoder input and the target each hold sentinels 0..k-1 once, in order
    (k = 0 only for a sample too short to mask a token);
    the target ends with </s> and the decoder input is <s> + the target shifted right; and putting
    each span back in place of its sentinel gives exactly the tokens megatron-core sampled."""
    from mtds.data import resolve_sources
    from mtds.tokenizer import SentencePieceTokenizer

    cfg = t5_cfg(tiny_data, tmp_path)
    sources = resolve_sources(cfg)
    tok = SentencePieceTokenizer(sources.tokenizer_model)
    cfg.kind.task.check_data(cfg, sources, tok)
    train, _, _ = cfg.kind.task.build_datasets(cfg, sources, tok, [200, 10, None], 1)
    sentinels = tok.additional_special_tokens_ids
    n_spans = []
    for i in range(200):
        s = train[i]
        enc = s["text_enc"][s["enc_mask"] == 1].tolist()
        n_target = int(s["loss_mask"].sum())
        target = s["labels"][:n_target].tolist()
        assert target[-1] == tok.eos and s["text_dec"][0] == tok.bos
        assert s["text_dec"][1:n_target].tolist() == target[:-1]
        in_enc = [t for t in enc if t in sentinels]
        in_target = [t for t in target if t in sentinels]
        assert in_enc == in_target == sentinels[:len(in_enc)], i
        # rebuild: every sentinel of the encoder input replaced by the tokens after it in the target
        spans, cut = {}, [j for j, t in enumerate(target) if t in sentinels] + [n_target - 1]
        for a, b in zip(cut, cut[1:]):
            spans[target[a]] = target[a + 1:b]
        rebuilt = [x for t in enc for x in (spans[t] if t in sentinels else [t])]
        beg, end, length = train.sample_index[i]
        original = np.concatenate([train.dataset[j] for j in range(beg, end)])[:length].tolist()
        assert rebuilt == original, i
        n_spans.append(len(in_enc))
    # real span corruption: several spans per sample; none only in the few short samples (task.short_seq_prob)
    # where 15% of the length is under one token
    assert max(n_spans) > 1 and n_spans.count(0) < 0.1 * len(n_spans), n_spans


def test_bad_t5_settings_are_refused_in_one_line(tiny_data, tmp_path):
    from mtds.config import build_config
    from mtds.data import resolve_sources
    from mtds.errors import ConfigError
    from mtds.tokenizer import SentencePieceTokenizer

    with pytest.raises(ConfigError, match=r"task.decoder_seq_length=8 is shorter than a sample can need \(19"):
        t5_cfg(tiny_data, tmp_path, decoder_seq_length=8)
    with pytest.raises(ConfigError, match="tensor parallel 1 only"):
        build_config({"model": {"model_type": "t5", "tensor_model_parallel_size": 2}})
    with pytest.raises(ConfigError, match="position_embedding_type='rope': T5 uses relative"):
        build_config({"model": {"model_type": "t5", "position_embedding_type": "rope"}})
    # a tokenizer without sentinels: one line naming the flag
    cfg = t5_cfg(tiny_data, tmp_path)
    cfg.data.tokenizer_model = tiny_data["tokenizer_model"]
    with pytest.raises(ConfigError, match="no T5 sentinel tokens .*--sentinel-tokens"):
        cfg.kind.task.check_data(cfg, resolve_sources(cfg), SentencePieceTokenizer(tiny_data["tokenizer_model"]))
    # fewer sentinels than spans a sample can have (16 sentinels; 512 tokens can have 76 spans)
    cfg = t5_cfg(tiny_data, tmp_path)
    cfg.data.seq_length = 512
    with pytest.raises(ConfigError, match="has 16 sentinel tokens, and a 512-token sample can have 76 spans"):
        cfg.kind.task.check_data(cfg, resolve_sources(cfg), SentencePieceTokenizer(tiny_data["t5_tokenizer_model"]))


def test_t5_flops_count_the_decoder_and_cross_attention():
    """6 per weight per token: an encoder-only count (decoder length 0 would not be allowed) is
    below the full one, and doubling the decoder's tokens adds its share."""
    from mtds.config import build_config
    from mtds.models import t5

    m = build_config({"model": {"model_type": "t5"}}).model
    short, long = (t5.flops_per_token(m, 0, 128, 8192, decoder_seq_length=d) for d in (37, 74))
    h, L, f = 256, 4, 1024
    per_decoder_token = 6 * (L * (6 * h * h + 2 * h * f) + h * 8192) / 128
    assert long - short == pytest.approx(37 * per_decoder_token + 12 * h * L * (74**2 - 37**2 + 37 * 128) / 128)


# -- one end-to-end run on the default corpus -----------------------------------------------------
@pytest.mark.slow
def test_t5_tiny_on_the_default_corpus_learns_resumes_bitwise_evaluates_and_fills_spans(tmp_path, capsys):
    """t5-tiny, seq 128, micro-batch 8, fp32 with torch Adam, 100 steps on the embedded default
    corpus (its T5 tokenizer and _sentence data built on first use): validation loss falls by at
    least 30%. A second run resumed from the iteration-50 checkpoint logs the same losses bit for
    bit and ends with the same weights; mtds.evaluate reproduces the final validation loss;
    mtds.generate fills a gap."""
    from mtds import evaluate, generate
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=8, warmup=10, lr=1e-3, precision="fp32",
                         torch_adam=True)
    common = ["--deepspeed_config", ds, "--model-type", "t5", "--training.train_iters=100", "--training.eval_interval=50", "--training.eval_iters=4",
              "--training.log_interval=10", "--training.progress_bar=false", "--model.hidden_dropout=0.1"]
    first = tmp_path / "first"
    proc = run_pretrain([*common, "--run-dir", str(first), "--training.save_interval=50"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model: t5" in proc.stdout
    a = scalars(str(first))
    val = [v for _, v in a["val/loss"]]
    assert val[-1] <= 0.7 * val[0], val
    assert a["val/token_acc"][-1][1] > 0.15

    second = tmp_path / "second"
    shutil.copytree(first / "checkpoints/iter_0000050", second / "checkpoints/iter_0000050")
    (second / "checkpoints/latest").write_text("iter_0000050")
    proc = run_pretrain([*common, "--run-dir", str(second), "--load", str(second)], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    b = scalars(str(second))
    assert [s for s, _ in b["train/loss"]] == [60, 70, 80, 90, 100]
    for tag in ("train/loss", "train/token_acc", "val/loss"):
        assert [v for s, v in b[tag] if s > 50] == [v for s, v in a[tag] if s > 50], tag
    ends = [str(run / "checkpoints/iter_0000100") for run in (first, second)]
    sd_a, sd_b = (consolidated_state_dict(c, read_config(c)) for c in ends)
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)

    rc, out, err = call(evaluate.main, ["--load", str(first)], capsys)
    assert rc == 0, err
    assert float(re.search(r"loss ([0-9.]+)", out).group(1)) == pytest.approx(val[-1], abs=1e-3) and "token_acc" in out
    rc, out, err = call(generate.main, ["--load", str(first), "--greedy", "--prompt", "import <extra_id_0>\n"],
                        capsys)
    assert rc == 0, err
    assert "<extra_id_0>" not in out and out.startswith("import ")
    rc, out, err = call(generate.main, ["--load", str(first), "--prompt", "no gaps"], capsys)
    assert rc != 0 and "mark them <extra_id_0>" in err
