"""No file mtds reads runs code (mtds/ckpt/safe_loading.py): a checkpoint `.pt` or an index-cache `.npy`
carrying a pickled call is refused with one line naming it, and the call never runs."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from helpers import ROOT


class Planted:
    """Unpickling this calls os.system: it writes a marker file (what an attacker's code would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _checkpoint(tmp_path, planted_file: str | None):
    """A ZeRO-2-looking checkpoint (model states + RNG file; all a check before DeepSpeed reads),
    one of its files carrying the planted call."""
    ckpt = tmp_path / "run" / "checkpoints" / "iter_0000003"
    ckpt.mkdir(parents=True)
    (ckpt / "mtds_config.json").write_text(json.dumps({"world_size": 1, "deepspeed": {
        "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}}))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("iter_0000003")
    torch.save({"module": {"w": torch.ones(2)}}, ckpt / "mp_rank_00_model_states.pt")
    torch.save({"python": (3, tuple(range(3)), None), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               ckpt / "rng_rank0.pt")
    marker = tmp_path / "code_ran"
    if planted_file:
        torch.save({"module": {"w": torch.ones(2)}, "extra": Planted(str(marker))}, ckpt / planted_file)
    return str(ckpt), marker


def test_files_mtds_and_deepspeed_write_pass_the_check(tmp_path):
    from mtds.ckpt.safe_loading import check_checkpoint

    ckpt, _ = _checkpoint(tmp_path, None)
    check_checkpoint(ckpt)


@pytest.mark.parametrize("planted_file", ["mp_rank_00_model_states.pt", "rng_rank0.pt"])
def test_a_planted_pickle_is_refused_by_the_tools_and_never_runs(tmp_path, planted_file):
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.errors import LoadError

    ckpt, marker = _checkpoint(tmp_path, planted_file)
    with pytest.raises(LoadError, match=rf"^{ckpt}/{planted_file}: refused, loading it would run code \(it names "
                                        r"posix.system\); this file was not written by mtds/DeepSpeed"):
        consolidated_state_dict(ckpt, {"deepspeed": {"zero_optimization": {"stage": 0}}})
    assert not marker.exists()


def test_a_planted_pickle_stops_a_resume_before_deepspeed_starts(tmp_path, tiny_data, capsys):
    from mtds.pretrain import main

    ckpt, marker = _checkpoint(tmp_path, "rng_rank0.pt")
    rc = main(["--deepspeed_config", os.path.join(ROOT, "ds_configs", "zero2.json"), "--run-dir",
               str(tmp_path / "run"), "--load", str(tmp_path / "run"), "--data.paths", tiny_data["prefix"],
               "--data.tokenizer_model", tiny_data["tokenizer_model"], "--data.split=90,10,0"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {ckpt}/rng_rank0.pt: refused, loading it would run code" in err
    assert not marker.exists()


def test_every_torch_load_of_a_run_is_weights_only_even_where_deepspeed_asks_otherwise(tmp_path):
    from mtds.ckpt.safe_loading import enable

    path = tmp_path / "x.pt"
    torch.save({"extra": Planted(str(tmp_path / "code_ran"))}, path)
    enable()
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        torch.load(path, weights_only=False)  # what DeepSpeed's checkpoint engine and zero_to_fp32 pass
    assert not (tmp_path / "code_ran").exists()


def test_an_index_cache_file_holding_objects_is_refused(tmp_path):
    from mtds.errors import LoadError
    from mtds.ckpt.safe_loading import check_index_cache

    cache = tmp_path / "cache" / "key"
    cache.mkdir(parents=True)
    np.save(cache / "ok_sample_index.npy", np.arange(10, dtype=np.int64))
    check_index_cache(str(cache))
    np.save(cache / "x_shuffle_index.npy", np.array([Planted(str(tmp_path / "code_ran"))], dtype=object),
            allow_pickle=True)
    with pytest.raises(LoadError, match=r"x_shuffle_index.npy: refused, this index-cache file holds Python objects"):
        check_index_cache(str(cache))
    assert not (tmp_path / "code_ran").exists()
