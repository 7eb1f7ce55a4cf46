"""Permutation language modeling (gpt_plm, mtds/tasks/permutation_lm.py): the one-stream masked
construction against a plain-PyTorch two-stream XLNet written here, what each query token may see, the
bad inputs, and one short run through the real entry point that resumes bitwise, evaluates and generates."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import DIST_ENV, call, ok, run_pretrain, scalars, tiny_cfg, tiny_gpt_args, write_ds_config

T, VOCAB, MASK_ID = 8, 64, 3


def plm_model(**model):
    """A tiny untrained gpt_plm model, fp32, eval mode (no dropout)."""
    from mtds.kinds import build_model

    torch.manual_seed(0)
    cfg = tiny_cfg("gpt_plm", data={"seq_length": T}, num_attention_heads=4, **model)
    return build_model(cfg, VOCAB, "fp32", on_gpu=False).eval()


def one_stream(model, tokens, ranks, targets):
    """The task's own construction: logits [b, K, V] of the K query tokens."""
    from mtds.data.plm_dataset import query_inputs
    from mtds.tasks.permutation_lm import query_logits

    ids, positions = query_inputs(tokens, targets, MASK_ID)
    return query_logits(model, ids, positions, ranks, targets)


# -- the reference: XLNet's two streams, in plain PyTorch on the megatron-core model's weights ----------
def rope(x, pos, base):
    """Rotary embedding (rotate-half form, megatron's default) of x [b, n, s, d] at positions pos [b, s]."""
    d = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = pos[:, None, :, None].float() * inv  # [b, 1, s, d/2]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def two_stream(model, tokens, ranks, targets):
    """XLNet's two-stream attention (Yang et al. 2019, eq. 3-4): a content stream h over the T tokens
    (h_i attends h_j iff rank(j) <= rank(i)) and a query stream g, one per target, starting from the
    mask embedding (at the target's position) and attending the content stream's h_j iff rank(j) <
    rank(target). Pre-norm layers with SwiGLU and RoPE or learned positions, as the tiny GPT."""
    cfg = model.config
    n, hd = cfg.num_attention_heads, cfg.kv_channels
    rope_on = model.position_embedding_type == "rope"
    b, t = tokens.shape
    emb = model.embedding.word_embeddings.weight
    pos_h = torch.arange(t).expand(b, t)
    h, g = emb[tokens], emb[MASK_ID].expand(b, targets.shape[1], -1)
    if not rope_on:
        table = model.embedding.position_embeddings.weight
        h, g = h + table[pos_h], g + table[targets]
    see_h = ranks[:, None, :] <= ranks[:, :, None]  # [b, T, T]
    see_g = ranks[:, None, :] < ranks.gather(1, targets)[:, :, None]  # [b, K, T]

    def lin(module, x):
        return F.linear(x, module.weight, module.bias)

    def heads(x):  # [b, s, n * 3 * hd] -> q, k, v [b, n, s, hd] (megatron's qkv: per head q, k, v)
        x = x.view(x.shape[0], x.shape[1], n, 3, hd).permute(3, 0, 2, 1, 4)
        return x[0], x[1], x[2]

    def attend(q, k, v, allowed):  # allowed [b, sq, sk]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        w = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        return (w @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], n * hd)

    def mlp(layer, x):
        a, u = lin(layer.mlp.linear_fc1, x).chunk(2, -1)
        return lin(layer.mlp.linear_fc2, F.silu(a) * u)

    for layer in model.decoder.layers:
        att = layer.self_attention
        qh, kh, vh = heads(lin(att.linear_qkv, layer.input_layernorm(h)))
        qg, _, _ = heads(lin(att.linear_qkv, layer.input_layernorm(g)))
        if rope_on:
            base = 10000.0  # model.rotary_base's default
            qh, kh, qg = rope(qh, pos_h, base), rope(kh, pos_h, base), rope(qg, targets, base)
        h_att, g_att = attend(qh, kh, vh, see_h), attend(qg, kh, vh, see_g)
        h = h + lin(att.linear_proj, h_att)
        g = g + lin(att.linear_proj, g_att)
        h = h + mlp(layer, layer.pre_mlp_layernorm(h))
        g = g + mlp(layer, layer.pre_mlp_layernorm(g))
    out = emb if model.share_embeddings_and_output_weights else model.output_layer.weight
    return F.linear(model.decoder.final_layernorm(g), out)


@pytest.mark.parametrize("positions", ["rope", "learned_absolute"])
def test_one_stream_equals_the_two_stream_reference_for_every_k(world_of_one, positions):
    from mtds.data.plm_dataset import sample_order

    model = plm_model(position_embedding_type=positions)
    rng = np.random.default_rng(0)
    tokens = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in range(1, T):  # K from 1 to T - 1, a random order per sample
            ranks, targets = map(torch.stack, zip(*(map(torch.from_numpy, sample_order(rng, T, k)) for _ in range(2))))
            got, want = one_stream(model, tokens, ranks, targets), two_stream(model, tokens, ranks, targets)
            assert got.shape == (2, k, VOCAB)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_what_each_query_token_sees(world_of_one):
    from mtds.data.plm_dataset import sample_order

    model = plm_model()
    rng = np.random.default_rng(1)
    tokens = torch.randint(4, VOCAB, (1, T), generator=torch.Generator().manual_seed(1))
    ranks, targets = (torch.from_numpy(a)[None] for a in sample_order(rng, T, T - 2))
    with torch.no_grad():
        together = one_stream(model, tokens, ranks, targets)  # [1, K, V]
        from mtds.data.plm_dataset import query_inputs
        from mtds.tasks.permutation_lm import query_logits

        labels = tokens.gather(1, targets)  # the loss path (output layer on the K query tokens): their cross entropy
        losses = query_logits(model, *query_inputs(tokens, targets, MASK_ID), ranks, targets, labels=labels)
        torch.testing.assert_close(losses, F.cross_entropy(together[0], labels[0], reduction="none")[None])
        for k in range(targets.shape[1]):
            alone = one_stream(model, tokens, ranks, targets[:, k:k + 1])
            torch.testing.assert_close(alone[:, 0], together[:, k], atol=1e-5, rtol=0)  # alone = together
            changed = tokens.clone()
            changed[0, targets[0, k]] = (tokens[0, targets[0, k]] + 1) % VOCAB
            torch.testing.assert_close(one_stream(model, changed, ranks, targets)[:, k], together[:, k],
                                       atol=0, rtol=0)  # its own token is never seen

        # identity order, targets 1 .. T-1: query token t moves exactly when a token before t changes
        ranks, targets = torch.arange(T)[None], torch.arange(1, T)[None]
        base = one_stream(model, tokens, ranks, targets)[0]  # [T - 1, V]
        for j in range(T):
            changed = tokens.clone()
            changed[0, j] = (tokens[0, j] + 1) % VOCAB
            moved = (one_stream(model, changed, ranks, targets)[0] != base).any(-1).tolist()
            assert moved == [t > j for t in range(1, T)], j


def test_natural_order_generation_is_one_query_after_the_context(world_of_one):
    from mtds.tasks.permutation_lm import next_token_logits

    class Tok:
        mask = MASK_ID

    model = plm_model()
    tokens = torch.randint(4, VOCAB, (1, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for s in (1, 4, T - 1):
            got = next_token_logits(model, tokens[:, :s], Tok())[:, -1]  # [1, V]
            # XLNet's query for position s of the identity order (token s itself is never seen)
            want = two_stream(model, tokens[:, :s + 1], torch.arange(s + 1)[None], torch.tensor([[s]]))
            torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=0)


def test_the_order_sampler_is_seeded_per_sample(world_of_one, tiny_data, tmp_path):
    from mtds.data.sources import resolve_sources
    from mtds.data.tokenizer import SentencePieceTokenizer

    cfg = tiny_cfg("gpt_plm", data={"paths": [tiny_data["prefix"]], "tokenizer_model": tiny_data["tokenizer_model"],
                                    "split": "90,10,0", "seq_length": 32}, training={"run_dir": str(tmp_path)})
    task = cfg.kind.task
    sources = resolve_sources(cfg, task.data_layout)
    tok = SentencePieceTokenizer(sources.tokenizer_model)
    train = task.build_datasets(cfg, sources, tok, [8, 2, None], 1)[0]
    a, b = train[5], train[5]
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(train[4]["ranks"], a["ranks"])
    K = math.ceil(32 / 6)
    assert sorted(a["ranks"].tolist()) == list(range(32)) and a["targets"].shape == (K,)
    assert sorted(a["ranks"][a["targets"]].tolist()) == list(range(32 - K, 32))  # the order's last K
    assert a["input_ids"][32:].tolist() == [tok.mask] * K and torch.equal(a["position_ids"][32:], a["targets"])
    assert torch.equal(a["labels"], a["tokens"][a["targets"]])


# -- bad input: one line each --------------------------------------------------------------------------
@pytest.mark.parametrize("task,data,model,says", [
    ({"partial_prediction": 1}, {}, {}, "must be a number > 1 (XLNet's c"),
    ({"partial_prediction": 1.01}, {"seq_length": 64}, {}, "gives K=64 targets of data.seq_length=64; K must be 1 .. 63"),
    ({}, {"document_mask": True}, {}, "data.document_mask=true: permutation LM's attention mask"),
    ({}, {}, {"tensor_model_parallel_size": 2}, "model.tensor_model_parallel_size=2: permutation LM is not built"),
], ids=["c", "k", "document_mask", "tp"])
def test_bad_config_is_one_line(task, data, model, says):
    from mtds.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        tiny_cfg("gpt_plm", task=task, data=data, **model)
    line = next(line for line in str(e.value).splitlines() if says in line)
    assert line


def test_a_tokenizer_without_a_mask_token_is_refused_with_one_line():
    from data_tools.spm import TokenizerError
    from mtds.errors import ConfigError
    from mtds.tasks.permutation_lm import check_data

    class NoMask:
        model_path = "tok.json"

        @property
        def mask(self):
            raise TokenizerError("no mask")

    cfg = tiny_cfg("gpt_plm", data={"paths": ["x"], "tokenizer_model": "tok.json"})
    with pytest.raises(ConfigError) as e:
        check_data(cfg, None, NoMask())
    assert "\n" not in str(e.value) and str(e.value).startswith("data.tokenizer_model: tok.json has no mask token")
    assert "data_tools.train_tokenizer" in str(e.value)


# -- the real entry point ------------------------------------------------------------------------------
@pytest.mark.slow
def test_gpt_plm_trains_resumes_bitwise_evaluates_and_generates(tiny_data, tmp_path, capsys):
    """ZeRO-3 (its partitioned parameters and optimizer state; the other stages share the GPT kinds' tests),
    fp32, torch Adam (bit-reproducible after a load), accumulation 2: 4 steps straight, and a copy of
    its iteration-2 checkpoint resumed to 4: the same losses and weights bit for bit. Then mtds.evaluate
    reports the validation loss training logged, and mtds.generate continues a prompt."""
    from test_reliability import branch_at, final_weights, train_losses

    from mtds import evaluate, generate

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=3, micro=2, accum=2, precision="fp32", torch_adam=True)
    common = ["--model.model_type=gpt_plm", "--task.partial_prediction=4", "--data.seq_length=32",
              "--training.train_iters=4", "--training.eval_interval=4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(run_pretrain(tiny_gpt_args(tiny_data, straight, ds, *common, "--training.save_interval=2")))
    branch_at(straight, "iter_0000002", split)
    second = ok(run_pretrain(tiny_gpt_args(tiny_data, split, ds, *common, "--load", str(split))))
    assert "at iteration 2" in second.stdout

    expected, got = train_losses(straight), train_losses(split)
    assert [s for s, _ in expected] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in expected)
    assert got == expected[2:]  # bitwise
    a, b = final_weights(straight, "iter_0000004"), final_weights(split, "iter_0000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    saved = {k: os.environ.get(k) for k in DIST_ENV}
    try:
        rc, out, err = call(evaluate.main, ["--load", str(straight), "--json", "--no-progress"], capsys)
        assert rc == 0, err
        logged = dict(scalars(str(straight))["val/loss"])[4]
        assert json.loads(out.splitlines()[-1])["loss"] == pytest.approx(logged, abs=1e-5)
        rc, out, err = call(generate.main, ["--load", str(straight), "--prompt", "The", "--max-new-tokens", "4",
                                            "--greedy"], capsys)
        assert rc == 0 and out.startswith("The"), err
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
