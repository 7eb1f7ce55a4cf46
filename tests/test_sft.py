"""GPT supervised fine-tuning (kind gpt_sft): data_tools.sft's token + loss-mask pairs, the packed
dataset (mtds.data.sft_dataset), the loss, the Hugging Face chat-template path, bad inputs, and one
pretrain -> fine-tune -> generate --chat run on the tiny corpus's docstring -> signature pairs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

ATOL = 1e-5  # fp32: SDPA with a block mask and with is_causal sum in other orders
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def model(world_of_one):
    """A tiny random-weight GPT (RoPE) in fp32 and eval mode, for the tiny corpus's 512 tokens."""
    from helpers import tiny_cfg
    from mtds.kinds import build_model

    cfg = tiny_cfg("gpt_sft", num_attention_heads=4, num_query_groups=2,
                   data={"paths": ["unused"], "tokenizer_model": "unused"})
    torch.manual_seed(0)
    m = build_model(cfg, 512, "fp32", on_gpu=False).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def sft_cfg(tiny_data, run_dir, seq_length=64, **task):
    from helpers import tiny_cfg

    return tiny_cfg("gpt_sft", num_attention_heads=4, task=task, training={"run_dir": str(run_dir)},
                    data={"paths": [tiny_data["sft_prefix"]], "tokenizer_model": tiny_data["tokenizer_model"],
                          "split": "90,10,0", "seq_length": seq_length})


@pytest.fixture(scope="module")
def packed(tiny_data, tmp_path_factory):
    """(cfg, train PackedSFTDataset, tokenizer) over tiny_data's chats, 64-token sequences."""
    from mtds.data.sources import resolve_sources
    from mtds.data.tokenizer import load_tokenizer

    cfg = sft_cfg(tiny_data, tmp_path_factory.mktemp("sft_run"))
    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
    tok = load_tokenizer(sources.tokenizer_model)
    cfg.kind.task.check_data(cfg, sources, tok)
    train, valid, test = cfg.kind.task.build_datasets(cfg, sources, tok, [64, 4, 0], 1)
    assert valid is not None and test is None
    return cfg, train, tok


def _batch(item: dict) -> dict:
    return {k: v[None] for k, v in item.items()}


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each packed sample: positions restart at 0 per sample."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [len(position_ids)]))


def test_prompt_targets_do_not_change_the_loss(model, packed):
    from helpers import micro_batch_loss
    from mtds.tasks import sft

    def forward_step(model, batch, device):
        return micro_batch_loss(sft, model, batch, device)

    _, train, _ = packed
    batch = _batch(train[0])
    mask = batch["loss_mask"].bool()
    assert 0 < mask.sum() < mask.numel()  # targets and prompt/padding both present
    loss, _ = forward_step(model, batch, "cpu")
    altered = dict(batch, labels=torch.where(mask, batch["labels"], (batch["labels"] + 7) % 512))
    assert forward_step(model, altered, "cpu")[0].item() == loss.item()
    one_target = mask.flatten().nonzero()[0].item()
    changed = dict(batch, labels=batch["labels"].clone())
    changed["labels"].view(-1)[one_target] = (changed["labels"].view(-1)[one_target] + 7) % 512
    assert forward_step(model, changed, "cpu")[0].item() != loss.item()
    # The loss is the mean over the targets, computed here from the logits.
    with torch.no_grad():
        logits = model(batch["tokens"], batch["position_ids"], batch["document_ids"])[0].float()
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"][0], reduction="none")
    assert loss.item() == pytest.approx(ce[mask[0]].mean().item(), rel=1e-5)


def test_each_packed_sample_gets_the_logits_it_gets_alone(model, packed):
    _, train, tok = packed
    i = next(i for i in range(len(train)) if len(train.bins[i]) >= 2 and train[i]["loss_mask"][-1] == 0)
    item = train[i]
    segments = _segments(item["position_ids"])
    with torch.no_grad():
        together = model(*(_batch(item)[k] for k in ("tokens", "position_ids", "document_ids")))  # [1, s, V]
        for (lo, hi), row in zip(segments, train.bins[i]):
            ids, mask = train._sample(int(row))
            assert hi - lo == len(ids) - 1 and item["tokens"][lo:hi].tolist() == ids[:-1].tolist()
            assert item["loss_mask"][lo:hi].tolist() == mask[1:].tolist()
            alone = model(torch.as_tensor(ids[:-1])[None], torch.arange(len(ids) - 1)[None], None)
            torch.testing.assert_close(together[:, lo:hi], alone, atol=ATOL, rtol=0)
    pad_from = segments[len(train.bins[i]) - 1][1]
    assert item["loss_mask"][pad_from:].sum() == 0  # padding trains nothing
    assert (item["tokens"][pad_from:] == tok.pad).all()


def test_packing_is_deterministic_and_pack_false_holds_one_sample(tiny_data, packed, tmp_path):
    from mtds.data.sources import resolve_sources
    from mtds.tasks.sft import build_datasets

    cfg, train, tok = packed
    again = build_datasets(cfg, resolve_sources(cfg, cfg.kind.task.data_layout), tok, [64, 4, 0], 1)[0]
    assert all(torch.equal(train[i]["tokens"], again[i]["tokens"]) for i in (0, 5, len(train) - 1))
    single_cfg = sft_cfg(tiny_data, tmp_path, pack=False)
    single = build_datasets(single_cfg, resolve_sources(single_cfg, single_cfg.kind.task.data_layout), tok, [64, 4, 0], 1)[0]
    assert all(len(b) == 1 for b in single.bins) and max(len(b) for b in train.bins) > 1


def test_truncated_away_samples_are_counted_not_written_or_trained(tiny_data, tmp_path, capsys):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_tools.sft import loss_mask_prefix, sft_preprocess

    chats = tmp_path / "chats.jsonl"
    rows = [{"prompt": "short", "response": "def f(x):"},
            {"prompt": "long " * 200, "response": "def g(y):"},  # the response is beyond --max-length
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "def h(z, w):" * 5}]}]  # cut, targets left
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    s = sft_preprocess([str(chats)], str(tmp_path / "out"), tiny_data["tokenizer_model"], max_length=60)
    assert (s.samples, s.truncated_away, s.truncated, s.blank_lines) == (2, 1, 1, 1)
    assert "1 skipped (all response tokens truncated away)" in capsys.readouterr().err
    tokens, masks = IndexedDataset(s.outputs[0]), IndexedDataset(loss_mask_prefix(s.outputs[0]))
    assert tokens.sequence_lengths.tolist() == masks.sequence_lengths.tolist() and max(tokens.sequence_lengths) == 60
    assert all(masks[i][1:].any() for i in range(len(masks)))
    assert s.target_tokens == sum(int(masks[i].sum()) for i in range(len(masks)))


def test_samples_without_targets_in_the_training_window_are_dropped_and_counted(tiny_data, packed):
    from mtds.data.sft_dataset import PackedSFTDataset

    _, train, tok = packed
    lengths = np.array([train.pairs[0][0].sequence_lengths[i] for _, i in train.samples])
    window = 12  # shorter than the template's prompt part: every target lies beyond it
    ds = PackedSFTDataset(train.pairs, train.samples, window, 8, 0, tok.pad)
    assert ds.dropped == len(train.samples) == (lengths > window + 1).sum() and len(ds) == 0


BAD = {
    "missing_key": ({"prompt": "p"}, "missing key 'response'"),
    "no_assistant": ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    "unknown_role": ({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
                     "unknown role 'bot'"),
    "non_string": ({"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}]},
                   "content is list, not a string"),
    "malformed": ('{"prompt": "p", "response": ', "malformed JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_one_line_naming_file_and_line_and_nothing_is_written(case, tiny_data, tmp_path, capsys):
    from data_tools.errors import run_cli
    from data_tools.sft import main

    row, expected = BAD[case]
    path = tmp_path / "chats.jsonl"
    good = json.dumps({"prompt": "p", "response": "r"})
    path.write_text(good + "\n" + (row if isinstance(row, str) else json.dumps(row)) + "\n" + good + "\n")
    rc = run_cli(main, ["--input", str(path), "--output-prefix", str(tmp_path / "out"), "--tokenizer-model",
                        tiny_data["tokenizer_model"], "--max-length", "64", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {path}:2: ") and expected in err
    assert [p.name for p in tmp_path.iterdir()] == ["chats.jsonl"]


def test_training_refuses_a_prefix_without_its_loss_mask(tiny_data, tmp_path):
    from mtds.data.sources import resolve_sources
    from mtds.errors import ConfigError
    from mtds.data.tokenizer import load_tokenizer

    cfg = sft_cfg(tiny_data, tmp_path)
    cfg.data.paths = [tiny_data["prefix"]]  # pretraining data: no side file
    with pytest.raises(ConfigError, match="has no loss-mask side file .*python -m data_tools.sft"):
        cfg.kind.task.check_data(cfg, resolve_sources(cfg, cfg.kind.task.data_layout), load_tokenizer(tiny_data["tokenizer_model"]))


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_data, tmp_path_factory) -> str:
    """A tiny byte-level BPE with ChatML markers, eos <|im_end|> and a chat_template."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from data_tools.train_tokenizer import train_hf_bpe

    work = tmp_path_factory.mktemp("chatml")
    bpe = train_hf_bpe([tiny_data["corpus"]], str(work / "bpe"), vocab_size=400, quiet=True)
    tok = Tokenizer.from_file(os.path.join(bpe, "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    out = str(work / "chatml")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML).save_pretrained(out)
    return out


def test_a_hugging_face_chat_template_masks_exactly_the_assistant_turns(chatml_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from data_tools.chat_format import ChatEncoder, ChatError

    enc = ChatEncoder(chatml_tokenizer)
    assert enc.template == "hf"
    hf = AutoTokenizer.from_pretrained(chatml_tokenizer)
    chat = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "json.dumps?"},
            {"role": "assistant", "content": "def dumps(obj):"}, {"role": "user", "content": "and loads?"},
            {"role": "assistant", "content": "def loads(s):"}]
    ids, mask = enc.encode(chat)
    theirs = hf.apply_chat_template(chat, tokenize=True)
    assert ids == list(getattr(theirs, "input_ids", theirs))  # a BatchEncoding in newer transformers
    assert hf.decode([i for i, m in zip(ids, mask) if m]) == "def dumps(obj):<|im_end|>def loads(s):<|im_end|>"
    prompt = enc.prompt_ids(chat[:2])
    assert ids[:len(prompt)] == prompt and hf.decode(prompt).endswith("<|im_start|>assistant\n")
    # A template that renders earlier turns differently once more follow is not prefix-stable: refused.
    unstable = ChatEncoder(chatml_tokenizer)
    unstable.hf.chat_template = ("{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]<|im_end|>{% else %}"
                                 "{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}")
    with pytest.raises(ChatError, match="does not tokenize prefix-stably"):
        unstable.encode(chat)


def test_sft_preprocess_with_the_chat_template_and_the_default_template(chatml_tokenizer, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    from data_tools.sft import loss_mask_prefix, sft_preprocess

    hf = AutoTokenizer.from_pretrained(chatml_tokenizer)
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "name?", "response": "def f():"}) + "\n")
    for template, want in (("auto", "def f():<|im_end|>"), ("default", "def f():<|im_end|>")):
        s = sft_preprocess([str(path)], str(tmp_path / template), chatml_tokenizer, 64, template=template, quiet=True)
        pair = IndexedDataset(s.outputs[0]), IndexedDataset(loss_mask_prefix(s.outputs[0]))  # alive: views of the files
        ids, mask = pair[0][0], pair[1][0]
        assert hf.decode(ids[mask == 1].tolist()) == want, template
        assert ("### Assistant:" in hf.decode(ids.tolist())) == (template == "default")


@pytest.mark.slow
def test_fine_tuning_a_pretrained_gpt_lowers_the_response_loss_and_generate_chat_answers(tiny_data, tmp_path, capsys,
                                                                                          monkeypatch):
    """Pretrain 40 steps on the tiny corpus, then fine-tune from it (training.init_from) on its
    docstring -> signature pairs: the validation loss on response tokens falls,
    `mtds.generate --chat` answers a held-out prompt and stops at the end of its turn, `mtds.chat`
    holds a conversation from a pipe, and the export's chat_template prompts as mtds does."""
    import io
    import sys

    from helpers import call, ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

    from data_tools.sft import sft_preprocess

    shape = ["--model.max_position_embeddings=128", "--data.seq_length=128"]
    ds = write_ds_config(str(tmp_path / "ds.json"), micro=4, precision="fp32", lr=3e-3)
    ok(run_pretrain(tiny_gpt_args(tiny_data, tmp_path / "pre", ds, "--training.train_iters=40",
                                  "--training.eval_interval=40", *shape)))
    # prompt/response lines; the last 10% are the validation split, never trained on
    s = sft_preprocess([tiny_data["docsig"]], str(tmp_path / "docsig"), tiny_data["tokenizer_model"], 129, quiet=True)
    ok(run_pretrain(["--deepspeed_config", ds, "--model-type", "gpt_sft", "--data.paths", s.outputs[0],
                     "--data.tokenizer_model", tiny_data["tokenizer_model"], "--data.split=90,10,0",
                     "--run-dir", str(tmp_path / "sft"), "--training.init_from", str(tmp_path / "pre"),
                     "--model.preset=none", "--model.num_layers=2", "--model.hidden_size=64",
                     "--model.num_attention_heads=2", *shape, "--training.train_iters=40",
                     "--training.eval_interval=10", "--training.eval_iters=2", "--training.log_interval=1",
                     "--training.progress_bar=false"]))
    val = [v for _, v in scalars(str(tmp_path / "sft"))["val/loss"]]
    assert len(val) == 5 and val[-1] < 0.85 * val[0], val  # evaluated before the first step and every 10
    held_out = json.loads(open(tiny_data["docsig"]).readlines()[-1])["prompt"]
    from mtds import chat, generate

    rc, stdout, err = call(generate.main, ["--load", str(tmp_path / "sft"), "--chat", "--prompt", held_out, "--greedy",
                                           "--max-new-tokens", "40"], capsys)
    assert rc == 0, err[-2000:]
    assert "def " in stdout and "### " not in stdout, stdout
    # mtds.chat from a pipe: two turns (history), /reset, a third; the answers on stdout, exit 0 at EOF
    second = json.loads(open(tiny_data["docsig"]).readlines()[-2])["prompt"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{held_out}\n{second}\n/reset\n{held_out}\n"))
    rc, stdout, err = call(chat.main, ["--load", str(tmp_path / "sft"), "--greedy", "--max-new-tokens", "40",
                                       "--system", "You write Python signatures."], capsys)
    assert rc == 0, err[-2000:]
    assert stdout.count("def ") >= 3 and "### " not in stdout, stdout
    # the export carries the default template as its chat_template: transformers prompts with mtds's ids
    from transformers import AutoTokenizer

    from data_tools.chat_format import ChatEncoder
    from mtds.export_hf import export

    export(str(tmp_path / "sft"), str(tmp_path / "hf"), log=lambda *_: None)
    chat = [{"role": "system", "content": "You write Python signatures."}, {"role": "user", "content": held_out}]
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf").apply_chat_template(chat, add_generation_prompt=True)
    assert list(theirs["input_ids"]) == ChatEncoder(tiny_data["tokenizer_model"]).prompt_ids(chat)
