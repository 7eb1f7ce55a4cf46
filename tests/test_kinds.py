"""The structure that makes a model kind one family file plus one task file (mtds/kinds.py):
every file listed, every kind builds and trains a step, no kind tests outside the kind files, no
import cycles, a torch-free config path, and saved configs of the earlier format still load."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from mtds.kinds import KINDS  # torch-free: safe at collection

PACKAGES = ("mtds", "data_tools")


def python_files(package: str) -> list[str]:
    out = []
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(out)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


# -- the kinds table -------------------------------------------------------------------------
def test_every_family_and_task_file_is_a_listed_kind():
    from mtds.kinds import family_name, task_name

    def files(folder, shared=()):
        names = {f[:-3] for f in os.listdir(os.path.join(ROOT, "mtds", folder)) if f.endswith(".py")}
        return names - {"__init__", *shared}

    assert files("models", shared=("common",)) == {family_name(k.family) for k in KINDS.values()}
    assert files("tasks") == {task_name(k.task) for k in KINDS.values()}
    from mtds.config import PRESETS

    families = {k.family for k in KINDS.values()}
    assert len(PRESETS) == sum(len(f.PRESETS) for f in families)  # preset names unique across families
    assert all(f.DEFAULT_PRESET in f.PRESETS for f in families)


def test_kinds_and_config_import_no_torch():
    code = "import sys, mtds.kinds, mtds.config; print(sorted(m for m in ('torch', 'megatron', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_type_choices_come_from_the_kinds_table(capsys):
    from mtds.pretrain import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model-type", "nope"])
    assert "choose from " + ", ".join(repr(k) for k in KINDS) in capsys.readouterr().err


def test_pretrain_entry_point_stays_short():
    with open(os.path.join(ROOT, "mtds", "pretrain.py")) as f:
        assert len(f.readlines()) <= 80


# `model_type == "bert"`, `"gpt" != x`, `model_type in ("gpt", ...)`: a kind decided by name.
KIND_TEST = re.compile(r"""model_type\s*(==|!=|(not\s+)?in\s*[([{])|(==|!=)\s*["'](gpt|bert)["']|["'](gpt|bert)["']\s*(==|!=)""")


def test_no_kind_is_tested_by_name_outside_its_own_files():
    kind_files = {os.path.join(ROOT, "mtds", "kinds.py")}
    kind_dirs = (os.path.join(ROOT, "mtds", "models"), os.path.join(ROOT, "mtds", "tasks"))
    offenders = []
    for package in ("mtds",):  # data_tools knows no model kinds
        for path in python_files(package):
            if path in kind_files or path.startswith(kind_dirs):
                continue
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    if KIND_TEST.search(line.split("#")[0]):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- imports -------------------------------------------------------------------------------------
def import_graph() -> dict[str, set[str]]:
    """{module: internal modules it imports}, from every import statement (top level and inside
    functions alike), read with `ast`."""
    paths = {module_name(p): p for package in PACKAGES for p in python_files(package)}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        is_package = path.endswith("__init__.py")
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parent = name.split(".") if is_package else name.split(".")[:-1]
                    parent = parent[: len(parent) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def test_no_import_cycles_in_mtds_and_data_tools():
    graph = import_graph()
    assert len(graph) > 40 and "mtds.kinds" in graph["mtds.config"]  # the walk sees real edges
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_data_tools_imports_nothing_from_mtds():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.startswith("mtds")) for m, ts in graph.items() if m.startswith("data_tools")}
    assert not {m: ts for m, ts in bad.items() if ts}


# -- the contract every kind keeps -------------------------------------------------------------
# tiny_data's pair of each layout, and its tokenizer (T5's has sentinel tokens)
LAYOUT_PREFIX = {"document": "prefix", "sentence": "sentence_prefix", "sft": "sft_prefix", "cls": "cls_prefix",
                 "span": "t5_prefix"}
LAYOUT_TOKENIZER = {"span": "t5_tokenizer_model"}
TINY = {"preset": "none", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "max_position_embeddings": 32}


def tiny_cfg(kind: str, tiny_data, run_dir, **model):
    from mtds.config import build_config
    from mtds.kinds import KINDS

    family = KINDS[kind].family
    shape = {**family.PRESETS[family.DEFAULT_PRESET], **TINY, **model}  # the family's architecture, tiny
    layout = KINDS[kind].task.DATA_LAYOUT
    prefix, tokenizer = tiny_data[LAYOUT_PREFIX[layout]], tiny_data[LAYOUT_TOKENIZER.get(layout, "tokenizer_model")]
    return build_config({"model": {"model_type": kind, **shape},
                         "data": {"paths": [prefix], "tokenizer_model": tokenizer,
                                  "split": "90,10,0", "num_workers": 0},
                         "training": {"run_dir": str(run_dir)}})


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_builds_trains_a_step_and_round_trips_its_hf_mapping(kind, world_of_one, tiny_data, tmp_path):
    from mtds.data.loader import ResumableBatchSampler, build_loader
    from mtds.data.sources import resolve_sources
    from mtds.hf.mapping import from_hf, not_exported, to_hf
    from mtds.kinds import build_model
    from mtds.models.common import count_parameters
    from mtds.data.tokenizer import SentencePieceTokenizer

    cfg = tiny_cfg(kind, tiny_data, tmp_path)
    family, task = cfg.kind.family, cfg.kind.task
    sources = resolve_sources(cfg, cfg.kind.task.DATA_LAYOUT)
    tokenizer = SentencePieceTokenizer(sources.tokenizer_model)
    task.check_data(cfg, sources, tokenizer)
    train, _, _ = task.build_datasets(cfg, sources, tokenizer, [4, 2, None], 1)
    batch = next(iter(build_loader(train, ResumableBatchSampler(len(train), 0, 2, 0, 1), 0)))

    torch.manual_seed(0)
    vocab = cfg.model.padded_vocab_size(tokenizer.vocab_size)
    model = build_model(cfg, vocab, "fp32", on_gpu=False)
    loss, metrics = task.forward_step(model, batch, torch.device("cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert family.flops_per_token(cfg.model, count_parameters(model), cfg.seq_length, vocab) > 0
    layers = family.transformer_layers(model)
    stacks = 2 if hasattr(model, "encoder") and hasattr(model, "decoder") else 1  # T5: encoder and decoder layers
    assert len(layers) == stacks * cfg.model.num_layers and all(any(l is m for m in model.modules()) for l in layers)

    heads = task.model_heads(cfg.task)
    archs = [a for a in family.hf_architectures() if a.unsupported(cfg.model, heads) is None]
    assert archs, f"{kind}'s default architecture should map to a Hugging Face one"
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    for arch in archs:
        rules = arch.rules(cfg.model, heads)
        back = from_hf(to_hf(sd, rules), rules)
        assert back.keys() == sd.keys() - set(not_exported(rules)), arch.ARCHITECTURE
        assert all(torch.equal(back[k], sd[k]) for k in back), arch.ARCHITECTURE


# -- saved configs ---------------------------------------------------------------------------------
def test_format_1_run_configs_migrate_to_the_task_section():
    from mtds.config import build_config, from_dict, resolved_dict

    with open(os.path.join(ROOT, "tests", "data", "run_config_v1.json")) as f:
        captured = json.load(f)
    bert = from_dict(captured["bert"])
    assert bert.model.model_type == "bert" and bert.task.pair == "sop"
    assert (bert.task.masking_probability, bert.task.short_seq_prob) == (0.15, 0.1)
    gpt = from_dict(captured["gpt"])  # the BERT-only keys it carried are dropped
    same_now = {k: v for k, v in captured["gpt"]["model"].items() if k != "bert_binary_head"}
    assert gpt == from_dict(resolved_dict(build_config({"model": same_now})))
    old_no_head = json.loads(json.dumps(captured["bert"]))
    old_no_head["model"]["bert_binary_head"] = False
    assert from_dict(old_no_head).task.pair == "none"


def resolved(model: dict, task: dict | None = None, vocab: int = 512) -> dict:
    from mtds.config import build_config, resolved_dict

    cfg = build_config({"model": {"preset": "none", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
                                  "max_position_embeddings": 64, **model}, "task": task or {}})
    return {"run": resolved_dict(cfg), "vocab_size": cfg.model.padded_vocab_size(vocab)}


def test_resume_check_is_an_allow_list():
    from mtds.ckpt.resume import check_compatible
    from mtds.errors import ConfigError

    base = resolved({})
    notes = []
    check_compatible(base, resolved({"hidden_dropout": 0.1, "init_method_std": 0.01}), log=notes.append)
    assert notes == ["note: config differs from the checkpoint's (allowed): model.hidden_dropout: 0.0 -> 0.1",
                     "note: config differs from the checkpoint's (allowed): model.init_method_std: 0.02 -> 0.01"]
    with pytest.raises(ConfigError) as e:  # 512 -> 1000 padded rows: once only a note
        check_compatible(base, resolved({"make_vocab_size_divisible_by": 1000}))
    assert str(e.value) == ("checkpoint does not fit this model: model.make_vocab_size_divisible_by: 128 -> 1000; "
                            "padded vocabulary: 512 -> 1000 (another tokenizer?)")
    with pytest.raises(ConfigError, match=r"model.rotary_base: 10000 -> 500000"):  # no shape change, other model
        check_compatible(base, resolved({"rotary_base": 500000}))


def test_resume_check_covers_the_task_section():
    from mtds.ckpt.resume import check_compatible
    from mtds.errors import ConfigError

    bert = resolved({"model_type": "bert", "preset": "bert-tiny"})
    notes = []
    check_compatible(bert, resolved({"model_type": "bert", "preset": "bert-tiny"}, {"masking_probability": 0.2}), log=notes.append)
    assert notes == ["note: config differs from the checkpoint's (allowed): task.masking_probability: 0.15 -> 0.2"]
    with pytest.raises(ConfigError, match=r"task.pair: 'sop' -> 'nsp'"):
        check_compatible(bert, resolved({"model_type": "bert", "preset": "bert-tiny"}, {"pair": "nsp"}))
    with pytest.raises(ConfigError, match=r"model.model_type: 'gpt' -> 'bert'"):
        check_compatible(resolved({}), bert)


def test_model_keys_added_since_a_checkpoint_was_saved_take_their_defaults_on_resume():
    """A checkpoint saved before model.layernorm_epsilon, add_qkv_bias and rope_scaling existed
    (the code then did what their defaults do) resumes without a difference; a changed one is refused."""
    from mtds.ckpt.resume import check_compatible
    from mtds.errors import ConfigError

    old = resolved({})
    for key in ("layernorm_epsilon", "add_qkv_bias", "rope_scaling", "rope_scaling_factor"):
        del old["run"]["model"][key]
    notes = []
    check_compatible(old, resolved({}), log=notes.append)
    assert notes == []
    with pytest.raises(ConfigError, match=r"model.layernorm_epsilon: 1e-05 -> 1e-06"):
        check_compatible(old, resolved({"layernorm_epsilon": 1e-6}))
