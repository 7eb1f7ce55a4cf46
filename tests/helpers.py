"""Shared test helpers: tiny datasets, small DeepSpeed JSONs, running the real entry point,
and reading TensorBoard events back with TensorBoard's own reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "mtds", "pretrain.py")

# The tiny shape every test model starts from: learns visibly in a few dozen CPU steps.
TINY_SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "max_position_embeddings": 64}


def tiny_model(kind: str = "gpt", **over) -> dict:
    """[model] values of a tiny model of `kind`: its family's architecture (the default preset's
    switches: RoPE/RMSNorm/SwiGLU for GPT, learned positions/LayerNorm/GELU for BERT ...) at
    TINY_SHAPE, then `over`."""
    from mtds.kinds import KINDS

    family = KINDS[kind].family
    return {**family.presets[family.default_preset], **TINY_SHAPE, "preset": "none", "model_type": kind, **over}


def tiny_cfg(kind: str = "gpt", *, task: dict | None = None, data: dict | None = None,
             training: dict | None = None, **model):
    """The RunConfig of tiny_model(kind, **model) with the given [task], [data], [training] values."""
    from mtds.config import build_config

    return build_config({"model": tiny_model(kind, **model), "task": task or {}, "data": data or {},
                         "training": training or {}})


def flags(section: str, values: dict) -> list[str]:
    """Command-line overrides `--section.key=value` for mtds/pretrain.py."""
    return [f"--{section}.{k}={'none' if v is None else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in values.items()]


TINY_GPT = flags("model", {"preset": "none", **TINY_SHAPE})


def tiny_gpt_args(tiny_data: dict, run_dir, ds: str, *extra: str) -> list[str]:
    """mtds/pretrain.py arguments for TINY_GPT on the tiny corpus, logging every step."""
    return ["--deepspeed_config", ds, "--data.paths", tiny_data["prefix"], "--data.tokenizer_model",
            tiny_data["tokenizer_model"], "--data.split=90,10,0", "--run-dir", str(run_dir), *TINY_GPT,
            "--training.log_interval=1", "--training.eval_iters=1", "--training.progress_bar=false", *extra]


def missing(reason: str):
    """A prerequisite a test needs is not here: under CI (CI=true) the test fails, elsewhere it
    skips. A skipped test did not run; CI must not pass by skipping."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def micro_batch_loss(task, model, batch, device="cpu", opts=None):
    """(loss, {metric: value}) of one micro-batch as a one-micro-batch step weighs it: each loss part's
    sum over its targets divided by their count (mtds.train.reduction), metrics sum / count."""
    sums, metrics = task.forward_step(model, batch, device, opts)
    counts = task.count_targets(batch, opts)
    loss = sum(s / max(int(counts[p]), 1) for p, s in sums.items())
    return loss, {k: total / count for k, (total, count) in metrics.items()}


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The process, after asserting it exited 0 (its output tails as the message)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def build_tiny_data(out_dir: str, vocab_size: int = 512, sentences: bool = False) -> dict:
    """A ~1 MB slice of the stdlib -> sentencepiece model -> .bin/.idx (and _sentence if asked)."""
    from data_tools.corpus import build_corpus
    from data_tools.preprocess import preprocess
    from data_tools.train_tokenizer import train_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    stdlib = sysconfig.get_paths()["stdlib"]
    corpus = os.path.join(out_dir, "corpus.jsonl")
    build_corpus(corpus, inputs=[os.path.join(stdlib, "email"), os.path.join(stdlib, "json")], quiet=True)
    train_tokenizer([corpus], os.path.join(out_dir, "tok"), vocab_size=vocab_size, quiet=True)
    model = os.path.join(out_dir, "tok.model")
    prefix = os.path.join(out_dir, "tiny")
    preprocess([corpus], prefix, model, append_eod=True, workers=1, quiet=True)
    out = {"dir": out_dir, "corpus": corpus, "tokenizer_model": model, "prefix": prefix + "_text_document"}
    if sentences:
        preprocess([corpus], prefix, model, append_eod=True, workers=1, split_sentences=True, quiet=True)
        out["sentence_prefix"] = prefix + "_text_sentence"
        # T5: a tokenizer with 16 sentinels (a 32-token sample has at most 4 spans) and its _sentence data
        train_tokenizer([corpus], os.path.join(out_dir, "tok_t5"), vocab_size=vocab_size, quiet=True, sentinel_tokens=16)
        out["t5_tokenizer_model"] = os.path.join(out_dir, "tok_t5.model")
        preprocess([corpus], prefix + "_t5", out["t5_tokenizer_model"], append_eod=True, workers=1,
                   split_sentences=True, quiet=True)
        out["t5_prefix"] = prefix + "_t5_text_sentence"
    out.update(build_tiny_sft(out_dir, model, [os.path.join(stdlib, "email"), os.path.join(stdlib, "json")]))
    out.update(build_tiny_cls(out_dir, model, [os.path.join(stdlib, "email"), os.path.join(stdlib, "json")]))
    return out


def build_tiny_cls(out_dir: str, tokenizer_model: str, sources: list[str]) -> dict:
    """Classification data for the tiny corpus: its paragraphs labelled code or prose
    (`code_prose`: data_tools.cls_corpus's jsonl; `cls_prefix`: data_tools.classify's token prefix,
    its label side files beside it)."""
    from data_tools.classify import classify_preprocess
    from data_tools.cls_corpus import build_cls_corpus

    code_prose = os.path.join(out_dir, "code_prose.jsonl")
    build_cls_corpus(code_prose, sources, quiet=True)
    s = classify_preprocess([code_prose], os.path.join(out_dir, "code_prose"), tokenizer_model, quiet=True)
    return {"code_prose": code_prose, "cls_prefix": s.output}


def build_tiny_sft(out_dir: str, tokenizer_model: str, sources: list[str]) -> dict:
    """SFT data for the tiny corpus: the docstring -> signature pairs of `sources` (docsig.jsonl),
    and, short enough for 32-token sequences, chats "function name -> its signature"
    (`sft_prefix`: data_tools.sft's token prefix, its loss-mask side file beside it)."""
    import orjson

    from data_tools.sft import sft_preprocess
    from data_tools.sft_corpus import build_sft_corpus

    docsig = os.path.join(out_dir, "docsig.jsonl")
    build_sft_corpus(docsig, sources, quiet=True)
    chats = os.path.join(out_dir, "chats.jsonl")
    with open(docsig, "rb") as f, open(chats, "wb") as out:
        for line in f:
            sig = orjson.loads(line)["response"]
            name = sig.split("(")[0].split()[-1]
            out.write(orjson.dumps({"messages": [{"role": "user", "content": name},
                                                 {"role": "assistant", "content": sig}]}) + b"\n")
    prefix = os.path.join(out_dir, "chats")
    sft_preprocess([chats], prefix, tokenizer_model, max_length=33, quiet=True)
    return {"docsig": docsig, "chats": chats, "sft_prefix": prefix + "_sft_document"}


def write_ds_config(path: str, stage: int = 2, micro: int = 4, accum: int = 1, precision: str = "bf16",
                    warmup: int = 1, lr: float = 3e-3, torch_adam: bool = False, **extra) -> str:
    """A small DeepSpeed JSON for short runs (the shipped ones warm up for 30 steps)."""
    cfg = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "optimizer": {"type": "Adam", "params": {"lr": lr, "betas": [0.9, 0.95], "eps": 1e-8,
                                                 "weight_decay": 0.1, **({"torch_adam": True} if torch_adam else {})}},
        "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": warmup, "total_num_steps": "auto",
                                                           "cos_min_ratio": 0.1}},
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**9,
        **({"bf16": {"enabled": True}} if precision == "bf16" else {}),
        **({"fp16": {"enabled": True, "initial_scale_power": 16}} if precision == "fp16" else {}),
        **extra,
    }
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


USED_PORTS: list[str] = []  # this process's launcher ports, whose DeepSpeed buffers conftest removes


def free_port() -> str:
    """A TCP port free now, for a launcher's rendezvous: the suite runs tests side by side
    (pytest-xdist), so no two runs may share a fixed port. Below the kernel's ephemeral range, as
    mtds.parallel.process_groups._free_port chooses (it says why)."""
    from mtds.parallel.process_groups import _free_port

    USED_PORTS.append(str(_free_port()))
    return USED_PORTS[-1]


def release_shm_buffers(port: str) -> None:
    """Remove the shared-memory buffers DeepSpeed's CPU communication leaves in /dev/shm after a run
    (66 MB per rank, named by the rendezvous port; it never removes them). With a new port per run
    they add up: 21 GB of a 24 GB machine after a session of suites, and the OOM killer took pytest's
    workers. Call only once every process of that run has ended."""
    import glob

    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*"):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def run_pretrain(args: list[str], ranks: int = 0, timeout: float = 600, env: dict | None = None,
                 cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Run the real entry point: `python mtds/pretrain.py` (ranks=0) or the deepspeed launcher.

    ranks=0 runs mtds.pretrain.main in this process where it can (`pretrain_in_process` says when and how):
    the same code as `python mtds/pretrain.py` without a new interpreter importing torch, DeepSpeed and
    megatron-core (~4 s a run on 2 cores, ~50 runs in the suite)."""
    if not ranks and not env and can_pretrain_in_process():
        return pretrain_in_process(args, cwd)
    port = free_port()
    if ranks:
        cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", str(ranks),
               "--master_port", port, PRETRAIN, *args]
    else:
        cmd = [sys.executable, PRETRAIN, *args]
    # Not the rendezvous of a world this test process made for itself (mtds.load_trained sets it).
    inherited = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    full_env = {**inherited, "PYTHONWARNINGS": "ignore", **(env or {})}
    try:
        return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    finally:
        release_shm_buffers(port)


def can_pretrain_in_process() -> bool:
    """Not where this process already holds a world (a test's world_of_one or a loaded model: training
    would join it) and not when MTDS_TEST_SUBPROCESS=1 asks for a fresh process per run."""
    if os.environ.get("MTDS_TEST_SUBPROCESS") == "1" or any(k in os.environ for k in DIST_ENV):
        return False
    if "torch" in sys.modules:
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return False
    return True


def pretrain_in_process(args: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
    """mtds.pretrain.main(args) here, as `python mtds/pretrain.py args` would run it in `cwd`: its stdout
    and stderr captured, then the world it made taken down (DeepSpeed's and megatron-core's process
    groups, the rendezvous variables it set), so the next run starts as a new process would."""
    import contextlib
    import io
    import warnings

    from mtds import pretrain

    forget_per_process_state()
    out, err = io.StringIO(), io.StringIO()
    before_env, before_cwd = dict(os.environ), os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what PYTHONWARNINGS=ignore gives a subprocess run
            try:
                rc = pretrain.main(list(args))
            except SystemExit as e:  # argparse: --help and usage errors
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(before_cwd)
        end_world()
        os.environ.clear()
        os.environ.update(before_env)
    return subprocess.CompletedProcess([sys.executable, PRETRAIN, *args], rc, out.getvalue(), err.getvalue())


def forget_per_process_state() -> None:
    """What mtds remembers for the life of a process and a new one would not know: checkpoints it wrote or
    verified (a test that damages one must see it checked again), warnings given once, the usable-document
    scan of a BERT prefix (a test may rebuild the data at the same path)."""
    from mtds.ckpt import manifest, save_load
    from mtds.tasks import masked_lm

    manifest._known.clear()
    save_load._warned_damaged.clear()
    masked_lm.usable_documents.cache_clear()


def end_world() -> None:
    """Take down what a training run in this process set up: megatron-core's parallel state and
    the torch.distributed group (DeepSpeed's comm wraps the same group and forgets it with it)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed

    if "megatron.core" in sys.modules:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if "deepspeed.comm.comm" in sys.modules:
        sys.modules["deepspeed.comm.comm"].cdb = None  # so the next init_distributed makes a new backend


def scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run, read with TensorBoard's EventAccumulator: {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def call(main, argv, capsys) -> tuple[int, str, str]:
    """Run a tool's main in-process through its CLI wrapper; (exit code, stdout, stderr). A world of one
    the tool made for its model (mtds.load_trained) is taken down after it, as the tool's own process
    would end, so the test's later training runs stay in-process (`can_pretrain_in_process`)."""
    from mtds.tool_cli import run_tool

    had_world = not can_pretrain_in_process()
    before = {k: os.environ.get(k) for k in DIST_ENV}
    try:
        rc = run_tool(main, argv)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        rc = e.code
    finally:
        if not had_world:
            end_world()
            for k, v in before.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    out = capsys.readouterr()
    return rc, out.out, out.err
