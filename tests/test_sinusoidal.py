"""model.position_embedding_type = "sinusoidal" (mtds/models/sinusoidal_positions.py): Vaswani et al.'s
closed-form table on GPT and BERT, no parameters, a short training run, and the export's one-line refusal."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_cfg

VOCAB = 64


def closed_form(pos: int, j: int, d: int) -> float:
    """Vaswani et al. (2017), section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    i2 = j - j % 2
    angle = pos / 10000 ** (i2 / d)
    return math.sin(angle) if j % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_the_table_is_the_closed_form_added_to_the_tokens_with_no_parameters(world_of_one, kind):
    from mtds.kinds import build_model

    task = {"pair": "none"} if kind == "bert" else {}  # (BERT without its pair head has no token types)
    cfg = tiny_cfg(kind, task=task, position_embedding_type="sinusoidal")
    m = cfg.model
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, "fp32", on_gpu=False)
    P, d = m.max_position_embeddings, m.hidden_size
    want = torch.tensor([[closed_form(p, j, d) for j in range(d)] for p in range(P)])
    table = model.embedding.position_embeddings(torch.arange(P)[None])[0]  # [P, d]
    torch.testing.assert_close(table, want, atol=1e-6, rtol=0)
    assert not any("position_embeddings" in k for k in model.state_dict())  # nothing to save or train
    learned = build_model(tiny_cfg(kind, task=task, position_embedding_type="learned_absolute"), VOCAB, "fp32",
                          on_gpu=False)
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in model.parameters()) == P * d

    ids, pos = torch.randint(0, VOCAB, (2, 5)), torch.tensor([[0, 1, 2, 3, 4], [7, 3, 0, 9, 1]])
    with torch.no_grad():
        got = model.embedding(input_ids=ids, position_ids=pos)  # [s, b, h]
    want = model.embedding.word_embeddings.weight[ids] + want[pos]
    torch.testing.assert_close(got.transpose(0, 1), want, atol=1e-6, rtol=0)


def test_a_sinusoidal_gpt_trains(world_of_one):
    """Forty Adam steps on four fixed sequences: the next-token loss falls by more than half."""
    from mtds.kinds import build_model
    from mtds.tasks.causal_lm import forward_step

    cfg = tiny_cfg("gpt", position_embedding_type="sinusoidal")
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, "fp32", on_gpu=False)
    text = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": text[:, :-1], "labels": text[:, 1:], "loss_mask": torch.ones(4, 16),
             "position_ids": torch.arange(16).expand(4, 16)}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = forward_step(model, batch, "cpu")[0]["lm"] / 64
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_export_refuses_sinusoidal_positions_with_one_line(kind):
    from mtds.errors import LoadError
    from mtds.export_hf import hf_architecture

    with pytest.raises(LoadError) as e:
        hf_architecture(tiny_cfg(kind, position_embedding_type="sinusoidal"))
    assert "\n" not in str(e.value) and "position_embedding_type=sinusoidal" in str(e.value)
