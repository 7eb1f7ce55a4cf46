"""Tools on a trained checkpoint: generate, evaluate, export to Hugging Face, plot.

Three tiny models are trained once per session by the real entry point (`python mtds/pretrain.py`,
subprocesses side by side):
- "llama": RoPE + RMSNorm + SwiGLU, GQA (4 heads, 2 groups), untied embeddings, fp32, ZeRO-2;
- "llama_tied_bias": the same with tied embeddings and linear biases, MHA, bf16, ZeRO-0;
- "gpt2": learned positions + LayerNorm + GELU + biases, tied embeddings, bf16, ZeRO-3;
- "bert": the BERT preset shrunk to the same size, fp32, ZeRO-2 (evaluate, export as a masked LM).
Everything else runs in this process against those checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import DIST_ENV, PRETRAIN, ROOT, call, scalars, write_ds_config

ITERS = 12
COMMON = ["--model.preset=none", "--model.num_layers=2", "--model.hidden_size=64", "--model.num_attention_heads=4",
          "--model.max_position_embeddings=64", f"--training.train_iters={ITERS}", "--training.log_interval=3",
          "--training.eval_interval=6", "--training.eval_iters=2", "--training.progress_bar=false",
          "--data.num_workers=0",
          # megatron-core's GPTDataset loops forever on a split with no documents; the tiny corpus
          # has ~34 documents, too few for the default 969,30,1 to give the test split one.
          "--data.split=80,10,10"]
MODELS = {
    # validates on its own data.valid_paths (the sentence-split copy of the corpus)
    "llama": dict(ds=dict(stage=2, precision="fp32"), valid="sentence_prefix",
                  args=["--model.num_query_groups=2"]),
    # ZeRO-0 keeps no fp32 master shards: the loader reads the module's bf16 weights instead.
    "llama_tied_bias": dict(ds=dict(stage=0, precision="bf16"),
                            args=["--model.tie_embeddings=true", "--model.add_bias_linear=true"]),
    "gpt2": dict(ds=dict(stage=3, precision="bf16"),
                 args=["--model.position_embedding_type=learned_absolute", "--model.normalization=LayerNorm",
                       "--model.activation=gelu", "--model.tie_embeddings=true", "--model.add_bias_linear=true"]),
    # evaluate (masked-LM + sentence-order metrics) and export; generate refuses BERT
    "bert": dict(ds=dict(stage=2, precision="fp32"), data="sentence_prefix",
                 args=["--model-type", "bert", "--model.preset=bert-tiny"]),
}
GPT_MODELS = [name for name in MODELS if name != "bert"]


def train_runs(data: dict, work: str, names=tuple(MODELS)) -> dict[str, str]:
    """Train each named tiny model in its own subprocess (concurrently); returns {name: run_dir}."""
    procs = {}
    for name in names:
        spec = MODELS[name]
        ds = write_ds_config(os.path.join(work, f"ds_{name}.json"), **spec["ds"])
        run_dir = os.path.join(work, name)
        cmd = [sys.executable, PRETRAIN, "--deepspeed_config", ds, "--run-dir", run_dir,
               f"--data.paths={data[spec.get('data', 'prefix')]}", f"--data.tokenizer_model={data['tokenizer_model']}",
               *COMMON, *spec["args"]]
        if "valid" in spec:
            cmd.append(f"--data.valid_paths={data[spec['valid']]}")
        # A plain process of its own: no launcher variables, so it binds a free port itself.
        env = {**{k: v for k, v in os.environ.items() if k not in _DIST_ENV}, "PYTHONWARNINGS": "ignore"}
        procs[name] = (run_dir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True))
    out = {}
    for name, (run_dir, proc) in procs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"training {name} failed:\n{log[-3000:]}"
        out[name] = run_dir
    return out


@pytest.fixture(scope="session")
def runs(tiny_data, tmp_path_factory) -> dict[str, str]:
    return train_runs(tiny_data, str(tmp_path_factory.mktemp("tools_runs")))


# Variables mtds.parallel.process_groups.init_distributed sets for a world of one. Loading a model in-process
# sets them (and holds MASTER_PORT); restore them so later subprocess tests pick their own port.
_DIST_ENV = DIST_ENV


@pytest.fixture(autouse=True)
def _restore_dist_env():
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tools():
    from mtds import evaluate, export_hf, generate, plot

    return {"generate": generate.main, "evaluate": evaluate.main, "export_hf": export_hf.main, "plot": plot.main}


# -- fast: CLI surface, sampling, layouts, refusals ----------------------------------------------
def test_every_tool_has_help(capsys):
    for name, main in tools().items():
        rc, out, _ = call(main, ["--help"], capsys)
        assert rc == 0 and "usage:" in out, name


def test_missing_run_dir_is_one_line_error(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    argv = {"generate": ["--load", missing], "evaluate": ["--load", missing],
            "export_hf": ["--load", missing, "--out", str(tmp_path / "hf")], "plot": [missing]}
    for name, main in tools().items():
        rc, out, err = call(main, argv[name], capsys)
        assert rc == 2, name
        assert err.startswith("error: ") and err.count("\n") == 1 and missing in err, (name, err)


def test_run_dir_without_checkpoint_is_one_line_error(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    for name in ("generate", "evaluate"):
        rc, _, err = call(tools()[name], ["--load", str(tmp_path)], capsys)
        assert rc == 2 and err.startswith("error: ") and "no complete checkpoint" in err, (name, err)


def test_top_k_and_top_p_keep_the_right_tokens():
    from mtds.generate import filter_logits, next_token

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # nucleus 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it -> two tokens
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.96)).tolist() == [[True, True, True, True]]
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, greedy=True, temperature=1.0, top_k=0, top_p=1.0, generator=g).item() == 0
    assert next_token(logits, greedy=False, temperature=0.0, top_k=0, top_p=1.0, generator=g).item() == 0
    draws = [next_token(logits, greedy=False, temperature=1.0, top_k=2, top_p=1.0, generator=g).item()
             for _ in range(200)]
    assert set(draws) == {0, 1}


class _BigramLM(torch.nn.Module):
    """A stand-in causal LM with megatron's GPTModel call signature: logits [b, s, V]."""

    def __init__(self, vocab=40):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, tokens, position_ids, attention_mask):
        return self.table(tokens)


def test_sampling_is_deterministic_per_seed_and_respects_limits():
    from mtds.generate import generate

    lm = _BigramLM()
    kw = dict(max_new_tokens=30, max_context=8, vocab_limit=32, temperature=1.5, top_k=20, top_p=0.95)
    a, b, c = (generate(lm, [1, 2, 3], seed=s, **kw) for s in (7, 7, 8))
    assert a == b and a != c
    assert len(a) == 30 and max(a) < 32  # padded vocabulary ids (32..39) are never produced
    greedy = generate(lm, [1], max_new_tokens=5, max_context=8, vocab_limit=40, greedy=True)
    expected, last = [], 1
    for _ in range(5):
        last = int(lm.table.weight[last].argmax())
        expected.append(last)
    assert greedy == expected
    stop = greedy[2]
    assert generate(lm, [1], max_new_tokens=5, max_context=8, vocab_limit=40, greedy=True,
                    stop_ids=(stop,)) == greedy[:greedy.index(stop) + 1]


def test_split_qkv_follows_megatron_group_layout():
    from mtds.hf.transforms import SplitQKV

    heads, groups, d = 4, 2, 3
    # rows of the fused weight, labelled: per group [q(head 0), q(head 1), k, v] x head_dim
    rows = [f"{kind}{g}" for g in range(groups) for kind in ("qa", "qb", "k", "v") for _ in range(d)]
    labels = {name: i for i, name in enumerate(dict.fromkeys(rows))}
    w = torch.tensor([labels[r] for r in rows]).float().unsqueeze(1)  # [g*(4)*d, 1]
    q, k, v = SplitQKV(heads, groups, d).to_hf((w,))
    assert torch.equal(SplitQKV(heads, groups, d).from_hf((q, k, v))[0], w)  # and back
    inv = {i: n for n, i in labels.items()}
    assert [inv[int(x)] for x in q[::d, 0]] == ["qa0", "qb0", "qa1", "qb1"]
    assert [inv[int(x)] for x in k[::d, 0]] == ["k0", "k1"]
    assert [inv[int(x)] for x in v[::d, 0]] == ["v0", "v1"]


@pytest.mark.parametrize("overrides, expected", [
    ({}, "LlamaForCausalLM"),
    ({"tie_embeddings": True, "add_bias_linear": True, "num_query_groups": 2}, "LlamaForCausalLM"),
    ({"position_embedding_type": "learned_absolute", "normalization": "LayerNorm", "activation": "gelu",
      "tie_embeddings": True, "add_bias_linear": True}, "GPT2LMHeadModel"),
    ({"position_embedding_type": "learned_absolute", "normalization": "LayerNorm", "activation": "gelu",
      "tie_embeddings": True, "add_bias_linear": False}, "add_bias_linear=false"),
    ({"position_embedding_type": "rope", "normalization": "LayerNorm"}, "does not export"),
    ({"model_type": "bert", "preset": "bert-tiny"}, "MegatronBertForMaskedLM"),
    ({"model_type": "bert", "preset": "bert-tiny", "tie_embeddings": False, "task.pair": "none"},
     "MegatronBertForMaskedLM"),
    ({"model_type": "bert", "preset": "bert-tiny", "normalization": "RMSNorm"}, "normalization=RMSNorm"),
    ({"model_type": "bert", "preset": "bert-tiny", "num_query_groups": 2}, "num_query_groups=2"),
])
def test_export_architecture_choice_and_refusals(overrides, expected):
    from mtds.config import build_config
    from mtds.errors import LoadError
    from mtds.export_hf import hf_architecture

    model = {k: v for k, v in overrides.items() if not k.startswith("task.")}
    task = {k[5:]: v for k, v in overrides.items() if k.startswith("task.")}
    cfg = build_config({"model": model, "task": task})
    if expected.endswith(("CausalLM", "MaskedLM", "HeadModel")):
        assert hf_architecture(cfg).ARCHITECTURE == expected
    else:
        with pytest.raises(LoadError) as e:
            hf_architecture(cfg)
        assert expected in str(e.value) and "does not export" in str(e.value) and "\n" not in str(e.value)


def test_exported_tokenizer_matches_sentencepiece(tiny_data, tmp_path):
    from transformers import AutoTokenizer

    from mtds.hf.tokenizer import write_tokenizer
    from mtds.data.tokenizer import SentencePieceTokenizer

    ids = write_tokenizer(tiny_data["tokenizer_model"], str(tmp_path), 64)
    ours = SentencePieceTokenizer(tiny_data["tokenizer_model"])
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ids == {"pad_token_id": ours.pad, "bos_token_id": ours.bos, "eos_token_id": ours.eod}
    with open(tiny_data["corpus"]) as f:
        texts = [json.loads(line)["text"] for line in f]
    texts += ["Hello  world\n\n\tx = 12345 [CLS] a[SEP]b </s> <s> ünïcödé 🐍 漢字   ", "   lead", "trail  ", " "]
    for text in texts:
        expected = ours.tokenize(text)
        assert theirs.encode(text, add_special_tokens=False) == expected, text[:80]
        assert theirs.decode(expected) == ours.detokenize(expected)


def test_saved_config_from_another_version_still_loads(capsys):
    from mtds.config import ConfigError, build_config, resolved_dict
    from mtds.load_trained import saved_run_config

    run = resolved_dict(build_config({"model": {"num_layers": 3}}))
    run["training"]["renamed_since"] = 1  # a key a later/earlier mtds does not know
    cfg = saved_run_config({"run": run})
    assert cfg.model.num_layers == 3 and "renamed_since" in capsys.readouterr().err
    run["model"]["renamed_since"] = 1  # model keys decide shapes: stay strict
    with pytest.raises(ConfigError):
        saved_run_config({"run": run})


def test_plot_refuses_run_without_events(tmp_path, capsys):
    from mtds.plot import main

    rc, _, err = call(main, [str(tmp_path)], capsys)
    assert rc == 2 and "no TensorBoard event files" in err


def test_plot_puts_several_runs_on_one_figure(tmp_path, capsys):
    """Runs' curves side by side (the README's objectives figure), their downstream scores in panels below
    (the README's cooldown branches: one panel per task and metric, --downstream picks); a run without
    events is refused first, an unknown metric is one line."""
    from torch.utils.tensorboard import SummaryWriter

    from mtds.plot import DOWNSTREAM_PREFIX, TRAIN_TAG, VAL_TAG, main, plot

    for name, start in (("gpt", 9.0), ("bert", 10.0)):
        with SummaryWriter(log_dir=str(tmp_path / name / "tensorboard")) as w:
            for i in range(1, 6):
                w.add_scalar(TRAIN_TAG, start - i, i * 1024)
            w.add_scalar(VAL_TAG, start - 5, 5 * 1024)
            if name == "gpt":  # scored at two steps, one task
                for i in (2, 4):
                    w.add_scalar(DOWNSTREAM_PREFIX + "cloze/acc", 0.1 * i, i * 1024)
                    w.add_scalar(DOWNSTREAM_PREFIX + "cloze/bpb", 4 - 0.1 * i, i * 1024)
    out = tmp_path / "both.png"
    rc, stdout, err = call(main, [str(tmp_path / "gpt"), str(tmp_path / "bert"), "--out", str(out)], capsys)
    assert rc == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(10 train and 2 validation points, 4 downstream scores of 2 runs)" in stdout
    runs = [str(tmp_path / "gpt"), str(tmp_path / "bert")]
    assert plot(runs, str(tmp_path / "bpb.png"), downstream=["bpb"])["downstream"] == 2
    assert plot(runs, str(tmp_path / "none.png"), downstream=[])["downstream"] == 0
    rc, _, err = call(main, [*runs, "--downstream", "accuracy", "--out", str(tmp_path / "x.png")], capsys)
    assert rc == 2 and err.strip().splitlines() == [
        "error: --downstream accuracy: no metric accuracy; give some of acc, acc_norm, bpb, or none"]
    (tmp_path / "empty").mkdir()
    rc, _, err = call(main, [str(tmp_path / "gpt"), str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")], capsys)
    assert rc == 2 and "empty/tensorboard: no TensorBoard event files" in err and not (tmp_path / "x.png").exists()


# -- slow: on checkpoints trained by the real entry point -------------------------------------
@pytest.fixture(scope="module")
def loaded(runs):
    """{name: TrainedRun}, loaded once (fp32, CPU)."""
    from mtds.load_trained import load_trained

    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    try:
        return {name: load_trained(run_dir) for name, run_dir in runs.items()}
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    from mtds.export_hf import main

    out = {}
    for name in GPT_MODELS:
        out[name] = str(tmp_path_factory.mktemp(f"hf_{name}"))
        assert main(["--load", runs[name], "--out", out[name]]) == 0
    return out


# fp32 run: the same weights, data, batches and forward code as the training loop's validation, so
# only summation order could differ (measured: identical). bf16 runs validated in bf16 (weights
# rounded to 2^-9 relative, bf16 activations) while the tool computes in fp32, from the fp32 master
# copy (ZeRO 1-3) or the bf16 weights themselves (ZeRO-0); measured |diff| 1e-5 and 8e-5 on a loss of ~5.6.
VAL_LOSS_ATOL = {"llama": 1e-5, "llama_tied_bias": 5e-3, "gpt2": 5e-3, "bert": 1e-5}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_evaluate_reproduces_training_validation_loss(runs, loaded, name, capsys):
    from mtds import evaluate

    logged = dict(scalars(runs[name])["val/loss"])[ITERS]
    rc, out, err = call(evaluate.main, ["--load", runs[name], "--json", "--no-progress"], capsys)
    assert rc == 0, err
    result = json.loads(out)
    assert result["batches"] == 2 and result["samples"] == 8
    assert result["loss"] == pytest.approx(logged, abs=VAL_LOSS_ATOL[name])
    if name == "bert":  # the masked-LM / sentence-order parts too
        logged_all = {tag: dict(series)[ITERS] for tag, series in scalars(runs[name]).items()
                      if tag.startswith("val/")}
        for key in ("mlm_loss", "mlm_acc", "sop_loss", "sop_acc"):
            assert result[key] == pytest.approx(logged_all[f"val/{key}"], abs=1e-5), key
    assert result["ppl"] == pytest.approx(torch.tensor(result["loss"]).exp().item(), rel=1e-6)


@pytest.mark.slow
def test_evaluate_splits_and_input_errors(runs, loaded, tiny_data, tmp_path, capsys):
    from mtds import evaluate

    run = runs["llama"]
    rc, out, err = call(evaluate.main, ["--load", run, "--data", tiny_data["prefix"], "--split", "test",
                                        "--eval-iters", "3", "--micro-batch", "2", "--json", "--no-progress"], capsys)
    assert rc == 0, err
    assert json.loads(out)["samples"] == 6 and json.loads(out)["split"] == "test"
    rc, out, err = call(evaluate.main, ["--load", run, "--data", tiny_data["prefix"], "--split", "all",
                                        "--eval-iters", "1", "--no-progress"], capsys)
    assert rc == 0 and "(all, 1 batches x 4 samples x 64 tokens): loss" in out, err
    rc, out, err = call(evaluate.main, ["--load", run, "--no-progress"], capsys)  # its own validation set
    assert rc == 0 and f"on {tiny_data['sentence_prefix']} (valid, 2 batches" in out, err
    rc, _, err = call(evaluate.main, ["--load", run, "--split", "test"], capsys)
    assert rc == 2 and "validated on its own data.valid_paths and has no 'test' split" in err
    missing = str(tmp_path / "nodata_text_document")
    rc, _, err = call(evaluate.main, ["--load", run, "--data", missing], capsys)
    assert rc == 2 and err.startswith("error: --data") and missing in err and err.count("\n") == 1
    rc, _, err = call(evaluate.main, ["--load", run, "--tag", "iter_0000999"], capsys)
    assert rc == 2 and "iter_0000012" in err  # names what is available


@pytest.mark.slow
def test_generate_cli_greedy_sampling_and_bad_tag(runs, loaded, capsys):
    from mtds import generate

    run = runs["llama"]
    base = ["--load", run, "--prompt", "import json\n", "--max-new-tokens", "12", "--no-stop"]
    rc, greedy, err = call(generate.main, base + ["--greedy"], capsys)
    assert rc == 0 and greedy.startswith("import json\n"), err
    assert call(generate.main, base + ["--temperature", "0"], capsys)[1] == greedy
    sampled = [call(generate.main, base + ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.95",
                                           "--seed", str(s)], capsys)[1] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    rc, _, err = call(generate.main, ["--load", run, "--tag", "iter_12"], capsys)
    assert rc == 2 and err.startswith("error: --tag 'iter_12'") and "iter_0000012" in err
    rc, _, err = call(generate.main, ["--load", run, "--top-p", "0"], capsys)
    assert rc == 2 and "--top-p" in err


@pytest.mark.slow
def test_damaged_checkpoints_are_one_line_errors(runs, loaded, tmp_path, capsys):
    import shutil

    from mtds import generate

    # Garbage in a shard: its manifest hash no longer matches (mtds/ckpt/manifest.py) before DeepSpeed reads it.
    for name, damage, expected in (("llama", "garbage", "truncated or changed"),
                                   ("gpt2", "delete", "missing (listed in manifest.json)")):
        run = str(tmp_path / name)
        shutil.copytree(runs[name], run, ignore=shutil.ignore_patterns("index_cache", "tensorboard"))
        ckpt = os.path.join(run, "checkpoints", f"iter_{ITERS:07d}")
        (shard,) = [f for f in os.listdir(ckpt) if f.endswith("_optim_states.pt")]
        if damage == "garbage":
            with open(os.path.join(ckpt, shard), "wb") as f:
                f.write(b"not a checkpoint")
        else:
            os.remove(os.path.join(ckpt, shard))
        rc, _, err = call(generate.main, ["--load", run, "--max-new-tokens", "1"], capsys)
        assert rc == 2 and err.splitlines()[-1].startswith("error: ") and expected in err, (name, err)


@pytest.mark.slow
def test_export_never_writes_into_a_non_export_directory(runs, capsys):
    from mtds import export_hf

    before = sorted(os.listdir(runs["llama"]))
    config = open(os.path.join(runs["llama"], "config.json")).read()
    rc, _, err = call(export_hf.main, ["--load", runs["llama"], "--out", runs["llama"]], capsys)
    assert rc == 2 and "is not an exported model" in err
    assert sorted(os.listdir(runs["llama"])) == before
    assert open(os.path.join(runs["llama"], "config.json")).read() == config


def _tokens(run, n=48):
    text = "import os\nimport sys\n\n\ndef main(argv):\n    if not argv:\n        return 1\n    return 0\n" * 3
    return torch.tensor([run.tokenizer().tokenize(text)[:n]])


def _our_logits(model, ids):
    with torch.no_grad():
        return model(ids, torch.arange(ids.size(1)).unsqueeze(0), None)


# Both sides run fp32 on CPU through different kernels (megatron's fused QKV GEMM vs three
# GEMMs, SDPA vs HF's attention); 1e-4 absolute on logits of magnitude ~1-10 is well above
# that rounding (measured max |diff|: 0 for the Llama models, 4e-7 for gpt2 trained and 5e-6 with
# the random weights below, logits up to ~11; BERT's masked-LM logits: 4e-7 trained, 2e-5 with
# random weights) and far below any layout bug.
LOGITS_ATOL = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", GPT_MODELS)
def test_export_logits_and_greedy_generation_match_transformers(loaded, exported, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtds.generate import generate

    run = loaded[name]
    hf = AutoModelForCausalLM.from_pretrained(exported[name], dtype=torch.float32).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if name == "gpt2" else "LlamaForCausalLM")
    ids = _tokens(run)
    ours = _our_logits(run.model, ids)
    with torch.no_grad():
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=LOGITS_ATOL, rtol=0)
    tok = run.tokenizer()
    prompt = tok.tokenize("def main(")
    assert AutoTokenizer.from_pretrained(exported[name]).encode("def main(", add_special_tokens=False) == prompt
    new = generate(run.model, prompt, max_new_tokens=16, max_context=64, vocab_limit=tok.vocab_size, greedy=True,
                   stop_ids=(tok.eod,), cache_fn=run.cfg.kind.task.cached_logits)  # with the KV cache, as the CLI
    with torch.no_grad():
        hf_new = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):]
    assert hf_new.tolist() == new


@pytest.mark.slow
@pytest.mark.parametrize("name", GPT_MODELS)
def test_export_mapping_on_random_weights(loaded, tmp_path, name):
    """12 training steps leave greedy decoding repeating one token; random weights give varied
    continuations, so the greedy comparison also exercises position handling and the KV cache."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from mtds.export_hf import convert
    from mtds.generate import generate
    from mtds.kinds import build_model

    run = loaded[name]
    torch.manual_seed(0)
    model = build_model(run.cfg, run.vocab_size, "fp32", on_gpu=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    sd = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v) and not k.endswith("_extra_state")}
    config, weights = convert(sd, run.cfg, run.vocab_size, {"pad_token_id": 0, "bos_token_id": 2,
                                                             "eos_token_id": 3})
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = _tokens(run, 64)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, _our_logits(model, ids), atol=LOGITS_ATOL, rtol=0)
    prompt = ids[0, :5].tolist()
    new = generate(model, prompt, max_new_tokens=40, max_context=64, vocab_limit=run.vocab_size, greedy=True)
    with torch.no_grad():
        hf_new = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):]
    assert len(set(new)) > 5  # a varied continuation, not one repeated token
    assert hf_new.tolist() == new


def _bert_inputs(run, n=48):
    """A padding-free two-segment input: [CLS] a [SEP] b [SEP], token types 0 then 1, two [MASK]s."""
    tok, text = run.tokenizer(), _tokens(run, n)[0].tolist()
    a, b = text[: n // 2 - 2], text[n // 2: n - 1]
    a[3] = b[5] = tok.mask
    ids = [tok.cls] + a + [tok.sep] + b + [tok.sep]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return torch.tensor([ids]), torch.tensor([types])


def _our_mlm_logits(model, ids, types):
    with torch.no_grad():
        logits, _ = model(ids, torch.ones_like(ids), tokentype_ids=types if model.add_binary_head else None)
    return logits


@pytest.mark.slow
def test_export_bert_mlm_logits_match_transformers(runs, loaded, tmp_path, capsys):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from mtds.export_hf import main

    run, out = loaded["bert"], str(tmp_path / "hf_bert")
    rc, _, err = call(main, ["--load", runs["bert"], "--out", out], capsys)
    assert rc == 0, err
    hf = AutoModelForMaskedLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "MegatronBertForMaskedLM"
    ids, types = _bert_inputs(run)
    with torch.no_grad():
        theirs = hf(ids, token_type_ids=types).logits
    torch.testing.assert_close(theirs, _our_mlm_logits(run.model, ids, types), atol=LOGITS_ATOL, rtol=0)
    tok, text = run.tokenizer(), "[CLS] a [MASK] b[SEP]"
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(text, add_special_tokens=False) == tok.tokenize(text)
    assert tok.mask in tok.tokenize(text) and not os.path.exists(os.path.join(out, "generation_config.json"))
    # Framed as in training: [CLS] a [SEP] b [SEP] with token types 0 then 1.
    pair = hf_tok("def f(x):", "    return x")
    a, b = tok.tokenize("def f(x):"), tok.tokenize("    return x")
    assert pair["input_ids"] == [tok.cls] + a + [tok.sep] + b + [tok.sep]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # The fill-mask pipeline finds the mask token by itself and predicts what our model predicts.
    from transformers import pipeline

    masked = "import os\nimport [MASK]\n"
    ids = torch.tensor([hf_tok(masked)["input_ids"]])
    ours = _our_mlm_logits(run.model, ids, torch.zeros_like(ids))[0, ids[0].tolist().index(tok.mask)]
    best = pipeline("fill-mask", model=hf, tokenizer=hf_tok)(masked, top_k=1)[0]
    assert best["token"] == int(ours.argmax())


@pytest.mark.slow
@pytest.mark.parametrize("overrides, binary_head", [({}, True), ({"tie_embeddings": False, "add_bias_linear": True}, False)])
def test_export_bert_mapping_on_random_weights(loaded, tmp_path, overrides, binary_head):
    """Random weights (not 12 steps from init) and the untied / no-token-type / biased variants."""
    import dataclasses

    from safetensors.torch import save_file
    from transformers import AutoModelForMaskedLM

    from mtds.export_hf import convert
    from mtds.kinds import build_model

    run = loaded["bert"]
    cfg = dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model, **overrides),
                              task=dataclasses.replace(run.cfg.task, pair="sop" if binary_head else "none"))
    torch.manual_seed(0)
    model = build_model(cfg, run.vocab_size, "fp32", on_gpu=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    sd = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v) and not k.endswith("_extra_state")}
    config, weights = convert(sd, cfg, run.vocab_size, {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3})
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = AutoModelForMaskedLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids, types = _bert_inputs(run, 64)
    if not binary_head:
        types = torch.zeros_like(types)
    with torch.no_grad():
        theirs = hf(ids, token_type_ids=types).logits
    torch.testing.assert_close(theirs, _our_mlm_logits(model, ids, types), atol=LOGITS_ATOL, rtol=0)


@pytest.mark.slow
def test_plot_writes_png_of_logged_losses(runs, tmp_path, capsys):
    from mtds.plot import TRAIN_TAG, VAL_TAG, main, read_scalars

    out = tmp_path / "curve.png"
    rc, stdout, err = call(main, [runs["llama"], "--out", str(out)], capsys)
    assert rc == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    logged = scalars(runs["llama"])
    series = read_scalars(os.path.join(runs["llama"], "tensorboard"), (TRAIN_TAG, VAL_TAG))
    assert series[TRAIN_TAG] == logged[TRAIN_TAG] and len(series[TRAIN_TAG]) == ITERS // 3
    assert [s for s, _ in series[VAL_TAG]] == [0, 6 * 4 * 64, 12 * 4 * 64]  # tokens at iterations 0, 6, 12
    assert f"({ITERS // 3} train and 3 validation points)" in stdout


# -- run directories saved before the [task] section (config format 1) ---------------------------
def to_format_1(resolved: dict) -> dict:
    """A resolved config as mtds wrote it before [task]: the objective's options in [model]/[data]."""
    old = json.loads(json.dumps(resolved))
    for later in ("config_format", "manifest", "train_order"):  # keys of the record written since
        old.pop(later, None)
    task = old["run"].pop("task")
    old["run"]["model"]["bert_binary_head"] = task.get("pair", "sop") != "none"
    old["run"]["data"]["masking_probability"] = task.get("masking_probability", 0.15)
    old["run"]["data"]["short_seq_prob"] = task.get("short_seq_prob", 0.1)
    return old


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("llama", "gpt"), ("bert", "bert")])
def test_run_saved_in_config_format_1_still_resumes_evaluates_generates_and_exports(
        runs, loaded, tiny_data, tmp_path, capsys, name, kind):
    import shutil

    from mtds import evaluate, export_hf, generate
    from mtds.load_trained import load_trained

    old_run = str(tmp_path / name)
    shutil.copytree(runs[name], old_run, ignore=shutil.ignore_patterns("index_cache"))
    with open(os.path.join(ROOT, "tests", "data", "run_config_v1.json")) as f:
        captured = json.load(f)[kind]  # the `run` dict that code wrote, for its key sets
    ckpt = os.path.join(old_run, "checkpoints", f"iter_{ITERS:07d}")
    for path in (os.path.join(old_run, "config.json"), os.path.join(ckpt, "mtds_config.json")):
        with open(path) as f:
            old = to_format_1(json.load(f))
        assert "task" not in old["run"] and all(set(captured[s]) <= set(old["run"][s]) for s in captured)
        for section in captured:  # exactly the keys that code wrote (later ones get their defaults)
            old["run"][section] = {k: v for k, v in old["run"][section].items() if k in captured[section]}
        with open(path, "w") as f:
            json.dump(old, f)
    os.remove(os.path.join(ckpt, "manifest.json"))  # format-1 runs predate manifests

    migrated = load_trained(old_run)
    assert migrated.cfg == loaded[name].cfg
    for (k, a), b in zip(migrated.model.state_dict().items(), loaded[name].model.state_dict().values()):
        assert not torch.is_tensor(a) or torch.equal(a, b), k
    results = [json.loads(call(evaluate.main, ["--load", d, "--json", "--no-progress"], capsys)[1])["loss"]
               for d in (runs[name], old_run)]
    assert results[0] == results[1]
    if kind == "gpt":
        argv = ["--prompt", "import json\n", "--max-new-tokens", "8", "--greedy"]
        assert call(generate.main, ["--load", old_run, *argv], capsys)[1] == \
            call(generate.main, ["--load", runs[name], *argv], capsys)[1]
    rc, _, err = call(export_hf.main, ["--load", old_run, "--out", str(tmp_path / "hf")], capsys)
    assert rc == 0, err

    # Resume: the saved format-1 config is checked against this run's and loads. At the same run length:
    # a longer one changes the sample count, which a checkpoint without order probes cannot be checked for.
    spec = MODELS[name]
    ds = write_ds_config(str(tmp_path / "ds.json"), **spec["ds"])
    cmd = [sys.executable, PRETRAIN, "--deepspeed_config", ds, "--load", old_run, "--run-dir", old_run,
           f"--data.paths={tiny_data[spec.get('data', 'prefix')]}", f"--data.tokenizer_model={tiny_data['tokenizer_model']}",
           *COMMON, *spec["args"]]
    if "valid" in spec:
        cmd.append(f"--data.valid_paths={tiny_data[spec['valid']]}")
    env = {**{k: v for k, v in os.environ.items() if k not in _DIST_ENV}, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"at iteration {ITERS}" in proc.stdout and "does not fit" not in proc.stderr
