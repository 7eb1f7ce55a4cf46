"""Hugging Face tokenizers end to end: `train_tokenizer --type hf-bpe`, `preprocess --tokenizer-type
HuggingFaceTokenizer` writing exactly AutoTokenizer's ids (BOS included), the one-line errors, and
one tiny GPT trained on an HF tokenizer that generate, evaluate and export_hf then use.

Two tokenizers, made here with the real libraries:
- "bpe": our own `train_hf_bpe` on the tiny corpus (data_tools.spm's special-token layout, no BOS);
- "llama": that vocabulary with Llama-3's framing: added <|begin_of_text|> / <|end_of_text|> tokens
  (ids past the trained vocabulary, so len(tokenizer) = 514 > 512) and a TemplateProcessing
  post-processor that puts BOS before every text; no pad, [CLS], [SEP] or [MASK].
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import TINY_GPT, ok, run_pretrain, scalars, write_ds_config

BOS3, EOS3 = "<|begin_of_text|>", "<|end_of_text|>"
TEXTS = ["import json\n\ndef f(x):\n    return x + 1  # 12345\n", "naïve café — 東京 🚀", "a </s> b [MASK] c", ""]


def _llama_like(bpe_dir: str, out_dir: str, eos: bool = True, eos_after: bool = False) -> str:
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(os.path.join(bpe_dir, "tokenizer.json"))
    tok.add_special_tokens([AddedToken(BOS3, special=True), AddedToken(EOS3, special=True)])
    bos = tok.token_to_id(BOS3)
    after = f" {EOS3}" if eos_after else ""  # eos_after: the post-processor also ends each text with EOS
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS3} $A{after}", pair=f"{BOS3} $A {BOS3} $B:1{after}",
        special_tokens=[(BOS3, bos), *([(EOS3, tok.token_to_id(EOS3))] if eos_after else [])])
    names = {"bos_token": BOS3, **({"eos_token": EOS3} if eos else {})}
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def toks(tiny_data, tmp_path_factory) -> dict:
    from data_tools.train_tokenizer import train_hf_bpe

    work = tmp_path_factory.mktemp("hf_tok")
    bpe = train_hf_bpe([tiny_data["corpus"]], str(work / "bpe"), vocab_size=512, quiet=True)
    return {"bpe": bpe, "llama": _llama_like(bpe, str(work / "llama")), "dir": work,
            "no_eos": _llama_like(bpe, str(work / "no_eos"), eos=False),
            "eos_after": _llama_like(bpe, str(work / "eos_after"), eos_after=True)}


def _documents(prefix: str) -> list[list[list[int]]]:
    """Per document, its sequences' token ids (megatron-core's reader)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    idx = ds.document_indices
    return [[ds[i].tolist() for i in range(idx[d], idx[d + 1])] for d in range(len(idx) - 1)]


def _corpus_texts(corpus: str) -> list[str]:
    with open(corpus) as f:
        return [json.loads(line)["text"] for line in f]


def _cli(main, argv, capsys) -> tuple[int, str, str]:
    from mtds.tool_cli import run_tool

    rc = run_tool(main, argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_hf_bpe_is_deterministic_and_loads_with_autotokenizer(toks, tiny_data, tmp_path):
    from transformers import AutoTokenizer

    from data_tools.train_tokenizer import main

    assert main(["--type", "hf-bpe", "--input", tiny_data["corpus"], "--output-prefix", str(tmp_path / "again"),
                 "--vocab-size", "512", "--quiet"]) == 0
    with open(os.path.join(toks["bpe"], "tokenizer.json"), "rb") as a, open(tmp_path / "again" / "tokenizer.json", "rb") as b:
        assert a.read() == b.read()
    tok = AutoTokenizer.from_pretrained(toks["bpe"])
    assert len(tok) == 512
    assert [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.cls_token_id,
            tok.sep_token_id, tok.mask_token_id] == list(range(7))  # data_tools.spm's layout
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text  # byte-level: lossless, no BOS added
        assert tok.eos_token_id not in ids and tok.mask_token_id not in ids  # "</s>" in text stays text


@pytest.mark.parametrize("name, workers, type_flag", [("llama", 2, []), ("bpe", 1, ["--tokenizer-type", "HuggingFaceTokenizer"])])
def test_preprocess_writes_exactly_autotokenizer_ids(toks, tiny_data, tmp_path, capsys, name, workers, type_flag):
    from transformers import AutoTokenizer

    from data_tools.errors import run_cli
    from data_tools.preprocess import main

    prefix = str(tmp_path / name)
    assert run_cli(main, ["--input", tiny_data["corpus"], "--output-prefix", prefix, "--tokenizer-model", toks[name],
                          "--append-eod", "--workers", str(workers), "--quiet", *type_flag]) == 0
    tok = AutoTokenizer.from_pretrained(toks[name])
    docs = _documents(prefix + "_text_document")
    texts = _corpus_texts(tiny_data["corpus"])
    assert len(docs) == len(texts) > 10
    for seqs, text in zip(docs, texts):
        assert seqs == [tok(text)["input_ids"] + [tok.eos_token_id]]
    if name == "llama":
        assert all(seqs[0][0] == tok.bos_token_id for seqs in docs)
        from data_tools.inspect_data import main as inspect

        assert run_cli(inspect, [prefix + "_text_document", "--verify", "--tokenizer-model", toks[name]]) == 0
        assert "every id below the tokenizer's 514" in capsys.readouterr().out
        assert run_cli(inspect, [prefix + "_text_document", "--decode", "1", "--tokenizer-model", toks[name]]) == 0
        assert f"{BOS3}{texts[0]}{EOS3}" in capsys.readouterr().out


def test_split_sentences_puts_special_tokens_once_per_document(toks, tiny_data, tmp_path):
    """With an HF tokenizer, --split-sentences frames a document (BOS before its first sentence),
    not every sentence; each sentence is AutoTokenizer(sentence, add_special_tokens=False)."""
    from transformers import AutoTokenizer

    from data_tools.preprocess import preprocess
    from data_tools.sentences import SentenceSplitter

    prefix = str(tmp_path / "s")
    preprocess([tiny_data["corpus"]], prefix, toks["llama"], append_eod=True, workers=1, split_sentences=True,
               quiet=True, tokenizer_type="HuggingFaceTokenizer")
    tok = AutoTokenizer.from_pretrained(toks["llama"])
    splitter = SentenceSplitter()
    docs = _documents(prefix + "_text_sentence")
    texts = _corpus_texts(tiny_data["corpus"])
    assert len(docs) == len(texts) and sum(len(s) for s in docs) > 2 * len(docs)
    for seqs, text in zip(docs, texts):
        want = [tok(s, add_special_tokens=False)["input_ids"] for s in splitter.split(text)]
        want[0] = [tok.bos_token_id] + want[0]
        want[-1] = want[-1] + [tok.eos_token_id]
        assert seqs == want
        assert sum(s.count(tok.bos_token_id) for s in seqs) == 1


def test_bad_tokenizer_inputs_are_one_line_errors(toks, tiny_data, tmp_path, capsys):
    from data_tools.errors import run_cli
    from data_tools.preprocess import main

    def run(tokenizer, *flags):
        rc = run_cli(main, ["--input", tiny_data["corpus"], "--output-prefix", str(tmp_path / "o"),
                            "--tokenizer-model", str(tokenizer), "--quiet", *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        return err.strip()

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert run(empty).startswith(f"error: {empty}: no tokenizer.json; give a directory")
    file = os.path.join(toks["llama"], "tokenizer.json")
    assert run(file, "--tokenizer-type", "HuggingFaceTokenizer").startswith(
        f"error: {file}: is a file, but HuggingFaceTokenizer (--tokenizer-type) reads a directory")
    assert run(toks["llama"], "--tokenizer-type", "SentencePieceTokenizer").startswith(
        f"error: {toks['llama']}: is a directory, but SentencePieceTokenizer (--tokenizer-type) reads a .model file")
    assert run(toks["no_eos"], "--append-eod") == \
        f"error: {toks['no_eos']}: tokenizer has no eos token for --append-eod; set eos_token in " \
        "tokenizer_config.json, or drop --append-eod"
    assert run(toks["eos_after"], "--append-eod") == \
        f"error: {toks['eos_after']}: its post-processor already ends every text with the eos token {EOS3}; " \
        "drop --append-eod (it would add a second one)"
    broken = tmp_path / "broken"
    shutil.copytree(toks["bpe"], broken)
    (broken / "tokenizer.json").write_text("{not json")
    assert run(broken).startswith(f"error: {broken}: transformers cannot load this tokenizer (")
    assert sorted(os.listdir(tmp_path)) == ["broken", "empty_dir"]  # nothing written


@pytest.fixture(scope="module")
def llama_data(toks, tiny_data) -> dict:
    from data_tools.preprocess import preprocess

    prefix = str(toks["dir"] / "llama")
    preprocess([tiny_data["corpus"]], prefix, toks["llama"], append_eod=True, workers=1, quiet=True)
    preprocess([tiny_data["corpus"]], prefix, toks["llama"], append_eod=True, workers=1, quiet=True, split_sentences=True)
    return {"prefix": prefix + "_text_document", "sentence_prefix": prefix + "_text_sentence"}


def test_training_config_mistakes_with_hf_tokenizers(toks, tiny_data, llama_data, tmp_path, capsys):
    from mtds.pretrain import main

    def error(*extra) -> str:
        argv = ["--deepspeed_config", write_ds_config(str(tmp_path / "ds.json")), "--run-dir", str(tmp_path / "run"),
                "--data.split=90,10,0", *TINY_GPT, *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
        return err[-1]

    gpt = ["--data.paths", llama_data["prefix"], "--data.tokenizer_model", toks["llama"]]
    assert "data.tokenizer_type='hf': choose one of auto, SentencePieceTokenizer, HuggingFaceTokenizer" in \
        error(*gpt, "--data.tokenizer_type=hf")
    assert error(*gpt, "--model.vocab_size=512") == \
        f"error: model.vocab_size=512 is smaller than the tokenizer's 514 ({toks['llama']}); raise it or set " \
        "model.vocab_size=none to derive it"
    assert error("--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"],
                 "--data.tokenizer_type=HuggingFaceTokenizer").startswith(
        f"error: {tiny_data['tokenizer_model']}: is a file, but HuggingFaceTokenizer (data.tokenizer_type) reads a directory")
    assert error("--model.model_type=bert", "--model.position_embedding_type=learned_absolute",
                 "--data.paths", llama_data["sentence_prefix"], "--data.tokenizer_model", toks["llama"]) == \
        f"error: {toks['llama']}: tokenizer has no cls token, which BERT needs; set cls_token in its " \
        "tokenizer_config.json (its tokenizer.json must know it), or train one with " \
        "`python -m data_tools.train_tokenizer --type hf-bpe`"


def test_a_run_saved_without_a_tokenizer_type_loads_sentencepiece(tiny_data, tmp_path):
    """Run dirs from before data_sources.tokenizer_type: their tokenizer is the sentencepiece model."""
    from mtds.hf.tokenizer import write_tokenizer
    from mtds.load_trained import TrainedRun
    from mtds.data.tokenizer import SentencePieceTokenizer

    old = TrainedRun(model=None, cfg=None, saved={"data_sources": {"tokenizer_model": tiny_data["tokenizer_model"]}},
                     run_dir="", ckpt_dir="")
    assert isinstance(old.tokenizer(), SentencePieceTokenizer)
    assert write_tokenizer(tiny_data["tokenizer_model"], str(tmp_path), 64)["eos_token_id"] == 3


@pytest.mark.slow
def test_gpt_on_an_hf_tokenizer_trains_generates_evaluates_and_exports(toks, llama_data, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtds import evaluate, export_hf, generate
    from mtds.generate import generate as generate_ids
    from mtds.load_trained import load_trained
    from mtds.data.tokenizer import HuggingFaceTokenizer

    run_dir = str(tmp_path / "run")
    ds = write_ds_config(str(tmp_path / "ds.json"), precision="fp32", torch_adam=True)
    ok(run_pretrain(["--deepspeed_config", ds, "--run-dir", run_dir, *TINY_GPT, "--data.paths", llama_data["prefix"],
                     "--data.tokenizer_model", toks["llama"], "--data.split=90,10,0", "--training.train_iters=5",
                     "--training.eval_interval=5", "--training.eval_iters=1", "--training.log_interval=1",
                     "--training.progress_bar=false", "--data.num_workers=0"]))
    with open(os.path.join(run_dir, "config.json")) as f:
        sources = json.load(f)["data_sources"]
    assert sources["tokenizer_type"] == "HuggingFaceTokenizer" and sources["tokenizer_model"] == toks["llama"]

    rc, out, err = _cli(generate.main, ["--load", run_dir, "--prompt", "import json", "--greedy",
                                        "--max-new-tokens", "8", "--no-stop"], capsys)
    # (DeepSpeed's first import in a process may print to stdout before the text)
    assert rc == 0 and "\nimport json" in "\n" + out, err
    rc, out, err = _cli(evaluate.main, ["--load", run_dir, "--json", "--no-progress"], capsys)
    assert rc == 0, err
    assert json.loads(out)["loss"] == pytest.approx(dict(scalars(run_dir)["val/loss"])[5], abs=1e-5)

    export = str(tmp_path / "hf")
    rc, _, err = _cli(export_hf.main, ["--load", run_dir, "--out", export], capsys)
    assert rc == 0, err
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(export))
    theirs, ours = AutoTokenizer.from_pretrained(export), AutoTokenizer.from_pretrained(toks["llama"])
    for text in TEXTS + ["def main():\n    pass\n"]:
        assert theirs(text)["input_ids"] == ours(text)["input_ids"]
    with open(os.path.join(export, "config.json")) as f:
        config = json.load(f)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == \
        (ours.bos_token_id, ours.eos_token_id, ours.eos_token_id)  # no pad token: eos pads

    run = load_trained(run_dir)
    tok = run.tokenizer()
    assert isinstance(tok, HuggingFaceTokenizer) and tok.vocab_size == 514 and run.vocab_size > 514
    prompt = tok.tokenize("def main(")
    assert prompt[0] == ours.bos_token_id and prompt == theirs("def main(")["input_ids"]
    new = generate_ids(run.model, prompt, max_new_tokens=8, max_context=64, vocab_limit=tok.vocab_size, greedy=True,
                       stop_ids=(tok.eod,))  # transformers stops at eos too
    hf = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_new = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                             suppress_tokens=list(range(tok.vocab_size, run.vocab_size)))[0, len(prompt):]
    assert hf_new.tolist() == new
