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

from helpers import ROOT, micro_batch_loss, tiny_cfg
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
def defines(path: str) -> set[str]:
    """Top-level names a module assigns (FAMILY = ..., TASK = ...), read with `ast`."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def test_every_module_that_defines_a_family_or_task_is_a_listed_kind():
    import importlib

    listed = {id(k.family) for k in KINDS.values()} | {id(k.task) for k in KINDS.values()}
    found = []
    for path in python_files("mtds"):
        for name in defines(path) & {"FAMILY", "TASK"}:
            found.append(getattr(importlib.import_module(module_name(path)), name))
    assert len(found) >= 8 and all(id(x) in listed for x in found), [x.name for x in found if id(x) not in listed]
    for k in KINDS.values():  # a family's or task's name is its file's
        assert module_name(k.family.build.__code__.co_filename).endswith(f"models.{k.family.name}")
        assert module_name(k.task.forward_step.__code__.co_filename).startswith("mtds.tasks.")
    from mtds.config import PRESETS
    from mtds.kinds import FAMILIES

    assert len(PRESETS) == sum(len(f.presets) for f in FAMILIES)  # preset names unique across families
    assert all(f.default_preset in f.presets for f in FAMILIES)


def contract_fields() -> dict[str, list[str]]:
    import dataclasses

    from mtds.kind_contract import Family, Task

    return {"Family": [f.name for f in dataclasses.fields(Family)], "Task": [f.name for f in dataclasses.fields(Task)]}


def test_the_add_a_kind_checklist_lists_the_contract_field_for_field():
    with open(os.path.join(ROOT, "mtds", "README.md")) as f:
        text = f.read()
    for cls, fields in contract_fields().items():
        section = text.split(f"(`{cls}`)", 1)[1].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `(\w+)` \|", section, re.M)
        assert documented == fields, cls


def attribute_reads(path: str) -> list[tuple[int, str]]:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return [(n.lineno, n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]


def test_every_contract_field_is_read_outside_the_kind_files():
    """Keep the contract small: a field nobody reads goes (torchtitan walked back its TrainSpec)."""
    kind_files = {os.path.join(ROOT, "mtds", f) for f in ("kind_contract.py",)}
    read = {attr for package in ("mtds", "bench") for path in python_files(package) if path not in kind_files
            for _, attr in attribute_reads(path)}
    unused = [f"{cls}.{name}" for cls, names in contract_fields().items() for name in names if name not in read]
    assert not unused, unused


def test_no_hasattr_or_getattr_probes_a_contract_field():
    fields = {name for names in contract_fields().values() for name in names}
    offenders = []
    for path in python_files("mtds"):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for n in ast.walk(tree):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr")
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and n.args[1].value in fields):
                offenders.append(f"{os.path.relpath(path, ROOT)}:{n.lineno}")
    assert not offenders, offenders


# The commands and the shared leaves at the top of mtds/, and the run wiring, may look a kind up;
# below them code receives hooks (the trainer its forward, before_backward, summarize), never the kind.
RUN_WIRING = ("mtds/train/plan.py", "mtds/train/run.py")


def test_nothing_below_the_commands_and_the_run_wiring_reads_the_kind():
    offenders = []
    for path in python_files("mtds"):
        rel = os.path.relpath(path, ROOT)
        if os.path.dirname(rel) == "mtds" or rel in RUN_WIRING:
            continue
        offenders += [f"{rel}:{line}" for line, attr in attribute_reads(path) if attr == "kind"]
    assert not offenders, offenders
    wiring = [a for p in RUN_WIRING for _, a in attribute_reads(os.path.join(ROOT, p))]
    assert "kind" in wiring  # the check looks at real code: the wiring does read it


def test_the_readme_layout_lists_every_module_and_nothing_that_is_gone():
    with open(os.path.join(ROOT, "README.md")) as f:
        layout = f.read().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\bmtds/[\w/]+(?:\.py|/)", layout))
    modules = {os.path.relpath(p, ROOT) for p in python_files("mtds") if not p.endswith("__init__.py")}
    assert sorted(modules - named) == [], "modules the README's Layout does not list"
    assert sorted(p for p in named if not os.path.exists(os.path.join(ROOT, p))) == [], "listed but not in the tree"


def test_kinds_and_config_import_no_torch():
    code = "import sys, mtds.kinds, mtds.config; print(sorted(m for m in ('torch', 'megatron', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_type_choices_come_from_the_kinds_table(capsys):
    from mtds.config_cli import parse_args

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


def kind_cfg(kind: str, tiny_data, run_dir):
    """A tiny model of `kind` (32 positions) on tiny_data's pair of the layout its task reads."""
    layout = KINDS[kind].task.data_layout
    prefix, tokenizer = tiny_data[LAYOUT_PREFIX[layout]], tiny_data[LAYOUT_TOKENIZER.get(layout, "tokenizer_model")]
    return tiny_cfg(kind, max_position_embeddings=32, training={"run_dir": str(run_dir)},
                    data={"paths": [prefix], "tokenizer_model": tokenizer, "split": "90,10,0", "num_workers": 0})


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_builds_trains_a_step_and_round_trips_its_hf_mapping(kind, world_of_one, tiny_data, tmp_path):
    from mtds.data.loader import ResumableBatchSampler, build_loader
    from mtds.data.sources import resolve_sources
    from mtds.hf import architecture
    from mtds.hf.mapping import from_hf, not_exported, to_hf
    from mtds.kinds import build_model
    from mtds.models.common import count_parameters
    from mtds.data.tokenizer import SentencePieceTokenizer

    cfg = kind_cfg(kind, tiny_data, tmp_path)
    family, task = cfg.kind.family, cfg.kind.task
    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
    tokenizer = SentencePieceTokenizer(sources.tokenizer_model)
    task.check_data(cfg, sources, tokenizer)
    train, _, _ = task.build_datasets(cfg, sources, tokenizer, [4, 2, None], 1)
    batch = next(iter(build_loader(train, ResumableBatchSampler(len(train), 0, 2, 0, 1), 0)))

    torch.manual_seed(0)
    vocab = cfg.model.padded_vocab_size(tokenizer.vocab_size)
    model = build_model(cfg, vocab, "fp32", on_gpu=False)
    loss, metrics = micro_batch_loss(task, model, batch, torch.device("cpu"), cfg.task)
    assert loss.ndim == 0 and torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert set(task.forward_step(model, batch, "cpu", cfg.task)[0]) == set(task.count_targets(batch, cfg.task))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert family.flops_per_token(cfg.model, count_parameters(model), cfg.seq_length, vocab) > 0
    layers = family.transformer_layers(model)
    stacks = 2 if hasattr(model, "encoder") and hasattr(model, "decoder") else 1  # T5: encoder and decoder layers
    assert len(layers) == stacks * cfg.model.num_layers and all(any(l is m for m in model.modules()) for l in layers)

    heads = task.model_heads(cfg.task)
    archs = [a for a in map(architecture, family.hf_architectures) if a.unsupported(cfg.model, heads) is None]
    assert archs, f"{kind}'s default architecture should map to a Hugging Face one"
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    for arch in archs:
        rules = arch.rules(cfg.model, heads)
        back = from_hf(to_hf(sd, rules), rules)
        assert back.keys() == sd.keys() - set(not_exported(rules)), arch.ARCHITECTURE
        assert all(torch.equal(back[k], sd[k]) for k in back), arch.ARCHITECTURE


@pytest.mark.parametrize("kind", ["gpt", "bert", "t5"])
def test_the_default_corpus_is_built_in_the_layout_the_task_reads(kind, tiny_data, tmp_path, monkeypatch):
    """No data.paths: mtds.data.sources builds the default corpus in the task's data layout (its real
    build is minutes of sentence splitting on 2 cores, so the builder is replaced by one that records
    what it was asked and hands back tiny_data's pair; tests/test_data_tools.py builds each layout)."""
    import data_tools.default_dataset
    from data_tools.spm import DEFAULT_SENTINEL_TOKENS
    from mtds.data.sources import resolve_sources

    asked = []

    def build(out_dir, quiet=False, **layout):
        asked.append(layout)
        return {"prefix": tiny_data["prefix"], "tokenizer_model": tiny_data["tokenizer_model"]}

    monkeypatch.setattr(data_tools.default_dataset, "build_default_dataset", build)
    cfg = tiny_cfg(kind, data={"default_dir": str(tmp_path), "split": "90,10,0"})
    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
    assert sources.prefixes == [tiny_data["prefix"]]
    expected = {"gpt": (False, 0), "bert": (True, 0), "t5": (True, DEFAULT_SENTINEL_TOKENS)}[kind]
    assert asked and all((a["split_sentences"], a["sentinel_tokens"]) == expected for a in asked)


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
