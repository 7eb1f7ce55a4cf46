"""Run config and DeepSpeed JSON: precedence, presets, and every config error's message."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest

from mtds.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    build_config,
    check_vocab,
    from_dict,
    load_file,
    parse_overrides,
    resolved_dict,
)
from mtds.ds_config import load_ds_config, precision, resolve_ds_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def errors_of(**sections) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(overrides=sections)
    return str(e.value)


# -- precedence and presets -------------------------------------------------------------------
def test_precedence_cli_over_file_over_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\npreset = "gpt-125m"\nnum_layers = 6\n[training]\ntrain_iters = 50\n')
    cfg = build_config(load_file(str(path)), parse_overrides(["--model.num_layers=3"]))
    assert cfg.model.num_layers == 3  # CLI beats file
    assert cfg.model.hidden_size == 768  # preset fills what the file leaves out
    assert cfg.training.train_iters == 50  # file beats default


def test_override_forms_parse():
    assert parse_overrides(["--model.num_layers=3", "--data.split", "98,1,1", "training.seed=5"]) == {
        "model": {"num_layers": "3"}, "data": {"split": "98,1,1"}, "training": {"seed": "5"}}


def test_override_without_section_is_an_error():
    with pytest.raises(ConfigError, match=r"name the section, e.g. --training.train_iters"):
        parse_overrides(["--train-iters=5"])


@pytest.mark.parametrize("name,layers,hidden,heads", [
    ("gpt-125m", 12, 768, 12), ("gpt-350m", 24, 1024, 16), ("gpt-1.3b", 24, 2048, 16), ("bert-base", 12, 768, 12)])
def test_presets_shapes(name, layers, hidden, heads):
    m = build_config(overrides={"model": {"preset": name}}).model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (layers, hidden, heads)


def test_ffn_and_vocab_derivation():
    assert ModelConfig(hidden_size=768, activation="gelu").ffn_size() == 3072
    assert ModelConfig(hidden_size=768, activation="swiglu").ffn_size() == 2048  # 8/3*768, multiple of 64
    assert ModelConfig().padded_vocab_size(8195) == 8320  # up to a multiple of 128


def test_resolved_config_round_trips():
    cfg = build_config(overrides={"model": {"preset": "gpt-125m", "num_query_groups": "4"}})
    again = from_dict(json.loads(json.dumps(resolved_dict(cfg))))
    cfg.model.preset = None  # the saved config is already resolved; the preset is not re-applied
    assert again == cfg


def test_every_shipped_run_config_loads():
    paths = glob.glob(os.path.join(ROOT, "mtds", "configs", "*.toml"))
    assert paths, "mtds/configs/ should ship example run configs"
    for path in paths:
        build_config(load_file(path))


# -- run-config errors ------------------------------------------------------------------------
def test_unknown_key_suggests_the_right_one():
    assert "unknown key model.num_layer (did you mean 'num_layers'?)" in errors_of(model={"num_layer": 4})


def test_unknown_section_suggests():
    assert "unknown section 'trainig' (did you mean 'training'?)" in errors_of(trainig={"x": 1})


def test_wrong_type_names_key_and_type():
    assert "model.num_layers: expected int, got 'four'" in errors_of(model={"num_layers": "four"})
    assert "training.progress_bar: expected bool or none, got 'maybe'" in errors_of(training={"progress_bar": "maybe"})


def test_all_problems_reported_together():
    msg = errors_of(model={"num_layer": 4, "hidden_size": "x"})
    assert "num_layer" in msg and "model.hidden_size: expected int" in msg
    assert "\n" not in msg


def test_seq_length_over_model_maximum():
    msg = errors_of(data={"seq_length": 4096}, model={"preset": "gpt-125m"})
    assert "data.seq_length=4096 exceeds model.max_position_embeddings=2048" in msg


def test_unknown_preset():
    assert "unknown preset 'gpt-125M' (did you mean 'gpt-125m'?)" in errors_of(model={"preset": "gpt-125M"})


def test_bad_choices_and_shapes():
    assert "model.normalization='BatchNorm': choose one of RMSNorm, LayerNorm" in errors_of(model={"normalization": "BatchNorm"})
    assert "must be divisible by model.num_attention_heads=5" in errors_of(model={"num_attention_heads": 5})
    assert "divisible by model.num_query_groups=3" in errors_of(model={"num_query_groups": 3})
    assert "training.compile='true': choose one of none, layers, model" in errors_of(training={"compile": "true"})


def test_valid_paths_need_training_paths():
    assert "data.valid_paths needs data.paths" in errors_of(data={"valid_paths": ["data/v_text_document"]})


def test_data_errors():
    assert "data.weights has 1 entries for 2 data.paths" in errors_of(
        data={"paths": "a b", "weights": "1", "tokenizer_model": "t.model"})
    assert "data.weights: expected float, got 'heavy'" in errors_of(data={"paths": "a", "weights": "heavy"})
    assert "data.tokenizer_model: required when data.paths is set" in errors_of(data={"paths": "a"})
    assert "data.split='90,10': give three non-negative" in errors_of(data={"split": "90,10"})
    assert "data.split='a,b,c'" in errors_of(data={"split": "a,b,c"})


def test_train_length_exclusive_and_a_token_budget_alone_replaces_the_default_steps():
    assert "set exactly one of train_iters and train_tokens" in errors_of(training={"train_tokens": 1000,
                                                                                   "train_iters": 10})
    assert "set exactly one of train_iters and train_tokens" in errors_of(training={"train_iters": "none"})
    alone = build_config(None, {"training": {"train_tokens": "153600"}}).training
    assert (alone.train_iters, alone.train_tokens) == (None, 153600)
    assert build_config(None, {"training": {"train_tokens": "none"}}).training.train_iters == 300


def test_vocab_smaller_than_tokenizer():
    cfg = build_config(overrides={"model": {"vocab_size": 1000}})
    with pytest.raises(ConfigError, match=r"model.vocab_size=1000 is smaller than the tokenizer's 8192 \(tok.model\)"):
        check_vocab(cfg, 8192, "tok.model")


def test_missing_and_unparsable_run_config(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: run config not found"):
        load_file(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse run config"):
        load_file(str(bad))


# -- DeepSpeed JSON ---------------------------------------------------------------------------
def resolve(raw, world=1, iters=100, cuda=False, log=None, native_bf16=True):
    return resolve_ds_config(raw, "ds.json", world, iters, cuda, log=log or (lambda *_: None),
                             cpu_native_bf16=native_bf16)


def test_every_shipped_ds_config_resolves():
    paths = glob.glob(os.path.join(ROOT, "ds_configs", "*.json"))
    assert len(paths) >= 6
    for path in paths:
        cfg = resolve(load_ds_config(path), world=2, iters=1000)
        assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 2


def test_train_batch_size_is_derived():
    cfg = resolve({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3}, world=2)
    assert cfg["train_batch_size"] == 24


def test_batch_sizes_disagreeing_with_world_size():
    with pytest.raises(ConfigError, match=r"train_batch_size=32 disagrees with train_micro_batch_size_per_gpu=4 x "
                                          r"gradient_accumulation_steps=2 x data-parallel size 2 = 16; remove train_batch_size"):
        resolve({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, world=2)
    with pytest.raises(ConfigError, match="train_batch_size=10 is not divisible by gradient_accumulation_steps=1 x data-parallel size 4"):
        resolve({"train_batch_size": 10}, world=4)
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=0 must be a positive integer"):
        resolve({"train_micro_batch_size_per_gpu": 0})


def test_typo_in_deepspeed_key():
    with pytest.raises(ConfigError, match="ds.json: unknown key 'zero_optimisation' \\(did you mean 'zero_optimization'\\?\\)"):
        resolve({"train_micro_batch_size_per_gpu": 1, "zero_optimisation": {"stage": 2}})


def test_fp16_on_cpu_becomes_bf16_with_one_line():
    lines = []
    cfg = resolve({"train_micro_batch_size_per_gpu": 1, "fp16": {"enabled": True}}, log=lines.append)
    assert precision(cfg) == "bf16"
    assert lines == ["note: ds.json asks for fp16, which DeepSpeed refuses on CPU; training in bf16 instead"]
    assert precision(resolve({"train_micro_batch_size_per_gpu": 1, "fp16": {"enabled": True}}, cuda=True)) == "fp16"


def test_bf16_on_a_cpu_without_native_bf16_becomes_fp32_with_one_line():
    lines = []
    cfg = resolve({"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}}, log=lines.append,
                  native_bf16=False)
    assert precision(cfg) == "fp32"
    assert lines == ["note: this CPU has no bf16 instructions (bf16 matmuls would be emulated, tens of times "
                     "slower); training in fp32 instead of the bf16 ds.json asks for"]
    assert precision(resolve({"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}})) == "bf16"  # native
    assert precision(resolve({"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}}, cuda=True,
                             native_bf16=False)) == "bf16"  # GPUs are not asked


def test_the_bf16_check_reads_this_cpus_flags_and_answers_the_same_every_time():
    from mtds.cpu_compat import _linux_cpu_flags, has_native_bf16

    answers = {has_native_bf16() for _ in range(20)}
    assert len(answers) == 1
    flags = _linux_cpu_flags("flags")
    if flags:  # x86 Linux: torch's answer agrees with the kernel's flags
        assert answers.pop() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_scheduler_total_steps_filled_and_checked():
    raw = {"train_micro_batch_size_per_gpu": 1,
           "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 10, "total_num_steps": "auto"}}}
    assert resolve(raw, iters=500)["scheduler"]["params"]["total_num_steps"] == 500
    with pytest.raises(ConfigError, match="warmup_num_steps=10 >= total_num_steps=5"):
        resolve(raw, iters=5)


def test_missing_and_invalid_ds_json(tmp_path):
    with pytest.raises(ConfigError, match="--deepspeed-config is required"):
        load_ds_config(None)
    with pytest.raises(ConfigError, match="missing.json: DeepSpeed config not found"):
        load_ds_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{'stage': 2}")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_ds_config(str(bad))


def test_presets_table_is_complete():
    for needed in ("tiny", "gpt-125m", "gpt-350m", "gpt-1.3b", "bert-tiny", "bert-base", "bert-large"):
        assert needed in PRESETS


# -- the run config on the command line (mtds/config_cli.py) ---------------------------------------
def test_help_lists_every_run_config_key_with_its_default_and_docstring(capsys):
    """`mtds/pretrain.py --help` shows every key of [model], [data], [training] and of every task's
    [task], generated from the dataclasses, so a new key cannot be missing from it."""
    import dataclasses

    from mtds.config import DataConfig, ModelConfig, TrainingConfig
    from mtds.config_cli import field_docs
    from mtds.kinds import KINDS
    from mtds.pretrain import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    sections = [("model", ModelConfig), ("data", DataConfig), ("training", TrainingConfig),
                *(("task", k.task.options) for k in KINDS.values())]
    for section, cls in sections:
        for f in dataclasses.fields(cls):
            assert f"  --{section}.{f.name}  (" in out, f"--help lacks {section}.{f.name}"
    doc = field_docs(TrainingConfig)["keep_last"]
    assert " ".join(doc.split()[:6]) in " ".join(out.split())  # its docstring, wrapped
    assert "--training.train_iters  (int | None, default" in out and "[task] of masked_lm (model_type bert)" in out


@pytest.mark.parametrize("argv", [["--model-type", "bert", "--training.train_iters=7", "--data.seed=9"],
                                  ["--model.preset=gpt-125m", "--task.eod_mask_loss=true", "--data.split=90,10,0"],
                                  ["--model-type", "t5"]], ids=["bert", "gpt-125m", "t5"])
def test_print_config_round_trips_through_config(argv, capsys, tmp_path):
    """`--print-config` prints the resolved config as TOML and starts nothing; given back as
    `--config`, it resolves to the same config."""
    from mtds.config_cli import parse_args
    from mtds.pretrain import main

    assert main([*argv, "--print-config"]) == 0
    toml = capsys.readouterr().out
    (tmp_path / "run.toml").write_text(toml)
    assert parse_args(["--config", str(tmp_path / "run.toml")])[1] == parse_args(argv)[1]
    assert not (tmp_path / "runs").exists()


def test_a_deepspeed_json_key_overridden_on_the_command_line_is_the_lr_the_engine_uses(tiny_data, tmp_path,
                                                                                       world_of_one, monkeypatch):
    """`--ds.optimizer.params.lr=2e-5 --ds.scheduler.params.warmup_num_steps=1`: the engine's first
    step runs at 2e-5 (the shipped zero2.json says 1e-3 and a 30-step warmup)."""
    from mtds.config_cli import parse_args
    from mtds.train.engine import build_engine
    from mtds.train.plan import plan_run

    monkeypatch.setenv("LOCAL_RANK", "0")
    args, cfg = parse_args(["--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"],
                            "--data.split=90,10,0", "--run-dir", str(tmp_path / "run"), "--model.preset=none",
                            "--model.num_layers=1", "--model.hidden_size=64", "--model.num_attention_heads=2",
                            "--ds.optimizer.params.lr=2e-5", "--ds.scheduler.params.warmup_num_steps=1"])
    assert args.ds_overrides == {"optimizer.params.lr": "2e-5", "scheduler.params.warmup_num_steps": "1"}
    plan = plan_run(cfg, os.path.join(ROOT, "ds_configs", "zero2.json"), lambda *a: None, args.ds_overrides)
    assert plan.ds_cfg["optimizer"]["params"]["lr"] == 2e-5
    engine, _, _ = build_engine(cfg, cfg.kind, plan.ds_cfg, 512, False, log=lambda *a: None)
    assert engine.get_lr()[0] == pytest.approx(2e-5)


@pytest.mark.parametrize("override,message", [
    ({"optimizer.params.lrr": "1"}, "--ds.optimizer.params.lrr: ds.json has no optimizer.params.lrr "
                                    "(did you mean optimizer.params.lr?)"),
    ({"optimiser.params.lr": "1"}, "--ds.optimiser.params.lr: ds.json has no object optimiser; override only keys "
                                   "of objects it has"),
])
def test_a_mistyped_deepspeed_override_is_one_line(override, message):
    from mtds.ds_config import apply_overrides

    with pytest.raises(ConfigError) as e:
        apply_overrides({"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}, override, "ds.json")
    assert str(e.value) == message


# GPT-3 (Brown et al. 2020), table 2.1: batch in tokens and peak LR per size; appendix B: warmup
# over the first 375M tokens, cosine decay to 10% of the peak, Adam 0.9/0.95, weight decay 0.1.
GPT3_TABLE = {"125m": (2**19, 6.0e-4), "350m": (2**19, 3.0e-4), "1.3b": (2**20, 2.0e-4)}


@pytest.mark.parametrize("size", sorted(GPT3_TABLE))
def test_size_recipes_follow_the_gpt3_paper(size):
    """ds_configs/gpt3_<size>.json + mtds/configs/gpt_<size>.toml: the paper's global batch in tokens
    at every world size (accumulation derived from the global batch and the micro-batch), its LR,
    warmup within one step of 375M tokens, the preset of that size at seq 2048, and the toml names
    its JSON."""
    tokens_per_step, lr = GPT3_TABLE[size]
    ds_path = os.path.join(ROOT, f"ds_configs/gpt3_{size}.json")
    toml_path = os.path.join(ROOT, f"mtds/configs/gpt_{size}.toml")
    run = load_file(toml_path)
    assert run["model"]["preset"] == f"gpt-{size}" and run["data"]["seq_length"] == 2048
    assert f"--deepspeed-config ds_configs/gpt3_{size}.json --config mtds/configs/gpt_{size}.toml" in Path(toml_path).read_text()
    raw = load_ds_config(ds_path)
    for world in (1, 8, 64):
        cfg = resolve_ds_config(raw, ds_path, world, run["training"]["train_iters"], cuda_available=True, log=lambda *_: None)
        assert cfg["train_batch_size"] * 2048 == tokens_per_step
        assert cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world == cfg["train_batch_size"]
    params = cfg["optimizer"]["params"]
    assert (params["lr"], params["betas"], params["weight_decay"], cfg["gradient_clipping"]) == (lr, [0.9, 0.95], 0.1, 1.0)
    sched = cfg["scheduler"]["params"]
    assert abs(sched["warmup_num_steps"] * tokens_per_step - 375e6) <= tokens_per_step / 2
    assert (sched["decay_style"], sched["min_lr_ratio"], sched["total_num_steps"]) == (
        "cosine", 0.1, run["training"]["train_iters"])
    assert precision(cfg) == "bf16" and cfg["zero_optimization"]["stage"] == 2


def test_a_global_batch_the_ranks_cannot_split_is_one_line():
    raw = {"train_batch_size": 256, "train_micro_batch_size_per_gpu": 8}
    assert resolve_ds_config(raw, "r.json", 4, 10, True)["gradient_accumulation_steps"] == 8
    with pytest.raises(ConfigError, match=r"^r\.json: train_batch_size=256 is not a multiple of "
                                          r"train_micro_batch_size_per_gpu=8 x data-parallel size 3; change"):
        resolve_ds_config(raw, "r.json", 3, 10, True)


def test_cpu_info_is_asked_once_per_cpu_type_and_kept_beside_the_op_cache(tmp_path):
    """DeepSpeed's CPU op loader asks py-cpuinfo (~1.1 s) in every process; mtds keeps the answer in
    a file named by the CPU's identity lines: a second process reads it, another CPU type asks again,
    and the clock speed changing is still the same CPU."""
    from mtds.cpu_compat import cpu_info_kept

    asked = []

    def ask():
        asked.append(1)
        return {"arch": "X86_64", "flags": ["avx2"], "n": len(asked)}

    proc = tmp_path / "cpuinfo"
    proc.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: EPYC\ncpu MHz\t\t: 2450.0\n"
                    "flags\t\t: fpu avx2\n\nprocessor\t: 1\n")
    first = cpu_info_kept(ask, str(tmp_path / "ops"), str(proc))
    proc.write_text(proc.read_text().replace("2450.0", "3100.5"))
    assert cpu_info_kept(ask, str(tmp_path / "ops"), str(proc)) == first and len(asked) == 1
    proc.write_text(proc.read_text().replace("fpu avx2", "fpu avx2 avx512f"))
    assert cpu_info_kept(ask, str(tmp_path / "ops"), str(proc))["n"] == 2
    assert len(list((tmp_path / "ops").glob("mtds_cpuinfo_*.json"))) == 2
    assert cpu_info_kept(ask, str(tmp_path / "ops"), str(tmp_path / "no_proc")) == {**first, "n": 3}
