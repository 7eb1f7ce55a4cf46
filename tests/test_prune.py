"""Structured pruning (mtds.prune, issue #26): depth, FFN width, heads and hidden size of a GPT run into a new run dir.

One training run for the whole module (`parent`: 1 rank, ZeRO-0, fp32, 3 layers, 4 heads in 2 query
groups, SwiGLU, 4 steps); the pruning itself runs in this process against its checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import call, ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

SHAPE = ("--model.num_layers=3", "--model.num_attention_heads=4", "--model.num_query_groups=2")
FFN = 192  # SwiGLU's derived size at hidden 64: ceil(8 * 64 / 3 / 64) * 64


def args_for(tiny_data, run_dir, ds, *extra):
    return tiny_gpt_args(tiny_data, run_dir, ds, "--training.eval_interval=100", "--data.num_workers=0", *extra)


@pytest.fixture(scope="module")
def parent(tiny_data, tmp_path_factory):
    """(run dir, DeepSpeed JSON) of the module's one training run."""
    tmp = tmp_path_factory.mktemp("prune_parent")
    ds = write_ds_config(str(tmp / "ds.json"), stage=0, micro=2, precision="fp32", torch_adam=True)
    ok(run_pretrain(args_for(tiny_data, tmp / "run", ds, "--training.train_iters=4", *SHAPE)))
    return tmp / "run", ds


def prune_main():
    from mtds.prune import main

    return main


def run_pretrain_main():
    from mtds.pretrain import main

    return main


def assert_sliced_model_is_the_pruned_one(parent_ckpt, state: dict, pruned, **shape) -> None:
    """The parent's model at the pruned `shape` ([model] fields), loaded with the test's own slicing `state`,
    gives the pruned run's logits bit for bit."""
    import dataclasses

    from mtds.ckpt.layout import read_config
    from mtds.kinds import build_model
    from mtds.load_trained import load_weights, saved_run_config

    cfg = saved_run_config(read_config(str(parent_ckpt)))
    mine = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **shape)), pruned.vocab_size,
                       "fp32", on_gpu=False)
    load_weights(mine, state, "test")
    mine.eval()
    tokens = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        assert torch.equal(mine(tokens, positions, None), pruned.model(tokens, positions, None))


def weights(run_dir) -> dict[str, torch.Tensor]:
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config
    from mtds.load_trained import find_checkpoint

    ckpt = find_checkpoint(str(run_dir))
    return consolidated_state_dict(ckpt, read_config(ckpt))


def test_pruning_to_its_own_size_is_the_original_bit_for_bit(parent, tmp_path, capsys):
    run, _ = parent
    out = tmp_path / "same"
    rc, _, err = call(prune_main(), ["--load", str(run), "--out", str(out), "--num-layers", "3",
                                     "--ffn-hidden-size", str(FFN), "--num-attention-heads", "4",
                                     "--num-query-groups", "2", "--hidden-size", "64", "--calibration-batches",
                                     "1"], capsys)
    assert rc == 0, err
    a, b = weights(run), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_pruned_model_is_the_originals_weights_sliced_by_the_recorded_indices(parent, tmp_path, capsys):
    """Depth 3 -> 2, FFN 192 -> 64, query groups 2 -> 1 with 2 of its 2 heads: the checkpoint loads strictly into a model of its recorded shape,
    the kept layers are the ones with the highest recorded scores, and its first forward equals that of
    a model the test builds itself from the parent's tensors (index_select by the recorded indices)."""
    from mtds.load_trained import find_checkpoint, load_trained

    run, _ = parent
    out = tmp_path / "small"
    rc, _, err = call(prune_main(), ["--load", str(run), "--out", str(out), "--num-layers", "2",
                                     "--ffn-hidden-size", "64", "--num-query-groups", "1", "--num-attention-heads",
                                     "2", "--calibration-batches", "2"], capsys)
    assert rc == 0, err
    pruned = load_trained(str(out))  # strict: its config matches its tensors
    record = pruned.saved
    assert {k: record["run"]["model"][k] for k in ("num_layers", "ffn_hidden_size", "num_attention_heads",
                                                   "num_query_groups", "kv_channels")} == {
        "num_layers": 2, "ffn_hidden_size": 64, "num_attention_heads": 2, "num_query_groups": 1, "kv_channels": 16}
    assert json.loads((out / "config.json").read_text())["pruned_from"] == record["pruned_from"]
    info = record["pruned_from"]
    parent_ckpt = find_checkpoint(str(run))
    from mtds.ckpt.manifest import hash_file

    assert info["tag"] == "iter_0000004"
    assert info["manifest_xxh3_128"] == hash_file(f"{parent_ckpt}/manifest.json")["xxh3_128"]
    scores = info["importance"]["layer_scores"]
    assert len(scores) == 3 and all(0 <= s <= 2 for s in scores)
    kept = info["kept"]["layers"]
    assert kept == sorted(sorted(range(3), key=lambda i: -scores[i])[:2]) and info["removed"]["layers"] == [
        i for i in range(3) if i not in kept]
    neurons = info["kept"]["ffn_neurons"]
    assert [len(n) for n in neurons] == [64, 64] and all(n == sorted(set(n)) for n in neurons)
    groups, heads = info["kept"]["query_groups"], info["kept"]["query_heads"]
    for layer, g, h in zip(kept, groups, heads):  # the better group by the sum of its heads' scores
        s = info["importance"]["head_scores"][layer]
        assert g == [int(s[2] + s[3] > s[0] + s[1])] and h == [2 * g[0], 2 * g[0] + 1]

    # The test's own slicing of the parent's saved tensors.
    original = weights(run)
    state = {k: v for k, v in original.items() if not k.startswith("decoder.layers.")}
    for new, (old, keep, group, head) in enumerate(zip(kept, neurons, groups, heads)):
        keep = torch.tensor(keep)
        for k, v in original.items():
            prefix = f"decoder.layers.{old}."
            if not k.startswith(prefix):
                continue
            name = k[len(prefix):]
            if name == "mlp.linear_fc1.weight":  # [gate F; up F] rows
                gate, up = v.chunk(2, dim=0)
                v = torch.cat([gate.index_select(0, keep), up.index_select(0, keep)])
            elif name == "mlp.linear_fc2.weight":
                v = v.index_select(1, keep)
            elif name == "self_attention.linear_qkv.weight":  # rows [group 2, (q 2, k, v) 4, head_dim 16]
                v = v.reshape(2, 4, 16, 64)[group[0]].reshape(-1, 64)  # both q heads of the group, its k and v
            elif name == "self_attention.linear_proj.weight":  # columns [head 4, head_dim 16]
                v = v.reshape(64, 4, 16).index_select(1, torch.tensor(head)).reshape(64, -1)
            state[f"decoder.layers.{new}.{name}"] = v
    assert_sliced_model_is_the_pruned_one(parent_ckpt, state, pruned, num_layers=2, ffn_hidden_size=64,
                                          num_attention_heads=2, num_query_groups=1, kv_channels=16)


def test_hidden_size_pruning_slices_the_residual_stream_by_the_recorded_channels(parent, tmp_path, capsys):
    """Depth 3 -> 2 with hidden 64 -> 40: the kept channels are the 40 best recorded scores, and the first
    forward equals that of a model the test builds from the parent's tensors, each sliced by hand along its
    residual-stream dimension (the norms then normalize over 40 channels in both)."""

    from mtds.load_trained import find_checkpoint, load_trained

    run, _ = parent
    out = tmp_path / "narrow"
    rc, _, err = call(prune_main(), ["--load", str(run), "--out", str(out), "--num-layers", "2", "--hidden-size",
                                     "40", "--calibration-batches", "2"], capsys)
    assert rc == 0, err
    pruned = load_trained(str(out))  # strict: its config matches its tensors
    model = pruned.saved["run"]["model"]
    assert (model["hidden_size"], model["ffn_hidden_size"], model["kv_channels"]) == (40, FFN, 16)  # pinned
    info = pruned.saved["pruned_from"]
    scores, keep = info["importance"]["hidden_scores"], info["kept"]["hidden_channels"]
    assert len(scores) == 64 and all(s > 0 for s in scores) and info["removed"]["hidden_channels"] == 24
    assert keep == sorted(sorted(range(64), key=lambda c: (-scores[c], c))[:40])

    keep, layers = torch.tensor(keep), info["kept"]["layers"]
    columns = ("embedding.word_embeddings.weight", "output_layer.weight", "self_attention.linear_qkv.weight",
               "mlp.linear_fc1.weight")  # [.., h]: the residual stream is their input
    rows = ("input_layernorm.weight", "pre_mlp_layernorm.weight", "decoder.final_layernorm.weight",
            "self_attention.linear_proj.weight", "mlp.linear_fc2.weight")  # [h] or [h, ..]: their output
    state = {}
    for key, v in weights(run).items():
        name = key.split(".", 3)[-1] if key.startswith("decoder.layers.") else key
        if key.startswith("decoder.layers."):
            old = int(key.split(".")[2])
            if old not in layers:
                continue
            key = f"decoder.layers.{layers.index(old)}.{name}"
        assert name in columns + rows, name  # every tensor of this model touches the residual stream
        state[key] = v[:, keep] if name in columns else v[keep]
    assert_sliced_model_is_the_pruned_one(find_checkpoint(str(run)), state, pruned, num_layers=2, hidden_size=40,
                                          ffn_hidden_size=FFN, kv_channels=16)


def test_hidden_slicing_covers_biases_layernorm_learned_positions_and_tied_embeddings():
    """The architecture switches the module run does not train: LayerNorm (weight and bias), biases on every
    linear layer, learned positions and a tied output layer. hidden_sliced equals the test's own slicing of a
    fresh model's tensors, which loads strictly into the same model built at the smaller width."""
    from helpers import tiny_cfg

    from mtds.kinds import build_model
    from mtds.load_trained import load_weights
    from mtds.parallel.process_groups import init_distributed
    from mtds.prune import hidden_sliced

    init_distributed()
    arch = dict(normalization="LayerNorm", add_bias_linear=True, position_embedding_type="learned_absolute",
                tie_embeddings=True, activation="gelu", ffn_hidden_size=256, kv_channels=24)  # no [h, h] tensor
    state = {k: v for k, v in build_model(tiny_cfg(**arch), 512, "fp32", False).state_dict().items()
             if not k.endswith("_extra_state")}
    keep = torch.tensor([1, 2, 3, 5, 8, 13, 21, 34, 55, 63])
    h = 64
    mine = {}
    for k, v in state.items():
        if k.endswith(("linear_qkv.bias", "linear_fc1.bias")):  # rows: heads, neurons
            mine[k] = v
        elif v.dim() == 2 and v.shape[1] == h:  # embeddings [V or P, h], linear_qkv / linear_fc1 [out, h]
            mine[k] = v[:, keep]
        else:  # norms, linear_proj / linear_fc2 [h, in] and their biases [h]
            assert v.shape[0] == h, k
            mine[k] = v[keep]
    assert "embedding.position_embeddings.weight" in mine and "output_layer.weight" not in mine  # tied
    assert "decoder.layers.0.input_layernorm.bias" in mine and "decoder.layers.0.mlp.linear_fc2.bias" in mine
    theirs = hidden_sliced(state, keep.tolist())
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    load_weights(build_model(tiny_cfg(**arch, hidden_size=10), 512, "fp32", False), theirs, "test")


@pytest.mark.slow
def test_a_pruned_run_trains_via_init_from_resumes_and_exports(parent, tiny_data, tmp_path, capsys):
    """The recovery fine-tune of a model pruned in depth, heads and hidden size (64 -> 48): training.init_from
    the pruned run (its shape on the command line) starts at its weights (step-0 validation = mtds.evaluate
    of the pruned run), trains, stops at step 2 and resumes; the pruned run exports."""
    from mtds import evaluate, export_hf

    run, ds = parent
    pruned, tuned = tmp_path / "pruned", tmp_path / "tuned"
    rc, _, err = call(prune_main(), ["--load", str(run), "--out", str(pruned), "--num-layers", "2",
                                     "--num-attention-heads", "2", "--hidden-size", "48",
                                     "--calibration-batches", "1"], capsys)
    assert rc == 0, err
    rc, stdout, err = call(evaluate.main, ["--load", str(pruned), "--json", "--no-progress"], capsys)
    assert rc == 0, err
    loss = json.loads(stdout)["loss"]
    # the shape comes from the run_config.json prune writes (hidden_size no longer derives the FFN width or the
    # head dimension: it pins both); the module's model flags would override it, so the arguments are spelled out
    shape = ("--deepspeed_config", ds, "--config", str(pruned / "run_config.json"), "--data.paths", tiny_data["prefix"],
             "--data.tokenizer_model", tiny_data["tokenizer_model"], "--data.split=90,10,0", "--run-dir", str(tuned),
             "--training.log_interval=1", "--training.eval_iters=1", "--training.progress_bar=false",
             "--training.eval_interval=100", "--data.num_workers=0", f"--training.init_from={pruned}")
    rc, _, err = call(run_pretrain_main(), [*shape, "--model.num_layers=3", "--training.train_iters=3"], capsys)
    assert rc == 2 and f"(train it with --config {pruned / 'run_config.json'})" in err  # a wrong shape: the hint
    ok(run_pretrain([*shape, "--training.train_iters=3", "--training.exit_interval=2"]))
    val = scalars(str(tuned))["val/loss"]
    assert val[0][0] == 0 and val[0][1] == pytest.approx(loss, rel=1e-6)
    again = ok(run_pretrain([*shape, "--training.train_iters=3", "--load", str(tuned)]))
    assert "resumed from" in again.stdout and "at iteration 2" in again.stdout
    assert [step for step, _ in scalars(str(tuned))["train/loss"]] == [1, 2, 3]
    rc, _, err = call(export_hf.main, ["--load", str(pruned), "--out", str(tmp_path / "hf")], capsys)
    assert rc == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), err
    from transformers import AutoModelForCausalLM  # 2 heads of dimension 16 at width 48: Llama's head_dim

    from mtds.load_trained import load_trained

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ours = load_trained(str(pruned)).model
    tokens = torch.randint(0, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(tokens).logits
        mine = ours(tokens, torch.arange(16).unsqueeze(0), None)
    assert torch.allclose(theirs, mine[..., :theirs.shape[-1]], atol=1e-4)  # fp32, different kernels


def test_bad_pruning_requests_are_one_line_and_write_nothing(parent, tmp_path, capsys):
    import shutil

    run, _ = parent
    out = tmp_path / "out"

    def refused(*argv, load=run) -> str:
        rc, _, err = call(prune_main(), ["--load", str(load), "--out", str(out), *argv], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert not (out / "checkpoints").exists() and not (out / "config.json").exists()
        return lines[0]

    assert refused("--num-layers", "4") == "error: --num-layers 4: the model has 3; give 1..3"
    assert refused("--ffn-hidden-size", "193") == f"error: --ffn-hidden-size 193: the model has {FFN}; give 1..{FFN}"
    assert refused("--num-layers", "0") == "error: --num-layers 0: the model has 3; give 1..3"
    assert refused() == ("error: nothing to prune: give --num-layers, --ffn-hidden-size, --num-attention-heads, "
                         "--num-query-groups and/or --hidden-size")
    assert refused("--hidden-size", "65") == "error: --hidden-size 65: the model has 64; give 1..64"
    assert refused("--hidden-size", "0") == "error: --hidden-size 0: the model has 64; give 1..64"
    assert refused("--num-query-groups", "3") == "error: --num-query-groups 3: the model has 2; give 1..2"
    assert refused("--num-attention-heads", "3") == (
        "error: --num-attention-heads 3 with 2 query group(s): each group keeps the same number of its 2 query "
        "heads, so give a multiple of 2 up to 4")
    assert refused("--num-attention-heads", "4", "--num-query-groups", "1") == (
        "error: --num-attention-heads 4 with 1 query group(s): each group keeps the same number of its 2 query "
        "heads, so give a multiple of 1 up to 2")
    assert refused("--num-layers", "2", "--calibration-batches", "0") == (
        "error: --calibration-batches 0: give at least 1")
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert refused("--num-layers", "2") == (f"error: --out {out}: exists and is not an empty directory; "
                                            "give a new run directory")
    (out / "notes.txt").unlink()

    def with_saved_model_key(name: str, key: str, value: str):
        """A copy of the parent run whose saved [model] says key = value."""
        copy = tmp_path / name
        shutil.copytree(run, copy)
        for path in copy.glob("checkpoints/iter_*/mtds_config.json"):
            record = json.loads(path.read_text())
            record["run"]["model"][key] = value
            path.write_text(json.dumps(record))
        return copy

    assert refused("--num-layers", "2", load=with_saved_model_key("bert", "model_type", "bert")) == (
        "error: model.model_type='bert': mtds.prune prunes GPT-family runs (gpt, gpt_sft, gpt_plm)")
    sinusoidal = with_saved_model_key("sinusoidal", "position_embedding_type", "sinusoidal")
    assert refused("--hidden-size", "32", load=sinusoidal) == (
        "error: --hidden-size 32: model.position_embedding_type='sinusoidal' is a fixed table of the width, which "
        "slicing channels would not reproduce; prune this run's other dimensions")
