"""How the ranks divide the work: data-parallel and tensor-parallel sizes (no torch import).

The trainer, the sampler, the batch sizes and the throughput figures take this object instead
of the world size: batch sizes and samples are per data-parallel rank, FLOP/s per device.
Ranks are laid out tensor-parallel-major as in megatron-core: ranks r*tensor .. r*tensor+tensor-1
form data-parallel replica r (every rank of a replica reads the same micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtds.errors import ConfigError


@dataclass(frozen=True)
class ParallelSizes:
    world: int
    """Processes (devices) in the job."""
    tensor: int = 1
    """Tensor-parallel size: ranks that split each layer's matmuls."""

    def __post_init__(self):
        if self.world < 1 or self.tensor < 1 or self.world % self.tensor:
            raise ConfigError(f"world size {self.world} is not divisible by model.tensor_model_parallel_size="
                              f"{self.tensor}; launch a multiple of it")

    @property
    def data(self) -> int:
        """Data-parallel size: replicas that each read their own micro-batches."""
        return self.world // self.tensor

    def data_rank(self, rank: int) -> int:
        return rank // self.tensor

    def as_dict(self) -> dict:
        return {"world": self.world, "tensor": self.tensor, "data": self.data}
