"""mtds.import_hf: Hugging Face models made by `transformers` in the test become mtds runs whose
logits and greedy generations equal the HF model's, and which export back to the same tensors.

One tiny random model per architecture (and per layout case: GQA, tied embeddings, Llama-3 RoPE
scaling, Qwen2's q/k/v biases, a sharded checkpoint, Mistral's sliding window), weights drawn
with std 0.3 so logits are far from uniform and greedy decoding varies.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from helpers import call

LOGITS_ATOL = 1e-4  # fp32, as for export (tests/test_tools.py): summation order differs, layouts not
VOCAB = 320  # the models' embedding rows; the test tokenizer has fewer tokens

CASES = {
    "llama_gqa": ("LlamaConfig", dict(num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=50000.0,
                                      tie_word_embeddings=False)),
    "llama_tied_llama3_rope": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "mistral_window": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=32, tie_word_embeddings=False)),
    "qwen2_bias_tied": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "mixtral_moe": ("MixtralConfig", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                          tie_word_embeddings=False)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, activation_function="gelu_new")),
    "megatron_bert": ("MegatronBertConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=128, max_position_embeddings=128)),
}
LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=128)
MODEL_CLASSES = {"LlamaConfig": "LlamaForCausalLM", "MistralConfig": "MistralForCausalLM",
                 "Qwen2Config": "Qwen2ForCausalLM", "MixtralConfig": "MixtralForCausalLM", "GPT2Config": "GPT2LMHeadModel",
                 "MegatronBertConfig": "MegatronBertForMaskedLM"}
SHARDED = "llama_gqa"  # saved in several shards with an index


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer that adds BOS, like Llama-3's, saved as an HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(200)]
    tok.train_from_iterator(text, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    out = tmp_path_factory.mktemp("hf_tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out)
    return str(out)


def make_hf_model(name: str, out_dir: str, tokenizer_dir: str) -> str:
    import transformers

    config_class, fields = CASES[name]
    shape = {} if config_class in ("GPT2Config", "MegatronBertConfig") else LLAMA_SHAPE
    config = getattr(transformers, config_class)(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                                 **shape, **fields)
    torch.manual_seed(0)
    model = getattr(transformers, MODEL_CLASSES[config_class])(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(out_dir, max_shard_size="100KB" if name == SHARDED else "1GB")
    for f in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, f), out_dir)
    return out_dir


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, hf_tokenizer):
    root = tmp_path_factory.mktemp("hf_models")
    return {name: make_hf_model(name, str(root / name), hf_tokenizer) for name in CASES}


IMPORT_LOGS: dict[str, list[str]] = {}  # each case's import lines (the `imported` fixture)


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
    """{case: (run dir, its TrainedRun)}, each imported once for the module."""
    from mtds.import_hf import import_hf
    from mtds.load_trained import load_trained

    root, out = tmp_path_factory.mktemp("imported"), {}
    for name, hf_dir in hf_dirs.items():
        run_dir = str(root / name)
        IMPORT_LOGS[name] = []
        import_hf(hf_dir, run_dir, log=IMPORT_LOGS[name].append)
        out[name] = (run_dir, load_trained(run_dir))
    return out


def _hf_model(hf_dir: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    causal = "bert" not in os.path.basename(hf_dir)
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    return cls.from_pretrained(hf_dir, dtype=torch.float32).eval()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(6, 290, (2, n), generator=torch.Generator().manual_seed(seed))  # [2, n]


@pytest.mark.parametrize("name", list(CASES))
def test_imported_logits_equal_transformers(hf_dirs, imported, name):
    hf = _hf_model(hf_dirs[name])
    _, run = imported[name]
    n = 32 if name == "mistral_window" else 96  # within Mistral's window (see mtds/hf/mistral.py)
    ids = _ids(n)
    with torch.no_grad():
        theirs = hf(ids).logits  # [2, n, VOCAB]
        if name == "megatron_bert":
            types = torch.zeros_like(ids)
            ours, _ = run.model(ids, torch.ones_like(ids), tokentype_ids=types)
        else:
            ours = run.model(ids, torch.arange(n).unsqueeze(0).expand(2, n), None)
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 1.0  # far from uniform: the comparison means something
    torch.testing.assert_close(ours, theirs, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("name", [n for n in CASES if n != "megatron_bert"])
def test_imported_greedy_generation_equals_transformers(hf_dirs, imported, name):
    from mtds.generate import generate

    hf = _hf_model(hf_dirs[name])
    _, run = imported[name]
    prompt = _ids(5, seed=2)[0].tolist()
    new = generate(run.model, prompt, max_new_tokens=24, max_context=32, vocab_limit=VOCAB, greedy=True)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):]
    assert theirs.tolist() == new
    assert len(set(new)) >= 3  # not one repeated token: positions and the cache are exercised


def test_import_writes_a_run_directory_the_tools_and_training_read(imported, hf_dirs):
    from mtds.ckpt.layout import find, read_config

    run_dir, run = imported["llama_gqa"]
    ckpt = find(run_dir)
    saved = read_config(ckpt)
    assert os.path.basename(ckpt) == "iter_0000000" and saved["train_iters"] == 0
    assert saved["imported_from"]["architecture"] == "LlamaForCausalLM"
    from mtds.ckpt import manifest

    assert manifest.verify(ckpt) is True  # a manifest of every file, like a training save (False: none)
    assert (saved["imported_from"]["bos_token_id"], saved["imported_from"]["eos_token_id"]) == (1, 2)
    m = run.cfg.model
    assert (m.num_query_groups, m.vocab_size, m.layernorm_epsilon, m.rotary_base, m.tie_embeddings) == \
        (2, VOCAB, 1e-6, 50000, False)
    assert sorted(os.listdir(os.path.join(run_dir, "tokenizer"))) == sorted(
        f for f in os.listdir(hf_dirs["llama_gqa"]) if f.startswith(("tokenizer", "special_tokens")))
    with open(os.path.join(run_dir, "run_config.json")) as f:
        sections = json.load(f)
    assert sections["model"]["num_query_groups"] == 2 and sections["data"]["tokenizer_type"] == "HuggingFaceTokenizer"
    assert sections["data"]["seq_length"] == sections["model"]["max_position_embeddings"]  # short: its own
    assert imported["megatron_bert"][1].cfg.task.pair == "sop"  # two token types: the sentence-pair head


@pytest.mark.parametrize("name", list(CASES))
def test_import_then_export_gives_back_the_same_tensors_and_config(hf_dirs, imported, tmp_path, name):
    from safetensors.torch import load_file

    from mtds.export_hf import export
    from mtds.import_hf import ARCHITECTURES, read_hf_config

    run_dir, _ = imported[name]
    out = str(tmp_path / "export")
    lines = []
    export(run_dir, out, log=lines.append)
    # progress a log shows (off a terminal too): reading/merging, then writing
    assert lines[0].startswith("export: reading ") and lines[1].startswith("export: writing model.safetensors (")
    original = {}
    for f in sorted(os.listdir(hf_dirs[name])):
        if f.endswith(".safetensors"):
            original.update(load_file(os.path.join(hf_dirs[name], f)))
    exported = load_file(os.path.join(out, "model.safetensors"))
    if name == "megatron_bert":  # the sentence-pair head has no place in the masked-LM model either way
        original = {k: v for k, v in original.items() if not k.startswith("cls.seq_relationship")}
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    hf, arch = read_hf_config(hf_dirs[name])
    hf_out, arch_out = read_hf_config(out)
    model, task = arch.model_config(hf)
    if name == "mistral_window":  # exported as the Llama it computes (mtds/hf/mistral.py)
        assert arch_out is ARCHITECTURES["LlamaForCausalLM"]
    else:
        assert arch_out is arch
    assert arch_out.model_config(hf_out) == (model, task)


# -- bad input: one line, nothing written -------------------------------------------------------
def _copy(hf_dirs, name, tmp_path):
    return shutil.copytree(hf_dirs[name], tmp_path / "hf")


def _edit_config(hf_dir, **changes):
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def _refused(hf_dir, tmp_path, capsys) -> str:
    from mtds.import_hf import main

    rc, _, err = call(main, ["--hf", str(hf_dir), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and not os.path.exists(tmp_path / "out"), err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_architecture_is_refused_naming_the_supported_ones(hf_dirs, tmp_path, capsys):
    hf = _copy(hf_dirs, "megatron_bert", tmp_path)
    _edit_config(hf, architectures=["BertForMaskedLM"])  # post-LayerNorm: not megatron's BERT
    assert _refused(hf, tmp_path, capsys) == (
        f"error: {hf}/config.json: architectures=['BertForMaskedLM']; mtds imports exactly one of LlamaForCausalLM, "
        "MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM, GPT2LMHeadModel, MegatronBertForMaskedLM")


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_act="gelu"), "hidden_act='gelu': mtds supports only 'silu'"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
     "rope_scaling type 'yarn': mtds expresses only the default RoPE and Llama-3's 'llama3'"),
    (dict(head_dim=32), "head_dim=32: mtds supports only 16 (megatron's head size is hidden_size / heads)"),
], ids=["activation", "rope-yarn", "head-dim"])
def test_a_config_field_mtds_cannot_express_is_named(hf_dirs, tmp_path, capsys, changes, message):
    hf = _copy(hf_dirs, "llama_gqa", tmp_path)
    _edit_config(hf, **changes)
    assert _refused(hf, tmp_path, capsys) == (
        f"error: {hf}/config.json: {message}; LlamaForCausalLM cannot be imported with it")


def test_missing_shard(hf_dirs, tmp_path, capsys):
    hf = _copy(hf_dirs, SHARDED, tmp_path)
    shards = sorted(f for f in os.listdir(hf) if f.endswith(".safetensors"))
    assert len(shards) > 2
    os.remove(hf / shards[1])
    assert _refused(hf, tmp_path, capsys).startswith(f"error: {hf / shards[1]}: shard missing (1 of {len(shards)} "
                                                     "named by the index)")


def test_shard_with_a_wrong_shape(hf_dirs, tmp_path, capsys):
    hf = _copy(hf_dirs, "qwen2_bias_tied", tmp_path)
    _edit_config(hf, intermediate_size=128)  # the weights say 160
    line = _refused(hf, tmp_path, capsys)
    assert line.startswith(f"error: {hf}/model.safetensors: model.layers.0.mlp.") and \
        line.endswith("has shape [160, 64] but config.json makes it [128, 64]; the weights belong to another model") \
        or "[64, 160] but config.json makes it [64, 128]" in line, line


def test_tokenizer_larger_than_the_model_vocabulary(hf_dirs, tmp_path, capsys):
    hf = _copy(hf_dirs, "gpt2", tmp_path)
    _edit_config(hf, vocab_size=256)
    assert "the tokenizer has 300 tokens but config.json's vocab_size is 256; it is not this model's tokenizer" in \
        _refused(hf, tmp_path, capsys)


def test_tokenizer_directory_without_tokenizer_json(hf_dirs, tmp_path, capsys):
    hf = _copy(hf_dirs, "gpt2", tmp_path)
    for f in os.listdir(hf):
        if f.startswith(("tokenizer", "special_tokens")):
            os.remove(hf / f)
    assert _refused(hf, tmp_path, capsys) == (
        f"error: {hf}: no tokenizer.json (or sentencepiece tokenizer.model); copy the model's tokenizer files "
        "beside config.json")


def test_an_occupied_output_directory_is_not_touched(hf_dirs, tmp_path, capsys):
    from mtds.import_hf import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    rc, _, err = call(main, ["--hf", hf_dirs["gpt2"], "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "not empty and not an earlier import" in err
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


# -- continued pretraining ----------------------------------------------------------------------
@pytest.mark.slow
def test_an_import_logs_each_shard_as_it_reads_it(imported, hf_dirs):
    """A long import shows where it is: a line per shard read, then the conversion and the write."""
    shards = sorted(f for f in os.listdir(hf_dirs[SHARDED]) if f.endswith(".safetensors"))
    lines = [line for line in IMPORT_LOGS[SHARDED] if line.startswith("import: ")]
    assert len(shards) > 1
    assert [line.split()[3] for line in lines[:len(shards)]] == [f"{i}/{len(shards)}" for i in range(1, len(shards) + 1)]
    assert sorted(line.split()[4] for line in lines[:len(shards)]) == shards
    assert lines[len(shards)].startswith("import: converting ") and lines[-1].startswith("import: writing the checkpoint")


def test_a_long_context_model_imports_with_a_trainable_sequence_length(hf_dirs):
    """Llama-3.x allows 131072 positions; data.seq_length defaults to that, which would train out of
    memory: the import's run config says 4096 (IMPORTED_SEQ_LENGTH) and keeps the model's limit."""
    from mtds.import_hf import IMPORTED_SEQ_LENGTH, read_hf_config, run_config

    hf, arch = read_hf_config(hf_dirs["llama_gqa"])
    sections = run_config({**hf, "max_position_embeddings": 131072}, arch, hf_dirs["llama_gqa"])
    assert sections["data"] == {"seq_length": IMPORTED_SEQ_LENGTH} == {"seq_length": 4096}
    assert sections["model"]["max_position_embeddings"] == 131072


def test_continued_pretraining_starts_at_the_hf_models_loss_and_lowers_it(imported, hf_dirs, tiny_data, tmp_path):
    """20 fp32 steps from the imported Llama (training.init_from) on data preprocessed with the
    model's own HF tokenizer: the first logged loss is the HF model's loss on that first batch
    (to 1e-5: a freshly initialised model would log another loss), and the loss falls."""
    from transformers import AutoModelForCausalLM

    from data_tools.preprocess import preprocess
    from helpers import ok, run_pretrain, scalars, write_ds_config
    from mtds.ckpt.layout import find, read_config
    from mtds.data.sources import resolve_sources
    from mtds.load_trained import saved_run_config
    from mtds.tasks.causal_lm import build_datasets
    from mtds.data.tokenizer import load_tokenizer

    source, _ = imported["llama_gqa"]
    tok_dir = os.path.join(source, "tokenizer")
    prefix = str(tmp_path / "corpus")
    preprocess([tiny_data["corpus"]], prefix, tok_dir, append_eod=True, workers=1, quiet=True)
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=4, precision="fp32", warmup=2, lr=3e-3)
    run = tmp_path / "run"
    proc = ok(run_pretrain(["--deepspeed_config", ds, "--config", os.path.join(source, "run_config.json"),
                            "--data.paths", prefix + "_text_document", "--data.split=90,10,0", "--data.seq_length=64",
                            "--training.init_from", source, "--run-dir", str(run), "--training.train_iters=20",
                            "--training.log_interval=1", "--training.eval_iters=1", "--training.eval_interval=100",
                            "--training.progress_bar=false"]))
    assert f"initialised from {find(source)}" in proc.stdout
    losses = [v for _, v in scalars(str(run))["train/loss"]]

    # The first batch, rebuilt as the run built it: the same datasets (sizes as mtds.train.run), samples 0-3.
    cfg = saved_run_config(read_config(find(str(run))))
    tok = load_tokenizer(tok_dir)
    train, _, _ = build_datasets(cfg, resolve_sources(cfg, cfg.kind.task.data_layout), tok, [20 * 4, 4, 4], 1)
    batch = [train[i] for i in range(4)]
    tokens = torch.stack([torch.as_tensor(b["tokens"]) for b in batch])  # [4, 64]
    labels = torch.stack([torch.as_tensor(b["labels"]) for b in batch])
    hf = AutoModelForCausalLM.from_pretrained(hf_dirs["llama_gqa"], dtype=torch.float32).eval()
    with torch.no_grad():
        hf_loss = torch.nn.functional.cross_entropy(hf(tokens).logits.flatten(0, 1), labels.flatten()).item()
    assert losses[0] == pytest.approx(hf_loss, rel=1e-5)
    assert losses[-1] < losses[0] - 0.7, losses  # measured: 6.06 -> 4.94


def test_training_refuses_a_tokenizer_with_other_special_ids_than_the_imported_model(imported, tiny_data):
    """The imported model learned BOS=1, EOS=2 (config.json); data made with the sentencepiece
    tokenizer of tests/helpers.py (BOS 2, EOS 3) would mark document ends with another token."""
    from mtds.ckpt.init_from import check_special_tokens
    from mtds.ckpt.layout import find, read_config
    from mtds.errors import ConfigError
    from mtds.data.tokenizer import load_tokenizer

    run_dir, _ = imported["llama_gqa"]
    ckpt = find(run_dir)
    saved = read_config(ckpt)
    check_special_tokens(ckpt, saved, load_tokenizer(os.path.join(run_dir, "tokenizer")), "own")  # its own: fine
    spm = tiny_data["tokenizer_model"]
    with pytest.raises(ConfigError, match=rf"^data.tokenizer_model={spm}: its bos id is 2 but the model imported in "
                                          rf"{ckpt} uses 1 \(.*/config.json bos_token_id\); preprocess the data"):
        check_special_tokens(ckpt, saved, load_tokenizer(spm), spm)


def test_init_from_an_import_with_another_model_config_names_the_run_config(imported):
    from mtds.ckpt.init_from import plan_init
    from mtds.config import build_config, resolved_dict
    from mtds.errors import ConfigError

    run_dir, _ = imported["llama_gqa"]
    with pytest.raises(ConfigError, match=r"holds another network: .* \(train it with --config "
                                          rf"{run_dir}/run_config.json\)$"):
        plan_init(run_dir, resolved_dict(build_config({})))


def test_an_imported_model_is_a_distillation_teacher_with_transformers_logits(imported, hf_dirs):
    """training.teacher may be an import_hf output (issue #26): the teacher check accepts the run dir, the
    student's tokenizer must be the imported one (another is refused with one line), and the frozen teacher
    distillation builds gives transformers' logits (not, as in Megatron Bridge #1422, silently zero weights)."""
    from helpers import tiny_cfg

    from mtds.ckpt.layout import read_config
    from mtds.errors import ConfigError
    from mtds.kinds import KINDS
    from mtds.train.distill import check_vocab, load_teacher, plan_teacher

    run_dir, _ = imported["llama_gqa"]
    student = tiny_cfg("gpt", training={"teacher": run_dir})
    ckpt, record = plan_teacher(student, 1, KINDS["gpt"].family, gives_token_logits=True)
    saved = read_config(ckpt)
    assert record["run_dir"] == os.path.abspath(run_dir) and record["manifest_xxh3_128"]
    own_tokenizer = saved["data_sources"]["tokenizer_model"]
    check_vocab(ckpt, saved, int(saved["vocab_size"]), own_tokenizer)  # the student preprocessed with it
    other = os.path.join(os.path.dirname(hf_dirs["llama_gqa"]), "llama_tied_llama3_rope", "config.json")
    with pytest.raises(ConfigError, match="which differ; preprocess the data with the teacher's tokenizer"):
        check_vocab(ckpt, saved, int(saved["vocab_size"]), other)
    teacher = load_teacher(ckpt, saved, "fp32", torch.device("cpu"), log=lambda *_: None)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    ids = _ids(32)
    with torch.no_grad():
        theirs = _hf_model(hf_dirs["llama_gqa"])(ids).logits
        ours = teacher(ids, torch.arange(32).unsqueeze(0).expand(2, 32), None)
    assert theirs.abs().max() > 1.0
    torch.testing.assert_close(ours[..., :theirs.shape[-1]], theirs, atol=LOGITS_ATOL, rtol=0)
