"""T5 (`--model-type t5`: mtds/models/t5.py + mtds/tasks/span_corruption.py): span-corruption
samples, the sentinel tokens, the refusals, export to transformers' T5, and one end-to-end run on
the tiny corpus that learns, resumes bit for bit, evaluates, fills spans and exports."""

from __future__ import annotations

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
    from mtds.data.tokenizer import SentencePieceTokenizer

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
    from mtds.data.sources import resolve_sources
    from mtds.data.tokenizer import SentencePieceTokenizer

    cfg = t5_cfg(tiny_data, tmp_path)
    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
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
    from mtds.data.sources import resolve_sources
    from mtds.errors import ConfigError
    from mtds.data.tokenizer import SentencePieceTokenizer

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
        cfg.kind.task.check_data(cfg, resolve_sources(cfg, cfg.kind.task.data_layout), SentencePieceTokenizer(tiny_data["tokenizer_model"]))
    # fewer sentinels than spans a sample can have (16 sentinels; 512 tokens can have 76 spans)
    cfg = t5_cfg(tiny_data, tmp_path)
    cfg.data.seq_length = 512
    with pytest.raises(ConfigError, match="has 16 sentinel tokens, and a 512-token sample can have 76 spans"):
        cfg.kind.task.check_data(cfg, resolve_sources(cfg, cfg.kind.task.data_layout), SentencePieceTokenizer(tiny_data["t5_tokenizer_model"]))


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


# -- Hugging Face export ----------------------------------------------------------------------------
# fp32 on CPU through different kernels (fused QKV/KV GEMMs and SDPA vs HF's separate GEMMs and
# matmul-softmax). Measured max |diff|: 0.0 (bit for bit) on logits up to ~1.3 with these random
# weights, both activations; the tolerance leaves room for other BLAS builds.
LOGITS_ATOL = 1e-4


def export_random_t5(tiny_data, tmp_path, activation: str):
    """(mtds T5 model with random weights, the same as an HF T5ForConditionalGeneration, its config)."""
    import json

    from safetensors.torch import save_file
    from transformers import T5ForConditionalGeneration

    from mtds.export_hf import convert
    from mtds.kinds import build_model

    cfg = t5_cfg(tiny_data, tmp_path)
    cfg.model.activation = activation
    torch.manual_seed(0)
    model = build_model(cfg, 256, "fp32", on_gpu=False).eval()
    with torch.no_grad():  # norms start at 1: make them count, so a norm mapped to the wrong place shows
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.uniform_(0.5, 1.5)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    config, weights = convert(sd, cfg, 256, {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3})
    out = tmp_path / f"hf-{activation}"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    return model, T5ForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval(), cfg


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_export_gives_transformers_t5_the_same_logits_and_greedy_spans(tiny_data, world_of_one, tmp_path, activation):
    """Random weights, encoder padding in one row: T5ForConditionalGeneration's logits equal
    megatron's (fp32, 1e-4), and its greedy generate (KV cache, decoder from <s>) writes the same
    tokens as mtds.generate's loop over the encoder-decoder."""
    from mtds.generate import generate

    model, hf, cfg = export_random_t5(tiny_data, tmp_path, activation)
    assert hf.config.feed_forward_proj == {"gelu": "gelu", "swiglu": "gated-silu"}[activation]
    g = torch.Generator().manual_seed(1)
    enc = torch.randint(30, 256, (2, 40), generator=g)  # [b, s_enc]
    enc_mask = torch.ones_like(enc)
    enc_mask[1, 29:] = 0  # row 1: 11 padding tokens
    dec = torch.cat([torch.full((2, 1), 2), torch.randint(7, 256, (2, 15), generator=g)], dim=1)  # [b, s_dec]
    task = cfg.kind.task
    with torch.no_grad():
        ours = task.seq2seq_logits(model, enc, dec, enc_mask)
        theirs = hf(input_ids=enc, attention_mask=enc_mask, decoder_input_ids=dec).logits
    assert ours.shape == theirs.shape == (2, 16, 256)
    torch.testing.assert_close(theirs, ours, atol=LOGITS_ATOL, rtol=0)

    encoder = enc[:1, :29]
    new = generate(model, [2], max_new_tokens=12, max_context=64, vocab_limit=256, greedy=True, stop_ids=(3,),
                   logits_fn=lambda m, d: task.seq2seq_logits(m, encoder, d))
    with torch.no_grad():
        hf_new = hf.generate(encoder, max_new_tokens=12, do_sample=False, decoder_start_token_id=2, eos_token_id=3,
                             pad_token_id=0)[0, 1:]
    assert hf_new.tolist()[:len(new)] == new and len(new) > 1


def test_t5_export_refuses_what_hf_t5_cannot_express_in_one_line():
    from mtds.config import build_config
    from mtds.errors import LoadError
    from mtds.export_hf import hf_architecture

    for model, why in [({"position_embedding_type": "learned_absolute"}, "relative position buckets only"),
                       ({"normalization": "LayerNorm"}, "normalises with RMSNorm"),
                       ({"add_bias_linear": True}, "linear biases"),
                       ({"tie_embeddings": True}, "tie_embeddings=true")]:
        with pytest.raises(LoadError, match=f"T5ForConditionalGeneration does not fit .*{re.escape(why)}"):
            hf_architecture(build_config({"model": {"model_type": "t5", **model}}))


# -- one end-to-end run --------------------------------------------------------------------------
@pytest.mark.slow
def test_t5_tiny_learns_resumes_bitwise_evaluates_and_fills_spans(tiny_data, tmp_path, capsys):
    """t5-tiny's architecture at 2 x 64, seq 64, micro-batch 8, fp32 with torch Adam, 100 steps on the
    tiny corpus's T5 data (its sentinel tokenizer, _sentence pairs): validation loss falls by at least
    30% (6.27 -> 4.17 measured). A second run resumed from the iteration-70 checkpoint logs the same
    losses bit for bit and ends with the same weights; mtds.evaluate reproduces the final validation
    loss; mtds.generate fills a gap, and the model exported to Hugging Face fills it the same way.
    (It ran on the default corpus at 4 x 256 once, 10 minutes of a 40-minute suite; the default
    corpus's T5 layout is built by tests/test_data_tools.py::test_stdlib_default_corpus.)"""
    from mtds import evaluate, generate
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=8, warmup=10, lr=3e-3, precision="fp32",
                         torch_adam=True)
    common = ["--deepspeed_config", ds, "--model-type", "t5", "--training.train_iters=100", "--training.eval_interval=50",
              "--training.eval_iters=4", "--training.log_interval=10", "--training.progress_bar=false",
              "--model.hidden_dropout=0.1", "--model.num_layers=2", "--model.hidden_size=64",
              "--model.num_attention_heads=2", "--model.max_position_embeddings=64", "--data.paths", tiny_data["t5_prefix"],
              "--data.tokenizer_model", tiny_data["t5_tokenizer_model"], "--data.split=90,10,0"]
    first = tmp_path / "first"
    proc = run_pretrain([*common, "--run-dir", str(first), "--training.save_interval=70"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model: t5" in proc.stdout
    a = scalars(str(first))
    val = [v for _, v in a["val/loss"]]
    assert val[-1] <= 0.7 * val[0], val
    assert a["val/token_acc"][-1][1] > 0.15

    second = tmp_path / "second"
    shutil.copytree(first / "checkpoints/iter_0000070", second / "checkpoints/iter_0000070")
    (second / "checkpoints/latest").write_text("iter_0000070")
    proc = run_pretrain([*common, "--run-dir", str(second), "--load", str(second)], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    b = scalars(str(second))
    assert [s for s, _ in b["train/loss"]] == [80, 90, 100]
    for tag in ("train/loss", "train/token_acc", "val/loss"):
        assert [v for s, v in b[tag] if s > 70] == [v for s, v in a[tag] if s > 70], tag
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
    filled = out
    rc, out, err = call(generate.main, ["--load", str(first), "--prompt", "no gaps"], capsys)
    assert rc != 0 and "mark them <extra_id_0>" in err

    # exported: transformers' tokenizer and model fill the same gap with the same tokens
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from mtds import export_hf
    from mtds.load_trained import load_trained

    hf_dir = tmp_path / "hf"
    rc, out, err = call(export_hf.main, ["--load", str(first), "--out", str(hf_dir)], capsys)
    assert rc == 0 and "as T5ForConditionalGeneration" in out, err
    hf = AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    run = load_trained(str(first))
    tok = run.tokenizer()
    prompt = "import <extra_id_0>\n"
    ids = tok.tokenize(prompt)
    assert AutoTokenizer.from_pretrained(str(hf_dir)).encode(prompt, add_special_tokens=False) == ids
    with torch.no_grad():
        hf_new = hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)[0, 1:].tolist()
    assert run.cfg.kind.task.render_generation(prompt, hf_new, tok) + "\n" == filled
