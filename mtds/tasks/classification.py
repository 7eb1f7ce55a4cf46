"""Sequence classification with a BERT encoder (kind bert_cls): one label per text or text pair.

Data: what `python -m data_tools.classify` writes, a token prefix `..._cls_document` (data.paths)
with its side files `..._cls_document_labels.npy` (class id per sample) and `_labels.json` (the
label set). Samples are framed `[CLS] a [SEP] (b [SEP])` and padded to data.seq_length
(mtds.data.cls_dataset). Model: megatron-core BertModel's encoder and Pooler plus a classification head
(mtds.models.bert_classifier). Loss = cross entropy per sample, over the whole optimizer step (a
per-sample objective; the language-model tasks are per token); metrics acc and macro_f1.
Start from a pretrained BERT with `training.init_from=RUN_DIR` (same family, weights only; the
classification head starts fresh and is named in a `note:` line).

Training logs `val/macro_f1` over all the evaluated samples at once (`summarize`, from the summed
per-class counts); `python -m mtds.evaluate` gives the same and a per-class table (`report`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mtds.errors import ConfigError
from mtds.kind_contract import Task

DATA_LAYOUT = "cls"
"""preprocess output this task reads: data_tools.classify's `_cls_document` token prefix + its label side files."""


@dataclass
class Options:
    """[task] options of classification."""

    labels: list[str] = field(default_factory=list)
    """The class names, in class-id order. Empty (the default): taken from the data's label set
    (`..._cls_document_labels.json`) and saved with every checkpoint, so the tools know the classes.
    Given: must equal the data's."""


CHANGEABLE_ON_RESUME: tuple[str, ...] = ()
"""`labels` sizes the classification head, so a resume must keep it."""


def validate(opts: Options, cfg) -> list[str]:
    errs = []
    if not cfg.data.paths:
        errs.append(f"model_type={cfg.model.model_type!r} needs data.paths (there is no default labelled corpus): "
                    "build one with `python -m data_tools.classify` and give its _cls_document prefix")
    if cfg.data.weights is not None:
        errs.append("data.weights: classification reads all of data.paths, concatenated; drop data.weights")
    if opts.labels and len(set(opts.labels)) != len(opts.labels):
        errs.append(f"task.labels={opts.labels}: the names must be distinct")
    return errs


def model_heads(opts: Options) -> dict:
    """Build switches for the family: the classifier, one logit per label (no masked-LM head).
    The labels come from the data (check_data) or a saved config; without them there is no head to size."""
    if not opts.labels:
        raise ConfigError("task.labels is empty: the classifier's size comes from the data's label set "
                          "(check_data fills it; give data.paths built by `python -m data_tools.classify`)")
    return {"class_labels": tuple(opts.labels)}


def flops_args(opts: Options, seq_length: int) -> dict:
    """The classifier runs no masked-LM head: the family's FLOPs count leaves its output layer out."""
    return {"lm_head": False}


def check_data(cfg, sources, tokenizer) -> None:
    """Every prefix needs its label side files, one class id per sample, and one label set shared by
    all prefixes; `cfg.task.labels` is filled from it (one-line ConfigError for every problem)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_tools.classify import labels_path, label_set_path, read_label_set
    from data_tools.errors import DataToolsError

    tokenizer.cls, tokenizer.sep, tokenizer.pad  # noqa: B018 -- each raises if the tokenizer lacks it
    rebuild = "rebuild with `python -m data_tools.classify` (give the _cls_document prefix as data.paths)"
    found = None
    for prefix in sources.all_prefixes:
        ids_file, set_file = labels_path(prefix), label_set_path(prefix)
        for side in (ids_file, set_file):
            if not os.path.isfile(side):
                raise ConfigError(f"data.paths: {prefix} has no label side file {side}; {rebuild}")
        try:
            names = [str(x) for x in read_label_set(set_file)]
        except DataToolsError as e:
            raise ConfigError(f"data.paths: {e}; {rebuild}") from None
        n_docs = len(IndexedDataset(prefix).document_indices) - 1
        ids = np.load(ids_file, mmap_mode="r")
        if ids.shape != (n_docs,) or (n_docs and not 0 <= int(ids.min()) <= int(ids.max()) < len(names)):
            raise ConfigError(f"data.paths: {ids_file} does not match {prefix} ({ids.shape[0]} class ids for "
                              f"{n_docs} samples, or ids outside the {len(names)} labels); {rebuild}")
        if found is None:
            found = (prefix, names)
        elif names != found[1]:
            raise ConfigError(f"data.paths: {prefix} has labels {names} but {found[0]} has {found[1]}; build the "
                              f"others with `python -m data_tools.classify --label-set {label_set_path(found[0])}`")
    if cfg.task.labels and cfg.task.labels != found[1]:
        raise ConfigError(f"task.labels={cfg.task.labels} differs from the data's {found[1]} "
                          f"({label_set_path(found[0])}); drop task.labels to take the data's")
    cfg.task.labels = list(found[1])
    if not len(_split_samples(cfg, sources)[0]):
        raise ConfigError(f"data.split={cfg.data.split!r} leaves no training sample; give train more weight")


def _split_samples(cfg, sources) -> list:
    """[n, 2] (prefix index, sample index) arrays for train, valid, test (None where unused):
    data.split takes contiguous ranges of each prefix's samples, as megatron-core's builder does."""
    import numpy as np
    from megatron.core.datasets.blended_megatron_dataset_config import convert_split_vector_to_split_matrix
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import normalize

    from mtds.data.splits import split_string

    counts = [len(IndexedDataset(p).document_indices) - 1 for p in sources.all_prefixes]

    def rows(prefix_ids, bounds):
        parts = [np.stack([np.full(e - b, p), np.arange(b, e)], 1) for p in prefix_ids
                 for b, e in [(int(round(bounds[0] * counts[p])), int(round(bounds[1] * counts[p])))]]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)

    n_train = len(sources.prefixes)
    if sources.valid_prefixes:  # separate validation set, read whole; no test split
        return [rows(range(n_train), (0.0, 1.0)), rows(range(n_train, len(counts)), (0.0, 1.0)), None]
    matrix = convert_split_vector_to_split_matrix(normalize([float(w) for w in split_string(cfg.data.split).split(",")]))
    return [None if b is None else rows(range(n_train), b) for b in matrix]


def build_datasets(cfg, sources, tokenizer, sizes: list, dp_size: int):
    """(train, valid, test) ClassificationDatasets: train repeats epochs up to sizes[0] samples;
    valid and test hold each of their samples once (None for a split that is unused, empty or asked for 0)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_tools.classify import labels_path
    from mtds.data.cls_dataset import ClassificationDataset

    pairs = [(IndexedDataset(p), np.load(labels_path(p), mmap_mode="r")) for p in sources.all_prefixes]
    out = []
    for k, (samples, size) in enumerate(zip(_split_samples(cfg, sources), sizes)):
        if samples is None or not size or len(samples) == 0:
            out.append(None)
            continue
        out.append(ClassificationDataset(pairs, samples, cfg.seq_length, size if k == 0 else None,
                                         cfg.data.seed + k, tokenizer))
    return tuple(out)


def logits_and_labels(model, batch: dict, device):
    """([b, classes] fp32 logits, [b] class ids) of a micro-batch."""
    tokens = batch["text"].to(device, non_blocking=True)  # [b, s]
    padding_mask = batch["padding_mask"].to(device, non_blocking=True)  # [b, s], 1 = token
    types = batch["types"].to(device, non_blocking=True)  # [b, s], 0 = text, 1 = text_pair
    labels = batch["label"].to(device, non_blocking=True).long()  # [b]
    return model(tokens, padding_mask, tokentype_ids=types).float(), labels


def count_targets(batch: dict, opts: Options | None = None) -> dict:
    """{"cls": samples} of a micro-batch: classification is a per-sample objective (mtds.train.reduction)."""
    return {"cls": len(batch["label"])}


def forward_step(model, batch: dict, device, opts: Options | None = None):
    """Cross entropy of the classification head summed over the samples; metric acc, and per class c
    the counts `_tp/c`, `_true/c`, `_pred/c` over the samples, which `summarize` turns into macro_f1."""
    import torch.nn.functional as F

    logits, labels = logits_and_labels(model, batch, device)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    pred = logits.detach().argmax(-1)
    conf = confusion(pred, labels, logits.shape[1]).float()
    n = len(labels)
    metrics = {"acc": ((pred == labels).float().sum(), n)}
    for c in range(logits.shape[1]):  # each a fraction of the samples, so their ratios are ratios of counts
        metrics[f"_tp/{c}"], metrics[f"_true/{c}"], metrics[f"_pred/{c}"] = (
            (conf[c, c], n), (conf[c].sum(), n), (conf[:, c].sum(), n))
    return {"cls": loss}, metrics


def summarize(means: dict) -> dict:
    """The logged metrics from the reduced ones: macro_f1 from the per-class counts. Each count is a
    fraction of the same samples (summed over micro-batches and ranks, then divided), so ratios of
    them are ratios of the total counts: macro-F1 over all the samples at once, exactly as `report`
    (mtds.evaluate) computes it, not a mean of per-micro-batch F1s."""
    import torch

    out = {k: v for k, v in means.items() if not k.startswith("_")}
    classes = sorted({int(k.split("/")[1]) for k in means if k.startswith("_tp/")})
    if classes:
        tp, true, pred = (torch.stack([means[f"_{part}/{c}"] for c in classes]) for part in ("tp", "true", "pred"))
        present = (true + pred) > 0
        out["macro_f1"] = (2 * tp / (true + pred).clamp(min=1e-12))[present].mean()
    return out


def confusion(pred, labels, n: int):
    """[n, n] counts: row = true class, column = predicted."""
    import torch

    return torch.bincount(labels * n + pred, minlength=n * n).reshape(n, n)


def per_class(conf):
    """(precision, recall, f1, support) per class, each [n] fp64; 0 where undefined."""
    conf = conf.double()
    tp, true, predicted = conf.diagonal(), conf.sum(1), conf.sum(0)
    precision = tp / predicted.clamp(min=1)
    recall = tp / true.clamp(min=1)
    f1 = 2 * tp / (true + predicted).clamp(min=1)
    return precision, recall, f1, true


def macro_f1(conf):
    """Mean F1 over the classes that occur as a label or a prediction (scikit-learn's macro average
    over the labels present)."""
    _, _, f1, _ = per_class(conf)
    present = (conf.sum(0) + conf.sum(1)) > 0
    return f1[present].mean().float()


def report(model, loader, device, opts: Options) -> tuple[dict, list[str]]:
    """Exact metrics over every sample of `loader` and a per-class table (for mtds.evaluate):
    loss (mean over micro-batches, as the training loop), acc, macro_f1, the majority-class
    accuracy of these samples for reference, and per_class precision/recall/f1/support.
    Returns ({}, []) for a loader without a micro-batch."""
    import torch
    import torch.nn.functional as F

    n = len(opts.labels)
    conf = torch.zeros(n, n, dtype=torch.long)
    total, batches = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            logits, labels = logits_and_labels(model, batch, device)
            total += F.cross_entropy(logits, labels).item()
            batches += 1
            conf += confusion(logits.argmax(-1), labels, n).cpu()
    if batches == 0:
        return {}, []
    precision, recall, f1, support = per_class(conf)
    samples = int(conf.sum())
    result = {"loss": total / batches, "batches": batches, "acc": conf.diagonal().sum().item() / samples,
              "macro_f1": macro_f1(conf).item(), "majority_acc": support.max().item() / samples,
              "per_class": {name: {"precision": p, "recall": r, "f1": f, "support": int(s)} for name, p, r, f, s
                            in zip(opts.labels, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())}}
    width = max(len("class"), *(len(x) for x in opts.labels))
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    lines += [f"{name:<{width}}  {p:9.4f}  {r:6.4f}  {f:6.4f}  {int(s):7d}"
              for name, p, r, f, s in zip(opts.labels, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())]
    lines.append(f"{'macro':<{width}}  {precision.mean().item():9.4f}  {recall.mean().item():6.4f}  "
                 f"{result['macro_f1']:6.4f}  {samples:7d}")
    return result, lines


TASK = Task(
    name="classification", options=Options, data_layout=DATA_LAYOUT, changeable_on_resume=CHANGEABLE_ON_RESUME,
    validate=validate, model_heads=model_heads, check_data=check_data, build_datasets=build_datasets,
    forward_step=forward_step, count_targets=count_targets, flops_args=flops_args, summarize=summarize, report=report,
    # LoRA trains these whole: the head starts fresh, and the pooler is fresh too, or was trained for sentence order
    lora_heads=("pooler", "classification_head"),
)
