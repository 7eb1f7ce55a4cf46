"""LoRA fine-tuning (training.lora_*, mtds/models/lora.py), issue #26.

One base run (2 steps, full training) and one LoRA run on it (4 steps, checkpoints at 2 and 4), both
1 rank, ZeRO-2, fp32, torch Adam, for the whole module; the exports, the resume and the refusals
run against their checkpoints (the refusals end in the config checks, before DeepSpeed starts)."""

from __future__ import annotations

import pytest
import torch

from helpers import call, missing, ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

TAG2, TAG4 = "iter_0000002", "iter_0000004"
LORA = ["--training.lora_rank=4", "--training.lora_alpha=8", "--training.eval_interval=100"]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """(base run dir, LoRA run dir, DeepSpeed JSON): the module's two training runs."""
    tmp = tmp_path_factory.mktemp("lora")
    ds = write_ds_config(str(tmp / "ds.json"), stage=2, micro=2, precision="fp32", torch_adam=True, lr=1e-2)
    base, lora = tmp / "base", tmp / "lora"
    ok(run_pretrain(tiny_gpt_args(tiny_data, base, ds, "--training.train_iters=2", "--training.eval_interval=100")))
    out = ok(run_pretrain(tiny_gpt_args(tiny_data, lora, ds, *LORA, f"--training.init_from={base}",
                                        "--training.train_iters=4", "--training.save_interval=2")))
    assert "LoRA: rank 4 adapters on 8 layers" in out.stdout
    return base, lora, ds


def state(run, tag=None, merge=True) -> dict[str, torch.Tensor]:
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config
    from mtds.load_trained import find_checkpoint

    ckpt = find_checkpoint(str(run), tag)
    return consolidated_state_dict(ckpt, read_config(ckpt), merge_lora=merge)


def logits(model, ids):
    with torch.no_grad():
        return model(ids, torch.arange(ids.size(1)).unsqueeze(0), None)


IDS = torch.tensor([[5, 17, 99, 3, 250, 42, 7, 301, 12, 77, 8, 150]])


@pytest.mark.slow
def test_checkpoints_hold_the_adapters_and_a_pointer_to_the_base(runs):
    """The module states hold only the adapters (every B changed from zero), the optimizer only
    their moments; the record points at the base's checkpoint, and the tools' merged weights are
    base + (alpha / r) B A, the base's tensors its own."""
    from mtds.ckpt.layout import read_config
    from mtds.ckpt.manifest import hash_file

    base, lora, _ = runs
    ckpt = lora / "checkpoints" / TAG4
    saved = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    module = {k: v for k, v in saved.items() if not k.endswith("_extra_state")}  # megatron's TE slots, not weights
    assert len(module) == 16 and all(".lora_" in k for k in module)
    optim = torch.load(next(ckpt.glob("*optim_states.pt")), weights_only=False)["optimizer_state_dict"]
    assert sum(t.numel() for t in optim["single_partition_of_fp32_groups"]) == sum(v.numel() for v in module.values())
    base_ckpt = base / "checkpoints" / TAG2
    assert read_config(str(ckpt))["lora_base"] == {"run_dir": str(base), "tag": TAG2,
                                                   "manifest_xxh3_128": hash_file(str(base_ckpt / "manifest.json"))["xxh3_128"],
                                                   "left_out": []}
    before, unmerged, merged = state(base), state(lora, merge=False), state(lora)
    assert unmerged.keys() - before.keys() == set(module) and merged.keys() == before.keys()
    assert all(module[k].abs().max() > 0 for k in module if k.endswith("lora_B.weight"))
    for k in before:
        layer = k[: -len(".weight")]
        if layer + ".lora_A.weight" in module:
            b_a = unmerged[layer + ".lora_B.weight"] @ unmerged[layer + ".lora_A.weight"]
            assert torch.equal(merged[k], before[k] + 2.0 * b_a)  # alpha / r = 8 / 4
        else:
            assert torch.equal(merged[k], before[k])


@pytest.mark.slow
def test_step_zero_is_the_base_bit_for_bit(runs):
    """Adapters on the base's weights, before any step: the same logits, bitwise (B is zero)."""
    from types import SimpleNamespace

    from mtds.load_trained import load_trained
    from mtds.models.lora import apply_lora

    base, _, _ = runs
    run = load_trained(str(base))
    want = logits(run.model, IDS)
    n = apply_lora(run.model, SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
                                              lora_targets=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]),
                   log=lambda line: None)
    assert n > 0 and not any(p.requires_grad for name, p in run.model.named_parameters() if ".lora_" not in name)
    assert torch.equal(logits(run.model, IDS), want)


@pytest.mark.slow
def test_resume_is_exact(runs, tiny_data, tmp_path):
    """Resumed from iter_0000002 into a new run dir: steps 3-4 are the LoRA run's own, the same
    floats, and so are its final adapters."""
    _, lora, ds = runs
    again = tmp_path / "again"
    ok(run_pretrain(tiny_gpt_args(tiny_data, again, ds, *LORA, f"--training.init_from={runs[0]}",
                                  "--training.train_iters=4", f"--training.load={lora}", f"--training.load_tag={TAG2}")))
    theirs, ours = scalars(str(lora)), scalars(str(again))
    assert sorted(ours["train/loss"]) == sorted(theirs["train/loss"])[2:]
    a, b = state(lora, TAG4, merge=False), state(again, TAG4, merge=False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_peft_adapter_and_merged_export_give_mtds_logits(runs, tmp_path, capsys):
    """`--lora-adapter`: the exported base + peft's PeftModel give the logits of mtds's LoRA model
    (load_trained: adapters merged); the plain export (merged weights) gives them too. fp32, 1e-5."""
    try:
        from peft import PeftModel
    except ImportError:
        missing("peft is not installed (pip install -e .[test])")
    from transformers import AutoModelForCausalLM

    from mtds.export_hf import main
    from mtds.load_trained import load_trained

    _, lora, _ = runs
    ours = logits(load_trained(str(lora)).model, IDS)
    assert call(main, ["--load", str(lora), "--out", str(tmp_path / "base"), "--lora-adapter",
                       str(tmp_path / "adapter")], capsys)[0] == 0
    assert call(main, ["--load", str(lora), "--out", str(tmp_path / "merged")], capsys)[0] == 0
    hf_base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    with torch.no_grad():
        plain = hf_base(IDS).logits
        peft_model = PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
        assert sorted(peft_model.peft_config["default"].target_modules) == [
            "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
        adapted = peft_model(IDS).logits
        merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)(IDS).logits
    assert (plain - ours).abs().max() > 1e-3  # the adapters matter at this size
    torch.testing.assert_close(adapted, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flags, expected", [
    (["--training.lora_rank=4"], "training.lora_rank=4 needs training.init_from"),
    (["--training.lora_rank=4", "--training.init_from=x", "--training.lora_targets=linear_qkv,q_proj"],
     "training.lora_targets: q_proj is not a layer LoRA wraps; choose among linear_qkv, linear_proj, linear_fc1, linear_fc2"),
    (["--training.lora_rank=4", "--training.init_from=x", "--model.tensor_model_parallel_size=2"],
     "training.lora_rank=4: LoRA runs without tensor parallelism; set model.tensor_model_parallel_size=1"),
    (["--training.lora_rank=4", "--training.init_from=x", "--model.model_type=gpt_plm"],
     "training.lora_rank=4: LoRA covers model_type gpt, gpt_sft, bert_cls, not 'gpt_plm'"),
])
def test_bad_lora_settings_are_one_line_errors(tiny_data, tmp_path, capsys, flags, expected):
    from mtds.pretrain import main

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, precision="fp32")
    rc, _, err = call(main, tiny_gpt_args(tiny_data, tmp_path / "run", ds, *flags), capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_changed_or_missing_base_is_one_line(runs, capsys):
    """The tools refuse a LoRA run whose base checkpoint changed or is gone (restored afterwards)."""
    from mtds.generate import main

    base, lora, _ = runs
    listed = base / "checkpoints" / TAG2 / "manifest.json"
    original = listed.read_bytes()
    try:
        listed.write_bytes(original + b" ")
        rc, _, err = call(main, ["--load", str(lora), "--prompt", "a", "--max-new-tokens", "1"], capsys)
        assert rc == 2 and err.strip().splitlines()[-1].startswith(f"error: {lora / 'checkpoints' / TAG4}: its base "
                                                                   f"checkpoint {base / 'checkpoints' / TAG2} changed")
        listed.unlink()
        rc, _, err = call(main, ["--load", str(lora), "--prompt", "a", "--max-new-tokens", "1"], capsys)
        assert rc == 2 and err.strip().splitlines()[-1].endswith("is gone; restore it (the adapters alone are no model)")
    finally:
        listed.write_bytes(original)
