"""An exponential moving average of the weights (`training.ema_decay`), kept beside training.

After every applied optimizer step (a step DeepSpeed skips for non-finite gradients changes no
weight and is not counted), each parameter's fp32 shadow becomes

    shadow = decay * shadow + (1 - decay) * weight

starting from the weights the run starts with. The weights are the module's: under ZeRO 0-2 in
fp32 they are the master weights; in bf16 the module's bf16 copy of them (the fp32 master copy
lives partitioned in DeepSpeed's optimizer). ZeRO-3 partitions the module's parameters too and
tensor parallelism splits them, so both are refused by the plan (mtds/train/plan.py).

Neither DeepSpeed nor megatron-core keeps one (torch.optim.swa_utils.AveragedModel copies the
whole module, buffers and all, and saves nothing with DeepSpeed's checkpoints), so it is written
here: every data-parallel rank holds the same replicated weights and so the same shadow; rank 0
saves it as `ema.pt` in each checkpoint (mtds.ckpt.save_load, hashed into the manifest like the
shards) and every rank loads it on resume, so a resumed or branched run continues it exactly.
`python -m mtds.average --ema` writes a checkpoint's EMA as an ordinary run dir for the tools.
"""

from __future__ import annotations

import torch

EMA_FILE = "ema.pt"


class WeightEMA:
    """fp32 shadows of a model's parameters, saved under the model's state-dict keys."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self._params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self._params.items()}
        # The state-dict keys of each parameter (a tied one has two) and of the other tensors, so the
        # saved dict loads into the model as its weights do (mtds.average --ema).
        ids = {id(p): name for name, p in self._params.items()}
        self._keys = {k: ids.get(id(v)) for k, v in model.state_dict(keep_vars=True).items()
                      if torch.is_tensor(v) and not k.endswith("_extra_state")}
        self._others = {k: model.state_dict()[k] for k, name in self._keys.items() if name is None}

    @torch.no_grad()
    def update(self) -> None:
        """One applied optimizer step: move every shadow towards its parameter."""
        for name, p in self._params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict:
        """{"decay": d, "shadow": {parameter name: fp32 tensor}, "weights": {state-dict key: tensor}}:
        the shadows to resume, and the whole averaged state dict for the tools."""
        weights = {k: (self.shadow[name] if name is not None else self._others[k].detach().float().clone())
                   for k, name in self._keys.items()}
        return {"decay": self.decay, "shadow": self.shadow, "weights": weights}

    def load_state_dict(self, state: dict, log=print) -> None:
        saved = state["shadow"]
        if saved.keys() != self.shadow.keys():
            raise ValueError(f"the saved EMA holds other parameters ({len(saved)} vs {len(self.shadow)})")
        for name, tensor in saved.items():
            self.shadow[name].copy_(tensor)
        if state.get("decay") != self.decay:
            log(f"note: training.ema_decay {state.get('decay')} -> {self.decay}: the EMA goes on with the new decay")
