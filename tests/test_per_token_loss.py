"""Per-token objectives (mtds/train/reduction.py): every language-model loss is the sum of its
per-token losses over the whole optimizer step divided by the step's target count, so how the step
is cut into micro-batches and ranks does not change what is trained.

The reference is written here in plain PyTorch (the model's logits, F.cross_entropy, torch AdamW)
and shares no code with mtds's tasks or trainer; mtds's side is its own Trainer.train_step on a
real DeepSpeed engine (tests/per_token_steps.py). Samples have very different target counts, where
a mean per micro-batch (today's main before this change) weighs their tokens differently.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import DIST_ENV, ROOT, free_port, ok, release_shm_buffers, tiny_model
from per_token_steps import CLIP, EPS, LR, STEPS, VOCAB, run_steps

SAMPLES = 4 * STEPS  # a global batch of 4 per step
GRAD_TOL = dict(rtol=1e-5, atol=1e-6)  # atol: elements near 0, where summation order shows
WEIGHT_TOL = dict(rtol=1e-5, atol=1e-6)


def gpt_case() -> tuple[dict, list[dict]]:
    """gpt with task.eod_mask_loss: the loss mask is 0 where the input is the end-of-document token;
    here from 0 to ~90% of a sample's positions (documents of very different lengths)."""
    gen = torch.Generator().manual_seed(0)
    eod, samples = 3, []
    for i in range(SAMPLES):
        tokens = torch.randint(4, VOCAB, (33,), generator=gen)
        tokens[torch.rand(33, generator=gen) < (i % 4) * 0.3] = eod
        samples.append({"tokens": tokens[:-1], "labels": tokens[1:], "loss_mask": (tokens[:-1] != eod).float(),
                        "position_ids": torch.arange(32)})
    return {"model": tiny_model("gpt"), "task": {"eod_mask_loss": True}, "data": {"seq_length": 32}}, samples


def dataset_samples(config: dict, tiny_data: dict, prefix_key: str) -> list[dict]:
    """The first SAMPLES training samples of the run config's own dataset on the tiny corpus."""
    from mtds.config import build_config
    from mtds.data.sources import resolve_sources
    from mtds.data.tokenizer import SentencePieceTokenizer

    config = {**config, "data": {**config["data"], "paths": [tiny_data[prefix_key]],
                                 "tokenizer_model": tiny_data["tokenizer_model"], "split": "90,10,0",
                                 "cache_dir": os.path.join(tiny_data["dir"], "per_token_cache")}}
    cfg = build_config(config)
    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
    train, _, _ = cfg.kind.task.build_datasets(cfg, sources, SentencePieceTokenizer(sources.tokenizer_model),
                                               [SAMPLES, 1, None], 1)
    return [{k: torch.as_tensor(v) for k, v in train[i].items()} for i in range(SAMPLES)], config


def sft_case(tiny_data) -> tuple[dict, list[dict]]:
    """gpt_sft, one chat per sequence (pack=false): the assistant's reply is the target, 1 to ~20
    tokens of 32."""
    config = {"model": tiny_model("gpt_sft"), "task": {"pack": False}, "data": {"seq_length": 32}}
    samples, config = dataset_samples(config, tiny_data, "sft_prefix")
    return config, samples


def bert_case(tiny_data) -> tuple[dict, list[dict]]:
    """bert (MLM + SOP): 15% of each sample's tokens masked, samples of very different lengths
    (short_seq_prob 0.7); the SOP loss is per sample."""
    config = {"model": tiny_model("bert"), "task": {"short_seq_prob": 0.7}, "data": {"seq_length": 64}}
    samples, config = dataset_samples(config, tiny_data, "sentence_prefix")
    return config, samples


def reference_loss(kind: str, model, batch: dict) -> torch.Tensor:
    """The per-token loss of a whole step's samples, written out: summed per-token cross entropy over
    every target of the step / the number of targets (BERT: plus the pair loss's mean over samples)."""
    if kind == "bert":
        logits, pair_logits = model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"])
        masked = batch["loss_mask"].bool()
        mlm = F.cross_entropy(logits[masked].float(), batch["labels"][masked], reduction="sum") / masked.sum()
        return mlm + F.cross_entropy(pair_logits.float(), batch["is_random"].long())
    logits = model(batch["tokens"], batch["position_ids"], batch.get("document_ids"))  # [b, s, V]
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), reduction="none")
    mask = batch["loss_mask"].flatten()
    return (per_token * mask).sum() / mask.sum()


def reference_steps(config: dict, samples: list[dict]) -> dict:
    """STEPS steps of torch AdamW (no weight decay, gradients clipped to norm CLIP) on the reference
    loss, 4 samples per step, from
    the weights mtds's engine starts from (same seed, same builder)."""
    from torch.utils.data import default_collate

    from mtds.config import build_config
    from mtds.kinds import build_model
    from mtds.parallel.process_groups import seed_everything

    cfg = build_config(config)
    seed_everything(cfg.training.seed)
    model = build_model(cfg, VOCAB, "fp32", on_gpu=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS, weight_decay=0.0)
    grads, losses = [], []
    for step in range(STEPS):
        batch = default_collate(samples[4 * step:4 * step + 4])
        loss = reference_loss(cfg.model.model_type, model, batch)
        optimizer.zero_grad()
        loss.backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})  # before clipping
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        losses.append(loss.item())
        optimizer.step()
    return {"grads": grads, "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
            "losses": losses}


@pytest.fixture(scope="module")
def cases(tiny_data, world_of_one):
    built = {"gpt": gpt_case(), "gpt_sft": sft_case(tiny_data), "bert": bert_case(tiny_data)}
    for name, (_, samples) in built.items():  # the property under test needs uneven target counts
        counts = [int(s["loss_mask"].sum()) for s in samples]
        assert max(counts) >= 2 * min(counts), f"{name}: target counts {counts} are too even to tell"
    return built


@pytest.fixture(scope="module")
def references(cases, world_of_one):
    return {name: reference_steps(config, samples) for name, (config, samples) in cases.items()}


@pytest.fixture(scope="module")
def two_ranks(cases, tmp_path_factory):
    """The same steps on 2 data-parallel ranks x micro-batch 2 (the launcher, gloo), every case in
    one launch."""
    tmp = tmp_path_factory.mktemp("per_token")
    torch.save(cases, tmp / "cases.pt")
    port = free_port()
    cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--master_port", port,
           os.path.join(ROOT, "tests", "per_token_steps.py"), str(tmp / "cases.pt"), str(tmp / "out.pt"), "2", "1"]
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests"), ROOT, env.get("PYTHONPATH", "")])
    try:
        ok(subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600))
    finally:
        release_shm_buffers(port)
    return torch.load(tmp / "out.pt", weights_only=True)


def assert_same_steps(got: dict, want: dict) -> None:
    for step, (g, w) in enumerate(zip(got["grads"], want["grads"], strict=True)):
        for name in w:
            torch.testing.assert_close(g[name], w[name], **GRAD_TOL, msg=lambda m: f"step {step + 1} {name}: {m}")
    for name in want["weights"]:
        torch.testing.assert_close(got["weights"][name], want["weights"][name], **WEIGHT_TOL,
                                   msg=lambda m: f"weights after {STEPS} steps, {name}: {m}")


@pytest.mark.parametrize("name", ["gpt", "gpt_sft", "bert"])
@pytest.mark.parametrize("micro,accum", [(1, 4), (4, 1)])
def test_one_rank_trains_the_per_token_objective_however_the_step_is_cut(name, micro, accum, cases, references,
                                                                          world_of_one, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")  # what the launcher sets; DeepSpeed's engine asks for it
    config, samples = cases[name]
    got = run_steps(config, samples, micro, accum)
    assert_same_steps(got, references[name])
    # The logged loss: the step's per-token mean (the shares of its parts add up to it).
    logged = [sum(shares.values()) for shares in got["shares"]]
    assert logged == pytest.approx(references[name]["losses"], rel=1e-5)


@pytest.mark.parametrize("name", ["gpt", "gpt_sft", "bert"])
def test_two_ranks_train_the_per_token_objective(name, two_ranks, references):
    assert_same_steps(two_ranks[name], references[name])


def test_data_parallel_ranks_draw_their_own_dropout_masks(two_ranks):
    """Each data-parallel rank drops other units (hidden dropout: the default stream; attention
    dropout: megatron's tracker stream), after build_engine made the same initial weights on both."""
    rank0, rank1 = two_ranks["dropout_by_rank"]
    for stream in ("hidden", "attention"):
        assert not torch.equal(rank0[stream], rank1[stream]), stream
    # (the weights they start from are still the same: test_two_ranks_train_the_per_token_objective)


def test_sft_packed_and_unpacked_give_the_same_loss_and_gradients(tiny_data, world_of_one):
    """The same chats, several to a sequence (pack=true, each attending only to itself) or one per
    sequence: the same per-token loss and gradients."""
    from torch.utils.data import default_collate

    from mtds.config import build_config
    from mtds.kinds import build_model
    from mtds.parallel.process_groups import seed_everything
    from mtds.tasks import sft

    packed_samples, config = dataset_samples({"model": tiny_model("gpt_sft"), "task": {"pack": True},
                                              "data": {"seq_length": 64}}, tiny_data, "sft_prefix")
    unpacked_samples, _ = dataset_samples({**config, "task": {"pack": False}}, tiny_data, "sft_prefix")
    # Sequence 0 of the packed set holds the first chats of the shuffled order, which are the first
    # unpacked sequences (the same seed, the same order): as many as it has segments.
    n = int(packed_samples[0]["document_ids"].max()) + 1
    assert n >= 2
    cfg = build_config(config)
    seed_everything(cfg.training.seed)
    model = build_model(cfg, VOCAB, "fp32", on_gpu=False)

    def loss_and_grads(micro_batches):  # one optimizer step over these micro-batches, as the trainer weighs them
        from mtds.train.reduction import step_target_counts

        model.zero_grad()
        counts = step_target_counts(lambda b: sft.count_targets(b, None), micro_batches, "cpu", None)
        loss = 0.0
        for batch in micro_batches:
            sums, _ = sft.forward_step(model, batch, "cpu")
            share = sum(s / counts[p] for p, s in sums.items())
            share.backward()
            loss += share.item()
        return loss, {k: p.grad.clone() for k, p in model.named_parameters()}

    packed_loss, packed_grads = loss_and_grads([default_collate(packed_samples[:1])])
    # The unpacked chats as n micro-batches of one (micro-batch 1 x accumulation n): a mean per
    # micro-batch would weigh a short reply's tokens more than a long one's.
    unpacked_loss, unpacked_grads = loss_and_grads([default_collate([s]) for s in unpacked_samples[:n]])
    assert packed_loss == pytest.approx(unpacked_loss, rel=1e-5)
    for k in packed_grads:
        torch.testing.assert_close(packed_grads[k], unpacked_grads[k], **GRAD_TOL)
