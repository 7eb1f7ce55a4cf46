"""A minimal plain-PyTorch GPT with the same shape as mtds's megatron-core GPT.

Only for bench/train_throughput.py: the same step without megatron-core and DeepSpeed shows
what the stack costs. Same architecture as the default ModelConfig: RMSNorm, fused QKV without
bias, RoPE, causal SDPA, SwiGLU MLP, untied output layer, fp32 cross entropy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope_tables(seq: int, head_dim: int, base: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(seq, device=device).float(), inv_freq)  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd), rotate-half layout like megatron
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


class Block(nn.Module):
    def __init__(self, h: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(h, eps=1e-5)
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.proj = nn.Linear(h, h, bias=False)
        self.norm2 = nn.RMSNorm(h, eps=1e-5)
        self.fc1 = nn.Linear(h, 2 * ffn, bias=False)
        self.fc2 = nn.Linear(ffn, h, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        a, b = self.fc1(self.norm2(x)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(a) * b)


class ReferenceGPT(nn.Module):
    def __init__(self, m, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, m.hidden_size)
        self.blocks = nn.ModuleList(Block(m.hidden_size, m.num_attention_heads, m.ffn_size())
                                    for _ in range(m.num_layers))
        self.norm = nn.RMSNorm(m.hidden_size, eps=1e-5)
        self.out = nn.Linear(m.hidden_size, vocab, bias=False)
        self.head_dim = m.hidden_size // m.num_attention_heads
        self.rotary_base = m.rotary_base
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=m.init_method_std)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_tables(tokens.shape[1], self.head_dim, self.rotary_base, tokens.device)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.out(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
