"""Parallelism: data/tensor-parallel sizes, process groups and seeding, tensor parallelism under DeepSpeed."""
