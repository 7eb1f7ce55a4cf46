"""The saved-run record: what a run was (resolved run config, DeepSpeed JSON, parallel layout, data
and tokenizer, vocabulary, parameter count, versions), written beside every checkpoint as
mtds_config.json (layout.CONFIG_FILE) and into the run dir as config.json. One writer for training
(mtds/train/run.py) and for a Hugging Face import (mtds/import_hf.py), so the tools, the resume
check and `init_from` read the same keys whoever wrote them. No torch.
"""

from __future__ import annotations

import os
import platform

from mtds.config import CONFIG_FORMAT, RunConfig, resolved_dict


def run_record(cfg: RunConfig, *, deepspeed: dict, parallel: dict, data_sources: dict, vocab_size: int,
               num_parameters: int, train_iters: int, **more) -> dict:
    """The record of a run; `more` adds keys (training: versions, an import: imported_from)."""
    return {"config_format": CONFIG_FORMAT, "run": resolved_dict(cfg), "deepspeed": deepspeed,
            "world_size": parallel["world"], "parallel": parallel, **more, "data_sources": data_sources,
            "vocab_size": vocab_size, "num_parameters": num_parameters, "train_iters": train_iters}


def data_sources_record(prefixes: list[str], tokenizer_model: str, tokenizer_type: str, weights=None,
                        valid_prefixes=None, identity: dict | None = None) -> dict:
    """The data a run reads and its tokenizer (an absolute path: the tools reload it from anywhere).
    `identity` (mtds.data.sources.DataSources.identity): what the data is, for the resume check."""
    record = {"prefixes": prefixes, "weights": weights, "valid_prefixes": valid_prefixes,
              "tokenizer_model": os.path.abspath(tokenizer_model), "tokenizer_type": tokenizer_type}
    return record if identity is None else {**record, "identity": identity}


def versions() -> dict:
    """The library versions that trained the run."""
    import deepspeed
    import megatron.core
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "megatron_core": megatron.core.__version__, "mtds": __import__("mtds").__version__}
