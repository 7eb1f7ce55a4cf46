"""Three optimizer steps of mtds's own Trainer and DeepSpeed engine on given samples, recording the
gradients each step applies (tests/test_per_token_loss.py). In-process in a world of one, or over
2 ranks with the launcher:

    deepspeed --num_gpus 2 tests/per_token_steps.py CASES.pt OUT.pt MICRO ACCUM

CASES.pt: {name: (run config dict, [sample dicts of tensors])}; OUT.pt (rank 0): {name: result} and
"dropout_by_rank": each rank's next dropout masks after the engine was built.
"""

from __future__ import annotations

import sys

import torch

STEPS = 3
VOCAB = 512
LR = 1e-2
CLIP = 1.0  # DeepSpeed's default too (0.19): clipping acts on the per-token gradient of the whole step
EPS = 1e-4  # Adam's epsilon: larger than the default so that float noise in near-zero gradients (1e-10,
# from summing in another order) is not scaled up to a whole LR step as g / (sqrt(v) + 1e-8) would


def run_steps(config: dict, samples: list[dict], micro: int, accum: int) -> dict:
    """{"grads": [per step {name: grad}], "weights": {name: tensor}, "shares": [per step {part: share}]}
    after STEPS steps of ZeRO-0 fp32 torch Adam (no weight decay, constant LR, eps EPS, clipped
    to norm CLIP), the samples read in
    order through mtds's ResumableBatchSampler as a run reads them."""
    from torch.utils.data import default_collate

    from mtds.config import build_config
    from mtds.data.loader import ResumableBatchSampler
    from mtds.ds_config import resolve_ds_config
    from mtds.kinds import count_targets, forward_step
    from mtds.parallel.sizes import ParallelSizes
    from mtds.train.engine import build_engine
    from mtds.train.trainer import Trainer

    cfg = build_config(config)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    raw = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
           "optimizer": {"type": "Adam", "params": {"lr": LR, "eps": EPS, "torch_adam": True, "weight_decay": 0.0}},
           "gradient_clipping": CLIP, "zero_optimization": {"stage": 0}}
    ds = resolve_ds_config(raw, "per_token.json", world, STEPS, False, log=lambda *_: None)
    engine, _, _ = build_engine(cfg, cfg.kind, ds, VOCAB, False, log=lambda *_: None)
    dropout = dropout_masks()
    grads = []
    boundary_step = engine.step

    def record_then_step():  # the gradients the optimizer is about to apply (all-reduced already)
        if engine.is_gradient_accumulation_boundary():
            grads.append({n: p.grad.detach().clone() for n, p in engine.module.named_parameters()})
        boundary_step()

    engine.step = record_then_step
    trainer = Trainer(cfg, engine, (None, None, None), {}, forward_step(cfg), count_targets(cfg), None,
                      parallel=ParallelSizes(world), rank=rank, train_iters=STEPS, flops_per_token=0.0,
                      peak_tflops=None)
    indices = ResumableBatchSampler(len(samples), 0, micro, rank, world)
    batches = iter([default_collate([samples[i] for i in idx]) for idx in indices])
    shares = []
    for _ in range(STEPS):
        step_shares, _ = trainer.train_step(batches)
        shares.append({p: v.item() for p, v in step_shares.items()})
    weights = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    return {"grads": grads, "weights": weights, "shares": shares, "dropout": dropout}


def dropout_masks() -> dict:
    """The masks this rank's next dropouts would draw: hidden dropout (the default stream) and
    attention dropout (megatron's tracker stream), without using up the streams training reads."""
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    saved_default, saved_tracker = torch.get_rng_state(), tracker.get_states()
    hidden = torch.nn.functional.dropout(torch.ones(256), 0.5) > 0
    with tracker.fork():
        attention = torch.nn.functional.dropout(torch.ones(256), 0.5) > 0
    torch.set_rng_state(saved_default)
    tracker.set_states(saved_tracker)
    return {"hidden": hidden, "attention": attention}


def main(cases_path: str, out_path: str, micro: int, accum: int) -> None:
    from mtds.parallel.process_groups import init_distributed

    init_distributed()
    cases = torch.load(cases_path, weights_only=True)
    out = {name: run_steps(config, samples, micro, accum) for name, (config, samples) in cases.items()}
    masks = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(masks, out[next(iter(out))]["dropout"])
    out["dropout_by_rank"] = masks
    if torch.distributed.get_rank() == 0:
        torch.save(out, out_path)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds --local_rank=N
    main(args[0], args[1], int(args[2]), int(args[3]))
