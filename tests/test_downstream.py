"""Downstream evals, issue #27: eval packs (data_tools.eval_pack) and their scores in the training loop
(training.downstream_evals, mtds/train/downstream.py).

One 1-rank run (2 steps) and one 2-rank run (2 steps) score two packs of sizes that do not divide
by 2 (7 multiple-choice examples, 5 cloze); their in-loop scores are checked against a plain
PyTorch scoring of the saved weights, computed here from the model's logits."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from helpers import flags, missing, ok, run_pretrain, scalars, tiny_gpt_args, tiny_model, write_ds_config

N_MC, N_CLOZE = 7, 5


def corpus_sentences(tiny_data, n: int) -> list[str]:
    """n short prose lines of the tiny corpus (stdlib docstrings), 4-12 words each."""
    out = []
    with open(tiny_data["corpus"]) as f:
        for line in f:
            for s in json.loads(line)["text"].splitlines():
                words = s.strip().strip('"#').split()
                if 4 <= len(words) <= 12 and all(w.isascii() for w in words) and " ".join(words) not in out:
                    out.append(" ".join(words))
                if len(out) == n:
                    return out
    raise AssertionError("tiny corpus too small")


@pytest.fixture(scope="module")
def packs(tiny_data, tmp_path_factory):
    """{"mc": pack path, "cloze": pack path, "dir": folder}: the module's two packs of the tiny tokenizer."""
    from data_tools.eval_pack import main

    d = tmp_path_factory.mktemp("packs")
    lines = corpus_sentences(tiny_data, N_MC * 3 + N_CLOZE)
    with open(d / "mc.jsonl", "w") as f:
        for i in range(N_MC):  # the true end of a line among the ends of two others
            a, b, c = lines[3 * i:3 * i + 3]
            ctx, end = a.rsplit(" ", 2)[0], " ".join(a.split()[-2:])
            ends = [end, " ".join(b.split()[-2:]), " ".join(c.split()[-2:])]
            order = [(i + k) % 3 for k in range(3)]
            f.write(json.dumps({"ctx": ctx, "endings": [ends[k] for k in order], "label": order.index(0)}) + "\n")
    with open(d / "cloze.jsonl", "w") as f:
        for s in lines[3 * N_MC:]:
            f.write(json.dumps({"text": s}) + "\n")
    for name in ("mc", "cloze"):
        assert main(["--input", str(d / f"{name}.jsonl"), "--tokenizer-model", tiny_data["tokenizer_model"],
                     "--output", str(d / f"{name}.pack.json")]) == 0
    return {"mc": str(d / "mc.pack.json"), "cloze": str(d / "cloze.pack.json"), "dir": d}


def args_for(tiny_data, packs, run_dir, ds, *extra):
    return tiny_gpt_args(tiny_data, run_dir, ds, "--training.train_iters=2", "--training.eval_interval=100",
                         "--data.num_workers=0", f"--training.downstream_evals={packs['mc']} {packs['cloze']}",
                         "--training.downstream_interval=1", *extra)


def test_pack_layouts_and_bad_inputs_are_one_line(tiny_data, tmp_path, capsys):
    """HellaSwag, choices (a list, ARC's {text, label} with answerKey, a list of {text, label}) and cloze
    records; the ids are the encoded pair with the context's ids cut off; bad inputs one line each."""
    from data_tools.errors import run_cli
    from data_tools.eval_pack import main, read_pack
    from data_tools.spm import load_sentencepiece

    tok = tiny_data["tokenizer_model"]
    sp = load_sentencepiece(tok)

    def pack(records, *extra):
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in records))
        rc = run_cli(main, ["--input", str(src), "--tokenizer-model", tok, "--output", str(tmp_path / "p.json"),
                            *extra])
        err = capsys.readouterr().err
        return (read_pack(str(tmp_path / "p.json")) if rc == 0 else None), err.strip().splitlines()

    p, _ = pack([{"ctx": "Parse the header ", "endings": ["of a message", "quickly"], "label": "1"}])
    ex = p["examples"][0]
    assert p["layout"] == "hellaswag" and ex["gold"] == 1 and ex["chars"] == [12, 7] and ex["bytes"] == [13, 8]
    assert ex["context"] == sp.encode("Parse the header")  # its trailing spaces go to the continuation
    assert ex["context"] + ex["continuations"][0] == sp.encode("Parse the header  of a message")
    for choices, answer in ((["a string", "a file"], 0), ({"text": ["a string", "a file"], "label": ["A", "B"]}, "A"),
                            ([{"text": "a string", "label": "A"}, {"text": "a file", "label": "B"}], "A")):
        p, _ = pack([{"question": "json.dumps returns", "choices": choices, "answerKey": answer}])
        ex = p["examples"][0]
        assert p["layout"] == "choices" and ex["gold"] == 0 and len(ex["continuations"]) == 2
    p, _ = pack([{"text": "the message has a body"}])
    assert p["layout"] == "cloze" and p["examples"][0]["continuations"] == [sp.encode("the message has a body")[
        len(sp.encode("the message has a")):]]
    assert pack([{"foo": 1, "bar": 2}])[1] == [
        f"error: {tmp_path / 'in.jsonl'}:1: layout not recognised from its fields (bar, foo); known layouts: "
        "hellaswag: ctx, endings, label; choices: question, choices, answer; cloze: text (or pass --layout)"]
    assert pack([{"ctx": "a b"}], "--layout", "hellaswag")[1] == [
        f"error: {tmp_path / 'in.jsonl'}:1: missing field endings, label of layout hellaswag (fields: ctx)"]
    assert pack([])[1] == [f"error: {tmp_path / 'in.jsonl'}: no examples in the input (empty set)"]
    assert "answer 'C' names none of its 2 choices" in pack(
        [{"question": "q", "choices": ["a", "b"], "answer": "C"}])[1][0]
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["examples"][0]["context"] = [5, 6]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    from data_tools.errors import DataToolsError

    with pytest.raises(DataToolsError, match="content does not match its hash"):
        read_pack(str(tmp_path / "p.json"))


def plain_scores(run_dir, pack_path) -> dict:
    """acc, acc_norm and bpb of a pack computed here from the saved weights' logits: each choice's whole
    row through the model alone, log-softmax, the continuation's log-probabilities summed."""
    from mtds.load_trained import load_trained

    run = load_trained(str(run_dir))
    pack = json.load(open(pack_path))
    hits = norm_hits = nll = nbytes = 0.0
    for ex in pack["examples"]:
        lls, greedy = [], []
        for cont in ex["continuations"]:
            row = torch.tensor([ex["context"] + cont])
            with torch.no_grad():
                logits = run.model(row[:, :-1], torch.arange(row.size(1) - 1)[None], None).float()
            lp = torch.log_softmax(logits[0, -len(cont):], -1)
            lls.append(lp[torch.arange(len(cont)), torch.tensor(cont)].double().sum().item())
            greedy.append(lp.argmax(-1).tolist() == cont)
        g = ex["gold"]
        if len(lls) == 1:
            hits += greedy[0]
        else:
            hits += max(range(len(lls)), key=lambda j: lls[j]) == g
            norm_hits += max(range(len(lls)), key=lambda j: lls[j] / ex["chars"][j]) == g
        nll, nbytes = nll - lls[g], nbytes + ex["bytes"][g]
    n = len(pack["examples"])
    out = {"n": n, "acc": hits / n, "bpb": nll / math.log(2) / nbytes}
    if pack["layout"] != "cloze":
        out["acc_norm"] = norm_hits / n
    return out


def check_run(run_dir, packs):
    """The run's final downstream scores (downstream.json, the last checkpoint's record, TensorBoard)
    equal the plain scoring of its weights, over every example."""
    record = json.loads((run_dir / "downstream.json").read_text())
    assert record["iteration"] == 2
    saved = json.loads((run_dir / "checkpoints" / "iter_0000002" / "mtds_config.json").read_text())
    assert saved["downstream"] == record
    tb = scalars(str(run_dir))
    for name, n in (("mc", N_MC), ("cloze", N_CLOZE)):
        got, want = record["tasks"][name], plain_scores(run_dir, packs[name])
        assert got["n"] == n == want["n"]
        for m in ("acc", "acc_norm"):
            assert got.get(m) == want.get(m), (name, m, got, want)
        assert got["bpb"] == pytest.approx(want["bpb"], rel=1e-5)
        assert got["acc_stderr"] == pytest.approx(math.sqrt(got["acc"] * (1 - got["acc"]) / (n - 1)))
        assert [s for s, _ in tb[f"downstream/{name}/acc"]] == [1, 2]
        assert tb[f"downstream/{name}/bpb"][-1][1] == pytest.approx(got["bpb"], rel=1e-6)
        # the series mtds.plot draws: consumed tokens as the step
        assert [s for s, _ in tb[f"downstream_vs_tokens/{name}/acc"]][-1] == record["consumed_tokens"]
    return record


@pytest.fixture(scope="module")
def runs(tiny_data, packs, tmp_path_factory):
    """{"one": run dir, "two": run dir}: fp32 runs of 2 steps at 1 rank and at 2 ranks (the launcher)
    scoring both packs at steps 1 and 2."""
    tmp = tmp_path_factory.mktemp("downstream_runs")
    ds = write_ds_config(str(tmp / "ds.json"), stage=1, micro=2, accum=1, precision="fp32")
    proc = ok(run_pretrain(args_for(tiny_data, packs, tmp / "one", ds)))
    assert "downstream at iter 2 | mc (n 7) | acc " in proc.stdout
    ok(run_pretrain(args_for(tiny_data, packs, tmp / "two", ds), ranks=2))
    return {"one": tmp / "one", "two": tmp / "two"}


def test_in_loop_scores_equal_plain_scoring_at_one_and_two_ranks(runs, packs):
    """Packs of 7 and 5 examples: every example counted once at each world size, the scores those of
    the saved weights."""
    check_run(runs["one"], packs)
    check_run(runs["two"], packs)


LM_EVAL_TASK = """task: mc_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: ctx
doc_to_choice: endings
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def lm_eval_task(packs, tmp_path_factory):
    """The multiple-choice pack's data as a local lm-eval YAML task (dataset_path: json): its folder.
    lm-eval reads it offline, its datasets cache in a temporary folder."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        missing("lm-eval is not installed (pip install -e '.[eval]')")
    tasks = tmp_path_factory.mktemp("lm_eval_tasks")
    (tasks / "mc_local.yaml").write_text(LM_EVAL_TASK.format(data=packs["dir"] / "mc.jsonl"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(tasks / "hf_cache"))
        yield tasks


def per_example(results) -> list[tuple[int, list[float], float, float]]:
    """lm-eval's logged samples of mc_local, by doc: (doc id, each choice's log-likelihood, acc, acc_norm)."""
    return sorted((s["doc_id"], [r[0] for r in s["filtered_resps"]], s["acc"], s["acc_norm"])
                  for s in results["samples"]["mc_local"])


@pytest.fixture(scope="module")
def adapter_results(runs, lm_eval_task):
    from mtds import lm_eval as adapter

    return adapter.evaluate(str(runs["one"]), ["mc_local"], include_path=str(lm_eval_task), log_samples=True)


def test_lm_eval_through_the_adapter_equals_the_in_loop_scores(runs, adapter_results, capsys, monkeypatch):
    """lm-eval's acc / acc_norm of the run through mtds.lm_eval equal the in-loop ones; without lm-eval,
    one line."""
    from mtds import lm_eval as adapter
    from helpers import call

    got = adapter_results["results"]["mc_local"]
    want = json.loads((runs["one"] / "downstream.json").read_text())["tasks"]["mc"]
    assert adapter_results["n-samples"]["mc_local"]["effective"] == N_MC
    assert (got["acc,none"], got["acc_norm,none"]) == (want["acc"], want["acc_norm"])
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    capsys.readouterr()
    rc, _, err = call(adapter.main, ["--load", str(runs["one"]), "--tasks", "mc_local"], capsys)
    assert rc == 2 and err.strip().splitlines() == [
        "error: mtds.lm_eval needs the lm-eval package (lm_eval): pip install 'mtds-pretrain[eval]' "
        "(lm-evaluation-harness)"]


def test_lm_eval_hf_model_on_the_export_equals_the_adapter(runs, adapter_results, lm_eval_task, tmp_path):
    """lm-eval's own `hf` model (transformers) on the run exported by mtds.export_hf scores the task as
    the adapter on the run does: the same counts, the same choice picked for every example (acc and
    acc_norm per doc), each choice's log-likelihood within fp32 rounding of a different kernel order."""
    import lm_eval

    from mtds.export_hf import export

    export(str(runs["one"]), str(tmp_path / "hf"), log=lambda *a: None)
    # add_bos_token=False: pairs are encoded without special tokens, as HFLM does for causal models by
    # default and data_tools.eval_pack does (an exported sentencepiece tokenizer would otherwise prepend <s>).
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32,"
                                      "add_bos_token=False", tasks=["mc_local"], device="cpu", log_samples=True,
                                      task_manager=lm_eval.tasks.TaskManager(include_path=str(lm_eval_task),
                                                                             include_defaults=False),
                                      bootstrap_iters=0)
    assert results["n-samples"]["mc_local"]["effective"] == N_MC
    ours, theirs = per_example(adapter_results), per_example(results)
    assert [(d, acc, norm) for d, _, acc, norm in ours] == [(d, acc, norm) for d, _, acc, norm in theirs]
    for (_, lls, _, _), (_, hf_lls, _, _) in zip(ours, theirs):
        assert hf_lls == pytest.approx(lls, abs=1e-4)
    for metric in ("acc,none", "acc_norm,none"):
        assert results["results"]["mc_local"][metric] == adapter_results["results"]["mc_local"][metric]


def test_downstream_refusals_are_one_line(tiny_data, packs, tmp_path, capsys):
    """An encoder kind (bert) and a pack of another tokenizer: one line each, before any training."""
    from data_tools.eval_pack import main as pack_main
    from mtds.pretrain import main

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=1, micro=2, accum=1, precision="fp32")

    def refused(*extra) -> str:
        rc = main(tiny_gpt_args(tiny_data, tmp_path / "run", ds, "--training.train_iters=2", "--data.num_workers=0",
                                *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert not (tmp_path / "run" / "checkpoints").exists()
        return err[0]

    assert refused(*flags("model", tiny_model("bert")), f"--training.downstream_evals={packs['mc']}") == (
        "error: training.downstream_evals: model.model_type='bert' is not a causal (GPT) kind, whose continuations "
        "downstream evals score; drop downstream_evals or use gpt")
    other = str(tmp_path / "t5.pack.json")
    assert pack_main(["--input", str(packs["dir"] / "mc.jsonl"), "--tokenizer-model", tiny_data["t5_tokenizer_model"],
                      "--output", other]) == 0
    capsys.readouterr()
    line = refused(f"--training.downstream_evals={other}")
    assert line.startswith(f"error: training.downstream_evals: {other} was built with another tokenizer "), line
    assert line.endswith(f"; rebuild it with --tokenizer-model {tiny_data['tokenizer_model']}"), line
