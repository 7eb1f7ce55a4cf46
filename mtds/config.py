"""The run config: one typed tree for everything the DeepSpeed JSON does not own.

Ownership (each setting has exactly one home):
- DeepSpeed JSON (`--deepspeed_config`): ZeRO stage, precision, optimizer, LR schedule,
  gradient clipping, micro-batch size and gradient accumulation. See mtds.ds_config.
- This run config: model shape ([model]), the objective's options ([task]), data, intervals, paths.

`model.model_type` names a kind (mtds/kinds.py: a model family plus a task); the family supplies
the presets and its own model checks, the task the dataclass of [task] and its checks.

Precedence: CLI overrides > config file (`--config x.toml|x.json`) > preset > defaults.
Field names in `ModelConfig` follow megatron-core's `TransformerConfig` so building the model
is a direct hand-over. Validation here never touches torch or global state; every problem
found is reported together in one `ConfigError` line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from data_tools.hf_tokenizer import TOKENIZER_TYPES
from mtds.errors import ConfigError
from mtds.kinds import KINDS, Kind, pretraining_kind

CONFIG_FORMAT = 2
"""Format of the saved `run` dict: 1 had the objective's options in [model]/[data] (no [task])."""


@dataclass
class ModelConfig:
    preset: str | None = None
    """Named size of the kind's family (gpt-tiny, gpt-125m, ..., bert-base; see mtds/models/);
    explicit fields below override it. Not given: the family's tiny default; none: no preset."""
    model_type: str = "gpt"
    """The kind (mtds/kinds.py): "gpt" (causal LM), "bert" (masked LM + sentence-order head), "t5"
    (span corruption), "gpt_plm" (permutation LM, XLNet's), or the fine-tuning kinds "gpt_sft" and "bert_cls".
    Not given with a preset of another family (e.g. bert-base): that family's kind."""
    num_layers: int = 4
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; None = one per attention head (MHA)."""
    kv_channels: int | None = None
    """Dimension of each attention head; None = hidden_size / num_attention_heads. mtds.prune sets it when it
    drops heads at a fixed hidden_size (exported to Hugging Face as Llama's head_dim; GPT-2 needs the default)."""
    ffn_hidden_size: int | None = None
    """None: 4*hidden for GELU, 8/3*hidden rounded up to a multiple of 64 for SwiGLU."""
    max_position_embeddings: int = 256
    """Longest sequence the model supports (learned positions table / RoPE range)."""
    vocab_size: int | None = None
    """None: the tokenizer's vocabulary padded up to make_vocab_size_divisible_by."""
    make_vocab_size_divisible_by: int = 128
    position_embedding_type: str = "rope"
    """"rope", "learned_absolute", "sinusoidal" (the original Transformer's fixed sin/cos table, added like
    the learned one; GPT and BERT, not exported to Hugging Face) or "relative" (T5's bucketed position bias;
    T5 only)."""
    rotary_base: int = 10000
    rope_scaling: bool = False
    """Llama-3.1/3.2 RoPE frequency scaling (megatron-core's: low/high frequency factors 1 and 4,
    original context 8192), by rope_scaling_factor."""
    rope_scaling_factor: float = 8.0
    normalization: str = "RMSNorm"
    """"RMSNorm" or "LayerNorm"."""
    layernorm_epsilon: float = 1e-5
    activation: str = "swiglu"
    """"swiglu", "gelu" (exact, erf) or "gelu_tanh" (the tanh approximation: GPT-2's gelu_new)."""
    tie_embeddings: bool = False
    """Share the input embedding with the output layer."""
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    """Biases on the query/key/value projection only (Qwen2); add_bias_linear puts them everywhere."""
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    recompute_activations: bool = False
    """Activation checkpointing of every transformer layer: less memory, ~30% more compute."""
    num_moe_experts: int | None = None
    """GPT: a mixture of experts with this many experts per layer (megatron-core's MoE layer) in
    place of the MLP; None = dense."""
    moe_router_topk: int = 2
    """Experts each token is routed to."""
    moe_aux_loss_coeff: float = 1e-2
    """Weight of the load-balancing loss (Switch Transformer's) in the training loss."""
    moe_ffn_hidden_size: int | None = None
    """Hidden size of each expert's MLP; None = ffn_hidden_size (as derived)."""
    expert_model_parallel_size: int = 1
    """Ranks the experts are split over. Only 1 for now: experts are data-parallel (each rank holds
    all of them); anything else is refused rather than silently trained otherwise."""
    tensor_model_parallel_size: int = 1
    """Ranks that split every layer's matmuls (megatron-core tensor parallelism: attention heads,
    MLP columns and the vocabulary); the data-parallel size is world / this. Keep it within a node."""
    sequence_parallel: bool = False
    """With tensor parallelism: norms, dropouts and residuals work on 1/TP of the sequence per rank
    (activation memory / TP; Korthikanti et al. 2022). Needs tensor_model_parallel_size > 1."""

    def ffn_size(self) -> int:
        if self.ffn_hidden_size:
            return self.ffn_hidden_size
        if self.activation == "swiglu":
            return -(-int(8 * self.hidden_size / 3) // 64) * 64
        return 4 * self.hidden_size

    def padded_vocab_size(self, tokenizer_vocab: int) -> int:
        if self.vocab_size is not None:
            return self.vocab_size
        d = self.make_vocab_size_divisible_by
        return -(-tokenizer_vocab // d) * d


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)
    """Dataset prefixes: the path before `.bin`/`.idx` (e.g. data/web_text_document).
    Empty: the embedded default corpus, built on first use under default_dir."""
    weights: list[float] | None = None
    """Blend weights, one per path; None = proportional to size (megatron-core's default)."""
    valid_paths: list[str] = field(default_factory=list)
    """Validation set from its own prefixes (Megatron-LM's --valid-data-path): then all of
    `paths` is training data, `split` is not used, and there is no test split."""
    tokenizer_model: str | None = None
    """sentencepiece .model or Hugging Face tokenizer directory (tokenizer.json); required when
    paths are given."""
    tokenizer_type: str = "auto"
    """"auto" (a directory is HuggingFaceTokenizer, a file SentencePieceTokenizer),
    "SentencePieceTokenizer" or "HuggingFaceTokenizer" (Megatron-LM's --tokenizer-type names)."""
    default_dir: str = "data/stdlib"
    """Where the embedded default corpus, tokenizer and .bin/.idx are built."""
    split: str = "969,30,1"
    """train,valid,test proportions of each dataset's documents."""
    seq_length: int | None = None
    """Training sequence length; None = model.max_position_embeddings."""
    cache_dir: str | None = None
    """Index cache (sample/shuffle indices); None = <run_dir>/index_cache. Rank 0 builds it and
    the other ranks read it, so it must be on a filesystem every node sees."""
    index_cache: bool = True
    """False: every rank computes the indices in memory, nothing written anywhere (nodes without a
    shared filesystem, read-only data; cheap up to millions of samples: ~0.2 s for 200k). GPT kinds
    only: megatron-core's BERT and T5 datasets always write theirs (keep it true, data.cache_dir on a
    filesystem every node sees); SFT and classification build no index cache either way."""
    seed: int = 1234
    allow_other_data: bool = False
    """Resume even though the data differs from the checkpoint's (other prefixes, or files rebuilt
    with other content) or a changed key moves the order of its samples (data.seed, data.split,
    data.weights, the sequence length, train_iters x global batch: mtds.ckpt.resume.order_changes):
    the data position (consumed samples) then counts into the new data or order."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = load in the training process)."""
    document_mask: bool = False
    """GPT: a token attends only to tokens of its own document (block-causal attention, split at
    each end-of-document token) and position ids restart at every document, so several
    documents per sequence change speed, not the math (Megatron-LM's --reset-attention-mask
    with --reset-position-ids). The samples carry document ids, not an [s, s] mask: FlexAttention
    with a block mask on GPU, SDPA with a dense mask on CPU (mtds/models/document_attention.py)."""


@dataclass
class TrainingConfig:
    train_iters: int | None = 300
    """Optimizer steps to train; exclusive with train_tokens (giving train_tokens alone drops this default)."""
    train_tokens: int | None = None
    """Train until this many tokens were consumed (sets train_iters from the batch size)."""
    eval_interval: int = 100
    eval_iters: int = 10
    """Micro-batches per rank for each validation pass."""
    downstream_evals: list[str] = field(default_factory=list)
    """Eval packs (`python -m data_tools.eval_pack`, built with this run's tokenizer) scored in the loop:
    acc, acc_norm and bits per byte, over every example whatever the world size, as TensorBoard
    `downstream/<task>/<metric>`, RUN_DIR/downstream.json and the checkpoint's record (mtds/train/downstream.py).
    GPT kinds (a task with continuation_logits) without tensor parallelism."""
    downstream_interval: int | None = None
    """Score the downstream_evals every N iterations (and at the end); none = eval_interval."""
    log_interval: int = 10
    save_interval: int | None = None
    """Save every N iterations (and always at the end); None = only at the end."""
    keep_last: int = 2
    """Complete checkpoints to keep (the newest saves); older ones are deleted after a new one is published."""
    run_dir: str = "runs/default"
    """Checkpoints, TensorBoard events, resolved config and logs go here. One run per directory: a run
    that would save among another run's checkpoints (no `load`, or `load` naming another directory)
    is refused."""
    load: str | None = None
    """Resume from the latest complete checkpoint in this directory (usually run_dir)."""
    load_tag: str | None = None
    """Resume from this checkpoint of `load` (e.g. iter_0000040, the one before a damaged one)
    instead of the newest. In `load`'s own run dir this rolls the run back: once loaded, the newer
    checkpoints move to checkpoints/abandoned/ (kept). For one resume: drop it again, or a requeued job goes back to it."""
    init_from: str | None = None
    """Start from the weights of this run dir's newest complete checkpoint (any ZeRO stage and world
    size): iteration, data position, optimizer state and LR schedule start fresh (fine-tuning).
    With `load` too: resume wins once `load` has a checkpoint, so a requeued job resumes."""
    branch_from: str | None = None
    """RUN_DIR or RUN_DIR:TAG (e.g. runs/stable:iter_0004000): a new run (in run_dir) that goes on from
    that checkpoint keeping its optimizer state, LR-schedule position and data position, unlike
    init_from: a cooldown branch. The schedule may change (train_iters, the DeepSpeed JSON's decay),
    the network may not. The parent's run dir, tag and checkpoint hash are recorded as
    `branched_from`. With `load` too: resume wins once `load` has a checkpoint."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights, updated after every applied optimizer step
    (shadow = ema_decay x shadow + (1 - ema_decay) x weight, e.g. 0.999), saved in every checkpoint
    (ema.pt) and resumed exactly; none = off. `python -m mtds.average --ema` makes it a run dir for
    the tools. ZeRO stages 0-2 without tensor parallelism (mtds/train/ema.py)."""
    teacher: str | None = None
    """Knowledge distillation: RUN_DIR or RUN_DIR:TAG of a trained causal model of the student's family (any
    shape, the same tokenizer), frozen, whose logits train this run (mtds/train/distill.py); none = off.
    GPT kinds, ZeRO 0-3, data parallelism; no tensor parallelism."""
    distill_alpha: float = 1.0
    """With a teacher: the weight of the KL term, (1 - alpha) that of the usual next-token loss on the labels."""
    distill_temperature: float = 1.0
    """With a teacher: the softmax temperature T of both models' logits in the KL term (scaled by T^2)."""
    seed: int = 1234
    exit_duration_mins: float | None = None
    """Save and exit cleanly after this many minutes of training (for job time limits)."""
    exit_interval: int | None = None
    """Save and exit cleanly when the iteration is a multiple of this (stop early, resume later)."""
    progress_bar: bool | None = None
    """tqdm bar on rank 0; None = only when stdout is a terminal."""
    tflops_peak: float | None = None
    """Peak TFLOP/s per device for MFU; None = looked up for known GPUs, else MFU not shown."""
    dist_timeout_mins: float = 30.0
    """How long a collective waits for a peer before the rank fails (a hung or dead rank must not
    block the job forever); longer than the slowest checkpoint save."""
    max_skipped_steps_in_row: int = 20
    """Stop after this many optimizer steps in a row skipped for non-finite gradients (fp16 overflow)."""
    loss_spike_factor: float = 2.0
    """Warn when a logged loss exceeds this multiple of its running mean (0 = off)."""
    compile: str = "none"
    """torch.compile: "none", "layers" (each transformer layer, compiled once and reused) or
    "model" (DeepSpeed's engine.compile(), whole module). See mtds/train/compile.py."""
    wandb_project: str | None = None
    """Weights & Biases project: log the TensorBoard scalars there too, at the same steps (rank 0);
    none = no W&B. Needs the wandb package (the [wandb] extra). One W&B run per run dir: its id is
    kept in RUN_DIR/wandb_run_id, and a resume or SLURM requeue continues that run."""
    wandb_entity: str | None = None
    """W&B user or team to log under; none = your default entity."""
    wandb_name: str | None = None
    """W&B run name; none = the run dir's name."""
    wandb_tags: list[str] = field(default_factory=list)
    """W&B run tags."""
    wandb_mode: str | None = None
    """W&B mode: "online", "offline" (air-gapped nodes: files under RUN_DIR/wandb, uploaded later with
    `wandb sync RUN_DIR/wandb/offline-run-*`) or "disabled"; none = WANDB_MODE from the environment,
    else online. A value here wins over WANDB_MODE."""
    lora_rank: int | None = None
    """LoRA fine-tuning (mtds/models/lora.py): train rank-r adapters beside the frozen weights of
    training.init_from's model (the optimizer holds only the adapters); none = off. Kinds gpt and
    gpt_sft, no tensor parallelism. The tools load base + adapters merged; `python -m mtds.export_hf
    --lora-adapter` writes a PEFT adapter folder."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: an adapter adds (lora_alpha / lora_rank) x B A x to its layer's output."""
    lora_dropout: float = 0.0
    """Dropout on an adapter's input (training only)."""
    lora_targets: list[str] = field(default_factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"])
    """megatron-core linear layers that get adapters: linear_qkv, linear_proj (attention), linear_fc1, linear_fc2 (MLP)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = None
    """The kind's task options (`KINDS[model.model_type].task.options`); None = its defaults."""
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self):
        if self.task is None and self.model.model_type in KINDS:
            self.task = self.kind.task.options()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def kind(self) -> Kind:
        return KINDS[self.model.model_type]

    @property
    def seq_length(self) -> int:
        return self.data.seq_length or self.model.max_position_embeddings


SECTIONS = ("model", "task", "data", "training")
_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig}
# Every preset of every family: name -> (Family, shape dict).
PRESETS: dict[str, tuple] = {name: (k.family, shape) for k in KINDS.values() for name, shape in k.family.presets.items()}
CHOICES = {
    ("model", "position_embedding_type"): ("rope", "learned_absolute", "sinusoidal", "relative"),
    ("model", "normalization"): ("RMSNorm", "LayerNorm"),
    ("model", "activation"): ("swiglu", "gelu", "gelu_tanh"),
    ("training", "compile"): ("none", "layers", "model"),
}


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------
def load_file(path: str) -> dict:
    """Read a .toml or .json run config into a nested dict; one-line errors."""
    from mtds.shipped import find_shipped

    path = find_shipped(path, "configs")  # mtds/configs/gpt_125m.toml works from any directory
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: run config not found (give an existing .toml or .json with --config)")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as f:
                return tomllib.load(f)
        with open(path) as f:
            return json.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse run config: {e}") from None


def parse_overrides(args: list[str]) -> dict:
    """`--model.num_layers=4`, `--model.num_layers 4` or `model.num_layers=4` -> nested dict."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg[2:] if arg.startswith("--") else arg
        if "=" in key:
            key, value = key.split("=", 1)
        elif arg.startswith("--") and i + 1 < len(args):
            i += 1
            value = args[i]
        else:
            raise ConfigError(f"override {arg!r}: expected section.key=value (e.g. training.train_iters=100)")
        if "." not in key:
            raise ConfigError(
                f"override {arg!r}: name the section, e.g. --training.{key.replace('-', '_')}=... "
                f"(sections: {', '.join(SECTIONS)})"
            )
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name.replace("-", "_")] = value
        i += 1
    return out


def _is_none(value) -> bool:
    """None as a file or the command line writes it (`none`, `null`)."""
    return value is None or (isinstance(value, str) and value.lower() in ("none", "null"))


def _coerce(value, annotation, where: str):
    """Convert a file/CLI value to the field's declared type, or raise ConfigError."""
    tp = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        if _is_none(value):
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp)
    try:
        if origin is list:
            (item,) = typing.get_args(tp)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, list):
                raise TypeError
            return [_coerce(v, item, where) for v in value]
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            if isinstance(value, str) and "e" in value.lower():  # 1e5 means 100000; 2.9e0 is not an integer
                number = float(value)
                if not number.is_integer():
                    raise TypeError
                return int(number)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
    except ConfigError:
        raise  # an item of a list: its own message is the precise one
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where}: expected {name}{' or none' if optional else ''}, got {value!r}")


def _merge(base: dict, extra: dict) -> dict:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return merged


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind_and_preset(model_raw: dict, errors: list[str]) -> tuple[str | None, str | None]:
    """(kind name, preset name or None) from the raw [model] values.

    The kind is model.model_type if given, else the kind of the preset's family, else "gpt"; the
    preset defaults to the family's tiny one and must belong to the kind's family.
    """
    preset_given = "preset" in model_raw
    preset = model_raw.get("preset")
    if isinstance(preset, str) and preset.lower() in ("none", "null"):
        preset = None
    if preset is not None and preset not in PRESETS:
        errors.append(f"model.preset: unknown preset {preset!r}{_did_you_mean(str(preset), PRESETS)}; "
                      f"choose one of {', '.join(PRESETS)}")
        preset = None
    kind = model_raw.get("model_type")
    if kind is None:
        family = PRESETS[preset][0] if preset else KINDS["gpt"].family
        kind = pretraining_kind(family)
    if kind not in KINDS:
        errors.append(f"model.model_type={kind!r}: choose one of {', '.join(KINDS)}")
        return None, None
    family = KINDS[kind].family
    if not preset_given:
        return kind, family.default_preset
    if preset is not None and PRESETS[preset][0] is not family:
        errors.append(f"model.preset={preset!r} is a {PRESETS[preset][0].name} preset; model_type={kind!r} "
                      f"takes {', '.join(family.presets)}")
        preset = None
    return kind, preset


def _section(name: str, cls, values, errors: list[str], owner: str = ""):
    """One section's dataclass from its raw values; problems appended to `errors`."""
    if not isinstance(values, dict):
        errors.append(f"{name}: expected a table of keys, got {values!r}")
        values = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            errors.append(f"unknown key {name}.{key}{_did_you_mean(key, fields) or owner}")
            continue
        try:
            kwargs[key] = _coerce(value, fields[key].type, f"{name}.{key}")
        except ConfigError as e:
            errors.append(str(e))
    return cls(**kwargs)


def build_config(file_dict: dict | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults < preset < file < overrides, type-checked and validated; all errors at once."""
    raw = _merge(file_dict or {}, overrides or {})
    errors: list[str] = []
    training_raw = raw.get("training")
    if isinstance(training_raw, dict) and "train_iters" not in training_raw and not _is_none(
            training_raw.get("train_tokens")):  # a token budget, alone, replaces the default step count
        raw["training"] = {**training_raw, "train_iters": None}
    for section in raw:
        if section not in SECTIONS:
            errors.append(f"unknown section {section!r}{_did_you_mean(section, SECTIONS)}")
    model_raw = raw.get("model", {}) if isinstance(raw.get("model"), dict) else {}
    kind, preset = _kind_and_preset(model_raw, errors)
    if kind is not None:
        shape = PRESETS[preset][1] if preset else {}
        raw["model"] = {**shape, **model_raw, "preset": preset, "model_type": kind}
    sections = {name: _section(name, cls, raw.get(name, {}), errors) for name, cls in _SECTION_CLASSES.items()}
    if kind is not None:  # the [task] table is typed by the kind's task
        task = KINDS[kind].task
        keys = ", ".join(f.name for f in dataclasses.fields(task.options)) or "no keys"
        owner = f" (model_type={kind!r} trains task {task.name}, whose [task] takes {keys})"
        sections["task"] = _section("task", task.options, raw.get("task", {}), errors, owner)
    cfg = RunConfig(**sections)
    if not errors:
        errors.extend(validate(cfg))
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg


def validate(cfg: RunConfig) -> list[str]:
    """Checks that need several fields at once (type checks already passed)."""
    m, d, t = cfg.model, cfg.data, cfg.training
    errs = []
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            errs.append(f"{section}.{key}={value!r}: choose one of {', '.join(allowed)}")
    if m.kv_channels is not None and m.kv_channels < 1:
        errs.append(f"model.kv_channels={m.kv_channels} must be at least 1 (or none: hidden_size / num_attention_heads)")
    if m.kv_channels is None and m.hidden_size % m.num_attention_heads:
        errs.append(f"model.hidden_size={m.hidden_size} must be divisible by model.num_attention_heads={m.num_attention_heads}")
    if m.num_query_groups and m.num_attention_heads % m.num_query_groups:
        errs.append(f"model.num_attention_heads={m.num_attention_heads} must be divisible by model.num_query_groups={m.num_query_groups}")
    if d.seq_length is not None and d.seq_length > m.max_position_embeddings:
        errs.append(f"data.seq_length={d.seq_length} exceeds model.max_position_embeddings={m.max_position_embeddings}; "
                    "lower data.seq_length or raise model.max_position_embeddings")
    errs += cfg.kind.family.validate(m) + cfg.kind.task.validate(cfg.task, cfg)
    if d.weights is not None and len(d.weights) != len(d.paths):
        errs.append(f"data.weights has {len(d.weights)} entries for {len(d.paths)} data.paths; give one weight per path")
    if d.weights is not None and any(w <= 0 for w in d.weights):
        errs.append(f"data.weights={d.weights}: weights must be positive")
    if d.valid_paths and not d.paths:
        errs.append("data.valid_paths needs data.paths (the training prefixes, tokenized with the same tokenizer)")
    if d.paths and not d.tokenizer_model:
        errs.append("data.tokenizer_model: required when data.paths is set (the .model the data was built with)")
    if d.tokenizer_type not in TOKENIZER_TYPES:
        errs.append(f"data.tokenizer_type={d.tokenizer_type!r}: choose one of {', '.join(TOKENIZER_TYPES)}")
    split = d.split.replace("/", ",").split(",")
    try:
        parts = [float(s) for s in split]
        if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0 or parts[0] == 0:
            raise ValueError
    except ValueError:
        errs.append(f"data.split={d.split!r}: give three non-negative train,valid,test weights with train > 0, e.g. '969,30,1'")
    if (t.train_iters is None) == (t.train_tokens is None):
        errs.append("training: set exactly one of train_iters and train_tokens (set the other to none)")
    for key in ("train_iters", "train_tokens"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            errs.append(f"training.{key} must be >= 1")
    for key in ("eval_interval", "log_interval", "keep_last"):
        if getattr(t, key) < 1:
            errs.append(f"training.{key} must be >= 1")
    for key in ("save_interval", "exit_interval", "downstream_interval"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            errs.append(f"training.{key} must be >= 1 or none")
    if t.branch_from and t.init_from:
        errs.append("training.branch_from and training.init_from: give one (a branch keeps the optimizer state, "
                    "LR schedule and data position; init_from takes the weights only)")
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        errs.append(f"training.ema_decay={t.ema_decay}: must be between 0 and 1 (e.g. 0.999), or none for no EMA")
    if not 0 <= t.distill_alpha <= 1:
        errs.append(f"training.distill_alpha={t.distill_alpha}: must be in [0, 1] (1 = the KL term alone)")
    if t.distill_temperature <= 0:
        errs.append(f"training.distill_temperature={t.distill_temperature}: must be > 0 (e.g. 1 or 2)")
    if t.load_tag is not None and not t.load:
        errs.append("training.load_tag needs training.load (the run dir whose checkpoint it names)")
    if t.dist_timeout_mins <= 0:
        errs.append("training.dist_timeout_mins must be > 0")
    if t.wandb_mode not in (None, "online", "offline", "disabled"):
        errs.append(f"training.wandb_mode={t.wandb_mode!r}: choose one of online, offline, disabled (or none: WANDB_MODE, else online)")
    errs += tensor_parallel_problems(m, cfg.seq_length) + lora_problems(cfg)
    if not 0 <= m.hidden_dropout < 1 or not 0 <= m.attention_dropout < 1:
        errs.append("model dropouts must be in [0, 1)")
    return errs


LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def lora_problems(cfg: RunConfig) -> list[str]:
    """training.lora_*: adapters need a base model, a kind and layers mtds/models/lora.py wraps."""
    t, m = cfg.training, cfg.model
    if t.lora_rank is None:
        return []
    key = f"training.lora_rank={t.lora_rank}"
    if t.lora_rank < 1:
        return [f"{key}: must be >= 1 (e.g. 8), or none for full fine-tuning"]
    if cfg.kind.task.lora_heads is None:
        kinds = [name for name, kind in KINDS.items() if kind.task.lora_heads is not None]
        return [f"{key}: LoRA covers model_type {', '.join(kinds)}, not {m.model_type!r}; drop training.lora_rank"]
    if not t.init_from:
        return [f"{key} needs training.init_from (the run dir of the base model the adapters train on; "
                "an HF model: python -m mtds.import_hf first)"]
    if m.tensor_model_parallel_size > 1:
        return [f"{key}: LoRA runs without tensor parallelism; set model.tensor_model_parallel_size=1"]
    unknown = [x for x in t.lora_targets if x not in LORA_TARGETS]
    if unknown or not t.lora_targets:
        return [f"training.lora_targets: {', '.join(unknown) or 'empty'} is not a layer LoRA wraps; choose among "
                f"{', '.join(LORA_TARGETS)}"]
    if t.ema_decay is not None:  # the EMA would hold the adapters only, and `mtds.average --ema` expects whole weights
        return [f"{key} with training.ema_decay: not supported together; drop one"]
    if not 0 <= t.lora_dropout < 1 or t.lora_alpha <= 0:
        return ["training.lora_dropout must be in [0, 1) and training.lora_alpha > 0"]
    return []


def tensor_parallel_problems(m: ModelConfig, seq_length: int | None) -> list[str]:
    """What megatron-core cannot split over model.tensor_model_parallel_size ranks: each rank holds
    heads / TP attention heads, query groups / TP key-value heads and ffn / TP MLP columns."""
    tp = m.tensor_model_parallel_size
    if tp < 1:
        return [f"model.tensor_model_parallel_size={tp} must be >= 1"]
    errs = []
    if m.sequence_parallel and tp == 1:
        errs.append("model.sequence_parallel=true needs model.tensor_model_parallel_size > 1 (it splits the "
                    "sequence over the tensor-parallel ranks); set it false")
    if tp == 1:
        return errs
    for key, value in (("num_attention_heads", m.num_attention_heads),
                       ("num_query_groups", m.num_query_groups or m.num_attention_heads),
                       ("ffn_hidden_size", m.ffn_size()),
                       ("moe_ffn_hidden_size", m.moe_ffn_hidden_size if m.num_moe_experts else None)):
        if value is not None and value % tp:
            errs.append(f"model.{key}={value} is not divisible by model.tensor_model_parallel_size={tp}; "
                        f"choose a size that is (each rank holds 1/{tp} of it)")
    if m.vocab_size is not None and m.vocab_size % tp:
        errs.append(f"model.vocab_size={m.vocab_size} is not divisible by model.tensor_model_parallel_size={tp}; "
                    "leave it none (padded to model.make_vocab_size_divisible_by) or pad it yourself")
    elif m.make_vocab_size_divisible_by % tp:
        errs.append(f"model.make_vocab_size_divisible_by={m.make_vocab_size_divisible_by} is not divisible by "
                    f"model.tensor_model_parallel_size={tp}; use a multiple of it (e.g. {128 * tp})")
    if m.sequence_parallel and seq_length is not None and seq_length % tp:
        errs.append(f"data.seq_length={seq_length} is not divisible by model.tensor_model_parallel_size={tp}, "
                    "which model.sequence_parallel=true needs")
    return errs


def check_vocab(cfg: RunConfig, tokenizer_vocab: int, tokenizer_path: str) -> None:
    """The model's vocabulary must hold every id the tokenizer can produce."""
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} "
            f"({tokenizer_path}); raise it or set model.vocab_size=none to derive it"
        )


def resolved_dict(cfg: RunConfig) -> dict:
    """Plain-JSON form of the config (what is saved beside checkpoints)."""
    return json.loads(json.dumps(cfg.to_dict()))


def migrate(run: dict) -> dict:
    """A saved `run` dict of an earlier CONFIG_FORMAT -> the current one (in memory; saved files stay).

    Format 1 (no [task]): the objective's options sat in [model] (bert_binary_head: sentence order
    or nothing) and [data] (masking_probability, short_seq_prob), present for every kind; they move
    to [task] (bert_binary_head as task.pair "sop" / "none") where the kind's task has them and are
    dropped otherwise.

    Any format: [model] and [task] keys added since the run was saved take their defaults, which
    are what the code did before the key existed (so the resume check sees no difference).
    """
    run = {k: dict(v) for k, v in run.items() if isinstance(v, dict)}
    _format_1_to_2(run)
    model = run.setdefault("model", {})
    for f in dataclasses.fields(ModelConfig):
        model.setdefault(f.name, f.default)
    kind = KINDS.get(model["model_type"])
    if kind is not None:
        for f in dataclasses.fields(kind.task.options):
            if f.default is not dataclasses.MISSING:
                run["task"].setdefault(f.name, f.default)
    return run


def _format_1_to_2(run: dict) -> None:
    if "task" not in run:
        model, data = run.setdefault("model", {}), run.setdefault("data", {})
        head = model.pop("bert_binary_head", None)
        moved = {"pair": None if head is None else ("sop" if head else "none"),
                 "masking_probability": data.pop("masking_probability", None),
                 "short_seq_prob": data.pop("short_seq_prob", None)}
        kind = KINDS.get(model.get("model_type", "gpt"))
        known = {f.name for f in dataclasses.fields(kind.task.options)} if kind else set()
        run["task"] = {k: v for k, v in moved.items() if v is not None and k in known}


def from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig saved by resolved_dict, of any CONFIG_FORMAT (no preset re-application)."""
    d = {k: v for k, v in migrate(d).items() if k in SECTIONS}
    d["model"]["preset"] = None
    return build_config(d)
