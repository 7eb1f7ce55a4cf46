"""Tensor transforms for `mapping.Rule`s: each turns a rule's megatron tensors into its Hugging Face
tensors (`to_hf`) and back (`from_hf`), the two exact inverses, on tuples in the rule's key order.

Import's checks (`Zeros`, `Duplicate`) raise a ValueError without key names; `mapping` adds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Same:
    """The tensor as is: both sides store it in the same layout."""

    def to_hf(self, tensors: tuple) -> tuple:
        return tensors

    from_hf = to_hf


@dataclass(frozen=True)
class Transpose:
    """GPT-2's Conv1D stores [in, out], torch.nn.Linear (megatron) [out, in]."""

    def to_hf(self, tensors: tuple) -> tuple:
        (w,) = tensors
        return (w.t(),)  # [out, in] <-> [in, out]

    from_hf = to_hf  # its own inverse


@dataclass(frozen=True)
class SplitQKV:
    """megatron's fused QKV, grouped per key/value head, as separate q, k, v (weights or biases)."""

    heads: int
    groups: int
    head_dim: int

    def to_hf(self, tensors: tuple) -> tuple:
        (qkv,) = tensors
        per_group, rest = self.heads // self.groups, qkv.shape[1:]  # rest: (hidden,) for weights, () for biases
        # [groups*(per_group+2)*d, ...] -> [groups, per_group+2, d, ...] -> q [heads*d, ...], k, v [groups*d, ...]
        grouped = qkv.reshape(self.groups, per_group + 2, self.head_dim, *rest)
        q, k, v = grouped.split([per_group, 1, 1], dim=1)
        return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)

    def from_hf(self, tensors: tuple) -> tuple:
        rest = tensors[0].shape[1:]
        # q [heads*d, ...], k, v [groups*d, ...] -> [groups, (per_group q heads, k, v), d, ...] -> fused
        grouped = [t.reshape(self.groups, -1, self.head_dim, *rest) for t in tensors]
        return (torch.cat(grouped, dim=1).reshape(-1, *rest),)


@dataclass(frozen=True)
class SplitKV:
    """megatron's fused cross-attention key/value projection, rows [heads, (k, v), head_dim], as k and v."""

    heads: int
    head_dim: int

    def to_hf(self, tensors: tuple) -> tuple:
        (kv,) = tensors
        rest = kv.shape[1:]
        # [heads*2*d, ...] -> [heads, 2, d, ...] -> k, v [heads*d, ...]
        k, v = kv.reshape(self.heads, 2, self.head_dim, *rest).unbind(1)
        return k.reshape(-1, *rest), v.reshape(-1, *rest)

    def from_hf(self, tensors: tuple) -> tuple:
        rest = tensors[0].shape[1:]
        # k, v [heads*d, ...] -> [heads, 2, d, ...] -> fused
        return (torch.stack([t.reshape(self.heads, self.head_dim, *rest) for t in tensors], dim=1).reshape(-1, *rest),)


@dataclass(frozen=True)
class Chunk:
    """One tensor as n equal parts of dim 0, e.g. megatron's SwiGLU fc1 [gate; up] -> gate, up."""

    n: int

    def to_hf(self, tensors: tuple) -> tuple:
        (t,) = tensors
        return tuple(torch.chunk(t, self.n, dim=0))  # [n*rows, ...] -> n x [rows, ...]

    def from_hf(self, tensors: tuple) -> tuple:
        return (torch.cat(tensors, dim=0),)  # n x [rows, ...] -> [n*rows, ...]


@dataclass(frozen=True)
class Inverse:
    """A transform run the other way round: Inverse(Chunk(3)) concatenates three tensors."""

    transform: object

    def to_hf(self, tensors: tuple) -> tuple:
        return self.transform.from_hf(tensors)

    def from_hf(self, tensors: tuple) -> tuple:
        return self.transform.to_hf(tensors)


@dataclass(frozen=True)
class Chain:
    """Transforms in turn: `to_hf` runs them first to last, `from_hf` undoes them last to first."""

    steps: tuple

    def to_hf(self, tensors: tuple) -> tuple:
        for step in self.steps:
            tensors = step.to_hf(tensors)
        return tensors

    def from_hf(self, tensors: tuple) -> tuple:
        for step in reversed(self.steps):
            tensors = step.from_hf(tensors)
        return tensors


@dataclass(frozen=True)
class Zeros:
    """An HF tensor megatron lacks (e.g. a bias-free model's biases): zeros out, checked zero in."""

    shape: tuple

    def to_hf(self, tensors: tuple) -> tuple:
        return (torch.zeros(self.shape),)

    def from_hf(self, tensors: tuple) -> tuple:
        (t,) = tensors
        if t.any():
            raise ValueError("not all zeros, but the megatron model has no such tensor")
        return ()


@dataclass(frozen=True)
class Duplicate:
    """One megatron tensor HF stores twice: the second a clone (safetensors refuses shared storage);
    importing takes one, if both agree."""

    def to_hf(self, tensors: tuple) -> tuple:
        (t,) = tensors
        return t, t.clone()

    def from_hf(self, tensors: tuple) -> tuple:
        first, second = tensors
        if not torch.equal(first, second):
            raise ValueError("the two copies of one megatron tensor differ")
        return (first,)
