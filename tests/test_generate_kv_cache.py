"""Generation with a KV cache (mtds.kv_cache) gives what recomputing the whole context gives.

Tiny random-weight GPTs built in-process (no training): RoPE + GQA, learned positions +
LayerNorm + GELU (GPT-2's architecture), and a mixture of experts.
"""

from __future__ import annotations

import pytest
import torch

ATOL = 1e-5  # fp32: one token's attention over cached keys vs the whole causal matrix sum in other orders
VOCAB = 512
MAX_CONTEXT = 64  # helpers.TINY_SHAPE's max_position_embeddings

ARCHITECTURES = {
    "rope_gqa": dict(num_attention_heads=4, num_query_groups=2),
    "learned": dict(position_embedding_type="learned_absolute", normalization="LayerNorm", activation="gelu",
                    add_bias_linear=True),
    "moe": dict(num_moe_experts=4, moe_router_topk=2),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def model(request, world_of_one):
    from helpers import tiny_cfg
    from mtds.kinds import build_model

    torch.manual_seed(0)
    m = build_model(tiny_cfg(**ARCHITECTURES[request.param]), VOCAB, "fp32", on_gpu=False).eval()
    with torch.no_grad():  # away from the initialisation, so the logits are not near-ties
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _generate(model, prompt, cached: bool, max_new_tokens: int = 40, **sampling):
    from mtds.generate import generate
    from mtds.tasks.causal_lm import TASK

    return generate(model, prompt, max_new_tokens=max_new_tokens, max_context=MAX_CONTEXT, vocab_limit=VOCAB,
                    logits_fn=TASK.next_token_logits, cache_fn=TASK.cached_logits if cached else None, **sampling)


def test_cached_logits_equal_the_full_forward_at_every_step(model):
    from mtds.kv_cache import KVCache
    from mtds.tasks.causal_lm import next_token_logits

    ids = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model, ids.size(1))
    with torch.no_grad():
        full = next_token_logits(model, ids)[0]  # [s, V]: row t = the logits after ids[:t + 1]
        torch.testing.assert_close(cache(ids[:, :8])[0], full[7], atol=ATOL, rtol=0)  # the prompt in one go
        for t in range(8, ids.size(1)):
            torch.testing.assert_close(cache(ids[:, t:t + 1])[0], full[t], atol=ATOL, rtol=0)
    assert cache.length == ids.size(1)


@pytest.mark.parametrize("prompt_len", [5, 40])  # 40 + 40 > 64: the window slides, recomputed with the cache too
def test_greedy_generation_with_the_cache_equals_recompute(model, prompt_len):
    prompt = torch.randint(0, VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    cached = _generate(model, prompt, cached=True, greedy=True)
    assert len(cached) == 40
    assert cached == _generate(model, prompt, cached=False, greedy=True)


def test_sampling_with_the_cache_equals_recompute(model):
    prompt = list(range(10, 30))
    kw = dict(temperature=0.9, top_k=50, top_p=0.95, seed=7)
    assert _generate(model, prompt, cached=True, **kw) == _generate(model, prompt, cached=False, **kw)


def test_the_cache_takes_one_token_at_a_time_after_the_prompt(model):
    from mtds.kv_cache import KVCache

    cache = KVCache(model, 8)
    cache(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="one token at a time"):
        cache(torch.tensor([[4, 5]]))
    for t in range(4, 9):
        cache(torch.tensor([[t]]))
    with pytest.raises(ValueError, match="holds 8 tokens"):
        cache(torch.tensor([[9]]))


def test_the_bench_measures_both_ways_on_a_tiny_model(model):
    """bench/generate_kv_cache.py's measurement, in-process on the tiny model (its smoke check)."""
    from bench.generate_kv_cache import measure

    rates = measure(model, prompt_len=5, new_tokens=4, repeats=1, max_context=MAX_CONTEXT, vocab=VOCAB)
    assert set(rates) == {"cached", "recompute"} and all(r > 0 for r in rates.values())
