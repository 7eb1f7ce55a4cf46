"""Mixture-of-experts GPT (model.num_moe_experts): megatron-core's MoE layer in the GPT family."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import ROOT, TINY_SHAPE

MOE = {"preset": "gpt-moe-tiny", **TINY_SHAPE, "num_attention_heads": 4, "max_position_embeddings": 32}


def _cfg(**model):
    from mtds.config import build_config

    return build_config({"model": {**MOE, **model}})


def _engine(cfg, accum: int):
    """A real DeepSpeed engine (ZeRO-0, fp32) over the MoE model, micro-batch 2."""
    from mtds.ds_config import resolve_ds_config
    from mtds.train.engine import build_engine

    raw = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": accum,
           "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}, "zero_optimization": {"stage": 0}}
    ds = resolve_ds_config(raw, "ds.json", 1, 10, False, log=lambda *_: None)
    return build_engine(cfg, cfg.kind, ds, 512, False, log=lambda *_: None)[0]


def _aux_only_router_grads(engine, batches) -> torch.Tensor:
    """Router weight gradients of the load-balancing loss alone, accumulated over `batches` as the
    trainer runs them (the family's hook before each DeepSpeed backward; the main loss times 0)."""
    from mtds.models.gpt import before_backward

    for ids in batches:
        loss = engine(ids, torch.arange(ids.shape[1])[None].expand_as(ids), None, labels=ids).mean()
        before_backward(engine)
        engine.backward(loss * 0.0)
    grads = torch.cat([layer.mlp.router.weight.grad.flatten() for layer in engine.module.decoder.layers])
    engine.optimizer.zero_grad()
    return grads.clone()


def test_the_load_balancing_loss_weighs_the_same_under_gradient_accumulation(world_of_one, monkeypatch):
    """With accumulation 2, DeepSpeed scales the main loss by 1/2; the auxiliary loss, whose gradient
    megatron-core injects itself, must be scaled alike: its gradient over two micro-batches is the
    mean of theirs, as one step over both would give, not their sum."""
    monkeypatch.setenv("LOCAL_RANK", "0")  # what the launcher sets; DeepSpeed's engine asks for it
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 512, (2, 32), generator=g) for _ in range(2))
    cfg = _cfg()
    single = _engine(cfg, accum=1)
    each = [_aux_only_router_grads(single, [x]) for x in (a, b)]
    accumulated = _aux_only_router_grads(_engine(cfg, accum=2), [a, b])
    assert each[0].abs().sum() > 0
    torch.testing.assert_close(accumulated, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-9)


def test_flops_count_the_active_experts_only(world_of_one):
    from mtds.kinds import build_model
    from mtds.models import gpt
    from mtds.models.common import count_parameters, dense_flops_per_token

    all_active = _cfg(moe_router_topk=4).model
    with torch.device("meta"):
        n = count_parameters(build_model(_cfg(), 512, "fp32", on_gpu=False))
    expert = 64 * all_active.ffn_size() * 3  # SwiGLU fc1 (gate, up) + fc2, no biases
    assert gpt.flops_per_token(all_active, n, 32, 512) == dense_flops_per_token(all_active, n, 32, 512)
    top2 = _cfg().model
    assert gpt.flops_per_token(top2, n, 32, 512) == dense_flops_per_token(top2, n - 2 * 2 * expert, 32, 512)


def test_zero3_with_experts_is_refused_before_deepspeed_starts(tiny_data, tmp_path, capsys):
    from mtds.pretrain import main

    ds = os.path.join(ROOT, "ds_configs", "zero3.json")
    rc = main(["--deepspeed_config", ds, "--model.preset=gpt-moe-tiny", "--run-dir", str(tmp_path / "run"),
               "--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"]])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        f"error: {ds}: ZeRO stage 3 with a mixture of experts (model.num_moe_experts=4) is not supported by "
        "DeepSpeed; use stage 1 or 2")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, message", [
    (dict(num_moe_experts=1), "model.num_moe_experts=1: a mixture needs at least 2 experts (none = dense)"),
    (dict(moe_router_topk=5), "model.moe_router_topk=5 must be between 1 and model.num_moe_experts=4"),
    (dict(expert_model_parallel_size=2), "model.expert_model_parallel_size=2: mtds has no expert parallelism yet"),
], ids=["one-expert", "topk", "expert-parallel"])
def test_moe_settings_mtds_cannot_train_are_one_line(model, message):
    from mtds.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cfg(**model)


@pytest.mark.slow
def test_moe_tiny_trains_logs_its_load_balance_and_resumes_bitwise(tiny_data, tmp_path):
    """gpt-moe-tiny (narrowed), fp32, accumulation 2, torch Adam: 6 steps straight, and 3 + a
    resume to 6; the losses, the load balance and the router's choices repeat exactly."""
    from helpers import ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, accum=2, precision="fp32", lr=3e-3,
                         torch_adam=True)

    def run(run_dir, *extra):
        return ok(run_pretrain([*tiny_gpt_args(tiny_data, run_dir, ds, "--training.train_iters=6",
                                               "--training.eval_interval=6", *extra),
                                "--model.preset=gpt-moe-tiny", "--model.num_layers=2", "--model.hidden_size=64",
                                "--model.num_attention_heads=2"]))

    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight)
    run(split, "--training.exit_interval=3")
    assert "at iteration 3" in run(split, "--load", str(split)).stdout
    a, b = scalars(str(straight)), scalars(str(split))
    for tag in ("train/loss", "train/moe_load_balancing_loss", "train/moe_max_expert_share/layer1"):
        assert [v for _, v in a[tag]] == [v for _, v in b[tag]], tag  # bitwise
    balance = [v for _, v in a["train/moe_load_balancing_loss"]]
    shares = [v for _, v in a["train/moe_max_expert_share/layer0"] + a["val/moe_max_expert_share/layer1"]]
    assert len(balance) == 6 and all(0.9 < v < 4.0 for v in balance)  # 1.0 = perfectly even
    assert all(0.25 <= v <= 1.0 for v in shares)  # the busiest of 4 experts gets at least a quarter
    assert "val/moe_load_balancing_loss" not in a  # computed only with gradients on
