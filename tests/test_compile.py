"""training.compile: torch.compile of megatron-core layers traces without graph breaks and
computes the same loss and gradients as eager, with the same parameter names."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_cfg
from mtds.config import build_config

SEQ, VOCAB = 32, 256


def tiny_gpt(seed: int = 0):
    from mtds.parallel.process_groups import seed_everything
    from mtds.kinds import build_model

    seed_everything(seed)
    cfg = tiny_cfg(num_layers=3, num_attention_heads=4, max_position_embeddings=SEQ)
    return build_model(cfg, VOCAB, "fp32", on_gpu=False)


def loss_and_grads(model) -> tuple[float, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=g)
    positions = torch.arange(SEQ).expand(2, SEQ)
    loss = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:]).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_type", ["gpt", "bert"])
def test_a_megatron_layer_compiles_to_one_graph_without_breaks(world_of_one, model_type):
    from mtds.train.compile import quiet_tp_group_lookup
    from mtds.kinds import KINDS, build_model

    quiet_tp_group_lookup()
    if model_type == "gpt":
        model = tiny_gpt()
        extra = {"rotary_pos_emb": model.rotary_pos_emb(SEQ)}
    else:  # pre-LN LayerNorm/GELU layer with the [b, 1, 1, s] padding mask of mtds.models.attention.SDPABertModel
        cfg = build_config(overrides={"model": {"preset": "bert-tiny", "hidden_size": 64}})
        model = build_model(cfg, VOCAB, "fp32", on_gpu=False)
        extra = {}
    mask = None if model_type == "gpt" else torch.zeros(2, 1, 1, SEQ, dtype=torch.bool)
    layer = KINDS[model_type].family.transformer_layers(model)[0]
    explained = torch._dynamo.explain(layer)(torch.randn(SEQ, 2, 64), attention_mask=mask, **extra)
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), reasons


@pytest.mark.slow  # Inductor compiles C++ kernels on the CPU: ~20 s
def test_compiled_layers_match_eager_loss_and_gradients_with_the_same_names(world_of_one):
    from torch._dynamo.utils import counters

    from mtds.train.compile import compile_layers
    from mtds.models.gpt import transformer_layers

    torch._dynamo.reset()
    counters.clear()
    eager_loss, eager_grads = loss_and_grads(tiny_gpt())
    compiled = tiny_gpt()
    assert compile_layers(transformer_layers(compiled)) == 3
    loss, grads = loss_and_grads(compiled)
    assert grads.keys() == eager_grads.keys()  # checkpoints load across modes
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert counters["stats"]["unique_graphs"] == 1  # one layer traced, reused by all three
