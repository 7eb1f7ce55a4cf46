"""Knowledge distillation (training.teacher): a frozen teacher's logits train the student.

Per scored token (the positions the task's loss mask lets in), with student logits s, teacher logits
t, temperature T and weight alpha (training.distill_temperature, training.distill_alpha):

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, label)

summed over the micro-batch's tokens like every other loss (mtds/train/reduction.py divides by the
step's token count), so the objective is per token whatever the batch layout. T^2 keeps the soft
part's gradient on the scale of the hard part's when T changes (Hinton et al., 2015). Both parts
are logged: `train/kd` and `train/lm_hard`. Validation reports the student's own next-token loss
(`val/loss`, comparable with a run trained without a teacher) and the KL as `val/kd`.

The teacher is any complete checkpoint of the student's family whose task scores causal
continuations (a GPT, a GPT SFT or MoE run, or an `mtds.import_hf` output), verified against its
manifest, rebuilt from its own saved config (its shape is free: that is the point), frozen in eval
mode on every rank in the run's precision, outside DeepSpeed (ZeRO partitions the student only).
Vocabularies must match. A teacher that scores no better than uniform on the first batch (weights
loaded as zeros, the failure reported in Megatron Bridge #1422) stops the run with one line.
Tensor parallelism is refused for now (the teacher would need its own vocab-parallel logits).
"""

from __future__ import annotations

import math
import os

from mtds.ckpt.branch import parse
from mtds.ckpt.layout import checkpoint_root, complete_tags, find, read_config
from mtds.ckpt.manifest import hash_file
from mtds.config import migrate
from mtds.errors import ConfigError
from mtds.kinds import KINDS

KEY = "training.teacher"


def plan_teacher(cfg, tensor: int, family, gives_token_logits: bool) -> tuple[str, dict]:
    """(teacher checkpoint dir, the `distilled_from` record), checked before DeepSpeed starts: the run's
    task gives token logits (`gives_token_logits`, from the wiring), no tensor parallelism, a complete
    checkpoint of the run's `family` that scores causal continuations. Its files are hashed against its
    manifest by the plan (check_before_load)."""
    from mtds.ckpt import manifest

    value, t = cfg.training.teacher, cfg.training
    if not gives_token_logits:
        raise ConfigError(f"{KEY}: model_type={cfg.model.model_type!r} does not distill (its task gives no "
                          "per-token logits); distill a GPT kind (gpt, gpt_sft)")
    if tensor > 1:
        raise ConfigError(f"{KEY}: distillation with model.tensor_model_parallel_size={tensor} is not supported yet; "
                          "train the student with tensor_model_parallel_size=1 (ZeRO 1-3 and data parallelism work)")
    run_dir, tag = parse(value)
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{KEY}={value!r}: {run_dir} is not a directory; give the run dir of a trained teacher")
    ckpt = find(run_dir, tag)
    if ckpt is None:
        shown = ", ".join(complete_tags(checkpoint_root(run_dir))[-5:]) or "none"
        raise ConfigError(f"{KEY}={value!r}: no complete checkpoint{' ' + tag if tag else ''} there; complete ones: "
                          f"{shown}")
    saved = read_config(ckpt)
    kind = KINDS.get(migrate(saved["run"])["model"].get("model_type"))
    if kind is None or kind.family is not family or kind.task.continuation_logits is None:
        raise ConfigError(f"{KEY}={value!r}: {ckpt} is a {migrate(saved['run'])['model'].get('model_type')!r} model "
                          f"and the student a {cfg.model.model_type!r}; the teacher must be a causal model of the "
                          f"student's family ({family.name})")
    return ckpt, {**manifest.pointer(ckpt), "alpha": t.distill_alpha, "temperature": t.distill_temperature}


def check_resumed_teacher(resumed: dict, record: dict) -> None:
    """A resumed distillation must read the teacher it started with (same checkpoint content)."""
    before = resumed.get("distilled_from")
    if before and before.get("manifest_xxh3_128") != record["manifest_xxh3_128"]:
        raise ConfigError(f"{KEY}: the run was distilled from {before['run_dir']}:{before['tag']} (manifest xxh3-128 "
                          f"{before['manifest_xxh3_128']}) and the teacher now is {record['run_dir']}:{record['tag']} "
                          f"({record['manifest_xxh3_128']}); resume with the same teacher")


def check_vocab(ckpt: str, saved: dict, vocab_size: int, tokenizer_model: str) -> None:
    """Teacher and student score the same token ids: the same padded vocabulary and tokenizer file."""
    theirs = saved["data_sources"]["tokenizer_model"]
    if int(saved["vocab_size"]) != vocab_size:
        raise ConfigError(f"{KEY}: {ckpt} has a padded vocabulary of {saved['vocab_size']} and the student "
                          f"{vocab_size}; distill with the teacher's tokenizer ({theirs})")
    if os.path.exists(theirs) and os.path.exists(tokenizer_model) and \
            tokenizer_digest(theirs) != tokenizer_digest(tokenizer_model):
        raise ConfigError(f"{KEY}: {ckpt} was trained with the tokenizer {theirs} and the student's data with "
                          f"{tokenizer_model}, which differ; preprocess the data with the teacher's tokenizer")


def tokenizer_digest(path: str) -> list:
    """What defines a tokenizer's ids: its file's hash (sentencepiece .model, tokenizer.json), or for a Hugging
    Face tokenizer directory (an import_hf run's tokenizer/) each file's name and hash."""
    if os.path.isfile(path):
        return [hash_file(path)]
    return [(name, hash_file(os.path.join(path, name))) for name in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, name))]


def load_teacher(ckpt: str, saved: dict, precision: str, device, log=print):
    """The teacher network rebuilt from its saved config, its consolidated weights loaded (strict),
    frozen, in eval mode, in `precision` on `device`."""
    import torch

    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.save_load import rng_state, set_rng_state
    from mtds.kinds import build_model
    from mtds.load_trained import load_weights, saved_run_config

    cfg = saved_run_config(saved)
    generators = rng_state()  # building draws initial weights: the student's dropout and data streams stay its own
    model = build_model(cfg, int(saved["vocab_size"]), precision, on_gpu=torch.cuda.is_available())
    set_rng_state(generators)
    load_weights(model, consolidated_state_dict(ckpt, saved), ckpt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model.to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    log(f"teacher: {ckpt} ({cfg.model.model_type}, {n / 1e6:.1f}M parameters, {cfg.model.num_layers} layers x "
        f"{cfg.model.hidden_size}, {precision}, frozen)")
    return model


def distill_sums(student, teacher, labels, weights, temperature: float):
    """(KL sum, cross-entropy sum, tokens) over the weighted positions; logits [b, s, V], labels and
    weights [b, s]. KL(p_t || p_s) at `temperature`, times temperature^2; in fp32."""
    import torch

    s, t = student.float(), teacher.float()
    w = weights.float()
    log_p_s = torch.log_softmax(s / temperature, dim=-1)
    log_p_t = torch.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2  # [b, s]
    ce = torch.nn.functional.cross_entropy(s.flatten(0, 1), labels.flatten(), reduction="none").view_as(w)
    return (kl * w).sum(), (ce * w).sum(), w.sum()


class Distiller:
    """The run's forward step and target counts with a teacher: see the module doc."""

    def __init__(self, cfg, teacher, token_logits, count_targets, vocab_size: int, group, family_metrics=None,
                 log=lambda line: None):
        self.teacher, self.token_logits, self.opts, self.log = teacher, token_logits, cfg.task, log
        self.family_metrics = family_metrics  # the family's per-micro-batch metrics (an MoE student's load balance)
        self.alpha, self.temperature = cfg.training.distill_alpha, cfg.training.distill_temperature
        self._count, self.vocab_size, self.group = count_targets, vocab_size, group
        self.checked = False

    def count_targets(self, batch) -> dict:
        """The task's scored tokens, once per loss part (both parts are per token)."""
        n = sum(self._count(batch).values())
        return {"kd": n, "lm": n}

    def forward(self, model, batch, device):
        import torch

        student, labels, weights = self.token_logits(model, batch, device, self.opts)
        with torch.no_grad():
            teacher = self.teacher_logits(batch, device, labels, weights)
        kd, ce, n = distill_sums(student, teacher, labels, weights, self.temperature)
        extra = self.family_metrics(model) if self.family_metrics is not None else {}
        # DeepSpeed's engine.eval() switches its module, not itself: the module's mode says which this is
        if not getattr(model, "module", model).training:  # validation: the student's own LM loss, comparable with a run without a teacher
            return {"lm": ce}, {"kd": (kd.detach(), n), **extra}
        losses = {}
        if self.alpha > 0:
            losses["kd"] = self.alpha * kd
        if self.alpha < 1:
            losses["lm"] = (1 - self.alpha) * ce
        return losses, {"lm_hard": (ce.detach(), n), "kd": (kd.detach(), n), **extra}

    def teacher_logits(self, batch, device, labels, weights):
        logits, _, _ = self.token_logits(self.teacher, batch, device, self.opts)
        if not self.checked:
            self.check_better_than_uniform(logits, labels, weights)
        return logits

    def check_better_than_uniform(self, logits, labels, weights) -> None:
        """The teacher's next-token loss on the first micro-batch (summed over the data-parallel ranks) must
        beat a uniform guess, ln(vocab): a teacher loaded as zeros scores exactly that. Logged either way."""
        import torch

        from mtds.train.reduction import sum_over_ranks

        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        packed = torch.stack([(ce.view_as(weights) * weights.float()).sum(), weights.float().sum()])
        total, n = sum_over_ranks(packed, self.group).tolist()
        self.checked = True
        uniform = math.log(self.vocab_size)
        if n and total / n >= uniform - 1e-3:
            raise ConfigError(f"{KEY}: the teacher's loss on the first batch is {total / n:.4f}, no better than a "
                              f"uniform guess (ln {self.vocab_size} = {uniform:.4f}): its weights are not a trained "
                              "model (zeros, or another vocabulary's); check the teacher run dir")
        if n:
            self.log(f"teacher check: loss {total / n:.4f} on the first micro-batch's {int(n)} tokens (all ranks), "
                     f"better than a uniform guess (ln {self.vocab_size} = {uniform:.4f})")
