"""The contract of a model kind, as two frozen dataclasses: a `Family` (the network, one instance
`FAMILY` at the end of each mtds/models/<family>.py) and a `Task` (the objective, one instance `TASK`
at the end of each mtds/tasks/<task>.py). mtds/kinds.py pairs them in `KINDS`.

Every field is read somewhere, and an optional hook is a field that is None when absent: callers test
`is None`, never `hasattr`. mtds/README.md's "add a kind" tables list these fields one for one
(tests/test_kinds.py checks it).

Why a module of its own and not mtds/kinds.py: every family and task file builds its instance from
these classes, and mtds/kinds.py imports every family and task file.

No torch here: the config path (mtds.config -> mtds.kinds -> the kind files) stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Family:
    """A network: mtds/models/<name>.py."""

    name: str
    """The family's name: the file's, e.g. "gpt"."""
    presets: dict[str, dict]
    """Named sizes: `[model]` fields (shapes and, where the family needs them, architecture switches).
    Names are unique across families."""
    default_preset: str
    """The tiny preset, used when `model.preset` is not given."""
    validate: Callable
    """`validate(m) -> list[str]`: one-line problems of `[model]` values this family cannot build."""
    build: Callable
    """`build(m, vocab_size, precision, on_gpu, **heads)`: the megatron-core module; `heads` are what
    the task's `model_heads` returns (every family's build takes the heads its tasks ask for)."""
    flops_per_token: Callable
    """`flops_per_token(m, num_params, seq_length, vocab_size, **task_args)`: training FLOPs per token
    for TFLOP/s and MFU (`task_args`: the task's `flops_args`)."""
    transformer_layers: Callable
    """`transformer_layers(model) -> list`: the layers `training.compile=layers` compiles."""
    hf_architectures: tuple[str, ...]
    """mtds/hf/ modules this family maps to, tried in order by `mtds.export_hf`; those with a
    `model_config` are what `mtds.import_hf` imports (may be empty)."""
    before_backward: Callable | None = None
    """Optional `before_backward(engine)`: called before every DeepSpeed backward (the GPT family sets
    megatron-core's MoE auxiliary-loss gradient scale there)."""
    micro_batch_metrics: Callable | None = None
    """Optional `micro_batch_metrics(model) -> {name: (sum, count)}`: metrics of the micro-batch just run, merged into
    the task's (`mtds.kinds.forward_step`; the GPT family's MoE load balance)."""


@dataclass(frozen=True)
class Task:
    """An objective, its data and its loss: mtds/tasks/<name>.py."""

    name: str
    """The task's name: the file's, e.g. "causal_lm"."""
    options: type
    """Dataclass of the `[task]` section, a docstring per field."""
    data_layout: str
    """The data it reads: "document" (`_document` prefixes), "sentence" (`preprocess --split-sentences`),
    "span" (`_sentence` data of a tokenizer with T5's sentinels), "sft" (`data_tools.sft`) or "cls"
    (`data_tools.classify`); the default corpus is built in this layout."""
    changeable_on_resume: tuple[str, ...]
    """`[task]` keys a resumed run may change (every other one must match the checkpoint)."""
    validate: Callable
    """`validate(opts, cfg) -> list[str]`: one-line problems of `[task]` values."""
    model_heads: Callable
    """`model_heads(opts) -> dict`: keyword switches for the family's `build`."""
    check_data: Callable
    """`check_data(cfg, sources, tokenizer)`: data checks before DeepSpeed starts (raise ConfigError)."""
    build_datasets: Callable
    """`build_datasets(cfg, sources, tokenizer, sizes, dp_size) -> (train, valid, test)`."""
    forward_step: Callable
    """`forward_step(model, batch, device, opts) -> (losses, metrics)`: one micro-batch to its loss
    parts `{part: fp32 scalar}`, each the per-target loss SUMMED over the micro-batch's targets (never a
    mean: the trainer divides by the whole step's count, mtds.train.reduction), and detached metrics
    `{name: (sum, count)}` (logged as `train/<name>`, `val/<name>`: sum / count over the step)."""
    count_targets: Callable
    """`count_targets(batch, opts) -> {part: n}`: the targets of each loss part in a micro-batch, read
    from the batch alone (before any forward: the step's counts weigh its first backward)."""
    next_token_logits: Callable | None = None
    """Optional `next_token_logits(model, context, tokenizer=None) -> [b, s', V]`, the last row the next
    token's logits: `mtds.generate` works for tasks that have it (and gives the run's tokenizer: permutation
    LM's query token is its mask token)."""
    continuation_logits: Callable | None = None
    """Optional `continuation_logits(model, context) -> [b, s, V]`: a causal model's logits at every
    position of `context` (row t predicts token t + 1). Downstream evals (training.downstream_evals,
    mtds/train/downstream.py) score continuations with it; a task without it refuses them."""
    token_logits: Callable | None = None
    """Optional `token_logits(model, batch, device, opts) -> (logits [b, s, V], labels [b, s], weights [b, s])`:
    the logits at every position of a training micro-batch, each position's target and its loss-mask weight.
    Knowledge distillation (training.teacher, mtds/train/distill.py) runs it on student and teacher; a task
    without it refuses a teacher."""
    lora_heads: tuple[str, ...] | None = None
    """Optional: the names of the task's own head modules (top-level in the model) that a LoRA run
    (training.lora_rank, mtds/models/lora.py) trains whole beside the adapters and saves with them: a
    classifier's head starts fresh, so frozen it would stay random. `()`: adapters only. None: the
    task refuses LoRA."""
    cached_logits: Callable | None = None
    """Optional `cached_logits(model, max_length) -> cache`, a KV cache for `mtds.generate`:
    `cache(new_ids [1, k]) -> logits [1, V]` after the last id, fed the prompt then one id at a time
    (causal_lm: mtds.kv_cache). Without it, generation re-runs the whole context for each token."""
    seq2seq_logits: Callable | None = None
    """Optional `seq2seq_logits(model, encoder_ids, decoder_ids)`: `mtds.generate` runs an
    encoder-decoder (T5's span filling) instead; needs `render_generation`."""
    render_generation: Callable | None = None
    """Optional `render_generation(prompt, new_ids, tokenizer) -> str`: the text of a seq2seq generation."""
    flops_args: Callable | None = None
    """Optional `flops_args(opts, seq_length) -> dict`: more arguments for the family's
    `flops_per_token` (T5: the decoder's length; a BERT classifier: no LM head)."""
    summarize: Callable | None = None
    """Optional `summarize(means) -> dict`: turns reduced parts ("_"-prefixed metrics) into the metrics
    logged in training and validation (classification: per-class counts -> macro-F1 over every sample)."""
    report: Callable | None = None
    """Optional `report(model, loader, device, opts) -> (metrics, lines)`: `mtds.evaluate` calls it
    instead of averaging `forward_step` metrics, for metrics that need all samples at once."""

    def __post_init__(self):
        if (self.seq2seq_logits is None) != (self.render_generation is None):
            raise TypeError(f"task {self.name}: seq2seq_logits and render_generation come together")
